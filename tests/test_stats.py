import numpy as np
import pytest
import torch
from synthetic_cache import write_synthetic_cache

from emergence_model.evaluate import score_rows
from emergence_model.logprobs import floor_logprobs
from emergence_model.stats import bootstrap_ci, difference_with_ci, kl_rows, mean_with_ci
from emergence_model.strategies import STRATEGIES


def test_bootstrap_interval_by_hand():
    assert bootstrap_ci(np.full(50, 0.25)) == (0.25, 0.25)
    values = np.array([0.0, 1.0] * 200)  # mean 0.5, standard error 0.025
    lo, hi = bootstrap_ci(values, num_bootstrap=2000)
    assert lo == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01)
    assert hi == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)
    assert bootstrap_ci(values, seed=1) == bootstrap_ci(values, seed=1)


def test_mean_with_ci_of_nothing_is_nan():
    stat = mean_with_ci(np.array([]))
    assert np.isnan(stat["value"]) and all(np.isnan(stat["ci"]))
    assert mean_with_ci(np.array([1.0, 1.0, 1.0])) == {"value": 1.0, "ci": [1.0, 1.0]}


def test_difference_of_two_independent_means():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 2.0, 100)
    diff = difference_with_ci(a, b, num_bootstrap=2000)
    assert diff["value"] == pytest.approx(a.mean() - b.mean())
    se = np.sqrt(a.var() / a.size + b.var() / b.size)  # ~0.2
    lo, hi = diff["ci"]
    assert lo == pytest.approx(diff["value"] - 1.96 * se, abs=0.06)
    assert hi == pytest.approx(diff["value"] + 1.96 * se, abs=0.06)
    assert np.isnan(difference_with_ci(a, np.array([]))["value"])


def test_kl_rows_is_the_evaluations_kl(tmp_path):
    cache = write_synthetic_cache(tmp_path / "cache", num_prefixes=20)
    strategy = STRATEGIES["mean-prob"]()
    reported = score_rows(cache, {"mean": strategy})["strategies"]["mean"]["kl"]
    rows = torch.from_numpy(cache.rows(range(len(cache))))
    q = strategy.score_tensor(floor_logprobs(rows[:, :-1]), cache.scales[:-1], cache.scales[-1])
    kl = kl_rows(torch.log_softmax(rows[:, -1], dim=1), q)
    assert kl.shape == (len(cache),) and (kl >= -1e-6).all()
    np.testing.assert_allclose(kl.numpy(), reported, rtol=1e-5, atol=1e-6)
    assert kl_rows(q, q).abs().max() < 1e-6
