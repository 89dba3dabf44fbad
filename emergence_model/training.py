"""Training the predictor with Lightning: the data module over a cache and the training module.

`CacheDataModule` reads rows of a cache through its memory map (the cache never loads whole) and
splits it by prefix text, deterministically from a seed, into train / validation / test.
`PredictorModule` wraps a `PerTokenPredictor` (the plain nn.Module in model.py): cross-entropy
against the target's top token, or KL to the target's whole distribution (`soft_weight`), with
torchmetrics top-1 / top-5 agreement per stage. `fit_predictor` runs it all with checkpointing on
validation agreement, early stopping and CSV logs, and returns the best network.

Config dataclasses here are the single source of the command-line flags (`add_config_arguments`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from emergence_model.cache import FeatureCache, open_cache
from emergence_model.checkpoint import cache_fingerprint
from emergence_model.cli import field_docs
from emergence_model.files import atomic_file, write_json_atomic
from emergence_model.model import PerTokenPredictor, PredictorConfig


@dataclass
class TrainConfig:
    """How the predictor is trained (everything but the network's shape)."""

    batch_size: int = 32
    """Prefixes per training batch."""
    max_epochs: int = 4
    """Passes over the training prefixes (at most: early stopping may end sooner)."""
    lr: float = 3e-3
    """Peak learning rate of AdamW (cosine decay after a short warm-up)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    soft_weight: float = 0.0
    """Loss = (1 - w) * cross-entropy to the target's top token + w * KL(target || predicted)."""
    target_temperature: float = 1.0
    """Temperature of the target distribution in the KL term (< 1 sharpens it toward its top)."""
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
    patience: int = 2
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
    progress: bool = True
    """Show Lightning's progress bar."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_epochs < 1:
            raise ValueError(f"--max-epochs must be at least 1, got {self.max_epochs}")
        if not 0.0 <= self.soft_weight <= 1.0:
            raise ValueError(f"--soft-weight must be in [0, 1], got {self.soft_weight}")
        if self.target_temperature <= 0:
            raise ValueError(
                f"--target-temperature must be positive, got {self.target_temperature}"
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

    @property
    def held_out_fraction(self) -> float:
        return self.test_fraction if self.folds == 1 else 1.0 / self.folds


def split_indices(
    prefixes: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic (train, val, test) row indices; rows of one prefix text stay together, so
    a repeated prefix cannot leak from training into the held-out rows."""
    return fold_splits(prefixes, 1, val_fraction, test_fraction, seed)[0]


def fold_splits(
    prefixes: Sequence[str], folds: int, val_fraction: float, test_fraction: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(train, val, test) row indices per fold, by prefix text (repeats stay together).

    `folds` > 1: the tests of the folds partition the prefixes; 1: one split, `test_fraction`
    of the prefixes held out. Validation takes `val_fraction` of the prefixes from the rest."""
    texts = sorted(set(prefixes))
    order = np.random.default_rng(seed).permutation(len(texts))  # texts in a random order
    n_val = max(1, int(round(val_fraction * len(texts))))
    if folds == 1:
        n_test = int(round(test_fraction * len(texts)))
        test_parts = [order[:n_test]]
    else:
        test_parts = [order[k::folds] for k in range(folds)]
    text_row = {text: i for i, text in enumerate(texts)}
    row_text = np.array([text_row[p] for p in prefixes])
    splits = []
    for test in test_parts:
        rest = order[~np.isin(order, test)]
        if len(rest) <= n_val:
            raise ValueError(
                f"{len(texts)} distinct prefixes are too few for {folds} folds, val "
                f"{val_fraction} and test {test_fraction}: cache more prefixes or lower them"
            )
        part = np.zeros(len(texts), dtype=np.int8)  # 0 train, 1 val, 2 test
        part[rest[:n_val]] = 1
        part[test] = 2
        rows = part[row_text]
        splits.append(tuple(np.flatnonzero(rows == k) for k in (0, 1, 2)))
    return splits


MEMBER_FILE = "member.pt"


class CacheRows(Dataset):
    """Rows of a cache: small models' log-probs (M - 1, V) in the cache dtype, the target's top
    token, and (for the soft loss) the target's log-probs (V,). Opens the memory map lazily, so
    DataLoader workers each open their own instead of pickling the array."""

    def __init__(self, cache_path: str | Path, indices: np.ndarray, with_target_logprobs: bool):
        self.cache_path = Path(cache_path)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.with_target_logprobs = with_target_logprobs
        self._cache: FeatureCache | None = None

    @property
    def cache(self) -> FeatureCache:
        if self._cache is None:
            self._cache = open_cache(self.cache_path)
        return self._cache

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        row = int(self.indices[i])
        logprobs = np.array(self.cache.logprobs[row])  # (M, V), one read of the memory map
        item = {
            "logprobs": torch.from_numpy(logprobs[:-1]),
            "target": torch.tensor(int(self.cache.target_argmax[row])),
        }
        if self.with_target_logprobs:
            item["target_logprobs"] = torch.from_numpy(logprobs[-1])
        return item

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}


class CacheDataModule(pl.LightningDataModule):
    """Train / val / test rows of one cache: `split`, or by prefix from `TrainConfig.seed`."""

    def __init__(
        self,
        cache_path: str | Path,
        config: TrainConfig,
        split: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.cache_path = Path(cache_path)
        self.config = config
        cache = open_cache(self.cache_path)
        self.model_names = cache.model_names
        self.param_counts = cache.param_counts
        self.vocab_size = cache.vocab_size
        if cache.num_models < 3:
            raise ValueError(
                f"{cache.path} holds {cache.num_models} models; the predictor needs at least two "
                "small models and a target"
            )
        if split is None:
            split = split_indices(
                cache.prefixes, config.val_fraction, config.test_fraction, config.seed
            )
        self.train_idx, self.val_idx, self.test_idx = split

    def predictor_config(self, base: PredictorConfig) -> PredictorConfig:
        """`base` with the cache's models and vocabulary filled in."""
        return dataclasses.replace(
            base,
            num_models=len(self.param_counts) - 1,
            vocab_size=self.vocab_size,
            param_counts=list(self.param_counts[:-1]),
            target_param_count=self.param_counts[-1],
        )

    def _loader(self, indices: np.ndarray, shuffle: bool) -> DataLoader:
        dataset = CacheRows(self.cache_path, indices, self.config.soft_weight > 0)
        generator = torch.Generator().manual_seed(self.config.seed)
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=shuffle,
            generator=generator if shuffle else None,
            num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_idx, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_idx, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_idx, shuffle=False)


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
        w = self.train_config.soft_weight
        log_q = F.log_softmax(logits, dim=-1)
        loss = logits.new_zeros(())
        if w < 1:
            loss = loss + (1 - w) * F.nll_loss(log_q, batch["target"])
        if w > 0:
            log_p = F.log_softmax(
                batch["target_logprobs"].float() / self.train_config.target_temperature, dim=-1
            )
            loss = loss + w * F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
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
    cache_path: str | Path,
    predictor_config: PredictorConfig,
    train_config: TrainConfig,
    run_dir: str | Path,
    split: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[PerTokenPredictor, CacheDataModule, dict]:
    """Train one network on the training rows of `split` (default: from the config's seed);
    returns the network with the best validation top-1, the data module and its metrics."""
    pl.seed_everything(train_config.seed, workers=True, verbose=False)
    run_dir = Path(run_dir)
    # A new fit: an earlier run's best checkpoint here would be mistaken for this one's.
    if rank_zero_only.rank == 0:
        shutil.rmtree(run_dir / "lightning", ignore_errors=True)
    data = CacheDataModule(cache_path, train_config, split)
    config = data.predictor_config(predictor_config)
    module = PredictorModule(dataclasses.asdict(config), dataclasses.asdict(train_config))
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "lightning",
        filename="best-{epoch}",
        monitor="val/top1",
        mode="max",
        save_top_k=1,
    )
    trainer = pl.Trainer(
        accelerator=train_config.accelerator,
        devices=_lightning_devices(train_config.devices),
        strategy=train_config.strategy,
        precision=train_config.precision,
        max_epochs=train_config.max_epochs,
        fast_dev_run=train_config.fast_dev_run,
        callbacks=[
            checkpoint,
            EarlyStopping(monitor="val/top1", mode="max", patience=train_config.patience),
        ],
        logger=CSVLogger(run_dir, name="logs"),
        default_root_dir=run_dir,
        log_every_n_steps=max(1, min(10, len(data.train_idx) // train_config.batch_size)),
        gradient_clip_val=1.0,
        deterministic="warn",  # gather's backward has no deterministic CUDA kernel
        enable_progress_bar=train_config.progress,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    metrics = {}
    if checkpoint.best_model_path:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])
        metrics = {"best_val_top1": float(checkpoint.best_model_score)}
    metrics["epochs"] = int(trainer.current_epoch)
    predictor = module.predictor.cpu().eval()
    return predictor, data, metrics


def _fold_key(
    cache: FeatureCache,
    predictor_config: PredictorConfig,
    train_config: TrainConfig,
    split: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> str:
    """What a fold's network depends on: the cache (its models, prefixes, every model's top
    tokens and when and how it was made, so a rebuilt cache is not mistaken for the old one),
    both configs and the split."""
    settings = dataclasses.asdict(train_config)
    del settings["progress"]  # how a run looks, not what it computes
    identity = {
        "cache": cache_fingerprint(cache.model_names, cache.prefixes),
        "top_tokens": hashlib.sha256(np.ascontiguousarray(cache.argmax).tobytes()).hexdigest(),
        "made": {k: cache.meta.get(k) for k in ("created", "dtype", "extraction")},
        "predictor": dataclasses.asdict(predictor_config),
        "training": settings,
        "split": [part.tolist() for part in split],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _load_member(path: Path, key: str) -> tuple[PerTokenPredictor, dict] | None:
    """A fold's network saved by an earlier run with the same key, else None."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") != key:
            return None
        predictor = PerTokenPredictor(PredictorConfig(**saved["config"]))
        predictor.load_state_dict(saved["state_dict"])
    except Exception:  # missing, torn or from another version (weights_only runs no code)
        return None  # train the fold again
    return predictor.eval(), saved["metrics"]


def fit_cross_fitted(
    cache_path: str | Path,
    predictor_config: PredictorConfig,
    train_config: TrainConfig,
    run_dir: str | Path,
) -> tuple[PerTokenPredictor, list[tuple[np.ndarray, np.ndarray, np.ndarray]], dict]:
    """One network per fold of `fold_splits` (run_dir/fold-K), joined into an ensemble whose
    head K never saw the test rows of split K; returns it, the splits and per-fold metrics.

    Each finished fold's network is kept in run_dir/fold-K/member.pt: a run interrupted after
    some folds (or repeated with the same cache, configs and split) trains only the others.
    """
    cache = open_cache(cache_path)
    c = train_config
    splits = fold_splits(cache.prefixes, c.folds, c.val_fraction, c.test_fraction, c.seed)
    members, metrics = [], {}
    for k, split in enumerate(splits):
        fold_dir = Path(run_dir) / f"fold-{k}"
        key = _fold_key(cache, predictor_config, train_config, split)
        saved = None if c.fast_dev_run else _load_member(fold_dir / MEMBER_FILE, key)
        if saved is not None:
            print(f"fold {k + 1}/{len(splits)}: reusing the network in {fold_dir / MEMBER_FILE}")
            predictor, fold_metrics = saved
        else:
            print(
                f"fold {k + 1}/{len(splits)}: {len(split[0])} training, {len(split[1])} "
                f"validation, {len(split[2])} held-out prefixes"
            )
            predictor, _, fold_metrics = fit_predictor(
                cache_path, predictor_config, train_config, fold_dir, split
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
        members.append(predictor)
        metrics[f"fold-{k}"] = fold_metrics
    return PerTokenPredictor.ensemble(members).eval(), splits, metrics


# ---- command-line flags from config dataclasses ----


def _flag_type(annotation: str):
    base = annotation.replace(" | None", "").strip()
    return {"int": int, "float": float, "str": str, "bool": bool}.get(base)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One --flag per field of dataclass `cls` (fields marked cli=False are skipped)."""
    group = parser.add_argument_group(title)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        kind = _flag_type(str(f.type))
        if kind is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{docs.get(f.name, '')} (default: {f.default})"
        if kind is bool:
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=f.default,
                help=help_text,
            )
        else:
            group.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_text)


def config_from_args(cls: type, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def write_config(path: str | Path, **configs) -> Path:
    """The resolved configuration as JSON (next to the checkpoint it made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    resolved = {
        k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in configs.items()
    }
    write_json_atomic(path, resolved, default=str)
    return path
