"""The study's measures per prefix set, from the scored rows: emergence, the scaling view,
speculative decoding at measured costs, cascades at their net compute, in-context copying, the
noise ceiling and each set's difference to the reference set, every mean with its 95% interval
from resampling the set's clusters (`stats.ClusterBootstrap`: a document's prefixes together)."""

from __future__ import annotations

import numpy as np

from emergence_model.cache import FeatureCache
from emergence_model.evaluate import summarize
from emergence_model.speculative import best_draft_length, expected_speedup
from emergence_model.stats import ClusterBootstrap, difference
from emergence_model.strategies import Strategy, baseline_names, model_basename
from emergence_model.study import measures
from emergence_model.study.config import CASCADE_LEVELS, StudyConfig
from emergence_model.study.controls import matched_copy_split
from emergence_model.study.costs import COST_KINDS, headline_cost, parameter_cost

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


def summarize_set(
    result: dict,
    rows: dict,
    reference: dict,
    config: StudyConfig,
    costs: dict[str, dict],
    catch_up: float,
) -> dict:
    """Everything reported for one set, each mean with its 95% interval (`result["sampler"]`:
    the set's clusters). `costs`: each draft's costs by kind (`draft_costs`); `catch_up`: what
    one more token in a target pass costs, over a target step (`cascade_summary`)."""
    cache, per_row, named = result["cache"], result["per_row"], result["strategies"]
    stat = result["sampler"].mean
    target = per_row["target"]
    small = range(cache.num_models - 1)
    summary = {
        "cache": str(cache.path),
        "name": cache.path.name,
        "num_prefixes": cache.num_prefixes,
        "cross_fitted": result["cross_fitted"],
        "clusters": result["clusters"],
        "leaderboard": summarize(per_row, named, num_bootstrap=config.bootstrap, seed=config.seed),
        "agreement": {n: stat(m["top1"]) for n, m in per_row["strategies"].items()},
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
            speculative_summary(per_row, named, costs, result["sampler"], config)
            if cache.scale_axis == "parameters"
            else None
        ),
        "cascade": cascade_summary(result, reference, costs, catch_up, config),
    }
    return summary


def draft_names(named: dict[str, Strategy]) -> list[str]:
    """Drafts for speculative decoding: each small model alone, the mean, the networks."""
    return [
        n
        for n, strategy in named.items()
        if (n.startswith(("model:", "network")) or n == "mean-prob") and strategy.gives_distribution
    ]


def draft_costs(
    named: dict[str, Strategy], cache: FeatureCache, measured: dict | None, given: dict
) -> dict[str, dict[str, float]]:
    """Per draft, its step's cost over a target step by kind (`costs.COST_KINDS`): the parameter
    ratio always, measured at batch 1 and 16 where the models were timed, given by --cost-ratio
    where named."""
    out = {}
    for name in draft_names(named):
        costs = {"parameters": parameter_cost(named[name], cache)}
        if measured is not None:
            for batch, c in measured["drafts"][name]["cost"].items():
                costs[f"measured, batch {batch}"] = c
        if name in given:
            costs["given"] = given[name]
        out[name] = {k: costs[k] for k in COST_KINDS if k in costs}
    return out


def speculative_summary(
    per_row: dict, named: dict[str, Strategy], costs: dict, sampler: ClusterBootstrap, config
) -> dict:
    """Per draft: greedy and sampled acceptance with intervals, and at each of its costs the
    best draft length and the expected speed-up there (the interval is the acceptance's, through
    the formula); "cost", "draft_length" and "speedup" at the headline cost (given, else measured
    at batch 1, else parameters). A draft that costs a target step or more gets draft length 0
    and speed-up 1: do not speculate."""
    out = {}
    for name in draft_names(named):
        kind, cost = headline_cost(costs[name])
        scored = per_row["strategies"][name]
        entry: dict = {"cost": cost, "cost_kind": kind, "costs": costs[name]}
        for mode, metric in (("greedy", "top1"), ("sampled", "accept")):
            a = sampler.mean(scored[metric])
            capped = [min(x, 1 - 1e-12) for x in (a["value"], *a["ci"])]
            by_cost = {}
            for cost_kind, c in costs[name].items():
                g, speedup = best_draft_length(capped[0], c, config.max_draft)
                ci = [expected_speedup(x, g, c) if g else 1.0 for x in capped[1:]]
                by_cost[cost_kind] = {"draft_length": g, "speedup": {"value": speedup, "ci": ci}}
            entry[mode] = {"acceptance": a, **by_cost[kind], "by_cost": by_cost}
        out[name] = entry
    return out


def cascade_summary(
    result: dict, reference: dict, costs: dict, catch_up: float, config: StudyConfig
) -> dict:
    """The cascade with the network (and mean-prob) as predictor: its curve against net compute,
    and at each level the threshold chosen on other folds of the reference set, with the share of
    target calls saved, the agreement, and the net compute per token: the predictor's step on
    every prefix (its draft cost) plus a target step where it defers, plus what a token it
    answered costs when the target catches up on it in its next pass (`catch_up`: measured, else
    a whole step: the target must still read every token into its KV cache)."""
    out = {}
    sampler = result["sampler"]
    for name in ("network", "mean-prob"):
        scored = result["per_row"]["strategies"][name]
        ref_scored = reference["per_row"]["strategies"][name]
        kind, cost = headline_cost(costs[name]) if name in costs else ("parameters", 1.0)
        curve = _thin(measures.cascade_curve(scored["confidence"], scored["top1"]))
        curve["net_compute"] = cost + (1.0 - curve["saved"]) + curve["saved"] * catch_up
        entry: dict = {
            "curve": {k: v.tolist() for k, v in curve.items()},
            "cost": cost,
            "cost_kind": kind,
            "catch_up": catch_up,
            "levels": {},
        }
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
            saved = sampler.mean(outcome["saved"])
            agreement = sampler.mean(outcome["agree"])
            net = cost + 1.0 - outcome["saved"] * (1.0 - catch_up)
            a = agreement["value"]
            entry["levels"][str(level)] = {
                "thresholds": [float(t) for t in chosen],
                "saved": saved,
                "agreement": agreement,
                "net_compute": sampler.mean(net),
                "net_saving": sampler.mean(1.0 - net),
                # if each token of a continuation agreed independently with this probability
                "continuation_agreement_if_independent": a**config.generate_tokens,
            }
        out[name] = entry
    return out


def _thin(curve: dict, points: int = 200) -> dict:
    """At most `points` points of a curve, for the JSON and the figure."""
    n = len(curve["threshold"])
    keep = np.unique(np.linspace(0, n - 1, min(points, n)).round().astype(int))
    return {k: np.asarray(v)[keep] for k, v in curve.items()}


def copy_rates(cache: FeatureCache, expected: np.ndarray, result: dict) -> dict:
    """How often each model's top token (and each strategy's guess) is the in-context copy;
    `expected` (n,) the copy token of each prefix (-1: none). Raw rates: what copying in context
    adds over naming the copy from the repeated words alone is the control's (`answers`)."""
    per_row, sampler = result["per_row"], result["sampler"]
    known = expected >= 0
    rates = {}
    for m, name in enumerate(cache.model_names):
        hit = cache.argmax[per_row["rows"], m] == expected
        rates[model_basename(name)] = sampler.mean(hit.astype(np.float64), mask=known)
    strategies = {
        name: sampler.mean((scored["guess"] == expected).astype(np.float64), mask=known)
        for name, scored in per_row["strategies"].items()
    }
    return {
        "prefixes": int(known.sum()),
        "scales": list(cache.scales),
        "axis": cache.scale_axis,
        "models": rates,
        "strategies": strategies,
    }


def copy_split(expected: np.ndarray, result: dict, rows: dict) -> dict:
    """Is the target harder to predict where it copies? The prompts with a known copy, split by
    whether the target's top token is the copy: each group's KL and top-1 miss (of the best
    predictor) and their difference. "new" are the target's copies that the largest small model
    does not make; they are hard by selection, so their matched control is "hard_other" (the
    target does not copy, and differs from the largest small model too): `matched`."""
    per_row, sampler = result["per_row"], result["sampler"]
    known = expected >= 0
    copies = known & (per_row["target"]["token"] == expected)
    groups = {"copies": copies, "new": copies & ~per_row["easy"], "other": known & ~copies}
    out: dict = {name: {"prefixes": int(mask.sum())} for name, mask in groups.items()}
    for name, mask in groups.items():
        for metric in ("kl", "miss"):
            out[name][metric] = sampler.mean(rows[metric], mask=mask)
    for name in ("copies", "new"):
        out[name]["minus_other"] = {
            metric: sampler.group_difference(rows[metric], groups[name], groups["other"])
            for metric in ("kl", "miss")
        }
    out["matched"] = matched_copy_split(copies, known, per_row["easy"], rows, sampler)
    return out


def ceiling_agreement(cache: FeatureCache, ceiling: FeatureCache, result: dict) -> dict:
    """The target's agreement with itself trained again from another seed: the first model of
    `ceiling` (the retrained target) against its target, on the prefixes scored."""
    check_ceiling(cache, ceiling)
    rows = result["per_row"]["rows"]
    agree = (ceiling.argmax[rows, 0] == cache.target_argmax[rows]).astype(np.float64)
    return {"model": ceiling.model_names[0], **result["sampler"].mean(agree)}


def check_ceiling(cache: FeatureCache, ceiling: FeatureCache) -> None:
    """Refuse a ceiling cache that is not [the retrained target, the target] on `cache`'s
    prefixes."""
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


def compare_to_reference(summaries: list[dict], rows: list[dict], sets: list[dict]) -> None:
    """Each set's difference to the reference set (first), the two sets resampled independently
    (each by its own clusters and seed)."""

    def diff(a: np.ndarray, b: np.ndarray, sampler, ref_sampler) -> dict:
        return difference(sampler.mean_draws(a), ref_sampler.mean_draws(b))

    ref_rows, ref = rows[0], sets[0]
    for summary, set_rows, result in zip(summaries[1:], rows[1:], sets[1:], strict=True):
        scored, ref_scored = result["per_row"]["strategies"], ref["per_row"]["strategies"]
        pair = (result["sampler"], ref["sampler"])
        summary["vs_reference"] = {
            "reference": summaries[0]["name"],
            "emergence": {k: diff(set_rows[k], ref_rows[k], *pair) for k in EMERGENCE},
            "top1": {
                name: diff(scored[name]["top1"], ref_scored[name]["top1"], *pair) for name in scored
            },
            "sampled_acceptance": {
                name: diff(scored[name]["accept"], ref_scored[name]["accept"], *pair)
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
            "floor_kl": float(rows["floor_kl"][i]) if "floor_kl" in rows else None,
        }
        for i in order
    ]
