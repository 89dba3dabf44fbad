import math

import numpy as np
import pytest
import torch

from emergence_model.strategies import (
    STRATEGIES,
    ContrastiveExtrapolation,
    baseline_names,
    challenge_param_counts,
    make_strategy,
)
from emergence_model.suites import PYTHIA_PARAM_COUNTS

# log sizes 0, 1, 2 for the small models and 3 for the target
PARAMS = [1_000_000, round(math.e * 1e6), round(math.e**2 * 1e6)]
TARGET = round(math.e**3 * 1e6)


def trajectories(rows: list[tuple[float, float, float]]) -> np.ndarray:
    """(N, 3, 3) log-scores: token a flat at -1, token b = start + rate * log size, token c at
    -10; each row gives (start, rate, unused)."""
    out = np.full((len(rows), 3, 3), -10.0, dtype=np.float32)
    for n, (start, rate, _) in enumerate(rows):
        for m in range(3):
            out[n, m, 0] = -1.0
            out[n, m, 1] = start + rate * m
    return out


# one row: b = -3.5, -2.5, -1.5 with size, so the largest model prefers a but b's line reaches
# -0.5 at the target's size; largest + beta (largest - smallest) prefers b once beta > 0.25
ROW = trajectories([(-3.5, 1.0, 0)])


def guess(name: str, logprobs=ROW, **kwargs) -> list[int]:
    scores = make_strategy(name, **kwargs).scores(logprobs, PARAMS, TARGET)
    return scores.argmax(axis=1).tolist()


def test_registry_lists_every_baseline_and_the_network():
    assert set(STRATEGIES) == {
        "token-0",
        "random",
        "mean-prob",
        "largest",
        "extrapolate",
        "contrastive",
        "network",
    }
    assert "network" not in baseline_names()
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        make_strategy("nope")
    with pytest.raises(ValueError, match="load_strategy"):
        make_strategy("network")


def test_baselines_by_hand():
    assert guess("token-0") == [0]
    assert guess("mean-prob") == [0]  # mean prob of a: e^-1 = .37; of b: .11
    assert guess("largest") == [0]  # -1 beats -1.5
    assert guess("extrapolate") == [1]  # -0.5 at the target beats -1
    assert guess("contrastive", beta=0.1) == [0]  # -1.5 + 0.2 < -1
    assert guess("contrastive", beta=0.5) == [1]  # -1.5 + 1.0 > -1


def test_mean_probability_by_hand():
    probs = np.array([[[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.4, 0.3], [0.5, 0.2, 0.2, 0.1]]])
    scores = make_strategy("mean-prob").scores(np.log(probs).astype(np.float32))
    assert np.exp(scores[0]) == pytest.approx([0.7 / 3, 0.2, 0.3, 0.8 / 3], abs=1e-6)
    assert make_strategy("largest").scores(np.log(probs).astype(np.float32)).argmax() == 0


def test_extrapolation_value_by_hand():
    scores = make_strategy("extrapolate").scores(ROW, PARAMS, TARGET)
    # unnormalised line values at the target: a -1, b -0.5, c -10; then log-softmax
    expected = np.array([-1.0, -0.5, -10.0])
    expected = expected - np.log(np.exp(expected).sum())
    assert scores[0] == pytest.approx(expected, abs=1e-4)


def test_distributions_are_normalised_and_ranks_follow_the_scores():
    x = np.log(np.random.default_rng(0).dirichlet(np.ones(7), size=(5, 3))).astype(np.float32)
    for name in baseline_names():
        strategy = make_strategy(name)
        scores = strategy.scores(x, PARAMS, TARGET)
        assert scores.shape == (5, 7) and np.isfinite(scores).all()
        if strategy.gives_distribution:
            assert np.exp(scores).sum(axis=1) == pytest.approx(np.ones(5), abs=1e-5)


def test_random_is_seeded_and_in_range():
    x = np.zeros((50, 3, 11), dtype=np.float32)
    first, again = guess("random", x, seed=3), guess("random", x, seed=3)
    assert first == again and set(first) <= set(range(11)) and len(set(first)) > 3
    assert guess("random", x, seed=4) != first


def test_contrastive_beta_tuned_on_training_rows():
    # rows 0 and 2 need beta > 0.25 (b is the target), row 1 needs beta < 0.2 (a is the target):
    # the best grid value is the smallest above 0.25
    rows = trajectories([(-3.5, 1.0, 0), (-2.2, 0.5, 0), (-3.5, 1.0, 0)])
    targets = np.array([1, 0, 1])
    strategy = ContrastiveExtrapolation()
    params = strategy.fit([(rows[:2], targets[:2]), (rows[2:], targets[2:])], PARAMS, TARGET)
    assert params == {"beta": 0.3}


def test_challenge_signature_with_float16_probabilities():
    names = ["pythia-70m", "EleutherAI/pythia-160m", "pythia-410m"]
    probs = np.exp(np.random.default_rng(1).normal(size=(4, 3, 9))).astype(np.float16)
    probs /= probs.sum(axis=2, keepdims=True)
    counts, target = challenge_param_counts(names, "pythia-12b")
    assert counts == [PYTHIA_PARAM_COUNTS[n] for n in ("pythia-70m", "pythia-160m", "pythia-410m")]
    logprobs = np.log(probs.astype(np.float32))
    for name in baseline_names():
        strategy = make_strategy(name)
        guesses = strategy(["s"] * 4, names, "pythia-12b", probs)
        assert guesses == strategy.scores(logprobs, counts, target).argmax(axis=1).tolist()
        assert all(isinstance(g, int) for g in guesses)
    assert make_strategy("mean-prob")([], names, "pythia-12b", torch.from_numpy(probs)) == (
        make_strategy("mean-prob").scores(logprobs).argmax(axis=1).tolist()
    )


def test_unknown_model_sizes_are_refused_where_needed():
    probs = np.full((1, 3, 4), 0.25, dtype=np.float16)
    with pytest.raises(ValueError, match="unknown parameter counts for gpt-x"):
        make_strategy("extrapolate")(
            [""], ["pythia-70m", "gpt-x", "pythia-1b"], "pythia-12b", probs
        )
    assert make_strategy("mean-prob")([""], ["a", "b", "c"], "d", probs) == [0]
