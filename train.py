"""Train the per-token predictor on a feature cache, print the leaderboard, save the checkpoint.

    python train.py                     # offline demo: suite, caches, training, leaderboard
    python train.py --train-cache cache/wikipedia --transfer-cache cache/glue-rte \\
        --out checkpoints/wikipedia.ckpt
    python train.py --train-cache cache/wikipedia --accelerator gpu --devices 1 --soft-weight 0.5
    python train.py --help              # every flag, made from the config dataclasses

In-domain results cover every prefix of the training cache, each scored by the one of the
--folds networks that never saw it, in training or in choosing its checkpoint (cross-fitting;
--folds 1: one network and --test-fraction of the prefixes held out); baselines with a parameter
are tuned on the same training prefixes. Transfer results are on the whole transfer cache, scored
by the ensemble of the networks, which is what the checkpoint holds (any prefix it shares with the
training cache by the network that never saw it). The leaderboard goes to the screen and to
RUN_DIR/report (results.json, results.md, agreement.png), Lightning's logs and checkpoints to
RUN_DIR/fold-K, the resolved configuration next to the checkpoint (NAME.config.json); RUN_DIR is
runs/NAME beside the checkpoint unless --run-dir says otherwise. Use the checkpoint in the
original challenge with `emergence_model.load_strategy(path)`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from emergence_model.cache import check_cache_destination, check_output_file
from emergence_model.cli import add_config_arguments, config_from_args, exit_on_user_error
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--train-cache", help="cache to train on (omit for the offline demo, which builds its own)"
    )
    parser.add_argument(
        "--transfer-cache", action="append", default=[], help="cache scored whole (repeatable)"
    )
    parser.add_argument("--out", help="checkpoint path (default: checkpoints/<train cache>.ckpt)")
    parser.add_argument(
        "--run-dir", help="logs and reports (default: runs/NAME beside the checkpoint NAME.ckpt)"
    )
    parser.add_argument("--suite-dir", help="demo only: where the demo suite is built and kept")
    add_config_arguments(parser, PredictorConfig, "network (PredictorConfig)")
    add_config_arguments(parser, TrainConfig, "training (TrainConfig)")
    add_config_arguments(parser, EvalConfig, "evaluation (EvalConfig)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Every flag is checked before the demo suite or its caches are built (minutes).
    predictor_config = config_from_args(PredictorConfig, args)
    train_config = config_from_args(TrainConfig, args)
    eval_config = config_from_args(EvalConfig, args)
    check_hardware(train_config)
    train_cache, transfer_caches, out = args.train_cache, args.transfer_cache, args.out
    if train_cache is None:
        out = Path(out or DEMO_CHECKPOINT)
        check_output_file(out, "--out")
        check_cache_destination(args.run_dir or default_run_dir(out), "--run-dir")
        train_cache, transfer = prepare_demo_caches(suite_dir=args.suite_dir)
        transfer_caches = [*transfer_caches, transfer]
    out = out or Path("checkpoints") / f"{Path(train_cache).name}.ckpt"
    return train_and_evaluate(
        train_cache,
        transfer_caches,
        out,
        predictor_config,
        train_config,
        run_dir=args.run_dir,
        eval_config=eval_config,
    )


if __name__ == "__main__":
    exit_on_user_error(main)
