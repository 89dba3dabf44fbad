"""Build the offline demo suite, and its caches, from the command line.

    python -m emergence_model.demo build                    # a few minutes on 2 cores, then reused
    python -m emergence_model.demo build --corpus wiki.txt --tokenizer tokenizer.json --suite-dir D
    python -m emergence_model.demo caches                   # + caches for train.py, the study

The configuration flags are DemoConfig's fields. An existing suite keeps its recorded
configuration: a flag that asks it for another one is refused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from emergence_model.cli import add_config_arguments, exit_on_user_error, given_fields
from emergence_model.demo.build import build_suite, summary_table
from emergence_model.demo.caches import prepare_demo_study_caches
from emergence_model.demo.config import DemoConfig, default_suite_dir
from emergence_model.demo.summary import summary_lines

# Paths that are recorded in suite.json: absolute, so that the record means the same anywhere.
PATH_FIELDS = ("corpus", "tokenizer")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m emergence_model.demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="train the suite (resumes; a finished one is kept)")
    caches = commands.add_parser(
        "caches",
        help="build the suite and the target's second training, then cache the suite on every "
        "demo set, demo-steps on demo-wiki/induction and demo-ceiling on every set",
    )
    for sub in (build, caches):
        sub.add_argument(
            "--suite-dir", type=Path, default=None, help=f"default: {default_suite_dir()}"
        )
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        add_config_arguments(sub, DemoConfig, "suite (DemoConfig)", only_given=True)
    caches.add_argument("--cache-root", type=Path, default=None, help="default: SUITE_DIR/caches")
    return parser


def config_from_args(args: argparse.Namespace) -> DemoConfig | None:
    """The configuration the flags ask for; None when none is given (an existing suite's own)."""
    given = given_fields(DemoConfig, args)
    if not given:
        return None
    for name in PATH_FIELDS:
        if given.get(name) is not None:
            given[name] = str(Path(given[name]).resolve())
    return DemoConfig(**given)


def run(args: argparse.Namespace) -> None:
    suite_dir = args.suite_dir or default_suite_dir()
    info = build_suite(suite_dir, config_from_args(args), progress=not args.quiet)
    if args.command == "build":
        print(summary_table(info))
        return
    caches = prepare_demo_study_caches(suite_dir, args.cache_root, progress=not args.quiet)
    for ladder in ("size", "steps", "ceiling"):
        for dataset, path in getattr(caches, ladder).items():
            print(f"{ladder:<8} {dataset:<17} {path}")
    print("\n".join(summary_lines(caches.size, caches.steps, caches.ceiling)))


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    exit_on_user_error(lambda: run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
