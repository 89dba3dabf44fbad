"""Which guide makes the predictor's guess: chosen on what can be seen, recorded with its evidence.

The trained network is one guide to the target's top token among several: the mode of its
predicted distribution's mixture before the guess is made its mode (`mixture`), and every
baseline (the mean probability, the largest small model, the extrapolations). Where the rows the
choice may read show another guide ahead of the network, the predictor guesses with that guide,
and its distribution (the network's) takes that guess as its mode; a checkpoint records the choice
with its evidence, and `load_strategy` guesses with the chosen guide.

What the choice reads:

- in-domain (`train.py`): for the network of fold k, the other folds' held-out prefixes, each
  guessed by the fold's network that never saw it and by every other guide (baselines tuned on
  that fold's training prefixes); fold k's own held-out prefixes, which it is scored on, are never
  read. The checkpoint's ensemble, which guesses on new prefixes, is chosen on all of them;
- under calibration (`calibrate.py`): the calibration prompts, by cross-validation within them
  (the pools fitted on the other parts, every guide scored on the part left out).

The rule is conservative, so that the choice does not overfit the rows it reads: keep the default
(the network; under calibration, the calibrated pools) unless another guide's paired lead over it
has the lower end of its 95% bootstrap interval above zero; of those, the one that leads most.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from emergence_model.report import format_stat
from emergence_model.stats import DEFAULT_BOOTSTRAP, mean_with_ci
from emergence_model.strategies import (
    NETWORK_GUIDE,
    STRATEGIES,
    MixtureGuide,
    NetworkStrategy,
    Strategy,
)

MIXTURE_GUIDE = MixtureGuide.name
# The baselines a choice weighs: every registered one that reads the small models.
GUIDE_BASELINES = ("mean-prob", "largest", "extrapolate", "contrastive")
# Under calibration (`calibrate.py`): the calibrated network's guess pool, the choice's default.
CALIBRATED_GUIDE = "calibrated"
GUIDES = (NETWORK_GUIDE, MIXTURE_GUIDE, *GUIDE_BASELINES, CALIBRATED_GUIDE)


@dataclass
class GuideChoice:
    """The guide chosen on some rows, and the evidence: each guide's top-1 on them and its paired
    lead over the default (95% bootstrap intervals)."""

    guide: str
    default: str
    rows: int
    evidence: dict[str, dict] = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    """The chosen guide's parameters (a tuned baseline's, e.g. the contrastive beta)."""
    read: str = "the selection rows"
    """Which rows the choice read, in words."""

    def __post_init__(self) -> None:
        for name in (self.guide, self.default):
            if name not in GUIDES:
                raise ValueError(f"no guide named {name!r}: the guides are {', '.join(GUIDES)}")
        if self.guide in GUIDE_BASELINES:
            STRATEGIES[self.guide](**self.params)  # parameters it does not take: TypeError now

    @property
    def reason(self) -> str:
        """Why: the chosen guide's lead, or the best other guide's, with its interval."""
        leads = {k: v["lead"] for k, v in self.evidence.items() if k != self.default}
        if self.guide != self.default:
            lead = format_stat(leads[self.guide], percent=True, signed=True)
            return (
                f"{self.guide} leads {self.default} by {lead} points of top-1 on {self.rows} of "
                f"{self.read}, the 95% paired interval above zero"
            )
        if not leads:
            return f"no other guide was weighed on {self.rows} of {self.read}"
        best = max(leads, key=lambda k: leads[k]["value"])
        lead = format_stat(leads[best], percent=True, signed=True)
        return (
            f"no guide leads {self.default} beyond noise on {self.rows} of {self.read} (the "
            f"closest, {best}: {lead} points of top-1)"
        )

    def describe(self, who: str = "the predictor") -> str:
        """One line for a report: "<who> guesses with <guide>: <reason>"."""
        return f"{who} guesses with {self.guide}: {self.reason}"

    def record(self) -> dict:
        """Plain values for a checkpoint or a results file."""
        return {**asdict(self), "reason": self.reason}

    @classmethod
    def from_record(cls, record: Mapping) -> GuideChoice:
        """A choice read back from `record` (the reason is made again)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in record.items() if k in names})


def choose_guide(
    agree: Mapping[str, np.ndarray],
    default: str,
    *,
    params: Mapping[str, dict] | None = None,
    read: str = "the selection rows",
    num_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> GuideChoice:
    """The guide to guess with, from each guide's agreement with the target (n,) on the same rows:
    `default` unless another leads it with the 95% paired interval above zero; of those, the one
    that leads most. `params`: each tuned guide's parameters, kept with the choice."""
    if default not in agree:
        raise ValueError(f"the default guide {default!r} is not among {sorted(agree)}")
    base = np.asarray(agree[default], dtype=np.float64)
    evidence = {}
    for name, ok in agree.items():
        ok = np.asarray(ok, dtype=np.float64)
        evidence[name] = {
            "top1": mean_with_ci(ok, num_bootstrap, seed),
            "lead": mean_with_ci(ok - base, num_bootstrap, seed),
        }
    ahead = [k for k, v in evidence.items() if k != default and v["lead"]["ci"][0] > 0]
    guide = max(ahead, key=lambda k: evidence[k]["lead"]["value"]) if ahead else default
    chosen_params = dict((params or {}).get(guide, {}))
    return GuideChoice(guide, default, int(base.size), evidence, chosen_params, read)


@dataclass
class Selection:
    """A cross-fitted checkpoint's choices: its ensemble's (what guesses on new prefixes) and each
    fold's network's (what guesses on that fold's held-out prefixes)."""

    ensemble: GuideChoice
    folds: list[GuideChoice]

    def choice(self, fold: int | None) -> GuideChoice:
        """Fold `fold`'s network's choice; None (or a code that is no fold): the ensemble's."""
        if fold is None or not 0 <= fold < len(self.folds):
            return self.ensemble
        return self.folds[fold]

    def describe(self) -> list[str]:
        """Report lines: the ensemble's choice, and the folds' where any differs from it."""
        lines = [self.ensemble.describe("the network (the checkpoint's ensemble)")]
        if any(c.guide != self.ensemble.guide for c in self.folds):
            for k, c in enumerate(self.folds):
                lines.append(c.describe(f"fold {k}'s network, on its held-out prefixes,"))
        return lines

    def record(self) -> dict:
        return {"ensemble": self.ensemble.record(), "folds": [c.record() for c in self.folds]}

    @classmethod
    def from_record(cls, record: Mapping) -> Selection:
        return cls(
            GuideChoice.from_record(record["ensemble"]),
            [GuideChoice.from_record(r) for r in record["folds"]],
        )


def cross_fitted_selection(
    agree: Mapping[str, np.ndarray],
    row_folds: np.ndarray,
    fold_params: Sequence[Mapping[str, dict]],
    params: Mapping[str, dict],
    default: str = NETWORK_GUIDE,
    **bootstrap,
) -> Selection:
    """Choices from cross-fitted agreement (each row guessed by the fold's network that never saw
    it; `row_folds` (n,): that fold): fold k's on every row but its own, with `fold_params[k]`
    (each guide's parameters as tuned for fold k); the ensemble's on all, with `params`."""
    row_folds = np.asarray(row_folds)
    per_fold = []
    for k, tuned in enumerate(fold_params):
        keep = row_folds != k
        rows = {name: np.asarray(ok)[keep] for name, ok in agree.items()}
        read = "the other folds' held-out training prefixes"
        per_fold.append(choose_guide(rows, default, params=tuned, read=read, **bootstrap))
    read = "the cross-fitted training prefixes"
    return Selection(choose_guide(agree, default, params=params, read=read, **bootstrap), per_fold)


def candidate_guides(network: NetworkStrategy, baselines: Mapping[str, Strategy]) -> dict:
    """The guides a choice weighs, by name: the network's own guess, its mixture's mode and the
    baselines of GUIDE_BASELINES among `baselines`."""
    return {
        NETWORK_GUIDE: network,
        MIXTURE_GUIDE: MixtureGuide(network.predictor, network.chunk_rows),
        **{name: baselines[name] for name in GUIDE_BASELINES if name in baselines},
    }


def guided(network: NetworkStrategy, choice: GuideChoice | None) -> NetworkStrategy:
    """`network` guessing with the guide of `choice` (with its parameters); None, or the network's
    own guess: `network` as it is."""
    if choice is None or choice.guide == NETWORK_GUIDE:
        return network
    if choice.guide == CALIBRATED_GUIDE:
        raise ValueError("the calibrated pools guess through calibrate.CalibratedStrategy")
    if choice.guide == MIXTURE_GUIDE:
        guide = MixtureGuide(network.predictor, network.chunk_rows)
    else:
        guide = STRATEGIES[choice.guide](**choice.params)
    return NetworkStrategy(
        network.predictor,
        network.model_names,
        network.target_name,
        network.chunk_rows,
        guide,
        network.tokenizer,
    )
