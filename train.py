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
import dataclasses
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_only

from emergence_model.cache import check_cache_destination, check_output_file, open_cache
from emergence_model.checkpoint import save_checkpoint
from emergence_model.cli import add_config_arguments, config_from_args, exit_on_user_error
from emergence_model.data import predictor_config_for
from emergence_model.demo.caches import prepare_demo_caches
from emergence_model.evaluate import (
    NOT_TRAINED,
    EvalConfig,
    describe_folds,
    evaluate_cache,
    fold_parts,
    held_out_by,
    make_baselines,
    training_folds,
)
from emergence_model.model import PredictorConfig
from emergence_model.report import format_table, write_reports
from emergence_model.splits import fold_splits
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
    parser.add_argument(
        "--run-dir", help="logs and reports (default: runs/NAME beside the checkpoint NAME.ckpt)"
    )
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
    """Train, evaluate in-domain and on transfer, save the checkpoint; returns the summaries.

    Everything that can be checked is checked before anything is written: the caches, the
    output paths, the hardware, the network's shape against the cache and the split."""
    out = check_output_file(out, "--out")
    run_dir = check_cache_destination(run_dir or default_run_dir(out), "--run-dir")
    check_hardware(train_config)
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
    predictor_config_for(cache, predictor_config)  # at least two small models and a target
    c = train_config
    fold_splits(cache.prefixes, c.folds, c.val_fraction, c.test_fraction, c.seed)  # enough rows
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
    # A transfer cache may share prefixes with the training cache: those are scored by the fold's
    # network that never saw them, as in-domain, and the summary says so.
    prefix_folds = held_out_by(cache.prefixes, splits)
    for other in transfers:
        seen = training_folds(other.prefixes, {"data": {"prefix_folds": prefix_folds}})
        if (seen == NOT_TRAINED).all():
            summary = evaluate_cache(other, [(None, strategies)], **evaluation)
        else:
            parts = fold_parts(predictor, names, target, make_baselines(params=baselines), seen)
            description, notes = describe_folds(seen, f"{out.name}'s training prefixes")
            summary = evaluate_cache(other, parts, rows_description=description, **evaluation)
            summary["notes"] = notes
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
            # which network never saw each training prefix: evaluation finds them in any cache
            "prefix_folds": prefix_folds,
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


def default_run_dir(out: Path) -> Path:
    """Where a checkpoint's logs, fold networks and reports go: runs/NAME beside it, so that
    checkpoints of one name in two directories never share a run."""
    return out.parent / "runs" / out.stem


def check_hardware(config: TrainConfig) -> None:
    """Refuse an accelerator this machine lacks, or a device count or precision Lightning would
    refuse, before anything is built or written."""
    from pytorch_lightning.accelerators import AcceleratorRegistry

    accelerator = config.accelerator
    known = {"auto", "gpu", *AcceleratorRegistry.available_accelerators()}
    if accelerator not in known:
        raise ValueError(f"--accelerator {accelerator!r} is not one of {', '.join(sorted(known))}")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available() and not (
            accelerator == "gpu" and torch.backends.mps.is_available()
        ):
            raise ValueError(
                f"--accelerator {accelerator}: torch sees no GPU on this machine (a CPU build of "
                "torch, no driver, or CUDA_VISIBLE_DEVICES hides it); use --accelerator cpu or auto"
            )
        count = torch.cuda.device_count()
        if config.devices.isdigit() and int(config.devices) > max(count, 1):
            raise ValueError(
                f"--devices {config.devices}: this machine has {count} GPU(s); use --devices "
                f"{count} or fewer"
            )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--accelerator mps: MPS is not available here; use --accelerator cpu")
    if config.devices.isdigit() and int(config.devices) == 0:
        raise ValueError("--devices 0 trains on nothing; give at least 1 (or auto)")
    try:
        from lightning_fabric.connector import _PRECISION_INPUT
    except ImportError:  # another Lightning: it checks --precision itself
        return
    allowed = {str(a) for a in _flat_literal(_PRECISION_INPUT)}
    if allowed and config.precision not in allowed:
        raise ValueError(
            f"--precision {config.precision!r} is not one of {', '.join(sorted(allowed))}"
        )


def _flat_literal(hint) -> list:
    args = typing.get_args(hint)
    return [v for a in args for v in (_flat_literal(a) if typing.get_args(a) else [a])]


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
    return run(
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
