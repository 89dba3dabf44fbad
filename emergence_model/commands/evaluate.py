"""Evaluate strategies on a cache: agreement with the target's top token, with 95% intervals.

    python -m emergence_model.evaluate --cache cache/glue-rte --checkpoint checkpoints/wiki.ckpt
    python -m emergence_model.evaluate --cache cache/wikipedia --checkpoint CKPT --out reports/wiki
    python -m emergence_model.evaluate --cache cache/glue-rte --checkpoint CKPT --calibrate 32

`emergence-model evaluate ...` is the same command. What is scored, and how a prefix a checkpoint
was trained on is scored only by a network that never saw it, is emergence_model/evaluate.py's.

With --calibrate N, N prompts of a cache the network was not trained on calibrate it
(`calibrate.py`: the target's outputs on them fit pools of the guides) and every strategy is scored
on the other prompts, the calibrated network as one more; --out also gets calibration.json.

Writes a table on screen and, with --out, results.json, results.md and agreement.png (report.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emergence_model.cache import check_cache_destination, open_cache
from emergence_model.calibrate import CALIBRATION_FILE, calibrated_panel
from emergence_model.checkpoint import (
    CheckpointError,
    check_compatible,
    checkpoint_selection,
    load_checkpoint,
    network_strategy,
)
from emergence_model.cli import FlagGroup, RunOptions, command_parser, config_from_args
from emergence_model.evaluate import (
    EvalConfig,
    cross_fit_parts,
    describe_folds,
    evaluate_cache,
    make_baselines,
)
from emergence_model.folds import NOT_TRAINED, training_folds
from emergence_model.report import format_table, write_reports
from emergence_model.strategies import STRATEGIES


@dataclass
class EvaluateJob:
    """What is scored, and where the reports go."""

    cache: Path | None = None
    """Cache directory to score (cache_features.py --out); required."""
    checkpoint: list[Path] = field(default_factory=list)
    """Trained networks (train.py --out): --checkpoint a b, or the flag repeated."""
    out: Path | None = None
    """Directory for results.json, results.md, agreement.png."""
    strategies: str | None = None
    """Comma-separated baselines to score (default: all registered)."""
    all_rows: bool = False
    """Score every prefix with the whole network, even those it was trained on."""

    def __post_init__(self) -> None:
        if self.cache is None:
            raise ValueError("--cache is required: the cache directory to score")


FLAGS = (
    FlagGroup(EvaluateJob, "what to score (EvaluateJob)"),
    FlagGroup(EvalConfig, "scoring (EvalConfig)"),
    FlagGroup(RunOptions, "run (RunOptions)"),
)


def make_parser() -> argparse.ArgumentParser:
    strategies = "\n".join(
        f"  {n:<12} {(c.__doc__ or '').strip().splitlines()[0]}" for n, c in STRATEGIES.items()
    )
    epilog = f"{__doc__.partition(chr(10) * 2)[2]}\nstrategies:\n{strategies}"
    return command_parser("emergence-model evaluate", __doc__, FLAGS, epilog)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the command line; returns the summary (`evaluate_cache`)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    config_from_args(RunOptions, args).apply()
    job = config_from_args(EvaluateJob, args)
    config = config_from_args(EvalConfig, args)
    if job.out:
        check_cache_destination(job.out)

    cache = open_cache(job.cache)
    checkpoints = [(p, load_checkpoint(p)) for p in job.checkpoint]
    for _, checkpoint in checkpoints:
        check_compatible(
            checkpoint,
            cache.model_names[:-1],
            cache.vocab_size,
            str(cache.path),
            target_name=cache.target_name,
        )
    names = job.strategies.split(",") if job.strategies else None
    try:
        baselines = make_baselines(
            names, checkpoints[0][1].get("baselines") if checkpoints else None
        )
    except TypeError as e:
        raise CheckpointError(
            f"{checkpoints[0][0]} holds baseline parameters this version does not take ({e}); "
            "retrain it"
        ) from None
    folds = {path: training_folds(cache.prefixes, c) for path, c in checkpoints}
    shared = [path for path, f in folds.items() if f is not None and (f != NOT_TRAINED).any()]
    notes = [
        f"{path.name} does not record its training prefixes: prefixes it was trained on are not "
        "detected here (retrain it with this version)"
        for path, f in folds.items()
        if f is None
    ]
    if config.calibrate and (len(checkpoints) != 1 or shared):
        parser.error(
            "--calibrate takes one --checkpoint and a cache it was not trained on (a transfer "
            "cache): drop --calibrate to score its training cache"
        )
    if shared and not job.all_rows:
        if len(checkpoints) > 1:
            parser.error(
                f"{shared[0]} was trained on prefixes of this cache: evaluate it alone (each "
                "prefix by the network that never saw it) or pass --all-rows"
            )
        path, checkpoint = checkpoints[0]
        parts = cross_fit_parts(cache, checkpoint, baselines, folds[path])
        if not parts:
            raise ValueError(
                f"every prefix of {cache.path} was seen by every network of {path} in training: "
                "nothing is left to score fairly; pass --all-rows to score them anyway"
            )
        description, more = describe_folds(folds[path], f"{path.name}'s training prefixes")
        notes += more
    else:
        strategies = dict(baselines)
        for path, c in checkpoints:
            key = "network" if len(checkpoints) == 1 else f"network:{path.stem}"
            strategies[key] = network_strategy(c, str(path))
        parts, description = [(None, strategies)], "all prefixes"
        if config.calibrate:
            rows, strategies, pool = calibrated_panel(
                cache, strategies, config.calibrate, config.calibration_seed
            )
            parts = [(rows, strategies)]
            description = f"the {len(rows)} prefixes not among the {config.calibrate} calibrating"
        for path in shared:
            seen = int((folds[path] != NOT_TRAINED).sum())
            description = "all prefixes, --all-rows"
            notes.append(
                f"{seen} prefixes are in {path.name}'s training prefixes and were scored by "
                "networks that saw them (--all-rows)"
            )
    summary = evaluate_cache(
        cache,
        parts,
        rows_description=description,
        chunk_rows=config.chunk_rows,
        num_bootstrap=config.bootstrap,
        seed=config.bootstrap_seed,
    )
    for path, c in checkpoints:
        selection = checkpoint_selection(c, str(path))
        if selection is not None:
            notes.append(f"{path.name}: " + selection.ensemble.describe("its network"))
    summary["notes"] = notes
    title = job.cache.name
    print(format_table(summary, title))
    if job.out:
        for path in write_reports(job.out, [(title, summary)]):
            print(f"wrote {path}")
        if config.calibrate:
            print(f"wrote {pool.save(job.out / CALIBRATION_FILE)}")
    return summary
