"""Variants of the predictor compared on training folds only: quick, paired, no scored prefix read.

    python -m bench.experiments.predictor_cv                          # every variant, seed0
    python -m bench.experiments.predictor_cv --ladders seed0 onelayer real
    python -m bench.experiments.predictor_cv --ladders real --variants default "no token embedding"
    python -m bench.experiments.predictor_cv --ladders real --max-train-prefixes 1500 0

The first fold of train.py's cross-fitting (`TrainConfig`'s folds, fractions and seed) holds out
its share of the prefixes for scoring; this reads only the rest (that fold's training and
validation prefixes) and cuts them, by prefix text, into --inner-folds inner folds
(`folds.fold_splits`), each with its own training, validation and held-out prefixes. Each
variant is trained once per inner fold by the package's own Lightning training
(`training.fit_predictor`: the optimiser, schedule, loss, checkpoint choice on the validation
prefixes and early stopping that train.py uses), its network the defaults' `PredictorConfig` and
`TrainConfig` with the variant's changes (`dataclasses.replace`). Every prefix is guessed once,
by the network whose inner fold held it out; the table gives, per ladder, the first variant's
top-1 and its lead over the mean probability, and each other variant's paired difference to the
first (95% bootstrap over the prefixes). Ladders are ROOT/<name>/caches/demo-wiki
(`bench.experiments.ladders`). The table goes to docs/results/predictor_cv.md and .json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import start_run
from bench.experiments.ladders import LADDER_NAMES, LadderRoot
from emergence_model.cache import FeatureCache, open_cache
from emergence_model.cli import exit_on_user_error
from emergence_model.evaluate import score_rows
from emergence_model.files import atomic_file
from emergence_model.folds import Split, fold_splits, limit_rows
from emergence_model.model import PREDICTOR_DESIGN, PerTokenPredictor, PredictorConfig
from emergence_model.report import format_number, format_stat
from emergence_model.results import Section
from emergence_model.stats import mean_with_ci
from emergence_model.strategies import STRATEGIES, NetworkStrategy
from emergence_model.training import TrainConfig, fit_predictor

# The inner folds' order of the prefixes: another than the outer folds' (TrainConfig's seed 0).
INNER_SEED = 1


@dataclass(frozen=True)
class Variant:
    """One change against the defaults: fields of `PredictorConfig` (`network`) and of
    `TrainConfig` (`training`), and how many networks, from seeds 0, 1, ..., are joined into one
    ensemble as train.py joins its folds' (`PerTokenPredictor.ensemble`)."""

    network: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    seeds: int = 1


VARIANTS = {
    "default": Variant(),
    "the earlier training: 8 epochs, the epoch kept on validation top-1": Variant(
        training={"max_epochs": 8, "steps": 10**9, "monitor": "top1"}
    ),
    "the epoch kept on validation top-1": Variant(training={"monitor": "top1"}),
    "1000 steps": Variant(training={"steps": 1000}),
    "10000 steps": Variant(training={"steps": 10000}),
    "64 candidates": Variant(network={"num_candidates": 64}),
    "256 candidates": Variant(network={"num_candidates": 256}),
    "8 candidates": Variant(network={"num_candidates": 8}),
    "MLP width 64": Variant(network={"hidden_size": 64}),
    "two hidden layers": Variant(network={"num_layers": 2}),
    "learning rate 3e-3": Variant(training={"lr": 3e-3}),
    "learning rate 3e-2": Variant(training={"lr": 3e-2}),
    "no token embedding": Variant(network={"token_embedding": 0}),
    "the token embedding however few the prefixes": Variant(network={"embedding_min_prefixes": 0}),
    "no token embedding, learning rate 3e-3": Variant(
        network={"token_embedding": 0}, training={"lr": 3e-3}
    ),
    "token embedding 4": Variant(network={"token_embedding": 4}),
    "features: each model's log-prob and gap": Variant(network={"features": "context,models"}),
    "base: largest": Variant(network={"base": "largest"}),
    "base: mean": Variant(network={"base": "mean"}),
    "base: extrapolate": Variant(network={"base": "extrapolate"}),
    "hard targets (cross-entropy)": Variant(training={"soft_weight": 0.0}),
    "soft targets at temperature 1": Variant(training={"target_temperature": 1.0}),
    "the issue's MLP on 256 candidates: a residual on the largest, each model's log-prob and "
    "gap, no token embedding, cross-entropy": Variant(
        network={
            "num_candidates": 256,
            "base": "largest",
            "features": "context,models",
            "token_embedding": 0,
        },
        training={"soft_weight": 0.0},
    ),
    "half the training prefixes": Variant(training={"train_fraction": 0.5}),
    "three seeds per fold": Variant(seeds=3),
}
VARIANT_NAMES = list(VARIANTS)


@dataclass
class PredictorCVConfig:
    """Which ladders and variants, and how many inner folds."""

    ladders: list[str] = field(
        default_factory=lambda: ["seed0"], metadata={"choices": LADDER_NAMES}
    )
    """The ladders whose demo-wiki cache is read, a column each."""
    variants: list[str] = field(
        default_factory=lambda: list(VARIANT_NAMES), metadata={"choices": VARIANT_NAMES}
    )
    """The variants, each compared with the first."""
    inner_folds: int = 4
    """Inner folds of the first outer fold's training and validation prefixes."""
    max_train_prefixes: list[int] = field(default_factory=lambda: [0])
    """Each inner fold's network learns from at most this many prefixes (its training and
    validation prefixes drawn at random, as train.py --max-train-prefixes draws them), a column
    per ladder and number; its held-out prefixes are all scored. 0: all."""

    work_dir: Path | None = None
    """Keep each variant's per-prefix agreement here, and reuse it where the variant, the cache,
    the defaults, the network's design and the folds are those of a finished one: an
    interrupted run, or one with more variants or columns, trains only what is missing."""

    def __post_init__(self) -> None:
        if self.inner_folds < 2:
            raise ValueError(f"--inner-folds must be at least 2, got {self.inner_folds}")


def inner_splits(cache: FeatureCache, inner_folds: int, max_prefixes: int = 0) -> list[Split]:
    """(train, val, held-out) cache rows of each inner fold: the first outer fold's training and
    validation prefixes cut by prefix text; the outer fold's scored prefixes are in none. With
    `max_prefixes`, each inner fold's training and validation rows hold that many prefixes."""
    c = TrainConfig()
    outer = c.folds_of(cache.prefixes).splits[0]
    seen = np.sort(np.concatenate(outer[:2]))
    texts = [cache.prefixes[i] for i in seen]
    inner = fold_splits(texts, inner_folds, c.val_fraction, c.test_fraction, INNER_SEED)
    splits = []
    for train, val, held_out in ([seen[part] for part in split] for split in inner):
        learnt = limit_rows(np.concatenate([train, val]), cache.prefixes, max_prefixes, c.seed)
        splits.append((np.intersect1d(train, learnt), np.intersect1d(val, learnt), held_out))
    return splits


def train_variant(
    cache: FeatureCache, variant: Variant, split: Split, progress: bool
) -> PerTokenPredictor:
    """The variant's network (an ensemble, with several seeds) trained on `split` by the
    package's training, exactly as train.py trains a fold's."""
    network = dataclasses.replace(PredictorConfig(), **variant.network)
    defaults = TrainConfig(progress=progress)
    members = []
    for seed in range(defaults.seed, defaults.seed + variant.seeds):
        training = dataclasses.replace(defaults, seed=seed, **variant.training)
        with tempfile.TemporaryDirectory(prefix="predictor-cv-") as run_dir:
            members.append(fit_predictor(cache, network, training, run_dir, split)[0])
    return members[0] if len(members) == 1 else PerTokenPredictor.ensemble(members)


def top1(cache: FeatureCache, strategy, rows: np.ndarray) -> np.ndarray:
    """Whether `strategy`'s guess is the target's top token on each of `rows` (n,)."""
    return score_rows(cache, {"s": strategy}, rows)["strategies"]["s"]["top1"]


def compare_variants(
    cache: FeatureCache, config: PredictorCVConfig, progress: bool, max_prefixes: int = 0
) -> dict:
    """Each variant's agreement (n,) on the held-out prefixes of every inner fold, in one order,
    and the mean probability's on the same prefixes; each network learns from at most
    `max_prefixes` prefixes (0: all)."""
    splits = inner_splits(cache, config.inner_folds, max_prefixes)
    held_out = np.concatenate([split[2] for split in splits])
    names = cache.meta["model_names"]
    agree = {"mean-prob": top1(cache, STRATEGIES["mean-prob"](), held_out)}
    for name in config.variants:
        started = time.perf_counter()
        saved = None
        if config.work_dir is not None:
            saved = config.work_dir / f"{variant_key(cache, VARIANTS[name], splits)}.npy"
            if saved.is_file():
                agree[name] = np.load(saved)
                print(f"{name}: top-1 {100 * agree[name].mean():.2f}% (from {saved})", flush=True)
                continue
        parts = []
        for split in splits:
            network = train_variant(cache, VARIANTS[name], split, progress)
            parts.append(top1(cache, NetworkStrategy(network, names[:-1], names[-1]), split[2]))
        agree[name] = np.concatenate(parts)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(saved) as f:
                np.save(f, agree[name])
        seconds = time.perf_counter() - started
        print(f"{name}: top-1 {100 * agree[name].mean():.2f}% ({seconds:.0f} s)", flush=True)
    return agree


def variant_key(cache: FeatureCache, variant: Variant, splits: list[Split]) -> str:
    """What a variant's agreement depends on: the configurations it trains with (the defaults
    and its changes), the cache, the network's design and the inner folds."""
    defaults = dataclasses.replace(TrainConfig(), **variant.training)
    learnt = min(defaults.learnt_rows(len(split[0])) for split in splits)
    network = dataclasses.replace(PredictorConfig(), **variant.network).for_training(learnt)
    training = dataclasses.asdict(defaults)
    del training["progress"]
    identity = {
        "network": network.computes(),
        "training": training,
        "seeds": variant.seeds,
        "cache": cache.fingerprint,
        "design": PREDICTOR_DESIGN,
        "splits": [[part.tolist() for part in split] for split in splits],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def comparison_cells(agree: dict[str, np.ndarray], first: str) -> tuple[list[str], dict]:
    """A ladder's column: the first variant's top-1 % and its lead over the mean probability,
    then each other variant's paired difference to the first, points."""
    lead = agree[first].mean() - agree["mean-prob"].mean()
    top = format_number(agree[first].mean(), True, digits=2)
    cells = [f"{top}, {format_number(lead, True, digits=2, signed=True)}"]
    numbers = {"prefixes": len(agree[first]), "mean_prob_top1": agree["mean-prob"].mean()}
    numbers[first] = {"top1": agree[first].mean(), "minus_mean_prob": lead}
    for name, ok in agree.items():
        if name in ("mean-prob", first):
            continue
        diff = mean_with_ci(ok - agree[first])  # paired: resampling the prefixes' differences
        cells.append(format_stat(diff, True, digits=2, signed=True))
        numbers[name] = {"top1": ok.mean(), f"minus_{first}": diff}
    return cells, numbers


def main(argv: Sequence[str] | None = None) -> None:
    (config, where), run = start_run(__file__, __doc__, argv, PredictorCVConfig, LadderRoot)
    if not run.options.progress:  # Lightning's lines about devices, once per network trained
        logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    columns, numbers = [], {}
    for ladder in config.ladders:
        cache = open_cache(where.cache(ladder))
        for n in config.max_train_prefixes:
            column = ladder if not n else f"{ladder}, {n} prefixes"
            print(f"[{column}]", flush=True)
            agree = compare_variants(cache, config, run.options.progress, n)
            cells, numbers[column] = comparison_cells(agree, config.variants[0])
            columns.append(cells)
    first = config.variants[0]
    labels = [f"{first}: top-1 %, and minus mean-prob", *config.variants[1:]]
    rows = [[label, *cells] for label, *cells in zip(labels, *columns, strict=True)]
    prefixes = ", ".join(f"{numbers[name]['prefixes']} on {name}" for name in numbers)
    notes = (
        f"Top-1 against {first}, points (95% paired bootstrap over the inner folds' held-out "
        f"prefixes: {prefixes}). A column with N prefixes: each network learnt from N of them."
    )
    head = ["variant", *numbers]
    section = Section("Variants on the training folds", head, rows, notes, numbers)
    run.write("Variants of the predictor on training folds only", [section])


if __name__ == "__main__":
    exit_on_user_error(main)
