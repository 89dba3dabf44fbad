"""The training data: rows of a feature cache, read through its memory map, as Lightning data.

`CacheRows` is a torch Dataset of one cache's rows (small models' log-probs, the target's top
token and, for the soft loss, the target's log-probs); `CacheDataModule` serves the train /
validation / test rows of a split (`folds.py`) of one opened cache. Under DDP each process takes
its part of every batch one process would draw (`RankBatches`), so that N devices at --batch-size B
take the steps one device takes at N x B.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from emergence_model.cache import FeatureCache
from emergence_model.folds import Split
from emergence_model.model import PredictorConfig


class CacheRows(Dataset):
    """Rows of a cache: small models' log-probs (M - 1, V) in the cache dtype, the target's top
    token, and (for the soft loss) the target's log-probs (V,). A DataLoader worker gets the cache
    pickled as its path (`FeatureCache.__reduce__`) and opens its own memory map."""

    def __init__(self, cache: FeatureCache, indices: np.ndarray, with_target_logprobs: bool):
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        self.with_target_logprobs = with_target_logprobs

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


class RankBatches(BatchSampler):
    """The batches of `batch_size * world_size` rows that one process would draw from `sampler`,
    each cut into `world_size` interleaved parts, of which this rank's. DDP averages the ranks'
    gradients, which for equal parts is the gradient of the whole batch: a step is one process's
    step, to float rounding. A last batch of fewer rows than ranks: a training rank without a
    row takes one of the batch's again (every rank must step), a validation rank skips it."""

    def __init__(
        self, sampler, batch_size: int, rank: int, world_size: int, *, training: bool
    ) -> None:
        super().__init__(sampler, batch_size * world_size, drop_last=False)
        self.rank, self.world_size, self.training = rank, world_size, training

    def __iter__(self):
        for batch in super().__iter__():
            part = batch[self.rank :: self.world_size]
            if not part:
                if not self.training:
                    continue
                part = [batch[self.rank % len(batch)]]
            yield part


def predictor_config_for(cache: FeatureCache, base: PredictorConfig) -> PredictorConfig:
    """`base` with the cache's small models, their scales and its vocabulary filled in."""
    if cache.num_models < 2:
        raise ValueError(
            f"{cache.path} holds {cache.num_models} model; the predictor needs at least one "
            "small model and a target"
        )
    return dataclasses.replace(
        base,
        num_models=cache.num_models - 1,
        vocab_size=cache.vocab_size,
        scales=list(cache.scales[:-1]),
        target_scale=cache.scales[-1],
    )


class CacheDataModule(pl.LightningDataModule):
    """The train / val / test rows of `split` of one opened cache."""

    def __init__(
        self,
        cache: FeatureCache,
        split: Split,
        *,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        with_target_logprobs: bool = False,
    ) -> None:
        super().__init__()
        self.cache = cache
        self.train_idx, self.val_idx, self.test_idx = split
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.with_target_logprobs = with_target_logprobs

    def _loader(self, indices: np.ndarray, shuffle: bool) -> DataLoader:
        dataset = CacheRows(self.cache, indices, self.with_target_logprobs)
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        sampler = (
            RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        )
        trainer = getattr(self, "trainer", None)  # None outside a Lightning run: one process
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return DataLoader(
            dataset,
            batch_sampler=RankBatches(sampler, self.batch_size, rank, world_size, training=shuffle),
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_idx, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_idx, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_idx, shuffle=False)
