"""Extraction throughput: this package's `extract_suite` against the original challenge's method.

    python -m bench.benchmarks.bench_extraction --threads 1    # 200 prefixes, 7 models, ~2 minutes
    python -m bench.benchmarks.bench_extraction --num-prefixes 500 --batch-size 32

Both run in one process on the same models and prefixes, and both include loading each model.
The models are the demo suite's ladder of seven small GPT-NeoX models (random weights: speed does
not depend on them) with Pythia's vocabulary: the real GPT-NeoX-20B tokenizer from ../shared/data,
50304 logit rows, 50688 for the target as in Pythia-12b. The prefixes are 10-20 word openings of
WikiText-2 paragraphs. Without ../shared the text is the standard library's docstrings and the
tokenizer is trained on them (slower).

The challenge's method, per model and per prefix: tokenize one prefix, run the model with logits at
every position in float32, softmax over every position and every logit row, take the last row's
first V columns, and keep it in a Python list; the list is stacked into float16 at the end.

Where the speed-up comes from, and so how it moves with the models: for small models the vocabulary
projection dominates, and the challenge's method computes it at every position (~20 per prefix)
where `logits_to_keep` computes it once; batching removes per-call overhead. For large models the
transformer body dominates and the CPU ratio falls towards the batching gain alone; on a GPU
batching is most of the gain. The timings go to docs/results/bench_extraction.md and .json.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.common import SHARED_DATA, gpt_neox_tokenizer, start_run
from emergence_model.cli import exit_on_user_error
from emergence_model.extract import ExtractConfig, extract_suite
from emergence_model.lm import gpt_neox_config, load_model, load_tokenizer
from emergence_model.prompts import wikipedia_prefixes
from emergence_model.results import Section

# (hidden size, layers, heads, logit rows), smallest first, the target last: the demo suite's
# default ladder (emergence_model/demo/config.py) with Pythia's vocabulary; the target has 50688
# logit rows as Pythia-12b does.
LADDER = (
    (32, 1, 2, 50304),
    (48, 1, 2, 50304),
    (64, 2, 2, 50304),
    (96, 2, 4, 50304),
    (128, 3, 4, 50304),
    (160, 4, 4, 50304),
    (192, 4, 6, 50688),
)


def load_text_and_tokenizer():
    """WikiText-2 paragraphs and the GPT-NeoX tokenizer, or a fallback built offline."""
    if (SHARED_DATA / "wikitext2-valid.txt").is_file():
        lines = (SHARED_DATA / "wikitext2-valid.txt").read_text(encoding="utf-8").split("\n")
        paragraphs = [
            line for line in lines if len(line.split()) > 20 and not line.startswith(" =")
        ]
        return paragraphs, gpt_neox_tokenizer(), "wikitext-2 + gpt-neox-20b tokenizer"
    from emergence_model.demo.corpus import stdlib_corpus
    from emergence_model.demo.tokenizer import train_bpe_tokenizer

    corpus = stdlib_corpus()
    tokenizer = train_bpe_tokenizer(corpus.train, 50277)
    return corpus.valid, tokenizer, "stdlib docstrings + a BPE tokenizer trained on them"


def build_ladder(root: Path, tokenizer) -> list[str]:
    from transformers import GPTNeoXForCausalLM

    dirs = []
    for i, (hidden, layers, heads, rows) in enumerate(LADDER):
        torch.manual_seed(i)
        config = gpt_neox_config(
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            vocab_size=len(tokenizer),
            extra_logit_rows=rows - len(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
        )
        model_dir = root / f"neox-{hidden}x{layers}"
        GPTNeoXForCausalLM(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        dirs.append(str(model_dir))
    return dirs


def challenge_method(model_dirs: list[str], prefixes: list[str]) -> np.ndarray:
    """The original challenge's extraction: float16 probabilities [N, M, V]."""
    vocab_size = len(load_tokenizer(model_dirs[-1]))
    probs = [[None] * len(model_dirs) for _ in prefixes]
    for m, model_dir in enumerate(model_dirs):
        tokenizer = load_tokenizer(model_dir)
        model = load_model(model_dir, dtype="float32")
        for i, prefix in enumerate(prefixes):
            inputs = tokenizer(prefix, return_tensors="pt")
            with torch.no_grad():
                logits = model(**inputs).logits  # (1, T, rows): every position
            every = torch.softmax(logits.float(), dim=-1)
            probs[i][m] = every[0, -1, :vocab_size].numpy()
        del model
    return np.array(probs, dtype=np.float16)


@dataclass
class ExtractionBenchConfig:
    """The prefixes and the batch of the package's extraction."""

    num_prefixes: int = 200
    """WikiText-2 paragraph openings extracted."""
    batch_size: int = 16
    """Prefixes per forward pass of `extract_suite`."""
    seed: int = 0
    """Seed of the prefixes' choice."""


def main(argv: Sequence[str] | None = None) -> None:
    (config,), run = start_run(__file__, __doc__, argv, ExtractionBenchConfig)
    paragraphs, tokenizer, data = load_text_and_tokenizer()
    prefixes = wikipedia_prefixes(paragraphs, config.num_prefixes, seed=config.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model_dirs = build_ladder(Path(tmp), tokenizer)
        started, started_cpu = time.perf_counter(), time.process_time()
        reference = challenge_method(model_dirs, prefixes)
        challenge = (time.perf_counter() - started, time.process_time() - started_cpu)
        started, started_cpu = time.perf_counter(), time.process_time()
        cache = extract_suite(
            model_dirs,
            prefixes,
            Path(tmp) / "cache",
            ExtractConfig(device="cpu", batch_size=config.batch_size, progress=False),
        )
        ours = (time.perf_counter() - started, time.process_time() - started_cpu)
        probs = np.exp(cache.rows(range(len(cache))))
        reference = reference.astype(np.float32)
        top2 = np.sort(reference, axis=-1)[..., -2:]
        untied = top2[..., 1] > top2[..., 0]  # float16 rounding ties the top of flat rows
        agree = float((cache.argmax == reference.argmax(-1))[untied].mean())
        max_diff = float(np.abs(probs - reference).max())

    n, m = len(prefixes), len(model_dirs)
    rows = [
        [name, f"{wall:.2f}", f"{cpu:.2f}", f"{n * m / wall:.1f}"]
        for name, (wall, cpu) in (("challenge method", challenge), ("extract_suite", ours))
    ]
    # CPU time is the fairer ratio on a machine shared with other jobs (it ignores waiting).
    speed_up = (challenge[0] / ours[0], challenge[1] / ours[1])
    rows.append(["speed-up", f"{speed_up[0]:.1f}x", f"{speed_up[1]:.1f}x", ""])
    notes = (
        f"Data: {data}; {n} prefixes x {m} models {[Path(d).name for d in model_dirs]}, batch "
        f"{config.batch_size}. Argmax agreement {agree:.4f} (rows without float16 ties), max "
        f"|prob diff| {max_diff:.1e}."
    )
    head = ["method", "wall s", "CPU s", "prefix-models/s (wall)"]
    numbers = {
        "challenge_seconds": {"wall": challenge[0], "cpu": challenge[1]},
        "extract_suite_seconds": {"wall": ours[0], "cpu": ours[1]},
        "speed_up": {"wall": speed_up[0], "cpu": speed_up[1]},
        "argmax_agreement": agree,
        "max_prob_diff": max_diff,
    }
    section = Section("Extraction", head, rows, notes, numbers)
    run.write("Extraction against the challenge's method", [section])


if __name__ == "__main__":
    exit_on_user_error(main)
