"""Random-batch read throughput: `FeatureCache.rows` against raw numpy memory-map fancy indexing.

    python bench/bench_cache_read.py                          # 512 x 7 x 50277 float16, ~360 MB
    python bench/bench_cache_read.py --num-prefixes 2048 --batch-size 64 --rounds 100

Both read the same `logprobs.npy` in one run, batch by batch with the same random indices, in
alternating order so that both see the same page cache and machine load. Three comparisons:

- same output: `rows(idx, dtype=None)` vs `np.load(path, mmap_mode="r")[idx]` (cache dtype both);
- float32 output: `rows(idx)` vs `raw[idx].astype(np.float32)` (what a float32 consumer needs);
- `rows(idx)` float32 vs raw cache-dtype fancy indexing, for reference (it writes twice the bytes).

The file is read once before timing, so this measures the page-cache (warm) case, where any
overhead of `rows` shows most; a cache bigger than RAM is bound by the disk for both.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from emergence_model.cache import LOGPROBS_FILE, create_cache


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-prefixes", type=int, default=512)
    parser.add_argument("--num-models", type=int, default=7)
    parser.add_argument("--vocab-size", type=int, default=50277)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        cache = build_cache(
            Path(tmp) / "cache", args.num_prefixes, args.num_models, args.vocab_size, args.dtype
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
        for round_ in range(args.rounds + 2):
            idx = rng.choice(args.num_prefixes, size=args.batch_size, replace=False)
            names = list(readers) if round_ % 2 == 0 else list(reversed(readers))
            for name in names:
                start = time.perf_counter()
                out = readers[name](idx)
                elapsed = time.perf_counter() - start
                if round_ >= 2:  # the first rounds warm the allocator
                    seconds[name].append(elapsed)
                del out

    row_bytes = args.num_models * args.vocab_size * np.dtype(args.dtype).itemsize
    print(
        f"{args.num_prefixes} x {args.num_models} x {args.vocab_size} {args.dtype} "
        f"({args.num_prefixes * row_bytes / 2**20:.0f} MiB), batches of {args.batch_size} random "
        f"rows, {args.rounds} rounds, median per batch:"
    )
    median = {name: float(np.median(s)) for name, s in seconds.items()}
    for name, value in median.items():
        mib_s = args.batch_size * row_bytes / 2**20 / value
        print(f"  {name:<26} {value * 1000:8.2f} ms  {mib_s:8.0f} MiB/s of cache rows")
    same = median["raw[idx]"] / median["rows(idx, dtype=None)"]
    as_float = median["raw[idx].astype(float32)"] / median["rows(idx) float32"]
    mixed = median["raw[idx]"] / median["rows(idx) float32"]
    print(f"ratio rows / raw, same dtype out:       {same:.2f} (target >= 0.70)")
    print(f"ratio rows / raw, float32 out:          {as_float:.2f}")
    print(f"ratio rows float32 / raw {args.dtype}:     {mixed:.2f} (twice the bytes written)")


if __name__ == "__main__":
    main()
