"""Is it copying? Each model's copy rate on an induction set against a control.

    python -m bench.experiments.induction_control                 # the demo's own suite
    python -m bench.experiments.induction_control --suite-dir suites/copying --steps

An induction prompt is a passage, then its first k words again; the copy is the word that
followed them the first time. A model can name that word without looking back, from the k
words alone. The control asks the same question without the passage to copy from: the same k
words after another prompt's passage (a seeded shuffle). Copying in context is the copy rate
minus the control's, per model, with a paired 95% bootstrap interval. The copy rates are read
from the suite's demo-induction cache (`python -m emergence_model.demo caches`); the controls are
scored here with each model. Only prompts whose continuation starts with the same token after
the control are kept. `--steps` adds the target's checkpoints (the demo-steps cache). The table
goes to docs/results/induction_control.md and .json.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import start_run
from emergence_model.cache import open_cache
from emergence_model.cli import exit_on_user_error
from emergence_model.demo.config import CACHES_DIR, suite_path
from emergence_model.extract import next_token_logprobs
from emergence_model.lm import load_model_spec
from emergence_model.prefixes import source_field
from emergence_model.prompts import expected_token_ids
from emergence_model.report import format_number, format_stat
from emergence_model.results import Section
from emergence_model.stats import mean_with_ci
from emergence_model.study.answers import control_prompts
from emergence_model.study.ladder import load_cache_tokenizer


@dataclass
class InductionControlConfig:
    """Which caches, and the control's shuffle."""

    steps: bool = False
    """Also the target's checkpoints (the demo-steps cache)."""
    seed: int = 0
    """Seed of the control's shuffle."""
    batch_size: int = 32
    """Control prompts per forward pass."""


def main(argv: Sequence[str] | None = None) -> None:
    (config,), run = start_run(__file__, __doc__, argv, InductionControlConfig, reads_suite=True)
    caches = suite_path(run.options.suite_dir) / CACHES_DIR
    paths = [caches / "demo-induction"]
    if config.steps:
        paths.append(caches / "steps" / "demo-induction")
    rows, numbers = [], []
    for path in paths:
        cache = open_cache(path)
        names = cache.meta["model_names"]
        expected = source_field(cache.meta["source"], "expected")
        controls = control_prompts(cache.prefixes, expected, config.seed)
        tokenizer = load_cache_tokenizer([cache])
        copy = np.array(expected_token_ids(tokenizer, cache.prefixes, expected))
        # a prompt that is not an induction prompt has no control: never comparable
        control_copy = np.array(
            expected_token_ids(tokenizer, [c or "" for c in controls], expected)
        )
        control_copy[[c is None for c in controls]] = -2
        keep = np.flatnonzero((copy >= 0) & (copy == control_copy))
        kept_controls = [controls[i] for i in keep]
        models = range(len(names)) if path == paths[0] else range(len(names) - 1)
        for m in models:
            hit = cache.argmax[keep, m] == copy[keep]
            model = load_model_spec(names[m])
            scores = next_token_logprobs(
                model, tokenizer, kept_controls, batch_size=config.batch_size
            )
            control_hit = scores.argmax(axis=1) == copy[keep]
            diff = mean_with_ci(hit.astype(float) - control_hit)
            rows.append(
                [
                    Path(names[m]).name,
                    format_number(hit.mean(), percent=True),
                    format_number(control_hit.mean(), percent=True),
                    format_stat(diff, percent=True, signed=True),
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
            numbers.append(
                {
                    "model": names[m],
                    "copy": float(hit.mean()),
                    "control": float(control_hit.mean()),
                    "difference": diff,
                    "prompts": len(keep),
                }
            )
    notes = (
        f"{len(keep)} of {len(cache.prefixes)} prompts (the continuation's first token is the same "
        "after the control); copy - control: 95% paired bootstrap interval."
    )
    head = ["model", "copy %", "control %", "copy - control, points"]
    run.write("Copying against its control", [Section("Copying", head, rows, notes, numbers)])


if __name__ == "__main__":
    exit_on_user_error(main)
