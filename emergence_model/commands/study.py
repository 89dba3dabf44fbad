"""The emergence study: how emergent each prefix is, and what predicting the target buys.

    python -m emergence_model.study                  # the offline demo: reuses what train.py built
    python -m emergence_model.study --checkpoint checkpoints/wikipedia.ckpt \\
        --cache cache/wikipedia --cache cache/glue-rte --out reports/study

`emergence-model study ...` is the same command. The first --cache is the reference set, on whose
held-out folds every choice is made (the checkpoint's training cache: each prefix scored by the
network that never saw it). Writes report.md (figures embedded), study.json, per_prefix.jsonl and
figures/*.png under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emergence_model.cli import FlagGroup, RunOptions, command_parser, config_from_args
from emergence_model.demo.study import DEMO_SETTINGS, demo_ladders
from emergence_model.results import run_stamp
from emergence_model.study.config import StudyConfig
from emergence_model.study.ladder import study_ladder
from emergence_model.study.report import write_study_report


@dataclass
class StudyJob:
    """Which network and caches are studied (neither: the offline demo's), and where it reports."""

    checkpoint: Path | None = None
    """A trained network (train.py --out)."""
    cache: list[Path] = field(default_factory=list)
    """Prefix sets' caches of the checkpoint's suite (--cache a b, or the flag repeated); the
    first is the reference set."""
    ceiling_cache: list[str] = field(default_factory=list, metadata={"metavar": "SET=CACHE"})
    """For the set whose cache directory is named SET, a cache of [the target retrained with
    another seed, the target] on the same prefixes: the noise ceiling (several allowed)."""
    out: Path = Path("reports/study")
    """Report directory."""

    def __post_init__(self) -> None:
        if (self.checkpoint is None) != (not self.cache):
            raise ValueError(
                "give --checkpoint and at least one --cache (or neither, for the demo)"
            )
        self.ceilings()  # refuse a malformed --ceiling-cache before anything runs

    @property
    def demo(self) -> bool:
        """Whether this is the offline demo's study (no checkpoint and no cache given)."""
        return self.checkpoint is None

    def ceilings(self) -> dict[str, Path]:
        """--ceiling-cache as {set name: cache directory}."""
        ceilings = {}
        for item in self.ceiling_cache:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--ceiling-cache must look like SET=CACHE, got {item!r}")
            ceilings[name] = Path(path)
        return ceilings


FLAGS = (
    FlagGroup(StudyJob, "what is studied (StudyJob)"),
    FlagGroup(StudyConfig, "study (StudyConfig)", only_given=True),
    FlagGroup(RunOptions, "run (RunOptions)"),
)


def make_parser() -> argparse.ArgumentParser:
    return command_parser("emergence-model study", __doc__, FLAGS)


def main(argv: Sequence[str] | None = None, command: str | None = None) -> list[dict]:
    """Run the command line; returns each ladder's study. `command`: what the report's stamp
    names as the command that made it (default: this one, with `argv`)."""
    started = time.perf_counter()
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    args = make_parser().parse_args(argv)
    run_options = config_from_args(RunOptions, args)
    job = config_from_args(StudyJob, args)
    # The demo's study has settings of its own; a flag given overrides them, as any default.
    base = StudyConfig(**DEMO_SETTINGS) if job.demo else StudyConfig()
    config = config_from_args(StudyConfig, args, base=base)
    run_options.apply()
    if job.demo:
        ladders = demo_ladders(run_options.suite_dir, job.out, progress=run_options.progress)
    else:
        ladders = [
            {
                "checkpoint": job.checkpoint,
                "caches": job.cache,
                "ceilings": job.ceilings(),
                "title": job.checkpoint.stem,
            }
        ]
    results = []
    for ladder in ladders:
        print(f"studying {ladder['title']}: {', '.join(Path(c).name for c in ladder['caches'])}")
        results.append(
            study_ladder(
                ladder["checkpoint"],
                ladder["caches"],
                job.out / "work" / ladder["title"],
                config,
                ceilings=ladder["ceilings"],
                title=ladder["title"],
            )
        )
    if command is None:
        command = " ".join(["python -m emergence_model.study", shlex.join(argv)]).strip()
    stamp = run_stamp(command, time.perf_counter() - started, ignore=job.out)
    for path in write_study_report(job.out, results, stamp):
        print(f"wrote {path}")
    print(f"settings: {dataclasses.asdict(config)}")
    return [r["study"] for r in results]
