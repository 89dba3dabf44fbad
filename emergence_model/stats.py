"""Per-prefix measures and their confidence intervals: every reported mean carries a 95% bootstrap
interval, over the per-prefix values of a measure such as `kl_rows`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # stats needs no torch at run time: kl_rows only calls the tensors' methods
    import torch

DEFAULT_BOOTSTRAP = 1000
"""Bootstrap resamples behind every interval, unless a command is told otherwise."""


def kl_rows(target_logprobs: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """KL(target || q) of each row, nats: normalised log-probabilities (..., V) of the target and
    of q, torch tensors -> (...). What the evaluation reports as "kl" per prefix."""
    return (target_logprobs.exp() * (target_logprobs - logprobs)).sum(dim=-1)


def bootstrap_ci(
    values: np.ndarray, num_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling prefixes).

    For a paired comparison, pass the per-prefix differences."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = np.empty(num_bootstrap)
    step = max(1, 2**22 // values.size)  # resamples per batch, ~32 MB of indices
    for start in range(0, num_bootstrap, step):
        n = min(step, num_bootstrap - start)
        means[start : start + n] = values[rng.integers(0, values.size, (n, values.size))].mean(1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return (float(lo), float(hi))


def mean_with_ci(values: np.ndarray, num_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """{"value": mean, "ci": [lo, hi]} of `values` (NaN for none)."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = bootstrap_ci(values, num_bootstrap, seed)
    return {"value": float(values.mean()) if values.size else math.nan, "ci": [lo, hi]}


def difference_with_ci(
    a: np.ndarray, b: np.ndarray, num_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> dict:
    """{"value": mean(a) - mean(b), "ci": [lo, hi]} for two independent samples (e.g. two prefix
    sets), each resampled on its own; for paired values pass their differences to
    `mean_with_ci` instead."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not a.size or not b.size:
        return {"value": math.nan, "ci": [math.nan, math.nan]}
    rng = np.random.default_rng(seed)
    diffs = np.empty(num_bootstrap)
    for i in range(num_bootstrap):
        diffs[i] = (
            a[rng.integers(0, a.size, a.size)].mean() - b[rng.integers(0, b.size, b.size)].mean()
        )
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"value": float(a.mean() - b.mean()), "ci": [float(lo), float(hi)]}
