"""Train the predictor on a cache and evaluate it in-domain and on transfer: train.py's loop.

`train_and_evaluate` cross-fits the networks (`training.fit_cross_fitted`), scores every prefix
of the training cache with the network that never saw it and every transfer cache with the
ensemble (a prefix shared with the training cache by the fold's network that never saw it),
against the baselines tuned on the training prefixes, and saves the checkpoint. `train.py` is
its command line; the study's default run calls it for what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_only

from emergence_model.cache import (
    FeatureCache,
    check_cache_destination,
    check_output_file,
    open_cache,
)
from emergence_model.calibrate import CALIBRATION_FILE, calibrated_panel, calibration_rows
from emergence_model.checkpoint import save_checkpoint
from emergence_model.data import predictor_config_for
from emergence_model.evaluate import (
    EvalConfig,
    describe_folds,
    evaluate_cache,
    fold_parts,
    make_baselines,
    score_parts,
)
from emergence_model.files import LOCK_FILE, check_writable, lock_for_writing
from emergence_model.folds import NOT_TRAINED, Folds, fold_codes
from emergence_model.model import PerTokenPredictor, PredictorConfig
from emergence_model.report import format_table, write_reports
from emergence_model.selection import (
    Selection,
    candidate_guides,
    choose_guide,
    cross_fitted_selection,
    guided,
)
from emergence_model.strategies import (
    FIT_CHUNK_ROWS,
    NETWORK_GUIDE,
    ContrastiveExtrapolation,
    NetworkStrategy,
    check_same_models,
)
from emergence_model.training import TrainConfig, fit_cross_fitted, write_config
from emergence_model.vocab import TokenizerId, check_same_tokenizer

DEMO_CHECKPOINT = Path("checkpoints/demo.ckpt")
"""Where `python train.py` saves the offline demo's network (and the study looks for it)."""


def tune_baselines(cache, train_idx: np.ndarray) -> dict:
    """Baselines with parameters, tuned on the training split only."""
    contrastive = ContrastiveExtrapolation()

    def chunks():
        for start in range(0, len(train_idx), FIT_CHUNK_ROWS):
            rows = train_idx[start : start + FIT_CHUNK_ROWS]
            yield cache.rows(rows)[:, :-1], cache.target_argmax[rows]

    contrastive.fit(chunks(), cache.scales[:-1], cache.scales[-1])
    return {"contrastive": contrastive.params()}


def train_and_evaluate(
    train_cache: str | Path,
    transfer_caches: Sequence[str | Path],
    out: str | Path,
    predictor_config: PredictorConfig,
    train_config: TrainConfig,
    run_dir: str | Path | None = None,
    eval_config: EvalConfig | None = None,
) -> dict:
    """Train, evaluate in-domain and on transfer, save the checkpoint; returns the summaries.

    Everything that can be checked is checked before anything is written: the caches (their
    models and tokenizers), the output paths (that they can be written, with room for what
    goes there), the hardware, the network's shape against the cache and the split. One run at
    a time writes a checkpoint and its run directory: a second is refused while the first
    runs (`files.lock_for_writing`)."""
    out = check_output_file(out, "--out")
    run_dir = check_cache_destination(run_dir or default_run_dir(out), "--run-dir")
    check_hardware(train_config)
    cache = open_cache(train_cache)
    transfers = [open_cache(p) for p in transfer_caches]
    eval_config = eval_config or EvalConfig()
    tokenizer = TokenizerId.of_cache(cache.meta)
    for other in transfers:
        check_same_models(
            cache.model_names,
            other.model_names,
            expected_vocab=cache.vocab_size,
            given_vocab=other.vocab_size,
            what=f"training cache {cache.path}",
            where=f"transfer cache {other.path}",
        )
        check_same_tokenizer(
            tokenizer,
            TokenizerId.of_cache(other.meta),
            f"training cache {cache.path}",
            f"transfer cache {other.path}",
            "score a network on caches of the tokenizer it is trained on",
        )
    network = predictor_config_for(cache, predictor_config)  # >= 2 small models and a target
    folds = train_config.folds_of(cache.prefixes)  # made once: trained, scored and recorded
    if eval_config.calibrate:
        check_calibration(transfers, folds.prefix_folds, eval_config.calibrate)
    per_head = parameter_bytes(network)
    with contextlib.ExitStack() as locks:
        if rank_zero_only.rank == 0:  # the other processes of a DDP run are part of its job
            check_writable(out.parent, "--out", len(folds) * per_head)
            # each fold: its network, Lightning's checkpoint (weights and two AdamW moments)
            check_writable(run_dir, "--run-dir", len(folds) * 4 * per_head)
            locks.enter_context(lock_for_writing(run_dir / LOCK_FILE, f"the run {run_dir}"))
            lock = out.with_name(f".{out.name}.lock")
            locks.enter_context(lock_for_writing(lock, f"the checkpoint {out}"))
        return _train_and_report(
            cache, transfers, out, predictor_config, train_config, run_dir, eval_config, folds
        )


def parameter_bytes(config: PredictorConfig) -> int:
    """Bytes of one head's weights (float32) for `config`, counted without allocating them."""
    with torch.device("meta"):
        head = PerTokenPredictor(dataclasses.replace(config, num_heads=1))
    return 4 * sum(p.numel() for p in head.parameters())


def _train_and_report(
    cache: FeatureCache,
    transfers: Sequence[FeatureCache],
    out: Path,
    predictor_config: PredictorConfig,
    train_config: TrainConfig,
    run_dir: Path,
    eval_config: EvalConfig,
    folds: Folds,
) -> dict:
    """`train_and_evaluate`'s work, once everything is checked and locked."""
    tokenizer = TokenizerId.of_cache(cache.meta)
    predictor, _, metrics = fit_cross_fitted(cache, predictor_config, train_config, run_dir, folds)
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
    evaluation = dict(
        num_bootstrap=eval_config.bootstrap,
        seed=eval_config.bootstrap_seed,
        chunk_rows=eval_config.chunk_rows,
    )
    # baselines tuned on each fold's training rows, and on all training rows for the ensemble
    fold_baselines = [make_baselines(params=tune_baselines(cache, s[0])) for s in folds.splits]
    baselines = tune_baselines(cache, np.unique(np.concatenate([s[0] for s in folds.splits])))
    print(f"baselines tuned on the training prefixes: {baselines}")
    members = [NetworkStrategy(predictor.member(k), names, target) for k in range(len(folds))]
    selection = select_guides(cache, members, folds, fold_baselines, baselines, evaluation)
    for line in selection.describe():
        print(line)
    # in-domain: each fold's rows scored by the network that never saw them, guessing with the
    # guide chosen for it, against baselines tuned on that fold's training rows
    parts = [
        (
            test,
            {
                **fold_baselines[k],
                NETWORK_ALONE: members[k],
                "network": guided(members[k], selection.choice(k)),
            },
        )
        for k, (_, _, test) in enumerate(folds.splits)
    ]
    rows = (
        "held-out test prefixes"
        if len(folds) == 1
        else f"every prefix, by the network of the {len(folds)} that never saw it"
    )
    in_domain = evaluate_cache(cache, parts, rows_description=rows, **evaluation)
    in_domain["notes"] = selection.describe()
    in_domain["selection"] = selection.record()
    panels = [(f"in-domain ({cache.path.name})", in_domain)]
    ensemble = NetworkStrategy(predictor, names, target)
    strategies = {
        **make_baselines(params=baselines),
        NETWORK_ALONE: ensemble,
        "network": guided(ensemble, selection.ensemble),
    }
    unseen = folds.unseen_rows(len(cache))
    if unseen.size:  # --max-train-prefixes: the training cache's prefixes no network learnt from
        learnt = len(cache) - len(unseen)
        rows = f"the prefixes outside the {learnt} learnt from, by the ensemble"
        summary = evaluate_cache(cache, [(unseen, strategies)], rows_description=rows, **evaluation)
        summary["notes"] = [selection.ensemble.describe("the network")]
        panels.append((f"unseen ({cache.path.name})", summary))
    # A transfer cache may share prefixes with the training cache: those are scored by the fold's
    # network that never saw them, as in-domain, and the summary says so.
    pools = {}
    for other in transfers:
        seen = folds.codes(other.prefixes)
        if eval_config.calibrate:
            rows, calibrated, pool = calibrated_panel(
                other, strategies, eval_config.calibrate, eval_config.calibration_seed
            )
            description = f"the prefixes not among the {eval_config.calibrate} calibrating"
            summary = evaluate_cache(
                other, [(rows, calibrated)], rows_description=description, **evaluation
            )
            pools[other.path.name] = pool
        elif (seen == NOT_TRAINED).all():
            summary = evaluate_cache(other, [(None, strategies)], **evaluation)
        else:
            parts = fold_parts(
                predictor, names, target, make_baselines(params=baselines), seen, selection
            )
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
            **folds.record(),  # which network never saw each training prefix, and the split
        },
        train_config=dataclasses.asdict(train_config),
        tokenizer=tokenizer,
        selection=selection,
    )
    print()
    written = [
        *write_reports(run_dir / "report", panels),
        *(
            pool.save(run_dir / "report" / f"{name}.{CALIBRATION_FILE}")
            for name, pool in pools.items()
        ),
        config_path,
    ]
    for path in written:
        print(f"wrote {path}")
    print(f"saved {out}: use it with emergence_model.load_strategy({str(out)!r})")
    return dict(panels)


NETWORK_ALONE = "network alone"
"""The leaderboard's name for the network guessing alone, beside "network", the predictor that
guesses with the guide chosen for it (`selection`)."""


def select_guides(
    cache,
    members: Sequence[NetworkStrategy],
    folds: Folds,
    fold_baselines: Sequence[dict],
    baselines: dict,
    evaluation: dict,
) -> Selection:
    """The guide each fold's network guesses with, and the ensemble's (`selection`): with several
    folds, from every guide's guesses on each fold's held-out rows by the fold's network that
    never saw them; with one, on its validation rows."""
    held_out = [split[2] for split in folds.splits] if len(folds) > 1 else [folds.splits[0][1]]
    parts = [
        (rows, candidate_guides(members[k], fold_baselines[k])) for k, rows in enumerate(held_out)
    ]
    per_row = score_parts(cache, parts, evaluation["chunk_rows"])
    agree = {name: columns["top1"] for name, columns in per_row["strategies"].items()}
    row_folds = np.concatenate([np.full(len(rows), k) for k, rows in enumerate(held_out)])
    bootstrap = dict(num_bootstrap=evaluation["num_bootstrap"], seed=evaluation["seed"])
    params = [{name: b.params() for name, b in fold.items()} for fold in fold_baselines]
    if len(folds) == 1:
        read = "the validation prefixes"
        choice = choose_guide(agree, NETWORK_GUIDE, params=params[0], read=read, **bootstrap)
        return Selection(choice, [choice])
    return cross_fitted_selection(agree, row_folds, params, baselines, **bootstrap)


def check_calibration(transfers: Sequence, prefix_folds: dict[str, int], n: int) -> None:
    """Refuse --calibrate where a transfer cache is too small or shares prefixes with the
    training cache (their network is the fold's, not the calibrated ensemble)."""
    for other in transfers:
        if (fold_codes(prefix_folds, other.prefixes) != NOT_TRAINED).any():
            raise ValueError(
                f"--calibrate: transfer cache {other.path} shares prefixes with the training "
                "cache; calibrate on a cache of other prompts, or drop --calibrate"
            )
        calibration_rows(len(other), n)  # leaves something to score


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
