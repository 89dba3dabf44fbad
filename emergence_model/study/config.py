"""What the study measures and how: `StudyConfig`, whose fields are the study's flags."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from emergence_model.evaluate import EvalConfig
from emergence_model.stats import DEFAULT_BOOTSTRAP

CASCADE_LEVELS = (0.95, 0.99)
"""Agreement with the target that a cascade's threshold is chosen to keep."""


@dataclass
class StudyConfig:
    """What the study measures and how (python -m emergence_model.study's flags)."""

    cost_ratio: list[str] = field(default_factory=list, metadata={"metavar": "[NAME=]C"})
    """A draft's step's cost over a target step, in (0, 1], e.g. timed on the hardware the
    decoding runs on: NAME=C for the draft NAME (network, mean-prob, model:NAME, ...), a bare C for
    every draft not named. Reported beside the measured costs and the parameter ratio, and
    leading them."""
    measure_costs: bool = True
    """Time one decode step (KV cache, batch 1 and 16) of every model and each draft's
    combination, where the suite's models are local directories."""
    cost_threads: int = 1
    """CPU threads for the timed decode steps and the real decoding run."""
    rung_curve: bool = True
    """Emergence over scale: train the checkpoint's recipe on the rungs below each rung from the
    third small model up, to predict it (under --out; finished folds are reused)."""
    entropy_bins: int = 5
    """Quantile bins of the target's entropy that KL is reported in."""
    answer_metrics: bool = True
    """Score every model on the whole expected answer of task sets (exact match and
    log-probability per token), where the suite's models are local directories; else the
    answer's first token, from the cache."""
    folds: int = 5
    """Folds of the reference set on which choices are made, when it is not the checkpoint's
    training cache (whose own folds are used)."""
    subset_networks: bool = False
    """Also train networks on the k smallest models, k = 1..M, as cheaper drafts (a cache copy
    of those models is written under --out; reused by later runs)."""
    subset_folds: int = 2
    """Cross-fitting folds of each subset network."""
    generate_prompts: int = 0
    """Held-out prefixes continued by real speculative decoding with the suite's models (0:
    skip; the models must be on disk)."""
    generate_tokens: int = 32
    """Tokens generated after each of those prefixes."""
    max_draft: int = 16
    """Longest draft length the speed-up is optimised over."""
    top_emergent: int = 20
    """Most emergent prefixes listed per set."""
    bootstrap: int = DEFAULT_BOOTSTRAP
    """Bootstrap resamples behind every 95% interval."""
    seed: int = 0
    """Seed of the folds (when not the checkpoint's), the bootstrap and sampled generation."""
    chunk_rows: int = EvalConfig.chunk_rows
    """Prefixes read from a cache and scored at a time."""

    def __post_init__(self) -> None:
        self.given_costs([])  # refuse a malformed --cost-ratio before anything runs
        for name in ("folds", "subset_folds"):
            if getattr(self, name) < 2:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be at least 2 (choices are "
                    "made on other folds than the rows they score)"
                )
        if self.entropy_bins < 2:
            raise ValueError(f"--entropy-bins must be at least 2, got {self.entropy_bins}")
        for name in (
            "bootstrap", "chunk_rows", "max_draft", "top_emergent", "generate_tokens",
            "cost_threads",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.generate_prompts < 0:
            raise ValueError(f"--generate-prompts must be 0 or more, got {self.generate_prompts}")

    def given_costs(self, drafts: Sequence[str]) -> dict[str, float]:
        """--cost-ratio as {draft: cost} for the study's `drafts` (a bare C: every draft not
        named); ValueError for a malformed item or a name that is no draft (when `drafts`)."""
        named, every = {}, None
        for item in self.cost_ratio:
            name, _, value = item.rpartition("=")
            try:
                cost = float(value)
            except ValueError:
                raise ValueError(
                    f"--cost-ratio takes [NAME=]C, a draft's name and its step's cost over a "
                    f"target step, got {item!r}"
                ) from None
            if not 0 < cost <= 1:
                raise ValueError(
                    f"--cost-ratio must be in (0, 1] (a draft step's cost over a target step), "
                    f"got {value}"
                )
            if name:
                named[name] = cost
            else:
                every = cost
        unknown = [name for name in named if drafts and name not in drafts]
        if unknown:
            raise ValueError(
                f"--cost-ratio names {unknown[0]!r}, which is not a draft of this study; pick from "
                f"{', '.join(drafts)}"
            )
        return {d: named.get(d, every) for d in drafts if d in named or every is not None}
