import numpy as np
import pytest

from emergence_model.demo.config import DemoConfig
from emergence_model.demo.pretrain import batch_windows, learning_rate, windows


def test_batch_order_depends_on_step_and_seed_only():
    num_windows, batch = 10, 4
    steps = [batch_windows(s, num_windows, batch, seed=3) for s in range(5)]
    flat = np.concatenate(steps)
    assert sorted(flat[:10]) == list(range(10))  # each epoch is a permutation
    assert sorted(flat[10:20]) == list(range(10))
    assert not np.array_equal(flat[:10], flat[10:20])
    assert np.array_equal(batch_windows(3, num_windows, batch, seed=3), steps[3])
    assert not np.array_equal(batch_windows(0, num_windows, batch, seed=4), steps[0])


def test_learning_rate_warms_up_then_decays():
    config = DemoConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate(s, 1.0, config) for s in range(100)]
    assert lrs[9] == pytest.approx(1.0) and lrs[0] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


def test_windows_share_their_boundary_token():
    stream = np.arange(10)
    w = windows(stream, 4)
    assert w.tolist() == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]]
    with pytest.raises(ValueError, match="longer corpus"):
        windows(np.arange(3), 4)
