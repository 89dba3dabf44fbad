"""Build the offline demo suite, and its caches, from the command line.

    python -m emergence_model.demo build                    # a few minutes on 2 cores, then reused
    python -m emergence_model.demo build --preset emergent --suite-dir suites/emergent
    python -m emergence_model.demo build --corpus wiki.txt --tokenizer tokenizer.json --suite-dir D
    python -m emergence_model.demo caches                   # + caches for train.py, the study

`emergence-model demo ...` is the same command. The configuration flags are DemoConfig's fields;
--preset starts them from a named configuration (config.PRESETS) instead of the defaults.
An existing suite keeps its recorded configuration: a flag that asks it for another one is refused.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emergence_model.cli import (
    FlagGroup,
    RunOptions,
    add_flag_groups,
    config_from_args,
    exit_on_user_error,
    given_fields,
)
from emergence_model.demo.build import build_suite, summary_table
from emergence_model.demo.caches import prepare_demo_study_caches
from emergence_model.demo.config import PRESETS, DemoConfig, preset_config, suite_path
from emergence_model.demo.summary import summary_lines

# Paths that are recorded in suite.json: absolute, so that the record means the same anywhere.
PATH_FIELDS = ("corpus", "tokenizer")


@dataclass
class DemoCachesJob:
    """Where `caches` writes the caches."""

    cache_root: Path | None = None
    """Directory of the caches (default: SUITE_DIR/caches)."""


@dataclass
class DemoPreset:
    """Which configuration the suite flags change."""

    preset: str | None = field(default=None, metadata={"choices": list(PRESETS)})
    """A named configuration (emergent: a ladder on which copying in context emerges,
    docs/tasks.md) that the other suite flags change; default: DemoConfig's defaults."""


SUITE_FLAGS = (
    FlagGroup(DemoPreset, "preset (DemoPreset)"),
    FlagGroup(DemoConfig, "suite (DemoConfig)", only_given=True),
    FlagGroup(RunOptions, "run (RunOptions)"),
)
SUBCOMMANDS = {
    "build": ("train the suite (resumes; a finished one is kept)", SUITE_FLAGS),
    "caches": (
        "build the suite and the target's second training, then cache the suite on every demo "
        "set, demo-steps on demo-wiki/induction and demo-ceiling on every set",
        (*SUITE_FLAGS, FlagGroup(DemoCachesJob, "caches (DemoCachesJob)")),
    ),
}
FLAGS = tuple(dict.fromkeys(g for _, groups in SUBCOMMANDS.values() for g in groups))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emergence-model demo",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, groups) in SUBCOMMANDS.items():
        add_flag_groups(commands.add_parser(name, help=help_text), groups)
    return parser


def demo_config(args: argparse.Namespace) -> DemoConfig | None:
    """The configuration the flags ask for; None when none is given (an existing suite's own)."""
    given = given_fields(DemoConfig, args)
    preset = config_from_args(DemoPreset, args).preset
    if not given and preset is None:
        return None
    for name in PATH_FIELDS:
        if given.get(name) is not None:
            given[name] = str(Path(given[name]).resolve())
    return DemoConfig(**given) if preset is None else preset_config(preset, **given)


def run(args: argparse.Namespace) -> None:
    run_options = config_from_args(RunOptions, args)
    run_options.apply()
    suite_dir = suite_path(run_options.suite_dir)
    info = build_suite(suite_dir, demo_config(args), progress=run_options.progress)
    if args.command == "build":
        print(summary_table(info))
        return
    job = config_from_args(DemoCachesJob, args)
    caches = prepare_demo_study_caches(suite_dir, job.cache_root, progress=run_options.progress)
    for ladder in ("size", "steps", "ceiling"):
        for dataset, path in getattr(caches, ladder).items():
            print(f"{ladder:<8} {dataset:<17} {path}")
    print("\n".join(summary_lines(caches.size, caches.steps, caches.ceiling)))


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    exit_on_user_error(lambda: run(args))
    return 0
