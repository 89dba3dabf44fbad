"""The emergence study: how emergent each prefix is, and what predicting the target buys.

    python -m emergence_model.study                  # the offline demo: reuses what train.py built
    python -m emergence_model.study --checkpoint checkpoints/wikipedia.ckpt \\
        --cache cache/wikipedia --cache cache/glue-rte --out reports/study

The first --cache is the reference set, on whose held-out folds every choice is made (the
checkpoint's training cache: each prefix scored by the network that never saw it). Writes
report.md (figures embedded), study.json, per_prefix.jsonl and figures/*.png under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from emergence_model.cli import add_config_arguments, config_from_args, exit_on_user_error
from emergence_model.study.config import StudyConfig
from emergence_model.study.ladder import study_ladder
from emergence_model.study.report import write_study_report

DEMO_OUT = Path("reports/study")
# The demo's models are on disk and small: its study also trains the cheaper drafts and decodes
# for real. Everything else is StudyConfig's defaults.
DEMO_SETTINGS = {"subset_networks": True, "generate_prompts": 24}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m emergence_model.study",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, help="a trained network (train.py --out)")
    parser.add_argument(
        "--cache",
        type=Path,
        action="append",
        default=[],
        help="a prefix set's cache of the checkpoint's suite (repeatable; the first is the "
        "reference set)",
    )
    parser.add_argument(
        "--ceiling-cache",
        action="append",
        default=[],
        metavar="SET=CACHE",
        help="for the set whose cache directory is named SET, a cache of [the target retrained "
        "with another seed, the target] on the same prefixes: the noise ceiling (repeatable)",
    )
    parser.add_argument("--out", type=Path, help=f"report directory (default: {DEMO_OUT})")
    parser.add_argument("--suite-dir", type=Path, help="demo only: where the demo suite is")
    add_config_arguments(parser, StudyConfig, "study (StudyConfig)", only_given=True)
    return parser.parse_args(argv)


def parse_ceilings(items: Sequence[str]) -> dict[str, Path]:
    ceilings = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--ceiling-cache must look like SET=CACHE, got {item!r}")
        ceilings[name] = Path(path)
    return ceilings


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    demo = args.checkpoint is None and not args.cache
    base = StudyConfig(**DEMO_SETTINGS) if demo else StudyConfig()
    config = config_from_args(StudyConfig, args, base=base)
    out = args.out or DEMO_OUT
    if demo:
        from emergence_model.study.demo import demo_ladders

        ladders = demo_ladders(args.suite_dir, out)
    else:
        if args.checkpoint is None or not args.cache:
            raise ValueError(
                "give --checkpoint and at least one --cache (or neither, for the demo)"
            )
        ladders = [
            {
                "checkpoint": args.checkpoint,
                "caches": args.cache,
                "ceilings": parse_ceilings(args.ceiling_cache),
                "title": args.checkpoint.stem,
            }
        ]
    results = []
    for ladder in ladders:
        print(f"studying {ladder['title']}: {', '.join(Path(c).name for c in ladder['caches'])}")
        results.append(
            study_ladder(
                ladder["checkpoint"],
                ladder["caches"],
                out / "work" / ladder["title"],
                config,
                ceilings=ladder["ceilings"],
                title=ladder["title"],
            )
        )
    for path in write_study_report(out, results):
        print(f"wrote {path}")
    print(f"settings: {dataclasses.asdict(config)}")
    return [r["study"] for r in results]


if __name__ == "__main__":
    exit_on_user_error(lambda: main(sys.argv[1:]))
