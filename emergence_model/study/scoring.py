"""Scoring every strategy on every prefix set of one ladder (a checkpoint and its caches).

The first cache is the reference set: where choices are made (the best predictor, a cascade's
threshold), always on other folds than the prefixes they are then scored on. When it is the
checkpoint's training cache, each of its prefixes is scored by the network head that never saw
it. Every other set is scored whole, with the choices made on the reference set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emergence_model.cache import FeatureCache, open_cache, select_models
from emergence_model.checkpoint import (
    build_predictor,
    check_compatible,
    checkpoint_selection,
    load_checkpoint,
)
from emergence_model.evaluate import make_baselines, score_parts
from emergence_model.folds import NOT_TRAINED, SEEN_BY_ALL, fold_splits, training_folds
from emergence_model.model import PerTokenPredictor, PredictorConfig
from emergence_model.selection import Selection, guided
from emergence_model.strategies import (
    ModelSubset,
    NetworkStrategy,
    OneModel,
    Strategy,
    model_basename,
)
from emergence_model.study.config import StudyConfig
from emergence_model.study.measures import fold_ids
from emergence_model.training import TrainConfig, fit_cross_fitted
from emergence_model.vocab import TokenizerId


@dataclass
class Ladder:
    """A checkpoint and the caches of its suite it is studied on (the first: the reference)."""

    checkpoint: dict
    checkpoint_path: Path
    predictor: PerTokenPredictor
    caches: list[FeatureCache]
    selection: Selection | None = None
    """The guides the checkpoint's networks guess with (None: each its own guess)."""

    @property
    def reference(self) -> FeatureCache:
        return self.caches[0]

    @property
    def small_names(self) -> list[str]:
        return list(self.checkpoint["model_names"])


def open_ladder(checkpoint_path: str | Path, cache_paths: Sequence[str | Path]) -> Ladder:
    """The checkpoint and caches, checked to be of one suite before anything is computed."""
    if not cache_paths:
        raise ValueError("no prefix sets given: pass --cache at least once")
    checkpoint = load_checkpoint(checkpoint_path)
    caches = [open_cache(path) for path in cache_paths]
    for cache in caches:
        if not cache.num_prefixes:
            raise ValueError(f"{cache.path} holds no prefixes; cache some first")
        check_compatible(
            checkpoint,
            cache.model_names[:-1],
            TokenizerId.of_cache(cache.meta),
            where=str(cache.path),
            target_name=cache.target_name,
        )
    names = [str(c.path.resolve()) for c in caches]
    if len(set(names)) != len(names):
        raise ValueError("a cache is given twice; give each prefix set once")
    predictor = build_predictor(checkpoint)
    selection = checkpoint_selection(checkpoint, str(checkpoint_path))
    return Ladder(checkpoint, Path(checkpoint_path), predictor, caches, selection)


def network_folds(cache: FeatureCache, checkpoint: dict) -> np.ndarray:
    """Per prefix of `cache`: the fold whose network never saw it, NOT_TRAINED (the checkpoint
    never trained on it: the whole ensemble scores it) or SEEN_BY_ALL (left out)."""
    return prefix_folds(cache.prefixes, checkpoint)


def prefix_folds(prefixes: Sequence[str], checkpoint: dict) -> np.ndarray:
    """`network_folds` of a list of prefixes."""
    folds = training_folds(prefixes, checkpoint)
    return np.full(len(prefixes), NOT_TRAINED, dtype=np.int64) if folds is None else folds


def choice_folds(ladder: Ladder, config: StudyConfig) -> tuple[np.ndarray, bool]:
    """(rows,) the fold of each reference prefix for choices made on other folds, and whether
    these are the checkpoint's own cross-fitting folds (its training cache is the reference)."""
    cache = ladder.reference
    folds = network_folds(cache, ladder.checkpoint)
    if (folds >= 0).all() and len(np.unique(folds)) > 1:
        return folds, True
    if (folds == SEEN_BY_ALL).any():
        raise ValueError(
            f"{cache.path} holds prefixes every network of {ladder.checkpoint_path} trained on "
            "(train.py --folds 1): study a cross-fitted checkpoint (--folds 2 or more), or give "
            "another reference set first"
        )
    splits = fold_splits(cache.prefixes, config.folds, 0.0, 0.0, config.seed)
    return fold_ids(len(cache), [test for _, _, test in splits]), False


def strategies(
    ladder: Ladder, network: PerTokenPredictor, subsets: dict[int, PerTokenPredictor], code: int
) -> dict[str, Strategy]:
    """Every strategy the study scores: the baselines (tuned as the checkpoint recorded), the
    network (fold `code`'s, or NOT_TRAINED: the ensemble) guessing with the guide the checkpoint
    chose for it, each small model alone and the networks on the k smallest models."""
    names, target = ladder.small_names, ladder.checkpoint["target_name"]
    out: dict[str, Strategy] = dict(make_baselines(params=ladder.checkpoint.get("baselines")))
    choice = None
    if ladder.selection is not None:
        choice = ladder.selection.choice(None if code == NOT_TRAINED else int(code))
    out["network"] = guided(NetworkStrategy(network, names, target), choice)
    for m, name in enumerate(names):
        out[f"model:{model_basename(name)}"] = OneModel(m)
    order = np.argsort(ladder.checkpoint["scales"], kind="stable")
    for k, subset in sorted(subsets.items()):
        chosen = sorted(order[:k].tolist())
        inner = NetworkStrategy(subset, [names[i] for i in chosen], target)
        out[f"network:{k}-smallest"] = ModelSubset(inner, chosen)
    return out


def checkpoint_recipe(ladder: Ladder, folds: int) -> tuple[PredictorConfig, TrainConfig]:
    """The network's shape and training as the checkpoint recorded them (what the cache fills in
    left out), with `folds` cross-fitting folds: the recipe the study's other networks share."""
    fields = {f.name for f in dataclasses.fields(PredictorConfig)}
    data_fields = {"num_models", "vocab_size", "scales", "target_scale", "num_heads"}
    base = PredictorConfig(
        **{k: v for k, v in ladder.checkpoint["config"].items() if k in fields - data_fields}
    )
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    recorded = {k: v for k, v in ladder.checkpoint.get("train_config", {}).items()}
    train = TrainConfig(
        **{
            **{k: v for k, v in recorded.items() if k in train_fields},
            "folds": folds,
            "progress": False,
        }
    )
    return base, train


def train_subset_networks(ladder: Ladder, out: Path, config: StudyConfig) -> list[dict]:
    """Per k = 1..M, a network cross-fitted on the reference set's k smallest models (their
    cache copied under out/subsets, their runs under out/subsets/runs): {k: ensemble, heads}.

    Returns, per k, {"k", "ensemble" (a head per fold), "folds" (its `folds.Folds`: which head
    never saw each prefix)}."""
    cache = ladder.reference
    order = np.argsort(cache.scales[:-1], kind="stable")
    base, train = checkpoint_recipe(ladder, config.subset_folds)
    results = []
    for k in range(1, cache.num_models):
        chosen = sorted(order[:k].tolist())
        sub_dir = out / "subsets" / f"{k}-smallest"
        sub = select_models(cache, [*chosen, cache.num_models - 1], sub_dir / "cache")
        ensemble, folds, _ = fit_cross_fitted(sub, base, train, sub_dir / "runs")
        results.append({"k": k, "ensemble": ensemble, "folds": folds})
    return results


def score_sets(ladder: Ladder, config: StudyConfig, subsets: list[dict]) -> list[dict]:
    """`evaluate.score_parts` of every strategy on every set. A prefix any network trained on is
    scored by the fold's head that never saw it (for the main network and each subset network
    alike); the rest by the ensembles; prefixes every network saw are left out."""
    ref_folds, own = choice_folds(ladder, config)
    results = []
    for i, cache in enumerate(ladder.caches):
        codes = np.stack(
            [network_folds(cache, ladder.checkpoint)]
            + [s["folds"].codes(cache.prefixes) for s in subsets],
            axis=1,
        )  # (rows, 1 + subsets)
        kept = np.flatnonzero((codes != SEEN_BY_ALL).all(axis=1))
        keys = [tuple(key) for key in codes[kept].tolist()]
        parts = []
        for key in sorted(set(keys)):
            rows = kept[[j for j, row_key in enumerate(keys) if row_key == key]]
            network = head_for(ladder.predictor, key[0])
            heads = {
                s["k"]: head_for(s["ensemble"], code)
                for s, code in zip(subsets, key[1:], strict=True)
            }
            parts.append((rows, strategies(ladder, network, heads, key[0])))
        per_row = score_parts(cache, parts, config.chunk_rows)
        per_row = _take(per_row, np.argsort(per_row["rows"], kind="stable"))  # cache order
        results.append(
            {
                "cache": cache,
                "per_row": per_row,
                "strategies": parts[0][1],
                "folds": ref_folds[per_row["rows"]] if i == 0 else None,
                "cross_fitted": own if i == 0 else bool((codes[:, 0] >= 0).any()),
                "left_out": int(len(cache) - kept.size),
            }
        )
    return results


def head_for(predictor: PerTokenPredictor, code: int) -> PerTokenPredictor:
    """The network that never saw a prefix of fold `code`; the whole ensemble for NOT_TRAINED."""
    return predictor if code == NOT_TRAINED else predictor.member(int(code))


def _take(per_row: dict, order: np.ndarray) -> dict:
    return {
        "rows": per_row["rows"][order],
        "easy": per_row["easy"][order],
        "target": {k: v[order] for k, v in per_row["target"].items()},
        "strategies": {
            name: {m: v[order] for m, v in metrics.items()}
            for name, metrics in per_row["strategies"].items()
        },
    }
