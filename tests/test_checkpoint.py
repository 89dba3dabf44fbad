import numpy as np
import pytest
import torch

from emergence_model.checkpoint import (
    CheckpointError,
    build_predictor,
    check_compatible,
    load_checkpoint,
    load_strategy,
    save_checkpoint,
)
from emergence_model.model import PerTokenPredictor, PredictorConfig
from emergence_model.strategies import ModelMismatchError
from emergence_model.suites import PYTHIA_PARAM_COUNTS

NAMES = ["EleutherAI/pythia-70m", "EleutherAI/pythia-160m", "EleutherAI/pythia-410m"]
TARGET = "EleutherAI/pythia-12b"


@pytest.fixture
def checkpoint_path(tmp_path):
    config = PredictorConfig(
        hidden_size=16,
        num_candidates=6,
        vocab_size=40,
        scales=[PYTHIA_PARAM_COUNTS[n.split("/")[1]] for n in NAMES],
        target_scale=PYTHIA_PARAM_COUNTS["pythia-12b"],
    )
    torch.manual_seed(0)
    predictor = PerTokenPredictor(config)
    for p in predictor.parameters():
        torch.nn.init.normal_(p, std=0.3)
    path = tmp_path / "net.ckpt"
    save_checkpoint(
        path,
        predictor,
        model_names=NAMES,
        target_name=TARGET,
        baselines={"contrastive": {"beta": np.float64(0.7)}},
        metrics={"best_val_top1": np.float32(0.5)},
    )
    return path, predictor


def challenge_probs(n=5, m=3, v=40, seed=0) -> np.ndarray:
    probs = np.random.default_rng(seed).dirichlet(np.full(v, 0.3), size=(n, m))
    return probs.astype(np.float16)


def test_plain_dict_loads_with_weights_only(checkpoint_path):
    path, predictor = checkpoint_path
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["model_names"] == NAMES and checkpoint["target_name"] == TARGET
    assert checkpoint["vocab_size"] == 40 and checkpoint["config"]["hidden_size"] == 16
    assert checkpoint["baselines"] == {"contrastive": {"beta": 0.7}}
    rebuilt = build_predictor(load_checkpoint(path))
    x = torch.log_softmax(torch.randn(2, 3, 40), dim=-1)
    assert torch.equal(rebuilt(x), predictor.eval()(x))


def test_load_strategy_round_trip_in_the_challenge_signature(checkpoint_path):
    path, predictor = checkpoint_path
    strategy = load_strategy(path)
    probs = challenge_probs()
    short_names = ["pythia-70m", "pythia-160m", "pythia-410m"]
    guesses = strategy(["a sentence"] * 5, short_names, "pythia-12b", probs)
    expected = predictor.eval().forward_probs(torch.from_numpy(probs)).argmax(dim=1).tolist()
    assert guesses == expected and all(isinstance(g, int) for g in guesses)


def test_the_predicted_distribution_is_reachable_and_its_mode_is_the_guess(checkpoint_path):
    path, _ = checkpoint_path
    strategy = load_strategy(path)
    probs = challenge_probs(n=8)
    short_names = ["pythia-70m", "pythia-160m", "pythia-410m"]
    guesses = strategy(["s"] * 8, short_names, "pythia-12b", probs)
    log_q = strategy.scores(np.log(probs.astype(np.float32)))  # (N, V) normalised log-probs
    assert strategy.gives_distribution
    assert np.exp(log_q).sum(axis=1) == pytest.approx(np.ones(8), abs=1e-4)
    assert log_q.argmax(axis=1).tolist() == guesses


@pytest.mark.parametrize(
    "names, target, probs, message",
    [
        (["pythia-70m", "pythia-160m", "pythia-1b"], "pythia-12b", None, "has small models"),
        (NAMES, "pythia-6.9b", None, "predicts 'EleutherAI/pythia-12b'"),
        (NAMES, TARGET, challenge_probs(v=41), "vocabulary of 40"),
        (NAMES, TARGET, challenge_probs(m=2), "3 small models"),
    ],
)
def test_mismatched_models_or_vocabulary_refused(checkpoint_path, names, target, probs, message):
    strategy = load_strategy(checkpoint_path[0])
    probs = challenge_probs() if probs is None else probs
    with pytest.raises(ValueError, match=message):
        strategy([""] * len(probs), names, target, probs)


def test_check_compatible_with_a_cache(checkpoint_path):
    checkpoint = load_checkpoint(checkpoint_path[0])
    check_compatible(checkpoint, ["/models/pythia-70m", "pythia-160m", "pythia-410m"], 40)
    with pytest.raises(ModelMismatchError, match="vocabulary of 40, the cache has 41"):
        check_compatible(checkpoint, NAMES, 41)
    with pytest.raises(ModelMismatchError, match="checkpoint has small models"):
        check_compatible(checkpoint, NAMES[:2], 40)
    with pytest.raises(ModelMismatchError, match="predicts"):
        check_compatible(checkpoint, NAMES, 40, target_name="pythia-2.8b")


def test_bad_files_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*train.py --out"):
        load_checkpoint(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable emergence-model checkpoint") as info:
        load_checkpoint(garbage)
    assert "\n" not in str(info.value)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="lacks format_version"):
        load_checkpoint(other)
