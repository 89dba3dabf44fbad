"""Evaluate strategies on a cache: agreement with the target's top token, with 95% intervals.

    python -m emergence_model.evaluate --cache cache/glue-rte --checkpoint checkpoints/wiki.ckpt
    python -m emergence_model.evaluate --cache cache/wikipedia --checkpoint CKPT --out reports/wiki
    python -m emergence_model.evaluate --cache cache/glue-rte --checkpoint CKPT --calibrate 32
    python -m emergence_model.evaluate --cache test.pkl --strategy my_strategy.py:guess
    python -m emergence_model.evaluate --test hidden.pkl --strategy a.py:guess \
        --strategy b.py:guess --timeout 60 --out leaderboard

`emergence-model evaluate ...` is the same command. What is scored, and how a prefix a checkpoint
was trained on is scored only by a network that never saw it, is emergence_model/evaluate.py's.

With --calibrate N, N prompts of a cache the network was not trained on calibrate it
(`calibrate.py`: the target's outputs on them fit pools of the guides) and every strategy is scored
on the other prompts, the calibrated network as one more; --out also gets calibration.json.

--strategy scores a participant's function (PATH.py:FUNCTION or package.module:FUNCTION), called
as the challenge calls it: --batch prefixes at a time, the small models' float16 probabilities,
never the target's (emergence_model/harness/, docs/challenge.md). --cache scores in this process;
--test, a host's leaderboard on a hidden test set, runs each function in a process of its own,
killed past --timeout. --cache and --test take a cache directory or a challenge pickle.

Writes a table on screen and, with --out, results.json, results.md and agreement.png (report.py).
Exit status: 0 when every strategy was scored, 1 when a function failed (the leaderboard says
why; the others are scored), 2 for a mistake on the command line or in an input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emergence_model.cache import FeatureCache, check_cache_destination
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
from emergence_model.folds import NOT_TRAINED, SEEN_BY_ALL, training_folds
from emergence_model.harness.inputs import scoring_set
from emergence_model.harness.runs import (
    CHALLENGE_BATCH,
    DEFAULT_TIMEOUT,
    describe_run,
    parse_entries,
    run_entries,
)
from emergence_model.report import format_table, write_reports
from emergence_model.strategies import STRATEGIES, Strategy, model_basename
from emergence_model.suites import parse_int_list


@dataclass
class EvaluateJob:
    """What is scored, and where the reports go."""

    cache: Path | None = None
    """What to score: a cache directory (cache_features.py --out) or a challenge pickle of
    (model_names, sentences, probs); functions run in this process. This or --test."""
    test: Path | None = None
    """A host's leaderboard on a hidden test set (a cache directory or a challenge pickle): each
    --strategy function runs in a process of its own, killed past --timeout. This or --cache."""
    checkpoint: list[Path] = field(default_factory=list)
    """Trained networks (train.py --out): --checkpoint a b, or the flag repeated."""
    strategy: list[str] = field(default_factory=list, metadata={"metavar": "PATH.py:FUNCTION"})
    """Participants' functions, PATH.py:FUNCTION or package.module:FUNCTION, repeatable: each is
    called as the challenge calls it, fn(sentences, model_names, target_model_name, probs)."""
    batch: int = CHALLENGE_BATCH
    """Prefixes per call of a --strategy function (the challenge calls with 100)."""
    timeout: float | None = None
    """With --test: wall-clock seconds each function's process may run, from its start through
    its last batch; past it the process and its process group are killed and the entry fails
    (unset: 600)."""
    out: Path | None = None
    """Directory for results.json, results.md, agreement.png."""
    strategies: str | None = None
    """Comma-separated registered baselines to score (default: all registered)."""
    all_rows: bool = False
    """Score every prefix with the whole network, even those it was trained on."""
    param_counts: str | None = None
    """A challenge pickle of models other than Pythia's: their parameter counts, comma-separated,
    one per model, the target last (default: Pythia's by name, else a --checkpoint's)."""

    def __post_init__(self) -> None:
        if (self.cache is None) == (self.test is None):
            raise ValueError(
                "give one of --cache (a cache or challenge pickle to score) and --test (a hidden "
                "test set, each --strategy function in its own process)"
            )
        if self.batch < 1:
            raise ValueError(f"--batch must be at least 1 prefix, got {self.batch}")
        if self.timeout is not None and self.test is None:
            raise ValueError(
                "--timeout applies to --test, where each function runs in its own process; "
                "with --cache functions run in this process, where nothing can stop them"
            )
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"--timeout must be a positive number of seconds, got {self.timeout}")
        parse_entries(self.strategy)  # a malformed --strategy: now, before anything is read
        networks = {f"network:{path.stem}" for path in self.checkpoint}
        for text in self.strategy:
            if text in networks:
                raise ValueError(f"--strategy {text} has a network's name; rename its module")
        parse_int_list(self.param_counts, "--param-counts")

    @property
    def source(self) -> Path:
        """The cache or pickle scored."""
        return self.test if self.test is not None else self.cache


FLAGS = (
    FlagGroup(EvaluateJob, "what to score (EvaluateJob)"),
    FlagGroup(EvalConfig, "scoring (EvalConfig)"),
    # Scoring reads caches and checkpoints, never the demo suite: no --suite-dir.
    FlagGroup(RunOptions, "run (RunOptions)", exclude=frozenset({"suite_dir"})),
)


def make_parser() -> argparse.ArgumentParser:
    strategies = "\n".join(
        f"  {n:<12} {(c.__doc__ or '').strip().splitlines()[0]}" for n, c in STRATEGIES.items()
    )
    epilog = f"{__doc__.partition(chr(10) * 2)[2]}\nstrategies:\n{strategies}"
    return command_parser("emergence-model evaluate", __doc__, FLAGS, epilog)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the command line; returns the summary (`evaluate_cache`). When a participant's
    function failed, everything is still printed and written, then SystemExit(1)."""
    summary = run(argv)
    failed = summary.get("failed", {})
    if failed:
        print(f"{len(failed)} failed: {', '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)
    return summary


def run(argv: Sequence[str] | None = None) -> dict:
    """The command line's work: the summary, with "failed" naming each function that failed."""
    parser = make_parser()
    args = parser.parse_args(argv)
    options = config_from_args(RunOptions, args)
    options.apply()
    job = config_from_args(EvaluateJob, args)
    config = config_from_args(EvalConfig, args)
    if job.out:
        check_cache_destination(job.out)
    checkpoints = [(p, load_checkpoint(p)) for p in job.checkpoint]
    counts = parse_int_list(job.param_counts, "--param-counts")
    known = known_counts(checkpoints)
    with scoring_set(job.source, param_counts=counts, known_counts=known) as scored:
        inputs = scored.inputs
        for _, checkpoint in checkpoints:
            check_compatible(
                checkpoint,
                inputs.model_names,
                inputs.tokenizer,
                str(job.source),
                target_name=inputs.target_name,
            )
        folds = {path: training_folds(inputs.sentences, c) for path, c in checkpoints}
        check_plan(parser, job, config, checkpoints, folds)
        baselines = registered_baselines(job, checkpoints)
        # The functions run first, on every prefix (those not scored are ignored): a pickle's
        # target column is written to a cache only once they are done.
        functions, failed = {}, {}
        if job.strategy:
            timeout = DEFAULT_TIMEOUT if job.timeout is None else job.timeout
            functions, failed = run_entries(
                parse_entries(job.strategy),
                inputs,
                np.arange(len(inputs)),
                batch=job.batch,
                isolate=job.test is not None,
                timeout=timeout,
                threads=options.threads,
                progress=options.progress,
            )
        cache = scored.cache()
        parts, description, notes, pool = strategy_parts(
            job, config, cache, checkpoints, baselines, folds
        )
        if job.strategy:
            parts = [(r, {**strategies, **functions}) for r, strategies in parts]
            notes.append(describe_run(job.test is not None, job.batch, timeout))
        summary = evaluate_cache(
            cache,
            parts,
            rows_description=description,
            chunk_rows=config.chunk_rows,
            num_bootstrap=config.bootstrap,
            seed=config.bootstrap_seed,
        )
    summary.update(cache=str(job.source), notes=notes, failed=failed)
    title = job.source.name
    print(format_table(summary, title))
    if job.out:
        for path in write_reports(job.out, [(title, summary)]):
            print(f"wrote {path}")
        if config.calibrate:
            print(f"wrote {pool.save(job.out / CALIBRATION_FILE)}")
    return summary


def registered_baselines(
    job: EvaluateJob, checkpoints: Sequence[tuple[Path, dict]]
) -> dict[str, Strategy]:
    """The --strategies baselines (default: all), with the first checkpoint's tuned parameters."""
    names = job.strategies.split(",") if job.strategies else None
    try:
        return make_baselines(names, checkpoints[0][1].get("baselines") if checkpoints else None)
    except TypeError as e:
        raise CheckpointError(
            f"{checkpoints[0][0]} holds baseline parameters this version does not take ({e}); "
            "retrain it"
        ) from None


def shared_with(folds: dict[Path, np.ndarray | None]) -> list[Path]:
    """The checkpoints trained on some of the scored prefixes."""
    return [path for path, f in folds.items() if f is not None and (f != NOT_TRAINED).any()]


def check_plan(
    parser: argparse.ArgumentParser,
    job: EvaluateJob,
    config: EvalConfig,
    checkpoints: Sequence[tuple[Path, dict]],
    folds: dict[Path, np.ndarray | None],
) -> None:
    """Refuse, before anything runs, checkpoints and options that cannot score these prefixes."""
    shared = shared_with(folds)
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
        if (folds[shared[0]] == SEEN_BY_ALL).all():
            raise ValueError(
                f"every prefix of {job.source} was seen by every network of {shared[0]} in "
                "training: nothing is left to score fairly; pass --all-rows to score them anyway"
            )


def known_counts(checkpoints: Sequence[tuple[Path, dict]]) -> dict[str, int]:
    """Parameter counts the checkpoints record (model basename -> count), for a challenge pickle
    of their models: only checkpoints whose scales are parameter counts."""
    counts = {}
    for _, c in checkpoints:
        if c["scale_axis"] == "parameters":
            names = [*c["model_names"], c["target_name"]]
            for name, scale in zip(names, [*c["scales"], c["target_scale"]], strict=True):
                counts[model_basename(name)] = int(scale)
    return counts


def strategy_parts(
    job: EvaluateJob,
    config: EvalConfig,
    cache: FeatureCache,
    checkpoints: Sequence[tuple[Path, dict]],
    baselines: dict[str, Strategy],
    folds: dict[Path, np.ndarray | None],
) -> tuple[list, str, list[str], object]:
    """`baselines` and the checkpoints' networks (`folds` from `training_folds`, checked by
    `check_plan`), as `evaluate_cache`'s parts: (the parts, the rows' description, notes, the
    calibration's pool or None)."""
    shared = shared_with(folds)
    notes = [
        f"{path.name} does not record its training prefixes: prefixes it was trained on are not "
        "detected here (retrain it with this version)"
        for path, f in folds.items()
        if f is None
    ]
    pool = None
    if shared and not job.all_rows:
        path, checkpoint = checkpoints[0]
        parts = cross_fit_parts(cache, checkpoint, baselines, folds[path])
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
    for path, c in checkpoints:
        selection = checkpoint_selection(c, str(path))
        if selection is not None:
            notes.append(f"{path.name}: " + selection.ensemble.describe("its network"))
    return parts, description, notes, pool
