"""What the study measures and how: `StudyConfig`, whose fields are the study's flags."""

from __future__ import annotations

from dataclasses import dataclass

from emergence_model.evaluate import EvalConfig
from emergence_model.stats import DEFAULT_BOOTSTRAP

CASCADE_LEVELS = (0.95, 0.99)
"""Agreement with the target that a cascade's threshold is chosen to keep."""


@dataclass
class StudyConfig:
    """What the study measures and how (python -m emergence_model.study's flags)."""

    cost_ratio: float | None = None
    """Cost of one draft step relative to one target forward pass, for every draft, e.g. from
    measured times (default: the parameters the draft runs over the target's)."""
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
        if self.cost_ratio is not None and not 0 < self.cost_ratio <= 1:
            raise ValueError(
                f"--cost-ratio must be in (0, 1] (a draft step's cost over a target pass), "
                f"got {self.cost_ratio}"
            )
        for name in ("folds", "subset_folds"):
            if getattr(self, name) < 2:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be at least 2 (choices are "
                    "made on other folds than the rows they score)"
                )
        for name in ("bootstrap", "chunk_rows", "max_draft", "top_emergent", "generate_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.generate_prompts < 0:
            raise ValueError(f"--generate-prompts must be 0 or more, got {self.generate_prompts}")
