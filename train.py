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
by the ensemble of the networks, which is what the checkpoint holds. The leaderboard goes to the
screen and to RUN_DIR/report (results.json, results.md, agreement.png), Lightning's logs and
checkpoints to RUN_DIR/fold-K, the resolved configuration next to the checkpoint
(NAME.config.json). Use the checkpoint in the original challenge with
`emergence_model.load_strategy(path)`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pytorch_lightning.utilities import rank_zero_only

from emergence_model.cache import open_cache
from emergence_model.checkpoint import save_checkpoint
from emergence_model.cli import add_config_arguments, config_from_args, exit_on_user_error
from emergence_model.demo.caches import prepare_demo_caches
from emergence_model.evaluate import EvalConfig, evaluate_cache, make_baselines
from emergence_model.model import PredictorConfig
from emergence_model.report import format_table, write_reports
from emergence_model.strategies import (
    FIT_CHUNK_ROWS,
    ContrastiveExtrapolation,
    NetworkStrategy,
    check_same_models,
)
from emergence_model.training import TrainConfig, fit_cross_fitted, write_config

DEMO_CHECKPOINT = Path("checkpoints/demo.ckpt")


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
    parser.add_argument("--run-dir", help="logs and reports (default: runs/<checkpoint name>)")
    parser.add_argument("--suite-dir", help="demo only: where the demo suite is built and kept")
    add_config_arguments(parser, PredictorConfig, "network (PredictorConfig)")
    add_config_arguments(parser, TrainConfig, "training (TrainConfig)")
    add_config_arguments(parser, EvalConfig, "evaluation (EvalConfig)")
    return parser.parse_args(argv)


def tune_baselines(cache, train_idx: np.ndarray) -> dict:
    """Baselines with parameters, tuned on the training split only."""
    contrastive = ContrastiveExtrapolation()

    def chunks():
        for start in range(0, len(train_idx), FIT_CHUNK_ROWS):
            rows = train_idx[start : start + FIT_CHUNK_ROWS]
            yield cache.rows(rows)[:, :-1], cache.target_argmax[rows]

    contrastive.fit(chunks(), cache.scales[:-1], cache.scales[-1])
    return {"contrastive": contrastive.params()}


def run(
    train_cache: str | Path,
    transfer_caches: Sequence[str | Path],
    out: str | Path,
    predictor_config: PredictorConfig,
    train_config: TrainConfig,
    run_dir: str | Path | None = None,
    eval_config: EvalConfig | None = None,
) -> dict:
    """Train, evaluate in-domain and on transfer, save the checkpoint; returns the summaries."""
    out = Path(out)
    run_dir = Path(run_dir) if run_dir else Path("runs") / out.stem
    cache = open_cache(train_cache)
    transfers = [open_cache(p) for p in transfer_caches]
    eval_config = eval_config or EvalConfig()
    for other in transfers:
        check_same_models(
            cache.model_names,
            other.model_names,
            expected_vocab=cache.vocab_size,
            given_vocab=other.vocab_size,
            what=f"training cache {cache.path}",
            where=f"transfer cache {other.path}",
        )
    predictor, splits, metrics = fit_cross_fitted(cache, predictor_config, train_config, run_dir)
    if rank_zero_only.rank != 0:
        return {}  # with several GPUs, the other processes of Lightning's DDP stop here
    config_path = write_config(
        out.with_name(out.stem + ".config.json"),
        predictor=predictor_config,
        training=train_config,
        train_cache=str(cache.path),
        transfer_caches=[str(t.path) for t in transfers],
        run_dir=str(run_dir),
    )
    names, target = cache.model_names[:-1], cache.target_name
    # in-domain: each fold's rows scored by the network that never saw them, against baselines
    # tuned on that fold's training rows
    parts = [
        (
            test,
            {
                **make_baselines(params=tune_baselines(cache, train)),
                "network": NetworkStrategy(predictor.member(k), names, target),
            },
        )
        for k, (train, _, test) in enumerate(splits)
    ]
    folds = train_config.folds
    rows = (
        "held-out test prefixes"
        if folds == 1
        else f"every prefix, by the network of the {folds} that never saw it"
    )
    evaluation = dict(
        num_bootstrap=eval_config.bootstrap,
        seed=eval_config.bootstrap_seed,
        chunk_rows=eval_config.chunk_rows,
    )
    panels = [
        (
            f"in-domain ({cache.path.name})",
            evaluate_cache(cache, parts, rows_description=rows, **evaluation),
        )
    ]
    baselines = tune_baselines(cache, np.unique(np.concatenate([s[0] for s in splits])))
    print(f"baselines tuned on the training prefixes: {baselines}")
    strategies = {
        **make_baselines(params=baselines),
        "network": NetworkStrategy(predictor, names, target),
    }
    for other in transfers:
        summary = evaluate_cache(other, [(None, strategies)], **evaluation)
        panels.append((f"transfer ({other.path.name})", summary))
    for title, summary in panels:
        print()
        print(format_table(summary, title))
        metrics[title] = {
            name: entry["top1"]["value"] for name, entry in summary["strategies"].items()
        }
    save_checkpoint(
        out,
        predictor,
        model_names=names,
        target_name=target,
        scale_axis=cache.scale_axis,
        baselines=baselines,
        metrics=metrics,
        data={
            "train_cache": str(cache.path),
            "fingerprint": cache.fingerprint,
            "split": {
                "folds": folds,
                "val_fraction": train_config.val_fraction,
                "test_fraction": train_config.test_fraction,
                "seed": train_config.seed,
            },
        },
        train_config=dataclasses.asdict(train_config),
    )
    print()
    for path in [*write_reports(run_dir / "report", panels), config_path]:
        print(f"wrote {path}")
    print(f"saved {out}: use it with emergence_model.load_strategy({str(out)!r})")
    return dict(panels)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    predictor_config = config_from_args(PredictorConfig, args)
    train_config = config_from_args(TrainConfig, args)
    train_cache, transfer_caches, out = args.train_cache, args.transfer_cache, args.out
    if train_cache is None:
        train_cache, transfer = prepare_demo_caches(suite_dir=args.suite_dir)
        transfer_caches = [*transfer_caches, transfer]
        out = out or DEMO_CHECKPOINT
    out = out or Path("checkpoints") / f"{Path(train_cache).name}.ckpt"
    return run(
        train_cache,
        transfer_caches,
        out,
        predictor_config,
        train_config,
        run_dir=args.run_dir,
        eval_config=config_from_args(EvalConfig, args),
    )


if __name__ == "__main__":
    exit_on_user_error(main)
