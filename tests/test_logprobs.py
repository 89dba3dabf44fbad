import math

import numpy as np
import pytest
import torch

from emergence_model.logprobs import (
    LOG_PROB_FLOOR,
    PROB_FLOOR,
    as_tensor,
    cast,
    floor_logprobs,
    probs_to_logprobs,
    rows_per_chunk,
)


def test_floor_is_the_smallest_float16_subnormal():
    assert LOG_PROB_FLOOR == pytest.approx(
        math.log(torch.finfo(torch.float16).smallest_normal / 1024)
    )
    x = torch.tensor([0.0, -5.0, -40.0, -math.inf])
    assert floor_logprobs(x).tolist() == pytest.approx([0.0, -5.0, LOG_PROB_FLOOR, LOG_PROB_FLOOR])
    assert probs_to_logprobs(torch.tensor([0.0, 1.0], dtype=torch.float16)).tolist() == (
        pytest.approx([LOG_PROB_FLOOR, 0.0])
    )
    assert PROB_FLOOR == 2.0**-24


def test_casts_round_as_numpy_does_and_views_share_memory():
    x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32) * 30
    assert np.array_equal(cast(x, "float16"), x.astype(np.float16))
    view = as_tensor(x)
    view[0, 0] = 1.5
    assert x[0, 0] == 1.5 and as_tensor(view) is view


def test_a_chunk_holds_at_least_one_row():
    assert rows_per_chunk(7, 50277) == 2
    assert rows_per_chunk(10_000, 10_000) == 1
