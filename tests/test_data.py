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
