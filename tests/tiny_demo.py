"""The demo suite shrunk to seconds, for the tests of `emergence_model.demo`: three tiny rungs, a
few steps, the docstrings of one standard-library package (email) as the corpus."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from emergence_model.demo.config import MODELS_DIR, SUITE_FILE, DemoConfig, Rung
from emergence_model.demo.corpus import stdlib_corpus, stdlib_root

TINY = DemoConfig(
    ladder=(Rung(16, 1, 2, 1e-2), Rung(24, 1, 2, 8e-3), Rung(32, 2, 2, 6e-3)),
    steps=6,
    batch_size=2,
    seq_len=128,
    warmup_steps=1,
    vocab_size=300,
    valid_tokens=256,
    checkpoint_every=2,
)
# The standard library's email package, found before any test patches `stdlib_root`.
SUBTREE_ROOT = stdlib_root() / "email"


def suite_record(suite_dir: Path) -> dict:
    return json.loads((suite_dir / SUITE_FILE).read_text())


def model_dirs(suite_dir: Path) -> list[Path]:
    return [suite_dir / m["directory"] for m in suite_record(suite_dir)["models"]]


def partial_dirs(suite_dir: Path) -> list[Path]:
    return list((suite_dir / MODELS_DIR).glob("*.partial"))


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def small_tokenizer():
    """A 300-token BPE trained on the email package's training documents."""
    from emergence_model.demo.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(stdlib_corpus(35, SUBTREE_ROOT).train, 300)
