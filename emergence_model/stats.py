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


# ---------------------------------------------------------------------------------------------
# Resampling clusters: prefixes cut from one document (or posed in one template) are not
# independent, so an interval that resamples prefixes one by one is too narrow. `ClusterBootstrap`
# resamples whole clusters; every statistic is a ratio of resampled sums, so that means, means of
# a group, differences between groups and ratios of means share one set of resamples.


def cluster_codes(clusters: np.ndarray | None, n: int) -> np.ndarray:
    """(n,) cluster ids -> codes 0..C-1 (None: each row its own cluster)."""
    if clusters is None:
        return np.arange(n, dtype=np.int64)
    clusters = np.asarray(clusters)
    if clusters.shape != (n,):
        raise ValueError(f"{clusters.shape[0] if clusters.ndim else 0} cluster ids for {n} rows")
    return np.unique(clusters, return_inverse=True)[1].reshape(-1).astype(np.int64)


class ClusterBootstrap:
    """Resampled sums over the rows of one sample, drawn by cluster: `draws(columns)` gives, per
    resample, the sum of each column over the clusters drawn (with replacement, as many as there
    are). The same seed gives the same draws for every call, so statistics of one sample are
    paired: a difference of two measures is resampled as the measures are."""

    def __init__(
        self, clusters: np.ndarray | None, n: int, num_bootstrap: int = DEFAULT_BOOTSTRAP,
        seed: int = 0,
    ) -> None:  # fmt: skip
        self.codes = cluster_codes(clusters, n)
        self.num_clusters = int(self.codes.max()) + 1 if n else 0
        self.num_bootstrap = num_bootstrap
        self.seed = seed

    @property
    def clustered(self) -> bool:
        """Whether some cluster holds more than one row."""
        return self.num_clusters < len(self.codes)

    def draws(self, columns: np.ndarray) -> np.ndarray:
        """(n, k) per-row columns -> (num_bootstrap, k) their sums over each resample's
        clusters."""
        columns = np.asarray(columns, dtype=np.float64).reshape(len(self.codes), -1)
        per_cluster = np.stack(
            [
                np.bincount(self.codes, weights=col, minlength=self.num_clusters)
                for col in columns.T
            ],
            axis=1,
        )  # (n, k) -> (C, k)
        rng = np.random.default_rng(self.seed)
        c = self.num_clusters
        out = np.empty((self.num_bootstrap, columns.shape[1]))
        step = max(1, 2**22 // max(c, 1))  # resamples per batch, ~32 MB of indices
        columns_by_cluster = [np.ascontiguousarray(col) for col in per_cluster.T]
        for start in range(0, self.num_bootstrap, step):
            b = min(step, self.num_bootstrap - start)
            picks = rng.integers(0, c, (b, c))
            for j, col in enumerate(columns_by_cluster):  # a gather per column: the fastest
                out[start : start + b, j] = col[picks].sum(axis=1)
        return out

    def mean(self, values: np.ndarray, mask: np.ndarray | None = None) -> dict:
        """The mean of `values` (over `mask`'s rows) with its interval (`estimate`)."""
        return estimate(*self.mean_draws(values, mask))

    def mean_draws(
        self, values: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:
        """The mean of `values` (over `mask`'s rows) and its (num_bootstrap,) resampled means,
        for statistics of several samples (`difference`)."""
        values, mask = self._masked(values, mask)
        sums = self.draws(np.stack([values * mask, mask], axis=1))
        return _mean(values[mask > 0]), _ratio(sums[:, 0], sums[:, 1])

    def ratio(self, numerator: np.ndarray, denominator: np.ndarray) -> dict:
        """mean(numerator) / mean(denominator), paired, with its interval."""
        num, den = (np.asarray(v, dtype=np.float64) for v in (numerator, denominator))
        sums = self.draws(np.stack([num, den], axis=1))
        value = float(num.sum() / den.sum()) if den.size and den.sum() else math.nan
        return estimate(value, _ratio(sums[:, 0], sums[:, 1]))

    def group_difference(self, values: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
        """mean over group `a`'s rows minus mean over group `b`'s (two masks of this sample),
        clusters resampled once for both groups."""
        values = np.asarray(values, dtype=np.float64)
        a, b = (np.asarray(m, dtype=np.float64) for m in (a, b))
        sums = self.draws(np.stack([values * a, a, values * b, b], axis=1))
        value = _mean(values[a > 0]) - _mean(values[b > 0])
        return estimate(value, _ratio(sums[:, 0], sums[:, 1]) - _ratio(sums[:, 2], sums[:, 3]))

    def binned_draws(
        self, values: np.ndarray, bins: np.ndarray, num_bins: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per bin (`bins`: (n,) 0..B-1 of each row): the mean of `values` on the sample (B,),
        the resampled means (num_bootstrap, B) and the resampled rows per bin (num_bootstrap, B);
        NaN for a bin without rows."""
        values = np.asarray(values, dtype=np.float64)
        onehot = np.eye(num_bins)[np.asarray(bins, dtype=np.int64)]  # (n, B)
        columns = np.concatenate([onehot * values[:, None], onehot], axis=1)
        sums, draws = columns.sum(axis=0), self.draws(columns)
        means = _ratio(sums[:num_bins], sums[num_bins:])
        return means, _ratio(draws[:, :num_bins], draws[:, num_bins:]), draws[:, num_bins:]

    def _masked(self, values, mask) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(values, dtype=np.float64)
        mask = np.ones(values.shape) if mask is None else np.asarray(mask, dtype=np.float64)
        if values.shape != (len(self.codes),):
            raise ValueError(f"{values.shape} values for a sample of {len(self.codes)} rows")
        return np.where(mask > 0, values, 0.0), mask


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def estimate(value: float, draws: np.ndarray, level: float = 0.95) -> dict:
    """{"value", "ci": percentile interval of the resampled `draws`, "se": their standard
    deviation, "p": two-sided p of "the value is 0" from the standard error (normal
    approximation: resolution not bounded by the number of resamples, which Holm needs)}."""
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if not draws.size or not math.isfinite(value):
        return {"value": value, "ci": [math.nan, math.nan], "se": math.nan, "p": math.nan}
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    se = float(draws.std(ddof=1)) if draws.size > 1 else 0.0
    p = math.erfc(abs(value) / se / math.sqrt(2)) if se > 0 else float(value == 0)
    return {"value": float(value), "ci": [float(lo), float(hi)], "se": se, "p": p}


def difference(a: tuple[float, np.ndarray], b: tuple[float, np.ndarray]) -> dict:
    """Two statistics with their resampled values (`ClusterBootstrap.mean_draws` of two samples,
    each with its own seed: resampled independently) -> a minus b with its interval."""
    return estimate(a[0] - b[0], a[1] - b[1])


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order; NaN stays
    NaN and is not counted in the family."""
    p = np.asarray(p_values, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    adjusted = np.full(p.shape, math.nan)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
