import math

import numpy as np
import pytest
import torch
from synthetic_cache import write_synthetic_cache

from emergence_model.evaluate import score_rows
from emergence_model.logprobs import floor_logprobs
from emergence_model.stats import (
    ClusterBootstrap,
    bootstrap_ci,
    difference,
    difference_with_ci,
    estimate,
    holm,
    kl_rows,
    mean_with_ci,
)
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


def test_cluster_bootstrap_resamples_whole_clusters():
    # 20 documents of 50 identical prefixes each: the mean is known to within a document's
    # spread over 20 documents, not over 1000 prefixes
    values = np.repeat(np.array([0.0, 1.0] * 10), 50)
    clusters = np.repeat(np.arange(20), 50)
    stat = ClusterBootstrap(clusters, values.size, num_bootstrap=4000).mean(values)
    se = 0.5 / np.sqrt(20)
    assert stat["value"] == 0.5 and stat["se"] == pytest.approx(se, rel=0.1)
    assert stat["ci"][0] == pytest.approx(0.5 - 1.96 * se, abs=0.03)
    # without clusters: each prefix its own, the interval of `bootstrap_ci`
    plain = ClusterBootstrap(None, values.size, num_bootstrap=4000).mean(values)
    assert plain["se"] == pytest.approx(0.5 / np.sqrt(1000), rel=0.1)
    assert not ClusterBootstrap(None, 5).clustered and ClusterBootstrap(clusters, 1000).clustered
    # one seed, one set of draws: two statistics of one sample are paired
    sampler = ClusterBootstrap(clusters, values.size, num_bootstrap=50, seed=3)
    a, b = sampler.mean_draws(values), sampler.mean_draws(2 * values)
    assert np.allclose(2 * a[1], b[1])


def test_cluster_statistics_by_hand():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    sampler = ClusterBootstrap(np.array(["a", "a", "b", "c"]), 4, num_bootstrap=200)
    assert sampler.mean(values, mask=np.array([1, 1, 0, 0]))["value"] == 1.5
    assert sampler.ratio(values, 2 * values)["value"] == 0.5
    diff = sampler.group_difference(values, values > 2, values <= 2)
    assert diff["value"] == 3.5 - 1.5 and diff["ci"][0] <= 2.0 <= diff["ci"][1]
    means, draws, counts = sampler.binned_draws(values, np.array([0, 0, 1, 1]), 3)
    assert means[:2].tolist() == [1.5, 3.5] and np.isnan(means[2])
    assert draws.shape == counts.shape == (200, 3)
    assert (counts[:, 0] % 2 == 0).all()  # document "a" (two prefixes) is drawn whole
    two = difference((1.0, np.full(10, 1.0)), (0.25, np.linspace(0, 0.5, 10)))
    assert two["value"] == 0.75 and two["ci"][0] == pytest.approx(0.5125)
    with pytest.raises(ValueError, match="3 cluster ids for 4 rows"):
        ClusterBootstrap(np.array([1, 2, 3]), 4)


def test_estimate_p_value_and_holm():
    draws = np.random.default_rng(0).normal(0.5, 0.25, 100_000)
    stat = estimate(0.5, draws)
    assert stat["p"] == pytest.approx(math.erfc(2 / math.sqrt(2)), rel=0.02)  # z = 2: ~0.0455
    assert np.isnan(estimate(math.nan, draws)["p"])
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan],
                                                               nan_ok=True)  # fmt: skip
    assert holm([]) == [] and holm([0.9, 0.8]) == [1.0, 1.0]
