"""Cache every model's next-token distribution after every prefix, for training the predictor.

    python cache_features.py --suite pythia --dataset wikipedia --num-prefixes 20000 --seed 0 \\
        --out cache/wikipedia --device cuda
    python cache_features.py --suite pythia --dataset glue-rte --split train --out cache/glue-rte
    python cache_features.py --models small_dir,mid_dir,target_dir --dataset prefixes.txt --out c
    python cache_features.py --from-pickle wikipedia.pkl --out cache/challenge-wikipedia
    python cache_features.py --export-pickle cache/wikipedia --out wikipedia.pkl
    python cache_features.py --combine cache/part0 cache/part1 --out cache/all
    python cache_features.py --verify cache/wikipedia
    torchrun --nproc-per-node 4 cache_features.py --suite pythia --dataset wikipedia --out c

`emergence-model extract ...` is the same command. Kill it at any point and rerun the same command:
it continues where it stopped. Under torchrun each process takes its share of the prefixes on its
own GPU (cuda:LOCAL_RANK), and together they write the one cache a single process would.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emergence_model.cache import (
    FeatureCache,
    check_cache_destination,
    check_output_file,
    combine_caches,
    open_cache,
)
from emergence_model.challenge import export_challenge_pickle, import_challenge_pickle
from emergence_model.cli import (
    FlagGroup,
    RunOptions,
    command_parser,
    config_from_args,
)
from emergence_model.extract import ExtractConfig, extract_suite
from emergence_model.prefixes import PrefixConfig, describe_sources, load_prefixes
from emergence_model.ranks import Ranks
from emergence_model.suites import SuiteConfig, describe_suites


@dataclass
class ExtractJob:
    """Where the cache goes, or which other job runs instead of an extraction."""

    out: Path | None = None
    """Output cache directory (or pickle, for --export-pickle)."""
    from_pickle: Path | None = field(default=None, metadata={"metavar": "PKL"})
    """Instead of an extraction: import a challenge pickle into --out."""
    tokenizer: str | None = field(default=None, metadata={"metavar": "NAME"})
    """With --from-pickle: the tokenizer the imported cache names (a hub id, ORG/NAME@REV, or a
    local directory), which the study decodes tokens with (default: the pickle's target's
    name, which may not load)."""
    export_pickle: Path | None = field(default=None, metadata={"metavar": "CACHE"})
    """Instead of an extraction: write cache CACHE as a challenge pickle to --out."""
    combine: list[Path] = field(default_factory=list, metadata={"metavar": "IN"})
    """Instead of an extraction: join caches IN... into --out."""
    verify: list[Path] = field(default_factory=list, metadata={"metavar": "CACHE"})
    """Instead of an extraction: fully check caches CACHE... and exit."""

    def __post_init__(self) -> None:
        jobs = [self.from_pickle, self.export_pickle, self.combine or None, self.verify or None]
        if sum(job is not None for job in jobs) > 1:
            raise ValueError("pick one of --from-pickle, --export-pickle, --combine and --verify")
        if self.out is None and not self.verify:
            raise ValueError("--out is required: the cache directory (or pickle) to write")
        if self.tokenizer is not None and self.from_pickle is None:
            raise ValueError("--tokenizer goes with --from-pickle (an extraction names its own)")


FLAGS = (
    FlagGroup(SuiteConfig, "models (SuiteConfig)"),
    FlagGroup(PrefixConfig, "prefixes (PrefixConfig)"),
    FlagGroup(ExtractConfig, "extraction (ExtractConfig)"),
    FlagGroup(ExtractJob, "output and other jobs (ExtractJob)"),
    FlagGroup(RunOptions, "run (RunOptions)"),
)


def make_parser() -> argparse.ArgumentParser:
    description, examples = __doc__.split("\n\n")[:2]
    epilog = (
        f"suites (--suite):\n{describe_suites()}\n\n"
        f"prefix sources (--dataset):\n{describe_sources()}\n\n"
        f"examples:\n{examples}"
    )
    return command_parser("emergence-model extract", description, FLAGS, epilog)


def describe(cache: FeatureCache) -> str:
    size = cache.logprobs.nbytes / 2**30
    return (
        f"{cache.path}: {cache.num_prefixes} prefixes x {cache.num_models} models x "
        f"{cache.vocab_size} tokens ({cache.meta['dtype']}, {size:.2f} GiB), "
        f"target {cache.target_name}"
    )


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Run the command line; returns the lines it printed. A user's mistake raises ValueError
    (exit status 2 through `exit_on_user_error`)."""
    args = make_parser().parse_args(argv)
    run_options = config_from_args(RunOptions, args)
    run_options.apply()
    lines = run(args, run_options)
    if Ranks.from_env().first:  # under torchrun, the first process speaks for the job
        for line in lines:
            print(line)
    return lines


def run(args: argparse.Namespace, run_options: RunOptions) -> list[str]:
    job = config_from_args(ExtractJob, args)
    if job.verify:
        lines = []
        for path in job.verify:  # reads only: a cache is never changed by --verify
            cache = open_cache(path)
            checked = cache.verify()
            lines.append(f"ok {describe(cache)}; {checked}")
        return lines
    suite_config = config_from_args(SuiteConfig, args, SuiteConfig(suite_dir=run_options.suite_dir))
    extract_config = config_from_args(
        ExtractConfig, args, ExtractConfig(progress=run_options.progress)
    )
    if job.from_pickle is not None:
        check_cache_destination(job.out)
        cache = import_challenge_pickle(
            job.from_pickle,
            job.out,
            param_counts=suite_config.counts(),
            dtype=extract_config.cache_dtype,
            tokenizer=job.tokenizer,
        )
        return [f"imported {describe(cache)}"]
    if job.export_pickle is not None:
        check_output_file(job.out)
        return [f"wrote {export_challenge_pickle(job.export_pickle, job.out)}"]
    # Every job below writes a cache at --out: refuse a path that cannot hold one before any
    # prefix or model is loaded.
    check_cache_destination(job.out)
    if job.combine:
        return [f"combined {describe(combine_caches(job.combine, job.out))}"]
    prefix_config = config_from_args(PrefixConfig, args)
    if prefix_config.dataset is None:
        raise ValueError(
            "--dataset is required for an extraction: a registered source, a file or hub:ORG/NAME"
        )
    suite = suite_config.resolve()
    prefixes, source = load_prefixes(prefix_config, suite_config.suite_dir)
    cache = extract_suite(
        suite,
        prefixes,
        job.out,
        extract_config,
        revision=suite_config.revision,
        param_counts=suite_config.counts(),
        source=source,
        seed=prefix_config.seed,
    )
    return [f"wrote {describe(cache)}"]
