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
from pathlib import Path

from emergence_model.cache import CACHE_DTYPES, FeatureCache, combine_caches, open_cache
from emergence_model.challenge import export_challenge_pickle, import_challenge_pickle
from emergence_model.extract import TORCH_DTYPES, extract_suite
from emergence_model.prefixes import describe_sources, load_prefixes
from emergence_model.suites import custom_suite, describe_suites, get_suite


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
    what = parser.add_argument_group("models and prefixes")
    what.add_argument("--suite", help="a registered suite of models (listed below)")
    what.add_argument(
        "--models",
        help="comma-separated hub ids or local save_pretrained dirs, smallest first, target last",
    )
    what.add_argument("--revision", help="hub revision of every model, e.g. step143000 (Pythia)")
    what.add_argument("--dataset", help="a prefix source (listed below), a file or hub:ORG/NAME")
    what.add_argument("--split", help="dataset split (default: train)")
    what.add_argument("--column", help="text column of a .jsonl/.tsv file or hub dataset")
    what.add_argument(
        "--num-prefixes", type=int, help="how many prefixes (default: all; wikipedia 20000)"
    )
    what.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    what.add_argument(
        "--shard",
        metavar="K/N",
        help="K/N: extract only the K-th of N contiguous slices of the prefixes (K from 0), "
        "to spread one dataset over machines; join the parts with --combine",
    )
    what.add_argument(
        "--suite-dir", type=Path, help="where the demo suite lives (default: user cache dir)"
    )
    what.add_argument(
        "--param-counts",
        help="comma-separated parameter counts, one per model, for models that are not Pythia",
    )
    run = parser.add_argument_group("extraction")
    run.add_argument("--out", type=Path, help="output cache directory (or pickle, for export)")
    run.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    run.add_argument(
        "--dtype",
        choices=list(TORCH_DTYPES),
        help="model weights dtype (default: float32 on CPU, bfloat16 on CUDA)",
    )
    run.add_argument(
        "--batch-size", type=int, default=16, help="prefixes per forward pass (default: 16)"
    )
    run.add_argument(
        "--cache-dtype",
        choices=CACHE_DTYPES,
        default="float16",
        help="dtype of the stored log-probabilities (default: float16)",
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bars")
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


def parse_int_list(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like K/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= k < n:
        raise ValueError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


def describe(cache: FeatureCache) -> str:
    size = cache.logprobs.nbytes / 2**30
    return (
        f"{cache.path}: {cache.num_prefixes} prefixes x {cache.num_models} models x "
        f"{cache.vocab_size} tokens ({cache.meta['dtype']}, {size:.2f} GiB), "
        f"target {cache.target_name}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for line in run(args, parser):
            print(line)
    except (ValueError, OSError) as e:  # CacheError is a ValueError; a bad model path an OSError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    jobs = [args.from_pickle, args.export_pickle, args.combine, args.verify]
    if sum(job is not None for job in jobs) > 1:
        parser.error("pick one of --from-pickle, --export-pickle, --combine and --verify")
    if args.verify is not None:
        return [f"ok {describe(open_cache(path, full_check=True))}" for path in args.verify]
    if args.out is None:
        parser.error("--out is required")
    param_counts = parse_int_list(args.param_counts, "--param-counts")
    if args.from_pickle is not None:
        cache = import_challenge_pickle(
            args.from_pickle, args.out, param_counts=param_counts, dtype=args.cache_dtype
        )
        return [f"imported {describe(cache)}"]
    if args.export_pickle is not None:
        return [f"wrote {export_challenge_pickle(args.export_pickle, args.out)}"]
    if args.combine is not None:
        return [f"combined {describe(combine_caches(args.combine, args.out))}"]
    if (args.suite is None) == (args.models is None):
        parser.error("give exactly one of --suite and --models (or another job, see --help)")
    if args.dataset is None:
        parser.error("--dataset is required for an extraction")
    shard = parse_shard(args.shard)
    if args.models is not None:
        suite = custom_suite(args.models.split(","), args.revision)
    else:
        suite = get_suite(args.suite, revision=args.revision, suite_dir=args.suite_dir)
    prefixes, source = load_prefixes(
        args.dataset,
        split=args.split,
        num_prefixes=args.num_prefixes,
        seed=args.seed,
        column=args.column,
        suite_dir=args.suite_dir,
    )
    if shard is not None:
        k, n = shard
        prefixes = prefixes[k * len(prefixes) // n : (k + 1) * len(prefixes) // n]
        source["shard"] = args.shard
        if not prefixes:
            raise ValueError(f"shard {args.shard} of {source['num_prefixes']} prefixes is empty")
    cache = extract_suite(
        suite,
        prefixes,
        args.out,
        revision=args.revision,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        cache_dtype=args.cache_dtype,
        param_counts=param_counts,
        source=source,
        seed=args.seed,
        progress=not args.no_progress,
    )
    return [f"wrote {describe(cache)}"]


if __name__ == "__main__":
    sys.exit(main())
