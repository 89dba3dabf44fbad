"""Cache every model's next-token distribution after every prefix, for training the predictor.

    python cache_features.py --suite pythia --dataset wikipedia --num-prefixes 20000 --seed 0 \\
        --out cache/wikipedia --device cuda
    python cache_features.py --suite pythia --dataset glue-rte --split train --out cache/glue-rte
    python cache_features.py --models small_dir,mid_dir,target_dir --dataset prefixes.txt --out c
    python cache_features.py --from-pickle wikipedia.pkl --out cache/challenge-wikipedia
    python cache_features.py --export-pickle cache/wikipedia --out wikipedia.pkl
    python cache_features.py --combine cache/part0 cache/part1 --out cache/all
    python cache_features.py --verify cache/wikipedia

Kill it at any point and rerun the same command: it continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from emergence_model.cache import (
    FeatureCache,
    check_cache_destination,
    check_output_file,
    combine_caches,
    open_cache,
)
from emergence_model.challenge import export_challenge_pickle, import_challenge_pickle
from emergence_model.cli import add_config_arguments, config_from_args, exit_on_user_error
from emergence_model.extract import ExtractConfig, extract_suite
from emergence_model.prefixes import PrefixConfig, describe_sources, load_prefixes
from emergence_model.suites import SuiteConfig, describe_suites


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"suites (--suite):\n{describe_suites()}\n\n"
            f"prefix sources (--dataset):\n{describe_sources()}\n\n"
            f"examples:\n{__doc__.split(chr(10), 2)[2].split(chr(10) + chr(10))[0]}"
        ),
    )
    add_config_arguments(parser, SuiteConfig, "models (SuiteConfig)")
    add_config_arguments(parser, PrefixConfig, "prefixes (PrefixConfig)")
    add_config_arguments(parser, ExtractConfig, "extraction (ExtractConfig)")
    parser.add_argument("--out", type=Path, help="output cache directory (or pickle, for export)")
    other = parser.add_argument_group("other jobs (instead of an extraction)")
    other.add_argument(
        "--from-pickle", type=Path, metavar="PKL", help="import a challenge pickle into --out"
    )
    other.add_argument(
        "--export-pickle",
        type=Path,
        metavar="CACHE",
        help="write cache CACHE as a challenge pickle to --out",
    )
    other.add_argument(
        "--combine", type=Path, nargs="+", metavar="IN", help="join caches IN... into --out"
    )
    other.add_argument(
        "--verify", type=Path, nargs="+", metavar="CACHE", help="fully check caches and exit"
    )
    return parser


def describe(cache: FeatureCache) -> str:
    size = cache.logprobs.nbytes / 2**30
    return (
        f"{cache.path}: {cache.num_prefixes} prefixes x {cache.num_models} models x "
        f"{cache.vocab_size} tokens ({cache.meta['dtype']}, {size:.2f} GiB), "
        f"target {cache.target_name}"
    )


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Run the command line; returns the lines it printed. A user's mistake raises ValueError
    (exit status 2 through `exit_on_user_error`); a wrong combination of flags exits 2 at once."""
    parser = build_parser()
    args = parser.parse_args(argv)
    jobs = [args.from_pickle, args.export_pickle, args.combine, args.verify]
    if sum(job is not None for job in jobs) > 1:
        parser.error("pick one of --from-pickle, --export-pickle, --combine and --verify")
    lines = run(args, parser)
    for line in lines:
        print(line)
    return lines


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    if args.verify is not None:
        return [f"ok {describe(open_cache(path, full_check=True))}" for path in args.verify]
    if args.out is None:
        parser.error("--out is required")
    suite_config = config_from_args(SuiteConfig, args)
    extract_config = config_from_args(ExtractConfig, args)
    if args.from_pickle is not None:
        check_cache_destination(args.out)
        cache = import_challenge_pickle(
            args.from_pickle,
            args.out,
            param_counts=suite_config.counts(),
            dtype=extract_config.cache_dtype,
        )
        return [f"imported {describe(cache)}"]
    if args.export_pickle is not None:
        check_output_file(args.out)
        return [f"wrote {export_challenge_pickle(args.export_pickle, args.out)}"]
    # Every job below writes a cache at --out: refuse a path that cannot hold one before any
    # prefix or model is loaded.
    check_cache_destination(args.out)
    if args.combine is not None:
        return [f"combined {describe(combine_caches(args.combine, args.out))}"]
    prefix_config = config_from_args(PrefixConfig, args)
    if prefix_config.dataset is None:
        parser.error("--dataset is required for an extraction")
    suite = suite_config.resolve()
    prefixes, source = load_prefixes(prefix_config, suite_config.suite_dir)
    cache = extract_suite(
        suite,
        prefixes,
        args.out,
        extract_config,
        revision=suite_config.revision,
        param_counts=suite_config.counts(),
        source=source,
        seed=prefix_config.seed,
    )
    return [f"wrote {describe(cache)}"]


if __name__ == "__main__":
    exit_on_user_error(lambda: main(sys.argv[1:]))
