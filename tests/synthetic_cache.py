"""Synthetic caches with learnable structure, written through the real cache writer.

Each token's logit grows linearly in log parameter count at its own rate, so the target's top
token is the per-token extrapolation of the small models beyond the largest one: the mean of the
small models' probabilities gets it wrong often, a predictor that reads trajectories gets it right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emergence_model.cache import FeatureCache, create_cache

PARAM_COUNTS = (1_000_000, 2_000_000, 4_000_000, 8_000_000, 64_000_000)


def synthetic_logprobs(
    num_prefixes: int,
    vocab_size: int,
    param_counts=PARAM_COUNTS,
    noise: float = 0.3,
    seed: int = 0,
) -> np.ndarray:
    """(N, M, V) log-probs, the target last: logits = base + growth * log2(size / smallest)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 2.0, (num_prefixes, 1, vocab_size))
    growth = rng.normal(0.0, 0.6, (num_prefixes, 1, vocab_size))
    size = np.log2(np.asarray(param_counts, dtype=np.float64) / param_counts[0])[None, :, None]
    logits = (
        base + growth * size + rng.normal(0.0, noise, (num_prefixes, len(param_counts), vocab_size))
    )
    logits -= logits.max(axis=2, keepdims=True)
    return (logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))).astype(np.float32)


def write_synthetic_cache(
    path: str | Path,
    *,
    num_prefixes: int = 200,
    vocab_size: int = 64,
    param_counts=PARAM_COUNTS,
    noise: float = 0.3,
    seed: int = 0,
    model_names=None,
    logprobs: np.ndarray | None = None,
) -> FeatureCache:
    if logprobs is None:
        logprobs = synthetic_logprobs(num_prefixes, vocab_size, param_counts, noise, seed)
    n, m, v = logprobs.shape
    names = model_names or [f"synthetic-{i}" for i in range(m)]
    writer = create_cache(
        path,
        model_names=names,
        param_counts=[int(p) for p in param_counts],
        prefixes=[f"prefix {seed}-{i}" for i in range(n)],
        vocab_size=v,
        tokenizer="synthetic",
        source={"name": "synthetic", "seed": seed},
        seed=seed,
        dtype="float32",
    )
    for model in range(m):
        writer.write(model, np.arange(n), logprobs[:, model])
    return writer.finalize(verify=True)
