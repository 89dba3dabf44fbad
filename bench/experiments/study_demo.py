"""The emergence study on the offline demo, for the docs: its report and figures, stamped.

    python -m bench.experiments.study_demo                      # the demo's default study
    python -m bench.experiments.study_demo -- --bootstrap 200   # flags passed on to the study

Runs `python -m emergence_model.study` (the demo's two ladders, everything missing built, the
flags after -- passed on) with its work under --out, kept for the next run, and its report
stamped with this command; then copies report.md, report.json (the stamp and every claim) and the
figures to RESULTS_DIR/study_demo/, which docs/study.md links. study.json and per_prefix.jsonl
stay under --out.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import AFTER_DASHES, start_run
from emergence_model.cli import exit_on_user_error
from emergence_model.commands.study import main as study
from emergence_model.study.formatting import FIGURES_DIR

COPIED = ("report.md", "report.json")


@dataclass
class StudyDemoConfig:
    """Where the study works, and what it is told."""

    out: Path = Path("reports/study-demo")
    """The study's --out: its work (networks, caches of the rungs) and full output."""
    study_flags: list[str] = field(
        default_factory=list,
        metadata={"cli": False, AFTER_DASHES: "python -m emergence_model.study flags"},
    )


def main(argv: Sequence[str] | None = None) -> None:
    (config,), run = start_run(__file__, __doc__, argv, StudyDemoConfig, reads_suite=True)
    flags = [*config.study_flags, "--out", str(config.out)]
    if run.options.suite_dir is not None:
        flags += ["--suite-dir", str(run.options.suite_dir)]
    if run.options.threads is not None:
        flags += ["--threads", str(run.options.threads)]
    if not run.options.progress:
        flags.append("--no-progress")
    study(flags, command=run.command)
    target = run.results_dir / "study_demo"
    if target.exists():
        shutil.rmtree(target)  # figures of an earlier run that this one no longer draws
    (target / FIGURES_DIR).mkdir(parents=True)
    for name in COPIED:
        shutil.copy2(config.out / name, target / name)
    for figure in sorted((config.out / FIGURES_DIR).glob("*.png")):
        shutil.copy2(figure, target / FIGURES_DIR / figure.name)
    print(f"results: {target}")


if __name__ == "__main__":
    exit_on_user_error(main)
