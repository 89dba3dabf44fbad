import sys

import numpy as np
import pytest

from emergence_model.meter import MB, Cost, measure


def allocate(megabytes: int) -> float:
    """Touch `megabytes` of fresh memory, free it, return a number from it."""
    block = np.ones(megabytes * MB // 8)
    return float(block[::4096].sum())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc")
def test_a_calls_peak_is_what_it_allocated_above_what_was_in_use():
    held = np.ones(64 * MB // 8)  # in use before the call: not the call's
    result, seconds, peak = measure(allocate, 48)
    assert result == pytest.approx(48 * MB / 8 / 4096)
    assert seconds >= 0
    assert 40 * MB <= peak <= 64 * MB
    # the next call is measured from its own start: a small call is small after a large one
    _, _, small = measure(allocate, 1)
    assert small < 8 * MB
    del held


def test_costs_add_up_and_merge():
    cost = Cost()
    cost.add(0.5, 100, 10 * MB)
    cost.add(0.25, 50, 30 * MB)
    assert (cost.seconds, cost.rows, cost.calls, cost.peak_bytes) == (0.75, 150, 2, 30 * MB)
    summary = cost.summary()
    assert summary["ms_per_100"] == pytest.approx(500.0) and summary["peak_mb"] == 30
    both = cost.merged(Cost(0.25, 50, 1, 40 * MB))
    assert (both.seconds, both.rows, both.calls, both.peak_bytes) == (1.0, 200, 3, 40 * MB)
    unmeasured = both.merged(Cost(0.1, 10, 1, None))
    assert unmeasured.peak_bytes is None and unmeasured.summary()["peak_mb"] is None
    assert Cost().summary() == {"ms_per_100": None, "peak_mb": None, "calls": 0, "rows": 0}
