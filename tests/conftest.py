"""Shared fixtures: a tiny GPT-NeoX suite built offline, a finished cache extracted from it, and
a tiny demo suite built by the demo's own code.

The suite mirrors Pythia's shape on a small scale: one byte-level BPE tokenizer (trained here by
`tokenizers`), models of increasing size with rotary embeddings on 25% of each head and untied
embeddings, saved with `save_pretrained` and reloaded through `from_pretrained`. Like Pythia, the
models have more logit rows than the tokenizer has tokens, the target most of all (Pythia-12b:
50688 rows for 50277 tokens).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tiny_demo import SUBTREE_ROOT, TINY

from emergence_model.demo.tokenizer import train_bpe_tokenizer
from emergence_model.lm import count_parameters, gpt_neox_config

# Tiny models run fastest on one thread, and test machines are shared: more threads only spin.
torch.set_num_threads(1)

TINY_VOCAB = 320
# (hidden size, layers, heads) of each model, smallest first, the target last.
TINY_SHAPES = ((16, 1, 2), (24, 2, 2), (32, 2, 4), (48, 3, 4))
# Logit rows beyond the vocabulary: Pythia rounds its small models up to a multiple of 128.
TINY_EXTRA_ROWS = (0, 0, 0, 29)
WORDS = (
    "the a one every some river city model stone light music history small large old new "
    "quickly slowly near far above under red green blue north south ran grew built found "
    "wrote sang carried painted opened closed between during after before because while "
    "mountain forest village language number season king queen ship road garden"
).split()


@dataclass
class TinySuite:
    """A saved tiny suite: local model directories (target last) that share one tokenizer."""

    model_dirs: list[Path]
    """`save_pretrained` directories, each with the tokenizer files too; the target is last."""
    tokenizer_dir: Path
    vocab_size: int
    """len(tokenizer): the models' logit rows beyond it are padding."""
    param_counts: list[int]
    prefixes: list[str]
    """24 prefixes of 1 to 16 words, for caches built in tests."""

    @property
    def model_ids(self) -> list[str]:
        return [str(d) for d in self.model_dirs]


def make_sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 16))]
        words[0] = words[0].capitalize()
        sentences.append(" ".join(words) + rng.choice([".", ",", "", "!"]))
    return sentences


def build_tiny_suite(root: Path) -> TinySuite:
    from transformers import GPTNeoXForCausalLM

    sentences = make_sentences(400)
    # The demo suite's trainer: byte-level BPE with ids 0/1 end-of-text and padding, as Pythia's.
    tokenizer = train_bpe_tokenizer(sentences, TINY_VOCAB)
    vocab_size = len(tokenizer)
    tokenizer_dir = root / "tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    model_dirs, param_counts = [], []
    for i, ((hidden, layers, heads), extra) in enumerate(
        zip(TINY_SHAPES, TINY_EXTRA_ROWS, strict=True)
    ):
        torch.manual_seed(i)
        config = gpt_neox_config(
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            vocab_size=vocab_size,
            extra_logit_rows=extra,
            context_length=128,
            # Wider than the default 0.02, so that the untrained models' distributions are not
            # all nearly uniform and models of different sizes disagree.
            initializer_range=0.3,
            eos_token_id=0,
        )
        model = GPTNeoXForCausalLM(config).eval()
        model_dir = root / f"tiny-neox-{i}"
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        model_dirs.append(model_dir)
        param_counts.append(count_parameters(model))
    return TinySuite(
        model_dirs=model_dirs,
        tokenizer_dir=tokenizer_dir,
        vocab_size=vocab_size,
        param_counts=param_counts,
        prefixes=make_sentences(24, seed=1),
    )


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory) -> TinySuite:
    """Four tiny GPT-NeoX models (target last) and their tokenizer, saved under a temp dir."""
    return build_tiny_suite(tmp_path_factory.mktemp("tiny_suite"))


@pytest.fixture(scope="session")
def tiny_cache(tiny_suite, tmp_path_factory):
    """A finished float16 cache of `tiny_suite` over its 24 prefixes, built by `extract_suite`.

    Shared by the whole session: open it read-only, and copy it before changing anything.
    """
    from emergence_model.extract import ExtractConfig, extract_suite

    out = tmp_path_factory.mktemp("tiny_cache") / "cache"
    config = ExtractConfig(device="cpu", batch_size=5, progress=False)
    return extract_suite(tiny_suite.model_ids, tiny_suite.prefixes, out, config)


@pytest.fixture
def stdlib_subtree(monkeypatch) -> Path:
    """The demo's stdlib corpus cut to one package (email), read in a fraction of a second."""
    monkeypatch.setattr("emergence_model.demo.corpus.stdlib_root", lambda: SUBTREE_ROOT)
    return SUBTREE_ROOT


@pytest.fixture(scope="session")
def demo_suite_dir(tmp_path_factory) -> Path:
    """A finished tiny demo suite, built by the demo's own code (`tiny_demo.TINY`) in seconds.

    Shared by the whole session: copy it before changing anything.
    """
    from emergence_model.demo.build import build_suite

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("emergence_model.demo.corpus.stdlib_root", lambda: SUBTREE_ROOT)
        suite_dir = tmp_path_factory.mktemp("demo") / "suite"
        build_suite(suite_dir, TINY, progress=False)
    return suite_dir
