"""Emergence as a curve over scale: how well each rung of the ladder is predicted from the rungs
below it, by the same network recipe.

For every rung k from the third small model up to the target, a network of the checkpoint's
recipe is cross-fitted on the reference set's rungs below k to predict rung k (its cache a copy of
those models, `select_models`; finished folds are reused). Per rung and per set: KL(p_k || q_k),
the top-1 miss, and the share of the step from rung k-1 that the prediction recovers,
1 - KL(p_k || q_k) / KL(p_k || p_{k-1}) (a ratio of means). The back-test fits each measure's line
in log scale through the rungs below the target and extrapolates it to the target, against the
target's measured point: if emergence were a break at the target, the target would fall off the
line its ladder draws.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emergence_model.cache import FeatureCache, select_models
from emergence_model.evaluate import score_parts
from emergence_model.folds import SEEN_BY_ALL
from emergence_model.model import PerTokenPredictor
from emergence_model.stats import ClusterBootstrap, estimate
from emergence_model.strategies import LargestModel, NetworkStrategy, model_basename
from emergence_model.study.scoring import Ladder, checkpoint_recipe, head_for, prefix_folds
from emergence_model.training import fit_cross_fitted

FIRST_RUNG = 2
"""The first rung predicted (0-based, in order of scale): the third small model, from two below."""
RUNG_MEASURES = ("kl", "miss", "recovered")


class ModelsView:
    """A cache's prefixes with only some of its models, the last one the target, read from the
    cache's own rows (no copy): what scoring a rung on a set needs of a `FeatureCache`."""

    def __init__(self, cache: FeatureCache, models: Sequence[int]) -> None:
        self.cache = cache
        self.models = [int(m) for m in models]
        self.path = cache.path
        self.prefixes = cache.prefixes
        self.num_prefixes = cache.num_prefixes
        self.num_models = len(self.models)
        self.vocab_size = cache.vocab_size
        self.model_names = [cache.model_names[m] for m in self.models]
        self.target_name = self.model_names[-1]
        self.scales = [cache.scales[m] for m in self.models]
        self.argmax = cache.argmax[:, self.models]
        self.target_argmax = self.argmax[:, -1].astype(np.int64)

    def __len__(self) -> int:
        return self.num_prefixes

    def rows(self, indices, dtype=np.float32) -> np.ndarray:
        """(n, len(models), V) the chosen models' rows."""
        return self.cache.rows(indices, dtype)[:, self.models]


@dataclass
class RungNetwork:
    """The network that predicts one rung from the rungs below it."""

    position: int
    """The rung's place in order of scale (0: the smallest model)."""
    models: list[int]
    """Cache model indices of the rungs below it, then the rung's own."""
    ensemble: PerTokenPredictor
    codes: Callable[[Sequence[str]], np.ndarray]
    """prefixes -> (n,) which head never saw each prefix (`folds` codes)."""


def scale_order(cache: FeatureCache) -> list[int]:
    """The cache's models in order of scale, the target last (it must be the largest)."""
    order = np.argsort(cache.scales, kind="stable").tolist()
    if order[-1] != cache.num_models - 1:
        raise ValueError(
            f"{cache.path}: the target {cache.target_name} is not the largest model of its ladder"
        )
    return order


def train_rung_networks(
    ladder: Ladder, out: Path, folds: int, own_folds: bool
) -> tuple[list[RungNetwork], str | None]:
    """A network per rung from the third small model to the target, each trained on the
    reference set's rungs below it (under out/rungs); the target's is the checkpoint itself
    when `own_folds` (the reference set is its training cache, so it is this recipe's network).
    Returns them, or none and why not."""
    cache = ladder.reference
    small = cache.num_models - 1
    if small <= FIRST_RUNG:
        return [], (
            f"the ladder has {small} small models; the curve needs at least {FIRST_RUNG + 1} "
            f"(each rung predicted from {FIRST_RUNG} or more below it)"
        )
    order = scale_order(cache)
    recorded = ladder.checkpoint.get("data", {}).get("split", {}).get("folds", 0)
    base, train = checkpoint_recipe(ladder, recorded if recorded >= 2 else folds)
    networks = []
    for position in range(FIRST_RUNG, small + 1):
        models = order[: position + 1]
        if position == small and own_folds:
            codes = functools.partial(prefix_folds, checkpoint=ladder.checkpoint)
            networks.append(RungNetwork(position, models, ladder.predictor, codes))
            continue
        name = model_basename(cache.model_names[models[-1]])
        rung_dir = out / "rungs" / f"{position}-{name}"
        sub = select_models(cache, models, rung_dir / "cache")
        ensemble, rung_folds, _ = fit_cross_fitted(sub, base, train, rung_dir / "runs")
        networks.append(RungNetwork(position, models, ensemble, rung_folds.codes))
    return networks, None


def score_rung(
    cache: FeatureCache, network: RungNetwork, rows: np.ndarray, chunk_rows: int
) -> dict[str, np.ndarray]:
    """On `rows` of `cache` (none that every head saw): per prefix KL(p_k || q_k), the miss of
    q_k's top token, and KL(p_k || p_{k-1}), q_k the head that never saw the prefix."""
    view = ModelsView(cache, network.models)
    codes = np.asarray(network.codes(cache.prefixes))[rows]
    names = view.model_names
    parts = []
    for code in np.unique(codes):
        head = head_for(network.ensemble, int(code))
        strategies = {
            "network": NetworkStrategy(head, names[:-1], names[-1]),
            "previous": LargestModel(),
        }
        parts.append((rows[codes == code], strategies))
    scored = score_parts(view, parts, chunk_rows)
    order = np.argsort(scored["rows"], kind="stable")
    net, previous = (scored["strategies"][n] for n in ("network", "previous"))
    return {
        "kl": net["kl"][order],
        "miss": 1.0 - net["top1"][order],
        "previous_kl": previous["kl"][order],
    }


def rung_rows(cache: FeatureCache, networks: Sequence[RungNetwork]) -> np.ndarray:
    """The rows of `cache` every rung's network can score (none left out as seen by all)."""
    kept = np.ones(len(cache), dtype=bool)
    for network in networks:
        kept &= np.asarray(network.codes(cache.prefixes)) != SEEN_BY_ALL
    return np.flatnonzero(kept)


def rung_curve(
    cache: FeatureCache,
    networks: Sequence[RungNetwork],
    sampler_for,
    chunk_rows: int,
) -> dict:
    """Per rung: KL(p_k || q_k), top-1 miss and the share of the step recovered, with intervals
    (`sampler_for(rows)` gives the set's `ClusterBootstrap` on those rows, one seed: the rungs'
    resamples are paired); and the back-test of each measure at the target."""
    rows = rung_rows(cache, networks)
    sampler: ClusterBootstrap = sampler_for(rows)
    order = scale_order(cache)
    rungs, draws = [], {m: [] for m in RUNG_MEASURES}
    for network in networks:
        scored = score_rung(cache, network, rows, chunk_rows)
        stats = {}
        for measure in ("kl", "miss"):
            value, resampled = sampler.mean_draws(scored[measure])
            stats[measure] = estimate(value, resampled)
            draws[measure].append((value, resampled))
        sums = sampler.draws(np.stack([scored["kl"], scored["previous_kl"]], axis=1))  # (B, 2)
        resampled = 1.0 - sums[:, 0] / sums[:, 1]
        value = 1.0 - float(scored["kl"].sum() / scored["previous_kl"].sum())
        stats["recovered"] = estimate(value, resampled)
        stats["previous_kl"] = sampler.mean(scored["previous_kl"])
        draws["recovered"].append((value, resampled))
        model = network.models[-1]
        rungs.append(
            {
                "position": network.position,
                "model": model_basename(cache.model_names[model]),
                "scale": cache.scales[model],
                "below": [model_basename(cache.model_names[m]) for m in network.models[:-1]],
                **stats,
            }
        )
    target_is_last = networks[-1].models[-1] == order[-1]
    scales = [r["scale"] for r in rungs]
    back_test = {
        m: extrapolated(scales, draws[m]) for m in RUNG_MEASURES if target_is_last
    }  # fmt: skip
    return {"prefixes": int(rows.size), "rungs": rungs, "back_test": back_test}


def extrapolated(scales: Sequence[float], points: Sequence[tuple[float, np.ndarray]]) -> dict:
    """The least-squares line in log scale through every point but the last, extrapolated to the
    last one's scale, against its measured value; each point (value, resampled values), all
    resampled alike, so that the line's uncertainty is carried into the extrapolation."""
    if len(points) < 3:
        return {"skipped": f"{len(points) - 1} rung(s) below the target; a line needs 2"}
    x = np.log10(np.asarray(scales, dtype=np.float64))
    values = np.array([v for v, _ in points])
    draws = np.stack([d for _, d in points], axis=1)  # (B, rungs)

    def fit(y: np.ndarray) -> np.ndarray:  # (..., rungs) -> (...,) the line at the last scale
        design = np.stack([np.ones(len(x) - 1), x[:-1]], axis=1)
        coef = np.linalg.lstsq(design, np.atleast_2d(y)[..., :-1].T, rcond=None)[0]
        return (np.array([1.0, x[-1]]) @ coef).reshape(np.shape(y)[:-1])

    ok = np.isfinite(draws).all(axis=1)
    predicted = float(fit(values))
    predicted_draws = fit(draws[ok])
    return {
        "fitted_on": len(points) - 1,
        "predicted": estimate(predicted, predicted_draws),
        "measured": estimate(float(values[-1]), draws[ok, -1]),
        "measured_minus_predicted": estimate(
            float(values[-1]) - predicted, draws[ok, -1] - predicted_draws
        ),
    }
