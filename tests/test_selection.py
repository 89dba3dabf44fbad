import numpy as np
import pytest
import torch
from synthetic_cache import synthetic_logprobs

from emergence_model.model import PerTokenPredictor, PredictorConfig
from emergence_model.selection import (
    GuideChoice,
    Selection,
    choose_guide,
    cross_fitted_selection,
    guided,
)
from emergence_model.strategies import ContrastiveExtrapolation, NetworkStrategy

SCALES = [1e6, 2e6, 4e6, 8e6]


def agreement(n: int, rate: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < rate


def test_the_default_is_kept_unless_another_guide_leads_beyond_noise():
    network = agreement(400, 0.70, 0)
    slightly = network.copy()  # right on 20 more rows and wrong on 16: one point ahead, noise
    slightly[np.flatnonzero(~network)[:20]] = True
    slightly[np.flatnonzero(network)[:16]] = False
    clearly = network | agreement(400, 0.5, 1)  # right wherever the network is, and more
    choice = choose_guide({"network": network, "largest": slightly}, "network")
    assert choice.guide == "network" and choice.rows == 400
    assert "no guide leads network beyond noise" in choice.reason and "largest" in choice.reason
    choice = choose_guide(
        {"network": network, "largest": slightly, "mean-prob": clearly},
        "network",
        params={"mean-prob": {}},
    )
    assert choice.guide == "mean-prob" and choice.evidence["mean-prob"]["lead"]["ci"][0] > 0
    assert choice.evidence["network"]["lead"]["value"] == 0.0
    assert "mean-prob leads network by +" in choice.describe()
    # of several ahead, the one that leads most
    most = clearly | agreement(400, 0.5, 2)
    assert (
        choose_guide({"network": network, "mean-prob": clearly, "largest": most}, "network").guide
        == "largest"
    )


def test_a_choice_is_plain_values_and_unknown_guides_or_parameters_are_refused():
    choice = choose_guide(
        {"network": np.ones(10, bool), "contrastive": np.ones(10, bool)},
        "network",
        params={"contrastive": {"beta": 0.3}},
    )
    again = GuideChoice.from_record(choice.record())
    assert again == choice and choice.record()["reason"] == choice.reason
    with pytest.raises(ValueError, match="no guide named 'oracle'"):
        GuideChoice("oracle", "network", 10)
    with pytest.raises(TypeError):
        GuideChoice("contrastive", "network", 10, params={"gamma": 1.0})
    with pytest.raises(ValueError, match="default guide 'network'"):
        choose_guide({"largest": np.ones(3, bool)}, "network")


def test_a_folds_choice_never_reads_its_own_held_out_rows():
    # on fold 0's rows the largest model is right where the network is wrong; on fold 1's they
    # are level: fold 1's network (chosen on fold 0's rows) follows the largest, fold 0's does not
    folds = np.repeat([0, 1], 300)
    network = np.concatenate([np.zeros(300, bool), agreement(300, 0.6, 3)])
    largest = np.concatenate([np.ones(300, bool), network[300:]])
    params = [{"largest": {}}, {"largest": {}}]
    selection = cross_fitted_selection(
        {"network": network, "largest": largest}, folds, params, {"largest": {}}
    )
    assert [c.guide for c in selection.folds] == ["network", "largest"]
    assert selection.folds[0].rows == selection.folds[1].rows == 300
    assert selection.ensemble.guide == "largest" and selection.ensemble.rows == 600
    assert selection.choice(1).guide == "largest" and selection.choice(None) is selection.ensemble
    assert Selection.from_record(selection.record()).folds[0].guide == "network"
    assert any("fold 0's network" in line for line in selection.describe())


def test_a_guided_network_guesses_with_its_guide_and_keeps_its_distribution():
    x = torch.from_numpy(synthetic_logprobs(12, 40, [*SCALES, 64e6], seed=5)[:, :-1])
    config = PredictorConfig(hidden_size=8, vocab_size=40, scales=SCALES, target_scale=64e6)
    torch.manual_seed(0)
    network = NetworkStrategy(PerTokenPredictor(config), ["a", "b", "c", "d"], "t")
    choice = GuideChoice("contrastive", "network", 10, params={"beta": 2.0})
    selected = guided(network, choice)
    assert guided(network, None) is network
    expected = ContrastiveExtrapolation(beta=2.0).scores(x, SCALES).argmax(axis=1)
    scores = selected.score_tensor(x, SCALES, 64e6)
    assert scores.argmax(dim=1).tolist() == expected.tolist()  # the guess is the guide's
    assert torch.allclose(scores.exp().sum(dim=1), torch.ones(12), atol=1e-4)
    # the network's own distribution (its mixture), the guide's guess made its mode
    assert torch.allclose(scores, network.predictor.log_probs(x, guess=torch.from_numpy(expected)))
    probs = x.exp().half().numpy()
    assert selected([""] * 12, ["a", "b", "c", "d"], "t", probs) == expected.tolist()
    assert selected.params()["guide"] == "contrastive" and selected.params()["beta"] == 2.0
