import pickle

import numpy as np
import pytest

from emergence_model.data import CacheDataModule, CacheRows, predictor_config_for
from emergence_model.folds import split_indices
from emergence_model.model import PredictorConfig


def test_data_module_reads_rows_of_the_cache(tiny_cache):
    split = split_indices(tiny_cache.prefixes, 0.1, 0.2, seed=0)
    data = CacheDataModule(tiny_cache, split, batch_size=4, seed=0, with_target_logprobs=True)
    batch = next(iter(data.train_dataloader()))
    m, v = tiny_cache.num_models, tiny_cache.vocab_size
    assert batch["logprobs"].shape == (4, m - 1, v)
    rows = data.train_idx
    assert set(batch["target"].tolist()) <= set(tiny_cache.target_argmax[rows].tolist())
    assert batch["target_logprobs"].shape == (4, v)
    config = predictor_config_for(tiny_cache, PredictorConfig())
    assert config.num_models == m - 1 and config.vocab_size == v
    assert config.scales == tiny_cache.param_counts[:-1] == tiny_cache.scales[:-1]
    assert config.target_scale == tiny_cache.param_counts[-1]


def test_rows_hold_the_cache_row_and_pickle_as_the_cache_path(tiny_cache):
    rows = CacheRows(tiny_cache, np.array([3, 1]), with_target_logprobs=False)
    item = rows[1]
    np.testing.assert_array_equal(item["logprobs"].numpy(), tiny_cache.logprobs[1, :-1])
    assert int(item["target"]) == tiny_cache.target_argmax[1] and "target_logprobs" not in item
    # a DataLoader worker gets the cache as its path and opens its own memory map
    copy = pickle.loads(pickle.dumps(rows))
    assert copy.cache is not tiny_cache and copy.cache.path == tiny_cache.path
    np.testing.assert_array_equal(copy[0]["logprobs"].numpy(), tiny_cache.logprobs[3, :-1])


def test_a_cache_of_the_target_alone_is_refused(tmp_path):
    from synthetic_cache import write_synthetic_cache

    cache = write_synthetic_cache(tmp_path / "c", num_prefixes=10, param_counts=(1,))
    with pytest.raises(ValueError, match="at least one small model and a target"):
        predictor_config_for(cache, PredictorConfig())


def test_each_rank_takes_its_part_of_the_batches_one_process_draws():
    import torch
    from torch.utils.data import BatchSampler, RandomSampler

    from emergence_model.data import RankBatches

    def sampler():  # one process's shuffle, drawn alike in every rank
        return RandomSampler(range(21), generator=torch.Generator().manual_seed(0))

    whole = list(BatchSampler(sampler(), 8, drop_last=False))  # one process at batch 8
    assert list(RankBatches(sampler(), 8, 0, 1, training=True)) == whole
    parts = [list(RankBatches(sampler(), 4, rank, 2, training=True)) for rank in range(2)]
    assert [sorted(a + b) for a, b in zip(*parts, strict=True)] == [sorted(b) for b in whole]
    assert [len(p) for p in parts[0]] == [4, 4, 3] and [len(p) for p in parts[1]] == [4, 4, 2]
    # a last batch of fewer rows than ranks: a training rank repeats a row, a validation rank
    # has no last step
    short = [list(RankBatches(range(9), 2, rank, 4, training=True)) for rank in range(4)]
    assert [p[-1] for p in short] == [[8], [8], [8], [8]]
    assert list(RankBatches(range(9), 2, 3, 4, training=False)) == [[3, 7]]
