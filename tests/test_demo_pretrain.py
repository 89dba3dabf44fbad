import numpy as np
import pytest

from emergence_model.demo.config import DemoConfig
from emergence_model.demo.pretrain import batch_windows, learning_rate, windows, with_repeats


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


def _repeats_a_span(window: np.ndarray, least: int = 12) -> bool:
    """Whether some run of `least` tokens occurs twice in `window` at different places."""
    seen = set()
    for i in range(len(window) - least + 1):
        key = window[i : i + least].tobytes()
        if key in seen:
            return True
        seen.add(key)
    return False


def test_repeated_windows_copy_a_span_of_their_own_window():
    rng = np.random.default_rng(0)
    train = rng.integers(2, 2048, size=(40, 129))  # random tokens: no span repeats by chance
    assert with_repeats(train, 0.0, seed=0) is train
    out = with_repeats(train, 1.0, seed=0)
    assert out.shape == (80, 129) and np.array_equal(out[:40], train)
    for source, copy in zip(train, out[40:], strict=True):
        assert set(copy.tolist()) <= set(source.tolist())  # only the window's own tokens
        assert _repeats_a_span(copy) and not _repeats_a_span(source)
    # each window's copy depends on the seed and the window alone
    assert np.array_equal(with_repeats(train[:10], 1.0, seed=0)[10:], out[40:50])
    half = with_repeats(train, 0.5, seed=0)
    assert 40 < len(half) < 80
    assert not np.array_equal(with_repeats(train, 1.0, seed=1)[40:], out[40:])


def test_repeat_share_is_checked():
    with pytest.raises(ValueError, match="--repeat-share must be between 0 and 1"):
        DemoConfig(repeat_share=1.5)
