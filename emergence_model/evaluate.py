"""Evaluate strategies on a cache: agreement with the target's top token, with 95% intervals.

For every strategy: top-1 and top-5 agreement with the target's argmax, the mean log-likelihood
of the target's top token and KL(target || predicted) where the strategy has a distribution, each
with a 95% bootstrap interval over prefixes; the share of easy prefixes (the largest small model
already agrees with the target) and agreement on the hard rest; and a paired bootstrap interval of
(network - best baseline) top-1, so that "beats the best baseline" can be checked (the best
baseline is picked on the very rows scored, which favours the baseline); the same for each
participant's function (`RecordedGuesses`: its guesses only, so top-1 and no more); and what
each strategy's calls cost (meter.py: milliseconds per 100 prefixes, peak memory of one call).
A prefix the checkpoint was trained on (it records which fold held out each of its training
prefixes), in its own training cache or in any other, is scored only by a network that never
saw it: the fold's head of a cross-fitted checkpoint; with --folds 1, prefixes the one network
saw are left out. The summary's "rows" and "notes" say how many were scored which way.

The cache is read in chunks of rows, so a 20k x 7 x 50277 cache never sits in memory whole. The
command line is `emergence-model evaluate` (commands/evaluate.py), which
`python -m emergence_model.evaluate` runs too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from emergence_model.cache import FeatureCache
from emergence_model.checkpoint import build_predictor, checkpoint_selection
from emergence_model.cli import exit_on_user_error
from emergence_model.folds import NOT_TRAINED, SEEN_BY_ALL, training_folds
from emergence_model.logprobs import floor_logprobs
from emergence_model.meter import Cost, measure
from emergence_model.model import PerTokenPredictor, candidate_ids
from emergence_model.selection import Selection, guided
from emergence_model.speculative import sampled_acceptance
from emergence_model.stats import DEFAULT_BOOTSTRAP, bootstrap_ci, mean_with_ci
from emergence_model.strategies import STRATEGIES, NetworkStrategy, Strategy, baseline_names

METRICS = ("top1", "top5", "loglik", "kl", "accept")
# Distribution metrics compared paired with the best baseline on each: lower is better for KL.
DISTRIBUTION_METRICS = {"kl": min, "accept": max}


@dataclass
class EvalConfig:
    """How strategies are scored on a cache."""

    bootstrap: int = DEFAULT_BOOTSTRAP
    """Bootstrap resamples behind every 95% interval."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap resampling."""
    chunk_rows: int = 100
    """Prefixes read from the cache and scored at a time (the challenge's batch: each strategy's
    time and memory are measured per chunk)."""
    calibrate: int = 0
    """With a network: this many prompts of each cache it was not trained on, drawn at random,
    calibrate it (the target's outputs on them fit its guide pools: emergence_model.calibrate);
    every strategy is scored on the other prompts, the calibrated network as one more."""
    calibration_seed: int = 0
    """Seed of the draw of the calibration prompts."""

    def __post_init__(self) -> None:
        if self.bootstrap < 1:
            raise ValueError(f"--bootstrap must be at least 1 resample, got {self.bootstrap}")
        if self.chunk_rows < 1:
            raise ValueError(f"--chunk-rows must be at least 1, got {self.chunk_rows}")
        if self.calibrate < 0:
            raise ValueError(
                f"--calibrate takes a number of prompts, 0 or more, got {self.calibrate}"
            )


class RecordedGuesses(Strategy):
    """A participant's function, known by the guesses it returned (emergence_model.harness ran
    it): scored on top-1 alone, since a guess is no ranking and no distribution."""

    def __init__(self, spec: str, guesses: np.ndarray, cost: Cost) -> None:
        self.spec = spec
        self.guesses = guesses  # (N,) a token id per cache row, -1 where the function was not run
        self.cost = cost

    def score_tensor(self, x, scales, target_scale):
        raise TypeError(f"{self.spec} gave guesses, not scores: score it with score_rows")

    def params(self) -> dict:
        return {"function": self.spec}


def strategy_kind(strategy: Strategy) -> str:
    """ "network", "function" (a participant's) or "baseline": how a leaderboard sets it apart."""
    if isinstance(strategy, NetworkStrategy):
        return "network"
    return "function" if isinstance(strategy, RecordedGuesses) else "baseline"


@torch.no_grad()
def score_rows(
    cache: FeatureCache,
    strategies: dict[str, Strategy],
    indices: np.ndarray | None = None,
    chunk_rows: int = EvalConfig.chunk_rows,
) -> dict:
    """Per-prefix results over `indices` (default: every row), read in chunks of rows:

    "rows"        (n,) the cache rows
    "easy"        (n,) whether the largest small model's top token is the target's
    "target"      {"token": its top token, "logprob": its log-probability of it,
                   "small_logprob": (n, M) each small model's log-probability of it}
    "strategies"  {name: {metric: (n,)}}: "top1", "top5" (agreement), "guess" (the top
                  token); with a distribution also "loglik" (log q of the target's top
                  token), "kl" (KL(target || q)), "accept" (sum_x min(p, q)), "confidence"
                  (q's top probability); for a network "in_candidates" (whether the
                  target's top token was among the tokens its MLP scored); for recorded
                  guesses "guess" and "top1" only
    "costs"       {name: meter.Cost}: what its calls cost (recorded guesses: none, their run
                  has its own)
    """
    indices = np.arange(len(cache)) if indices is None else np.asarray(indices, dtype=np.int64)
    small_scales, target_scale = cache.scales[:-1], cache.scales[-1]
    largest = int(np.argmax(small_scales))
    n = len(indices)
    # Every column is allocated once and filled chunk by chunk: small arrays kept per chunk
    # between the chunks' large temporaries would fragment the heap, which then grows with the
    # number of rows although nothing large outlives its chunk.
    columns: dict = {name: {} for name in strategies}
    costs = {name: Cost() for name, s in strategies.items() if not isinstance(s, RecordedGuesses)}
    target_columns: dict = {}
    for start in range(0, max(n, 1), chunk_rows):  # once at least: no rows, empty columns
        chunk = indices[start : start + chunk_rows]
        at = slice(start, start + len(chunk))
        rows = torch.from_numpy(cache.rows(chunk))  # (n, M + 1, V)
        target = torch.from_numpy(cache.target_argmax[chunk])  # (n,)
        target_logp = torch.log_softmax(rows[:, -1], dim=1)  # (n, V)
        target_p = target_logp.exp()
        neg_entropy = (target_p * target_logp).sum(dim=1)  # KL = this - sum p log q
        small = floor_logprobs(rows[:, :-1])  # floored once for every strategy
        del rows
        _fill(target_columns, "token", at, n, target)
        _fill(target_columns, "logprob", at, n, target_logp.gather(1, target[:, None])[:, 0])
        small_top = small.gather(2, target[:, None, None].expand(-1, small.shape[1], 1))
        _fill(target_columns, "small_logprob", at, n, small_top[:, :, 0])  # (n, M)
        for name, strategy in strategies.items():
            out = columns[name]
            if isinstance(strategy, RecordedGuesses):
                guess = torch.from_numpy(strategy.guesses[chunk])
                _fill(out, "guess", at, n, guess)
                _fill(out, "top1", at, n, guess == target)
                continue
            scores, seconds, peak = measure(
                strategy.score_tensor, small, small_scales, target_scale
            )
            costs[name].add(seconds, len(chunk), peak)  # scores: (n, V)
            guess = scores.argmax(dim=1)
            _fill(out, "guess", at, n, guess)
            _fill(out, "top1", at, n, guess == target)
            top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices
            _fill(out, "top5", at, n, (top5 == target[:, None]).any(dim=1))
            if strategy.gives_distribution:
                _fill(out, "loglik", at, n, scores.gather(1, target[:, None]).squeeze(1))
                _fill(out, "kl", at, n, neg_entropy - (target_p * scores).sum(dim=1))
                accept = sampled_acceptance(target_logp, scores, normalized=True)
                _fill(out, "accept", at, n, accept)
                _fill(out, "confidence", at, n, scores.amax(dim=1).exp())
            if isinstance(strategy, NetworkStrategy) and strategy.ranks_candidates:
                k = strategy.predictor.config.candidates_for(cache.vocab_size)
                cand = candidate_ids(torch.logsumexp(small, dim=1), small.argmax(dim=2), k)
                hits = (cand == target[:, None]).any(dim=1)
                _fill(out, "in_candidates", at, n, hits)
            del scores
    return {
        "rows": indices,
        "easy": cache.argmax[indices, largest] == cache.target_argmax[indices],
        "target": target_columns,
        "strategies": {
            name: {m: v.astype(np.float64) for m, v in metrics.items()}
            for name, metrics in columns.items()
        },
        "costs": costs,
    }


def _fill(columns: dict, metric: str, at: slice, n: int, values: torch.Tensor) -> None:
    """Write one chunk's `values` at rows `at` of a column of `n` rows, made on first use."""
    values = values.numpy()
    if metric not in columns:
        columns[metric] = np.empty((n, *values.shape[1:]), dtype=values.dtype)
    columns[metric][at] = values


def concat_rows(parts: Sequence[dict]) -> dict:
    """Join `score_rows` results of disjoint row sets (e.g. the folds of a cross-fit)."""
    first = parts[0]
    return {
        "rows": np.concatenate([p["rows"] for p in parts]),
        "easy": np.concatenate([p["easy"] for p in parts]),
        "target": {k: np.concatenate([p["target"][k] for p in parts]) for k in first["target"]},
        "strategies": {
            name: {m: np.concatenate([p["strategies"][name][m] for p in parts]) for m in metrics}
            for name, metrics in first["strategies"].items()
        },
        "costs": {
            name: functools.reduce(Cost.merged, [p["costs"][name] for p in parts])
            for name in first.get("costs", {})
        },
    }


def summarize(
    per_row: dict,
    strategies: dict[str, Strategy],
    *,
    num_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict:
    """Means and 95% intervals per strategy, easy share, each network and participant's function
    against the best baseline, and each strategy's cost (where `per_row` has "costs")."""
    easy = per_row["easy"]
    n = int(easy.size)

    def stat(values: np.ndarray) -> dict:
        return mean_with_ci(values, num_bootstrap, seed)

    summary: dict = {
        "num_prefixes": n,
        "easy_share": stat(easy.astype(np.float64)),
        "strategies": {},
    }
    for name, strategy in strategies.items():
        rows = per_row["strategies"][name]
        entry = {m: stat(rows[m]) for m in METRICS if m in rows}
        entry["hard_top1"] = stat(rows["top1"][~easy])
        entry["distribution"] = strategy.gives_distribution
        entry["kind"] = strategy_kind(strategy)
        entry["params"] = strategy.params()
        if isinstance(strategy, RecordedGuesses):
            entry["cost"] = strategy.cost.summary()
        elif name in per_row.get("costs", {}):
            entry["cost"] = per_row["costs"][name].summary()
        if "in_candidates" in rows:
            entry["candidate_recall"] = float(rows["in_candidates"].mean())
        summary["strategies"][name] = entry
    baselines = [s for s in strategies if strategy_kind(strategies[s]) == "baseline"]
    contenders = [s for s in strategies if strategy_kind(strategies[s]) != "baseline"]
    if baselines:
        best = max(baselines, key=lambda s: summary["strategies"][s]["top1"]["value"])
        summary["best_baseline"] = best
        summary["comparisons"] = {}
        for net in contenders:
            diff = per_row["strategies"][net]["top1"] - per_row["strategies"][best]["top1"]
            lo, hi = bootstrap_ci(diff, num_bootstrap, seed)
            hard_diff = diff[~easy]
            hard_lo, hard_hi = bootstrap_ci(hard_diff, num_bootstrap, seed)
            summary["comparisons"][net] = {
                "baseline": best,
                "top1_diff": {"value": float(diff.mean()), "ci": [lo, hi]},
                "hard_top1_diff": {
                    "value": float(hard_diff.mean()) if hard_diff.size else math.nan,
                    "ci": [hard_lo, hard_hi],
                },
                "beats_best_baseline": bool(lo > 0),
            }
            for metric, pick in DISTRIBUTION_METRICS.items():
                have = [s for s in baselines if metric in per_row["strategies"][s]]
                if metric not in per_row["strategies"][net] or not have:
                    continue
                ref = pick(have, key=lambda s: summary["strategies"][s][metric]["value"])
                gap = per_row["strategies"][net][metric] - per_row["strategies"][ref][metric]
                summary["comparisons"][net][f"{metric}_diff"] = {
                    "baseline": ref,
                    "value": float(gap.mean()),
                    "ci": list(bootstrap_ci(gap, num_bootstrap, seed)),
                }
    return summary


def score_parts(
    cache: FeatureCache,
    parts: Sequence[tuple[np.ndarray | None, dict[str, Strategy]]],
    chunk_rows: int = EvalConfig.chunk_rows,
) -> dict:
    """`score_rows` of each part's strategies on its rows (None: all), joined. Several parts make
    a cross-fit: every part names the same strategies, and part K's network is the one that never
    saw part K's rows."""
    return concat_rows([score_rows(cache, s, rows, chunk_rows) for rows, s in parts])


def evaluate_cache(
    cache: FeatureCache,
    parts: Sequence[tuple[np.ndarray | None, dict[str, Strategy]]],
    *,
    rows_description: str = "all prefixes",
    chunk_rows: int = EvalConfig.chunk_rows,
    num_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict:
    """`score_parts` summarized together, with intervals."""
    per_row = score_parts(cache, parts, chunk_rows)
    return summarize_parts(
        cache, per_row, parts, rows_description, num_bootstrap=num_bootstrap, seed=seed
    )


def summarize_parts(
    cache: FeatureCache,
    per_row: dict,
    parts: Sequence[tuple[np.ndarray | None, dict[str, Strategy]]],
    rows_description: str = "all prefixes",
    *,
    num_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict:
    """`summarize` of the per-prefix results of `parts` (`score_parts`, or put together from
    several such), with each part's parameters and what was scored."""
    strategies = parts[0][1]
    summary = summarize(per_row, strategies, num_bootstrap=num_bootstrap, seed=seed)
    for name in strategies:
        params = [part[name].params() for _, part in parts]
        if any(p != params[0] for p in params):
            summary["strategies"][name]["params"] = params
    summary.update(
        cache=str(cache.path),
        rows=rows_description,
        target=cache.target_name,
        small_models=cache.model_names[:-1],
        num_bootstrap=num_bootstrap,
    )
    return summary


def make_baselines(names: Sequence[str] | None = None, params: dict | None = None) -> dict:
    """Registered baselines by name (default: all), with tuned `params` per name where given."""
    params = params or {}
    baselines: dict[str, Strategy] = {}
    for name in names or baseline_names():
        if name not in STRATEGIES or name == "network":
            raise ValueError(f"unknown baseline {name!r}; pick from {', '.join(baseline_names())}")
        baselines[name] = STRATEGIES[name](**params.get(name, {}))
    return baselines


def trained_on(cache: FeatureCache, checkpoint: dict) -> bool:
    """Whether `cache` holds the very rows the checkpoint was trained on."""
    return checkpoint.get("data", {}).get("fingerprint") == cache.fingerprint


def fold_parts(
    predictor: PerTokenPredictor,
    model_names: Sequence[str],
    target_name: str,
    baselines: dict[str, Strategy],
    folds: np.ndarray,
    selection: Selection | None = None,
) -> list[tuple[np.ndarray, dict[str, Strategy]]]:
    """Rows no network saw, scored by the whole ensemble, then each fold's rows by the one
    network that never saw them (`folds` from `training_folds`), each guessing with the guide
    `selection` chose for it; rows every network saw are left out. Parts without rows are
    dropped."""
    heads = len(predictor.heads)
    if folds.size and folds.max() >= heads:
        raise ValueError(
            f"the checkpoint records {int(folds.max()) + 1} folds but holds {heads} networks; "
            "retrain it"
        )
    members = [(NOT_TRAINED, predictor)] + [(k, predictor.member(k)) for k in range(heads)]
    parts = []
    for code, network in members:
        rows = np.flatnonzero(folds == code)
        if rows.size:
            strategy = NetworkStrategy(network, model_names, target_name)
            if selection is not None:
                strategy = guided(strategy, selection.choice(None if code < 0 else code))
            parts.append((rows, {**baselines, "network": strategy}))
    return parts


def describe_folds(folds: np.ndarray, trained: str) -> tuple[str, list[str]]:
    """The summary's "rows" and "notes" for rows scored with `fold_parts`; `trained` names the
    network's training data (e.g. "demo.ckpt's training prefixes")."""
    unseen = int((folds == NOT_TRAINED).sum())
    shared = int((folds >= 0).sum())
    excluded = int((folds == SEEN_BY_ALL).sum())
    if unseen == 0:
        rows = f"held-out prefixes of {trained}, each scored by the network that never saw it"
    else:
        rows = (
            f"{unseen} prefixes outside {trained}, scored by the whole ensemble, and {shared} "
            "shared with it, each scored by the fold's network that never saw it"
        )
    notes = []
    if shared and unseen:
        notes.append(
            f"{shared} of these prefixes are also in {trained}: each was scored by the one "
            "network that never saw it"
        )
    if excluded:
        notes.append(
            f"{excluded} prefixes of this cache were seen by every network in training "
            "(--folds 1) and are left out; --all-rows scores them anyway"
        )
    return rows, notes


def cross_fit_parts(
    cache: FeatureCache,
    checkpoint: dict,
    baselines: dict[str, Strategy],
    folds: np.ndarray | None = None,
) -> list[tuple[np.ndarray, dict[str, Strategy]]]:
    """For a cache that shares prefixes with the checkpoint's training data (its own training
    cache, a superset, another dataset with some of its prefixes): `fold_parts` with the
    checkpoint's networks (`folds` from `training_folds` unless given)."""
    if folds is None:
        folds = training_folds(cache.prefixes, checkpoint)
    if folds is None:
        folds = np.full(len(cache), NOT_TRAINED, dtype=np.int64)
    predictor = build_predictor(checkpoint)
    names, target = checkpoint["model_names"], checkpoint["target_name"]
    return fold_parts(predictor, names, target, baselines, folds, checkpoint_selection(checkpoint))


if __name__ == "__main__":
    # `python -m emergence_model.evaluate` runs this file as the module __main__, never as
    # emergence_model.evaluate, so importing the command that imports this module is no cycle.
    from emergence_model.commands.evaluate import main

    exit_on_user_error(main)
