"""Random-batch read throughput: `FeatureCache.rows` against raw numpy memory-map fancy indexing.

    python -m bench.benchmarks.bench_cache_read --threads 1     # 512 x 7 x 50277 float16, ~360 MB
    python -m bench.benchmarks.bench_cache_read --num-prefixes 2048 --batch-size 64 --rounds 100

Both read the same `logprobs.npy` in one run, batch by batch with the same random indices, in
alternating order so that both see the same page cache and machine load. Three comparisons:

- same output: `rows(idx, dtype=None)` vs `np.load(path, mmap_mode="r")[idx]` (cache dtype both);
- float32 output: `rows(idx)` vs `raw[idx].astype(np.float32)` (what a float32 consumer needs);
- `rows(idx)` float32 vs raw cache-dtype fancy indexing, for reference (it writes twice the bytes).

The file is read once before timing, so this measures the page-cache (warm) case, where any
overhead of `rows` shows most; a cache bigger than RAM is bound by the disk for both. The timings
go to docs/results/bench_cache_read.md and .json.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.common import start_run
from emergence_model.cache import LOGPROBS_FILE, create_cache
from emergence_model.cli import exit_on_user_error
from emergence_model.results import Section


@dataclass
class CacheReadConfig:
    """The cache's shape and the reads timed."""

    num_prefixes: int = 512
    """Prefixes (rows) in the cache."""
    num_models: int = 7
    """Models per row."""
    vocab_size: int = 50277
    """Vocabulary size."""
    dtype: str = field(default="float16", metadata={"choices": ["float16", "float32"]})
    """The cache's dtype."""
    batch_size: int = 32
    """Random rows read per batch."""
    rounds: int = 60
    """Timed batches per reader (the median is reported)."""


def build_cache(path: Path, num_prefixes: int, num_models: int, vocab_size: int, dtype: str):
    """A cache of random normalised rows (content does not change read speed)."""
    writer = create_cache(
        path,
        model_names=[f"model-{m}" for m in range(num_models)],
        param_counts=[10**6 * (m + 1) for m in range(num_models)],
        prefixes=[f"prefix {i}" for i in range(num_prefixes)],
        vocab_size=vocab_size,
        tokenizer="none",
        dtype=dtype,
    )
    generator = torch.Generator().manual_seed(0)
    for m in range(num_models):
        for start in range(0, num_prefixes, 64):
            rows = np.arange(start, min(start + 64, num_prefixes))
            logits = torch.randn(len(rows), vocab_size, generator=generator) * 3
            writer.write(m, rows, torch.log_softmax(logits, dim=-1).numpy())
    return writer.finalize(verify=False)


def main(argv: Sequence[str] | None = None) -> None:
    (config,), run = start_run(__file__, __doc__, argv, CacheReadConfig)
    with tempfile.TemporaryDirectory() as tmp:
        cache = build_cache(
            Path(tmp) / "cache",
            config.num_prefixes,
            config.num_models,
            config.vocab_size,
            config.dtype,
        )
        raw = np.load(Path(tmp) / "cache" / LOGPROBS_FILE, mmap_mode="r")
        np.asarray(raw).sum(dtype=np.float64)  # warm the page cache for both readers
        readers = {
            "rows(idx, dtype=None)": lambda idx: cache.rows(idx, dtype=None),
            "raw[idx]": lambda idx: raw[idx],
            "rows(idx) float32": lambda idx: cache.rows(idx),
            "raw[idx].astype(float32)": lambda idx: raw[idx].astype(np.float32),
        }
        seconds = {name: [] for name in readers}
        rng = np.random.default_rng(0)
        for round_ in range(config.rounds + 2):
            idx = rng.choice(config.num_prefixes, size=config.batch_size, replace=False)
            names = list(readers) if round_ % 2 == 0 else list(reversed(readers))
            for name in names:
                started = time.perf_counter()
                out = readers[name](idx)
                elapsed = time.perf_counter() - started
                if round_ >= 2:  # the first rounds warm the allocator
                    seconds[name].append(elapsed)
                del out

    row_bytes = config.num_models * config.vocab_size * np.dtype(config.dtype).itemsize
    median = {name: float(np.median(s)) for name, s in seconds.items()}
    mib_s = {name: config.batch_size * row_bytes / 2**20 / value for name, value in median.items()}
    rows = [[name, f"{median[name] * 1000:.2f}", f"{mib_s[name]:.0f}"] for name in median]
    notes = (
        f"{config.num_prefixes} x {config.num_models} x {config.vocab_size} {config.dtype} "
        f"({config.num_prefixes * row_bytes / 2**20:.0f} MiB), batches of {config.batch_size} "
        f"random rows, {config.rounds} rounds, median per batch."
    )
    head = ["reader", "ms", "MiB/s of cache rows"]
    reads = Section("Reads", head, rows, notes, numbers={"median_seconds": median})
    ratios = {
        "rows / raw, same dtype out (target >= 0.70)": (
            median["raw[idx]"] / median["rows(idx, dtype=None)"]
        ),
        "rows / raw, float32 out": median["raw[idx].astype(float32)"] / median["rows(idx) float32"],
        f"rows float32 / raw {config.dtype} (twice the bytes written)": (
            median["raw[idx]"] / median["rows(idx) float32"]
        ),
    }
    ratio_rows = [[name, f"{value:.2f}"] for name, value in ratios.items()]
    speed = Section("Ratios (speed of rows over raw)", ["ratio", "value"], ratio_rows, "", ratios)
    run.write("Cache reads against a raw memory map", [reads, speed])


if __name__ == "__main__":
    exit_on_user_error(main)
