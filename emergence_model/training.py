"""Training the predictor with Lightning.

`PredictorModule` wraps a `PerTokenPredictor` (the plain nn.Module in model.py): its logits learn
the target's top token (KL to the target's distribution sharpened at `target_temperature`, or
cross-entropy to its top token with `soft_weight` 0), with torchmetrics top-1 / top-5 agreement
per stage; the predicted distribution's mixture is fitted afterwards (`fit_member_mixture`).
`fit_predictor` trains one network on a split of an opened cache (`data.py` serves its rows) with
checkpointing on validation agreement, early stopping and CSV logs; `fit_cross_fitted` trains one
per fold and keeps each finished one, so an interrupted run resumes. `TrainConfig`'s fields are
train.py's flags (`cli.add_config_arguments`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pickle
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.tuner import Tuner
from pytorch_lightning.utilities import rank_zero_only
from torchmetrics.classification import MulticlassAccuracy

from emergence_model.cache import FeatureCache
from emergence_model.checkpoint import CHECKPOINT_FORMAT
from emergence_model.data import CacheDataModule, predictor_config_for
from emergence_model.files import atomic_file, write_json_atomic
from emergence_model.folds import Folds, Split, split_indices
from emergence_model.logprobs import floor_logprobs
from emergence_model.model import (
    PREDICTOR_DESIGN,
    PerTokenPredictor,
    PredictorConfig,
    fit_mixture,
    mixture_components,
)


@dataclass
class TrainConfig:
    """How the predictor is trained (everything but the network's shape)."""

    batch_size: int = 32
    """Prefixes per training batch on each device (with --devices N under DDP, a step's batch
    is N times as many: the step one device takes at N x this)."""
    steps: int = 3000
    """Optimizer steps a fold's network trains for: as many passes over its training prefixes as
    make this many steps (at most --max-epochs), so that a small training set is passed over
    more often; early stopping may end it sooner, but not before half of them."""
    max_epochs: int = 100
    """Passes over the training prefixes, at most."""
    monitor: str = "loss"
    """What keeps the best epoch's network and stops training early: the validation prefixes'
    loss, or their top-1 agreement (coarse on a few prefixes: it may keep an early epoch's)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW (cosine decay after a short warm-up)."""
    lr_find: bool = False
    """Choose the peak learning rate with Lightning's learning-rate finder instead of --lr: 100
    steps on the fold's training prefixes with the rate rising from 1e-5 to 1, then a tenth of
    the rate where the loss was lowest (the fold's metrics record it)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    soft_weight: float = 1.0
    """The logits' loss = (1 - w) * cross-entropy to the target's top token + w * KL(target at
    --target-temperature || softmax(logits)). 0: cross-entropy alone."""
    target_temperature: float = 0.25
    """Temperature of the target distribution in the logits' KL term (< 1 sharpens it towards
    its top token; 1: the target's own distribution)."""
    mixture: bool = True
    """Fit the predicted distribution as a mixture of each small model's distribution and their
    mean, weights chosen on each fold's validation prefixes (least KL from the target; its mode
    is the network's guess either way). --no-mixture: the mean alone."""
    train_fraction: float = 1.0
    """Share of each fold's training prefixes used (a learning curve; 1: all)."""
    max_train_prefixes: int = 0
    """Learn from at most this many prefixes of the training cache, drawn at random (--seed), as
    a user with a small labelled set would: the folds, their validation prefixes and the choice
    of guide use them alone, and the cache's other prefixes are scored as unseen ones. 0: all."""
    folds: int = 5
    """Cross-fitting: train one network per fold of the prefixes, each never seeing its fold,
    score every prefix with the network that did not see it (in-domain results over all
    prefixes) and save the ensemble of the networks. 1: one network, --test-fraction held out."""
    val_fraction: float = 0.05
    """Share of prefixes held out for validation (checkpoint choice and early stopping)."""
    test_fraction: float = 0.2
    """With --folds 1: share of prefixes held out for the in-domain evaluation."""
    seed: int = 0
    """Seed of the split, the initialisation and the batch order."""
    patience: int = 3
    """Epochs without a better validation top-1 before early stopping."""
    num_workers: int = 0
    """DataLoader worker processes (each opens the cache's memory map itself)."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu, ..."""
    devices: str = "auto"
    """Lightning devices: auto, 1, 2, "0,1", ..."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, ..."""
    precision: str = "32-true"
    """Lightning precision, e.g. 32-true or bf16-mixed."""
    fast_dev_run: bool = False
    """Run one training and one validation batch only (a smoke test)."""
    progress: bool = field(default=True, metadata={"cli": False})
    """Show Lightning's progress bar (its flag: --progress/--no-progress, cli.RunOptions)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_epochs < 1:
            raise ValueError(f"--max-epochs must be at least 1, got {self.max_epochs}")
        if self.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {self.steps}")
        if self.monitor not in ("loss", "top1"):
            raise ValueError(f"--monitor must be loss or top1, got {self.monitor!r}")
        if not 0.0 <= self.soft_weight <= 1.0:
            raise ValueError(f"--soft-weight must be in [0, 1], got {self.soft_weight}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"--train-fraction must be in (0, 1], got {self.train_fraction}")
        if self.target_temperature <= 0:
            raise ValueError(
                f"--target-temperature must be positive, got {self.target_temperature}"
            )
        if self.max_train_prefixes < 0:
            raise ValueError(
                f"--max-train-prefixes must be 0 (all) or more, got {self.max_train_prefixes}"
            )
        if self.folds < 1:
            raise ValueError(f"--folds must be at least 1, got {self.folds}")
        if self.val_fraction <= 0 or self.test_fraction < 0:
            raise ValueError("--val-fraction must be positive and --test-fraction not negative")
        if self.val_fraction + self.held_out_fraction >= 1.0:
            raise ValueError(
                f"--val-fraction {self.val_fraction} and a held-out share of "
                f"{self.held_out_fraction:.2f} (--folds, --test-fraction) leave nothing to train on"
            )

    def steps_per_epoch(self, train_rows: int, world_size: int = 1) -> int:
        """Optimizer steps in one pass over `train_rows` prefixes: one process's batches, shared
        among `world_size` processes under DDP (data.RankBatches)."""
        return max(1, math.ceil(math.ceil(train_rows / self.batch_size) / world_size))

    def learnt_rows(self, train_rows: int) -> int:
        """How many of a split's `train_rows` training prefixes a network learns from
        (--train-fraction)."""
        if self.train_fraction == 1:
            return train_rows
        return max(1, round(self.train_fraction * train_rows))

    def epochs_for(self, train_rows: int, world_size: int = 1) -> int:
        """Passes over `train_rows` training prefixes that make --steps steps, at most
        --max-epochs."""
        per_epoch = self.steps_per_epoch(train_rows, world_size)
        return max(1, min(self.max_epochs, math.ceil(self.steps / per_epoch)))

    @property
    def monitored(self) -> tuple[str, str]:
        """The logged metric that keeps the best epoch and stops early, and its better way."""
        return ("val/loss", "min") if self.monitor == "loss" else ("val/top1", "max")

    @property
    def held_out_fraction(self) -> float:
        return self.test_fraction if self.folds == 1 else 1.0 / self.folds

    def folds_of(self, prefixes: Sequence[str]) -> Folds:
        """The cross-fitting folds of a training cache's `prefixes` that these settings make."""
        return Folds.of(
            prefixes,
            self.folds,
            self.val_fraction,
            self.test_fraction,
            self.seed,
            self.max_train_prefixes,
        )


MEMBER_FILE = "member.pt"
# A line for the user from the first process only: under DDP every process runs this code.
print_once = rank_zero_only(print)


class PredictorModule(pl.LightningModule):
    """How the predictor is trained and validated; the network itself is `self.predictor`."""

    def __init__(self, predictor_config: dict, train_config: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.predictor = PerTokenPredictor(PredictorConfig(**predictor_config))
        self.train_config = TrainConfig(**train_config)
        v = self.predictor.config.vocab_size
        self.train_top1 = MulticlassAccuracy(num_classes=v, top_k=1, average="micro")
        self.val_top1 = MulticlassAccuracy(num_classes=v, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes=v, top_k=min(5, v), average="micro")

    def forward(self, logprobs: torch.Tensor) -> torch.Tensor:
        return self.predictor(logprobs)

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """The logits' loss: cross-entropy to the target's top token and KL to the target's
        distribution sharpened at `target_temperature`, weighted by `soft_weight`."""
        c = self.train_config
        w = c.soft_weight
        log_q = F.log_softmax(logits, dim=-1)
        loss = log_q.new_zeros(())
        if w < 1:
            loss = loss + (1 - w) * F.nll_loss(log_q, batch["target"])
        if w > 0:
            log_t = F.log_softmax(batch["target_logprobs"].float() / c.target_temperature, dim=-1)
            loss = loss + w * F.kl_div(log_q, log_t, log_target=True, reduction="batchmean")
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["logprobs"])
        loss = self.loss(logits, batch)
        self.train_top1(logits, batch["target"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/top1", self.train_top1, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["logprobs"])
        self.val_top1(logits, batch["target"])
        self.val_top5(logits, batch["target"])
        self.log("val/loss", self.loss(logits, batch), sync_dist=True)
        self.log("val/top1", self.val_top1, prog_bar=True)
        self.log("val/top5", self.val_top5)

    def configure_optimizers(self):
        cfg = self.train_config
        optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, total // 50)
        schedule = torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [
                torch.optim.lr_scheduler.LinearLR(optimizer, 0.1, 1.0, total_iters=warmup),
                torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total - warmup)),
            ],
            milestones=[warmup],
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _lightning_devices(devices: str) -> int | str | list[int]:
    if devices.isdigit() or (devices.startswith("-") and devices[1:].isdigit()):
        return int(devices)
    return devices


def fit_predictor(
    cache: FeatureCache,
    predictor_config: PredictorConfig,
    train_config: TrainConfig,
    run_dir: str | Path,
    split: Split | None = None,
) -> tuple[PerTokenPredictor, CacheDataModule, dict]:
    """Train one network on the training rows of `split` (default: from the config's seed);
    returns the network with the best validation top-1, the data module and its metrics."""
    pl.seed_everything(train_config.seed, workers=True, verbose=False)
    run_dir = Path(run_dir)
    # A new fit: an earlier run's best checkpoint here would be mistaken for this one's.
    if rank_zero_only.rank == 0:
        shutil.rmtree(run_dir / "lightning", ignore_errors=True)
    c = train_config
    if split is None:
        split = split_indices(cache.prefixes, c.val_fraction, c.test_fraction, c.seed)
    if c.train_fraction < 1:
        train_rows = split[0]
        keep = np.random.default_rng(c.seed).permutation(len(train_rows))
        keep = np.sort(keep[: c.learnt_rows(len(train_rows))])
        split = (train_rows[keep], split[1], split[2])
    config = predictor_config_for(cache, predictor_config).for_training(len(split[0]))
    data = CacheDataModule(
        cache,
        split,
        batch_size=c.batch_size,
        seed=c.seed,
        num_workers=c.num_workers,
        with_target_logprobs=c.soft_weight > 0,
    )
    module = PredictorModule(dataclasses.asdict(config), dataclasses.asdict(train_config))
    monitor, mode = c.monitored
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "lightning",
        filename="best-{epoch}",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
    )
    trainer = pl.Trainer(
        accelerator=train_config.accelerator,
        devices=_lightning_devices(train_config.devices),
        strategy=train_config.strategy,
        precision=train_config.precision,
        max_epochs=c.max_epochs,  # set below, once the number of processes is known
        fast_dev_run=train_config.fast_dev_run,
        callbacks=[
            checkpoint,
            EarlyStopping(monitor=monitor, mode=mode, patience=train_config.patience),
        ],
        logger=CSVLogger(run_dir, name="logs"),
        default_root_dir=run_dir,
        log_every_n_steps=max(1, min(10, len(data.train_idx) // train_config.batch_size)),
        gradient_clip_val=1.0,
        deterministic="warn",  # gather's backward has no deterministic CUDA kernel
        enable_progress_bar=train_config.progress,
        enable_model_summary=False,
        # under DDP each process takes its part of one process's batches (data.RankBatches)
        use_distributed_sampler=False,
    )
    # --steps steps in all, whatever the number of processes sharing each pass
    per_epoch = c.steps_per_epoch(len(data.train_idx), trainer.world_size)
    epochs = c.epochs_for(len(data.train_idx), trainer.world_size)
    trainer.fit_loop.max_epochs = epochs
    trainer.fit_loop.epoch_loop.min_steps = min(c.steps, epochs * per_epoch) // 2
    metrics = {}
    if c.lr_find and not c.fast_dev_run:
        if trainer.world_size > 1:  # each process would read its own loss curve and rate
            raise ValueError(
                "--lr-find needs a one-device run: find the rate with --devices 1, then pass it "
                "as --lr"
            )
        # Lightning's finder leaves the network as it was; its own suggestion, the steepest
        # descent of the loss, lands on the flat start of this network's curve (its outputs start
        # at zero), so the rate is a tenth of the one at the (smoothed) loss's minimum, skipping
        # the first 10 steps as Lightning's suggestion does (the smoothing has not settled).
        finder = Tuner(trainer).lr_find(
            module, datamodule=data, min_lr=1e-5, max_lr=1.0, num_training=100, update_attr=False
        )
        losses = np.asarray(finder.results["loss"], dtype=float)[10:]
        if not np.isfinite(losses).any():
            raise RuntimeError(
                "the learning-rate finder saw no finite loss: pass --lr, not --lr-find"
            )
        lr = float(finder.results["lr"][10 + int(np.nanargmin(losses))]) / 10
        module.train_config = dataclasses.replace(module.train_config, lr=lr)
        metrics["lr"] = lr
        print(f"learning rate from the finder: {lr:.3g}")
    trainer.fit(module, datamodule=data)
    if checkpoint.best_model_path:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])
        metrics["best_epoch"] = int(state["epoch"])
        metrics[f"best_val_{c.monitor}"] = float(checkpoint.best_model_score)
        if c.monitor != "top1":  # what predictor_ladders' table reads, whatever chose the epoch
            metrics["best_val_top1"] = validation_top1(module, data)
    metrics["epochs"] = int(trainer.current_epoch)
    predictor = module.predictor.cpu().eval()
    return predictor, data, metrics


@torch.no_grad()
def validation_top1(module: PredictorModule, data: CacheDataModule) -> float:
    """The top-1 agreement of `module`'s network on the validation prefixes of `data`."""
    module.eval()
    hits = total = 0
    for batch in data.val_dataloader():
        guess = module(batch["logprobs"].to(module.device)).argmax(dim=1).cpu()
        hits += int((guess == batch["target"]).sum())
        total += len(guess)
    return hits / max(total, 1)


def _fold_key(
    cache: FeatureCache,
    predictor_config: PredictorConfig,
    train_config: TrainConfig,
    split: Split,
) -> str:
    """What a fold's network depends on: the cache's contents, both configs and the split."""
    settings = dataclasses.asdict(train_config)
    del settings["progress"]  # how a run looks, not what it computes
    del settings["mixture"]  # fitted after the network, on its validation prefixes
    identity = {
        # a network saved in another file format, or one that this version's code would
        # compute differently from the same weights, is trained again
        "format": CHECKPOINT_FORMAT,
        "design": PREDICTOR_DESIGN,
        **cache.content_key(),
        "predictor": predictor_config.computes(),
        "training": settings,
        "split": [part.tolist() for part in split],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _load_member(path: Path, key: str) -> tuple[PerTokenPredictor, dict] | None:
    """A fold's network saved by an earlier run with the same key, else None.

    A missing file, a torn one (a crash or a full disk mid-write; `torch.save` writes a zip
    archive whose index comes last, so a torn file is not a zip), one of another version that
    `weights_only` refuses, or one saved for another key is trained again; anything else is a bug
    and raises.
    """
    if not path.is_file():
        return None
    if not zipfile.is_zipfile(path):
        print(f"{path} is torn (not a complete torch.save archive): training that fold again")
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        print(f"{path} is not this version's ({e.__class__.__name__}): training that fold again")
        return None
    if not isinstance(saved, dict) or saved.get("key") != key:
        return None  # another cache, configuration or split: the key covers them all
    predictor = PerTokenPredictor(PredictorConfig(**saved["config"]))
    predictor.load_state_dict(saved["state_dict"])
    return predictor.eval(), saved["metrics"]


# Validation prefixes the mixture is fitted on, at most: enough for its M + 1 weights, and
# (rows, M + 1, V) float32 stays under half a GiB at Pythia's vocabulary.
MIXTURE_ROWS = 256


@torch.no_grad()
def fit_member_mixture(
    predictor: PerTokenPredictor, cache: FeatureCache, rows: np.ndarray
) -> torch.Tensor:
    """Set the mixture weights of `predictor` (one head) to those with the least KL from the
    target on `rows` of `cache` (at most MIXTURE_ROWS of them, evenly spaced); returns them."""
    if len(predictor.heads) != 1:
        raise ValueError("fit_member_mixture fits one head: call it on a fold's network")
    rows = np.asarray(rows)
    if len(rows) > MIXTURE_ROWS:
        rows = rows[np.linspace(0, len(rows) - 1, MIXTURE_ROWS).round().astype(np.int64)]
    data = torch.from_numpy(cache.rows(rows))  # (N, M + 1, V) float32: the target last
    components = mixture_components(floor_logprobs(data[:, :-1]))
    weights = fit_mixture(components, F.softmax(data[:, -1], dim=-1))
    predictor.heads[0].mixture.copy_(weights)
    return weights


def fit_cross_fitted(
    cache: FeatureCache,
    predictor_config: PredictorConfig,
    train_config: TrainConfig,
    run_dir: str | Path,
    folds: Folds | None = None,
) -> tuple[PerTokenPredictor, Folds, dict]:
    """One network per fold of `folds` (run_dir/fold-K; default: `train_config.folds_of` the
    cache's prefixes), joined into an ensemble whose head K never saw the test rows of split K;
    returns it, the folds and per-fold metrics.

    Each finished fold's network is kept in run_dir/fold-K/member.pt: a run interrupted after
    some folds (or repeated with the same cache, configs and split) trains only the others.
    """
    c = train_config
    if folds is None:
        folds = c.folds_of(cache.prefixes)
    # one shape for every fold's network, so that they join into an ensemble
    predictor_config = predictor_config.for_training(
        min(c.learnt_rows(len(split[0])) for split in folds.splits)
    )
    members, metrics = [], {}
    for k, split in enumerate(folds.splits):
        fold_dir = Path(run_dir) / f"fold-{k}"
        key = _fold_key(cache, predictor_config, train_config, split)
        saved = None if c.fast_dev_run else _load_member(fold_dir / MEMBER_FILE, key)
        if saved is not None:
            print_once(
                f"fold {k + 1}/{len(folds)}: reusing the network in {fold_dir / MEMBER_FILE}"
            )
            predictor, fold_metrics = saved
        else:
            print_once(
                f"fold {k + 1}/{len(folds)}: {len(split[0])} training, {len(split[1])} "
                f"validation, {len(split[2])} held-out prefixes"
            )
            predictor, _, fold_metrics = fit_predictor(
                cache, predictor_config, train_config, fold_dir, split
            )
            if not c.fast_dev_run and rank_zero_only.rank == 0:
                with atomic_file(fold_dir / MEMBER_FILE) as f:
                    torch.save(
                        {
                            "key": key,
                            "config": dataclasses.asdict(predictor.config),
                            "state_dict": predictor.state_dict(),
                            "metrics": fold_metrics,
                        },
                        f,
                    )
        weights = fit_member_mixture(predictor, cache, split[1]) if c.mixture else None
        if weights is not None:
            print_once(
                f"fold {k + 1}/{len(folds)}: mixture {[round(w, 3) for w in weights.tolist()]}"
            )
        members.append(predictor)
        metrics[f"fold-{k}"] = fold_metrics
    return PerTokenPredictor.ensemble(members).eval(), folds, metrics


def write_config(path: str | Path, **configs) -> Path:
    """The resolved configuration as JSON (next to the checkpoint it made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    resolved = {
        k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in configs.items()
    }
    write_json_atomic(path, resolved, default=str)
    return path
