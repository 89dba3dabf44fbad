"""Train the per-token predictor on a feature cache, print the leaderboard, save the checkpoint.

    python train.py                     # offline demo: suite, caches, training, leaderboard
    python train.py --train-cache cache/wikipedia --transfer-cache cache/glue-rte \\
        --out checkpoints/wikipedia.ckpt
    python train.py --train-cache cache/wikipedia --accelerator gpu --devices 1 --soft-weight 0.5
    python train.py --help              # every flag, made from the config dataclasses

`emergence-model train ...` is the same command. In-domain results cover every prefix of the
training cache, each scored by the one of the --folds networks that never saw it, in training or
in choosing its checkpoint (cross-fitting; --folds 1: one network and --test-fraction of the
prefixes held out); baselines with a parameter are tuned on the same training prefixes. Transfer
results are on the whole transfer cache, scored by the ensemble of the networks, which is what the
checkpoint holds (any prefix it shares with the training cache by the network that never saw it).
The leaderboard goes to the screen and to RUN_DIR/report (results.json, results.md,
agreement.png), Lightning's logs and checkpoints to RUN_DIR/fold-K, the resolved configuration
next to the checkpoint (NAME.config.json); RUN_DIR is runs/NAME beside the checkpoint unless
--run-dir says otherwise. Use the checkpoint in the original challenge with
`emergence_model.load_strategy(path)`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emergence_model.cache import check_cache_destination, check_output_file
from emergence_model.cli import FlagGroup, RunOptions, command_parser, config_from_args
from emergence_model.demo.caches import prepare_demo_caches
from emergence_model.evaluate import EvalConfig
from emergence_model.model import PredictorConfig
from emergence_model.pipeline import (
    DEMO_CHECKPOINT,
    check_hardware,
    default_run_dir,
    train_and_evaluate,
)
from emergence_model.training import TrainConfig


@dataclass
class TrainJob:
    """Which caches the network learns from and is scored on, and where its files go."""

    train_cache: Path | None = None
    """Cache to train on (omit for the offline demo, which builds its own)."""
    transfer_cache: list[Path] = field(default_factory=list)
    """Caches scored whole (--transfer-cache a b, or the flag repeated)."""
    out: Path | None = None
    """Checkpoint path (default: checkpoints/NAME.ckpt for --train-cache .../NAME; the demo's
    checkpoints/demo.ckpt)."""
    run_dir: Path | None = None
    """Logs and reports (default: runs/NAME beside the checkpoint NAME.ckpt)."""

    def checkpoint(self) -> Path:
        """--out, or its default."""
        if self.out is not None:
            return self.out
        if self.train_cache is None:
            return DEMO_CHECKPOINT
        return DEMO_CHECKPOINT.parent / f"{self.train_cache.name}.ckpt"


FLAGS = (
    FlagGroup(TrainJob, "caches and outputs (TrainJob)"),
    FlagGroup(PredictorConfig, "network (PredictorConfig)"),
    FlagGroup(TrainConfig, "training (TrainConfig)"),
    FlagGroup(EvalConfig, "evaluation (EvalConfig)"),
    FlagGroup(RunOptions, "run (RunOptions)"),
)


def make_parser() -> argparse.ArgumentParser:
    return command_parser("emergence-model train", __doc__, FLAGS)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the command line; returns the leaderboard's panels (`train_and_evaluate`)."""
    args = make_parser().parse_args(argv)
    # Every flag is checked before the demo suite or its caches are built (minutes).
    run_options = config_from_args(RunOptions, args)
    job = config_from_args(TrainJob, args)
    predictor_config = config_from_args(PredictorConfig, args)
    train_config = config_from_args(TrainConfig, args, TrainConfig(progress=run_options.progress))
    eval_config = config_from_args(EvalConfig, args)
    check_hardware(train_config)
    run_options.apply()
    out, train_cache, transfer_caches = job.checkpoint(), job.train_cache, job.transfer_cache
    if train_cache is None:
        check_output_file(out, "--out")
        check_cache_destination(job.run_dir or default_run_dir(out), "--run-dir")
        train_cache, transfer = prepare_demo_caches(
            suite_dir=run_options.suite_dir, progress=run_options.progress
        )
        transfer_caches = [*transfer_caches, transfer]
    return train_and_evaluate(
        train_cache,
        transfer_caches,
        out,
        predictor_config,
        train_config,
        run_dir=job.run_dir,
        eval_config=eval_config,
    )
