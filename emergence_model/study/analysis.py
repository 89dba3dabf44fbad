"""The study's measures per prefix set, from the scored rows: emergence, the scaling view,
speculative decoding, cascades, in-context copying, the noise ceiling and each set's difference to
the reference set, every mean with its 95% interval."""

from __future__ import annotations

import numpy as np

from emergence_model.cache import FeatureCache
from emergence_model.evaluate import summarize
from emergence_model.speculative import best_draft_length, expected_speedup
from emergence_model.stats import difference_with_ci, mean_with_ci
from emergence_model.strategies import (
    ModelSubset,
    OneModel,
    Strategy,
    baseline_names,
    model_basename,
)
from emergence_model.study import measures
from emergence_model.study.config import CASCADE_LEVELS, StudyConfig

EMERGENCE = ("kl", "surprisal", "miss", "jump")
"""The per-prefix emergence scores (definitions in `measures` and the README)."""


def predictor_candidates(named: dict[str, Strategy]) -> list[str]:
    """The predictors built from all the small models that the best one is chosen among."""
    names = [*baseline_names(), "network"]
    return [n for n in names if n in named and named[n].gives_distribution]


def choose_best(reference: dict) -> dict:
    """The best predictor by KL: per fold of the reference set, chosen on the other folds; for
    every other set, chosen on the whole reference set."""
    candidates = predictor_candidates(reference["strategies"])
    kl = {name: reference["per_row"]["strategies"][name]["kl"] for name in candidates}
    per_fold = measures.choose_by_folds(kl, reference["folds"])
    overall = min(candidates, key=lambda name: float(kl[name].mean()))
    return {"per_fold": per_fold, "overall": overall, "candidates": candidates}


def emergence_rows(result: dict, best: dict, is_reference: bool) -> dict:
    """Per prefix: the best predictor's KL, surprisal of the target's top token and top-1 miss
    (the predictor chosen for the prefix's fold on the reference set); the scaling trend of the
    target's top token through the small models, and the jump."""
    scored = result["per_row"]["strategies"]

    def pick(metric: str) -> np.ndarray:
        if not is_reference:
            return scored[best["overall"]][metric]
        values = {n: scored[n][metric] for n in best["candidates"]}
        return measures.per_row_choice(values, result["folds"], best["per_fold"])

    cache: FeatureCache = result["cache"]
    target = result["per_row"]["target"]
    trend = measures.scaling_trend(target["small_logprob"], cache.scales[:-1], cache.scales[-1])
    return {
        "kl": pick("kl"),
        "surprisal": -pick("loglik"),
        "miss": 1.0 - pick("top1"),
        "best_guess": pick("guess").astype(np.int64),
        "trend": trend,
        "jump": measures.jump(target["logprob"], trend),
    }


def summarize_set(result: dict, rows: dict, reference: dict, config: StudyConfig) -> dict:
    """Everything reported for one set, each mean with its 95% interval."""
    cache, per_row, named = result["cache"], result["per_row"], result["strategies"]

    def stat(values: np.ndarray) -> dict:
        return mean_with_ci(values, config.bootstrap, config.seed)

    target = per_row["target"]
    small = range(cache.num_models - 1)
    summary = {
        "cache": str(cache.path),
        "name": cache.path.name,
        "num_prefixes": cache.num_prefixes,
        "cross_fitted": result["cross_fitted"],
        "leaderboard": summarize(per_row, named, num_bootstrap=config.bootstrap, seed=config.seed),
        "emergence": {k: stat(rows[k]) for k in EMERGENCE},
        "scaling": {
            "axis": cache.scale_axis,
            "small_scales": cache.scales[:-1],
            "target_scale": cache.scales[-1],
            "small_models": [model_basename(n) for n in cache.model_names[:-1]],
            "small_logprob": [stat(target["small_logprob"][:, m]) for m in small],
            "trend": stat(rows["trend"]),
            "target_logprob": stat(target["logprob"]),
            "predictor_logprob": stat(-rows["surprisal"]),
        },
        # Checkpoints of one model cost what the target costs: no draft is cheaper.
        "speculative": (
            speculative_summary(per_row, named, cache, config)
            if cache.scale_axis == "parameters"
            else None
        ),
        "cascade": cascade_summary(result, reference, config),
    }
    return summary


def draft_names(named: dict[str, Strategy]) -> list[str]:
    """Drafts for speculative decoding: each small model alone, the mean, the networks."""
    return [
        n
        for n, strategy in named.items()
        if (n.startswith(("model:", "network")) or n == "mean-prob") and strategy.gives_distribution
    ]


def draft_cost(strategy: Strategy, cache: FeatureCache, config: StudyConfig) -> float:
    """A draft step's cost over a target pass: --cost-ratio, else the parameters it runs over the
    target's (above 1 where the draft's models outweigh the target: then speculating never pays,
    which the report shows rather than hides)."""
    if config.cost_ratio is not None:
        return config.cost_ratio
    counts = cache.param_counts[:-1]
    if isinstance(strategy, OneModel):
        used = [counts[strategy.index]]
    elif isinstance(strategy, ModelSubset):
        used = [counts[i] for i in strategy.indices]
    else:
        used = counts
    return float(sum(used)) / cache.param_counts[-1]


def speculative_summary(
    per_row: dict, named: dict[str, Strategy], cache: FeatureCache, config: StudyConfig
) -> dict:
    """Per draft: greedy and sampled acceptance with intervals, its cost, the best draft length
    and the expected speed-up there (the interval is the acceptance's, through the formula).
    A draft that costs a target pass or more gets draft length 0 and speed-up 1: do not
    speculate."""
    out = {}
    for name in draft_names(named):
        cost = draft_cost(named[name], cache, config)
        scored = per_row["strategies"][name]
        entry: dict = {"cost": cost}
        for mode, metric in (("greedy", "top1"), ("sampled", "accept")):
            a = mean_with_ci(scored[metric], config.bootstrap, config.seed)
            capped = [min(x, 1 - 1e-12) for x in (a["value"], *a["ci"])]
            g, speedup = best_draft_length(capped[0], cost, config.max_draft)
            ci = [expected_speedup(x, g, cost) if g else 1.0 for x in capped[1:]]
            entry[mode] = {
                "acceptance": a,
                "draft_length": g,
                "speedup": {"value": speedup, "ci": ci},
            }
        out[name] = entry
    return out


def cascade_summary(result: dict, reference: dict, config: StudyConfig) -> dict:
    """The cascade with the network (and mean-prob) as predictor: its curve, and at each level
    the threshold chosen on other folds of the reference set, with the share of target calls
    saved and the agreement it gives on this set."""
    out = {}
    for name in ("network", "mean-prob"):
        scored = result["per_row"]["strategies"][name]
        ref_scored = reference["per_row"]["strategies"][name]
        curve = measures.cascade_curve(scored["confidence"], scored["top1"])
        entry: dict = {"curve": {k: v.tolist() for k, v in _thin(curve).items()}, "levels": {}}
        for level in CASCADE_LEVELS:
            if result is reference:
                chosen = measures.thresholds_by_folds(
                    ref_scored["confidence"], ref_scored["top1"], reference["folds"], level
                )
                per_row_threshold = np.asarray(chosen)[reference["folds"]]
            else:
                chosen = [
                    measures.threshold_for(ref_scored["confidence"], ref_scored["top1"], level)
                ]
                per_row_threshold = np.full(len(scored["confidence"]), chosen[0])
            outcome = measures.cascade_outcome(
                scored["confidence"], scored["top1"], per_row_threshold
            )
            entry["levels"][str(level)] = {
                "thresholds": [float(t) for t in chosen],
                "saved": mean_with_ci(outcome["saved"], config.bootstrap, config.seed),
                "agreement": mean_with_ci(outcome["agree"], config.bootstrap, config.seed),
            }
        out[name] = entry
    return out


def _thin(curve: dict, points: int = 200) -> dict:
    """At most `points` points of a curve, for the JSON and the figure."""
    n = len(curve["threshold"])
    keep = np.unique(np.linspace(0, n - 1, min(points, n)).round().astype(int))
    return {k: np.asarray(v)[keep] for k, v in curve.items()}


def copy_rates(cache: FeatureCache, expected: np.ndarray, per_row: dict, config) -> dict:
    """How often each model's top token (and each strategy's guess) is the in-context copy;
    `expected` (n,) the copy token of each prefix (-1: none)."""
    known = expected >= 0
    rates = {}
    for m, name in enumerate(cache.model_names):
        hit = cache.argmax[per_row["rows"], m] == expected
        rates[model_basename(name)] = mean_with_ci(hit[known], config.bootstrap, config.seed)
    strategies = {
        name: mean_with_ci((scored["guess"] == expected)[known], config.bootstrap, config.seed)
        for name, scored in per_row["strategies"].items()
    }
    return {
        "prefixes": int(known.sum()),
        "scales": list(cache.scales),
        "axis": cache.scale_axis,
        "models": rates,
        "strategies": strategies,
    }


def copy_split(expected: np.ndarray, per_row: dict, rows: dict, config) -> dict:
    """Is the target harder to predict where it copies? The prompts with a known copy, split by
    whether the target's top token is the copy: each group's KL and top-1 miss (of the best
    predictor) and their difference with an interval from resampling both groups. "new" are the
    target's copies that the largest small model does not make (what appears at the target)."""
    known = expected >= 0
    copies = known & (per_row["target"]["token"] == expected)
    groups = {"copies": copies, "new": copies & ~per_row["easy"], "other": known & ~copies}
    out: dict = {name: {"prefixes": int(mask.sum())} for name, mask in groups.items()}
    for name, mask in groups.items():
        for metric in ("kl", "miss"):
            out[name][metric] = mean_with_ci(rows[metric][mask], config.bootstrap, config.seed)
    for name in ("copies", "new"):
        out[name]["minus_other"] = {
            metric: difference_with_ci(
                rows[metric][groups[name]], rows[metric][groups["other"]], config.bootstrap,
                config.seed,
            )
            for metric in ("kl", "miss")
        }  # fmt: skip
    return out


def ceiling_agreement(cache: FeatureCache, ceiling: FeatureCache, config) -> dict:
    """The target's agreement with itself trained again from another seed: the first model of
    `ceiling` (the retrained target) against its target, on the same prefixes as `cache`."""
    if ceiling.prefixes != cache.prefixes:
        raise ValueError(
            f"ceiling cache {ceiling.path} holds other prefixes than {cache.path}; cache the "
            "retrained target on the same prefix set"
        )
    if ceiling.num_models != 2 or ceiling.target_name != cache.target_name:
        raise ValueError(
            f"ceiling cache {ceiling.path} must hold two models, the retrained target and "
            f"{cache.target_name} last"
        )
    agree = (ceiling.argmax[:, 0] == cache.target_argmax).astype(np.float64)
    return {"model": ceiling.model_names[0], **mean_with_ci(agree, config.bootstrap, config.seed)}


def compare_to_reference(summaries: list[dict], rows: list[dict], sets: list[dict], config) -> None:
    """Each set's difference to the reference set (first), with an interval from resampling both
    sets' prefixes independently."""

    def diff(a: np.ndarray, b: np.ndarray) -> dict:
        return difference_with_ci(a, b, config.bootstrap, config.seed)

    ref_rows, ref = rows[0], sets[0]
    for summary, set_rows, result in zip(summaries[1:], rows[1:], sets[1:], strict=True):
        scored, ref_scored = result["per_row"]["strategies"], ref["per_row"]["strategies"]
        summary["vs_reference"] = {
            "reference": summaries[0]["name"],
            "emergence": {k: diff(set_rows[k], ref_rows[k]) for k in EMERGENCE},
            "top1": {name: diff(scored[name]["top1"], ref_scored[name]["top1"]) for name in scored},
            "sampled_acceptance": {
                name: diff(scored[name]["accept"], ref_scored[name]["accept"])
                for name in draft_names(result["strategies"])
            },
        }


def most_emergent(result: dict, rows: dict, count: int, decode) -> list[dict]:
    """The `count` prefixes with the largest KL to the best predictor, with the tokens the target,
    the scaling trend (per-token log-linear extrapolation) and the best predictor chose."""
    cache: FeatureCache = result["cache"]
    per_row = result["per_row"]
    trend_guess = per_row["strategies"]["extrapolate"]["guess"].astype(np.int64)
    order = np.argsort(-rows["kl"], kind="stable")[:count]
    return [
        {
            "prefix": cache.prefixes[int(per_row["rows"][i])],
            "kl": float(rows["kl"][i]),
            "jump": float(rows["jump"][i]),
            "target": decode(int(per_row["target"]["token"][i])),
            "trend": decode(int(trend_guess[i])),
            "predictor": decode(int(rows["best_guess"][i])),
        }
        for i in order
    ]
