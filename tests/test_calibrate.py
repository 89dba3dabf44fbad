import json

import numpy as np
import pytest
import torch
from synthetic_cache import synthetic_logprobs, write_synthetic_cache

from emergence_model.calibrate import (
    CALIBRATED,
    CalibratedStrategy,
    CalibrationError,
    GuidePool,
    calibrate,
    calibration_rows,
    fit_guide_pool,
    guide_names,
)
from emergence_model.checkpoint import save_checkpoint
from emergence_model.commands.evaluate import main
from emergence_model.evaluate import score_rows
from emergence_model.folds import prefix_digest
from emergence_model.model import PerTokenPredictor, PredictorConfig
from emergence_model.pipeline import check_calibration
from emergence_model.strategies import NetworkStrategy

VOCAB = 48


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A cache whose target is the second small model sharpened (logits twice its log-probs):
    no baseline follows it, a pool fitted on a few of its prompts can."""
    x = synthetic_logprobs(160, VOCAB, noise=1.0, seed=3)
    sharp = 2.0 * x[:, 1]
    x[:, -1] = sharp - np.log(np.exp(sharp).sum(axis=1, keepdims=True))
    return write_synthetic_cache(tmp_path_factory.mktemp("cal") / "cache", logprobs=x)


def untrained(cache) -> NetworkStrategy:
    config = PredictorConfig(
        hidden_size=8,
        vocab_size=cache.vocab_size,
        scales=cache.scales[:-1],
        target_scale=cache.scales[-1],
    )
    torch.manual_seed(0)
    return NetworkStrategy(PerTokenPredictor(config), cache.model_names[:-1], cache.target_name)


def saved(path, network: NetworkStrategy, cache, data: dict):
    """`network` saved as a checkpoint of `cache`'s suite, with `data` as its training record."""
    save_checkpoint(
        path,
        network.predictor,
        model_names=cache.model_names[:-1],
        target_name=cache.target_name,
        baselines={},
        data=data,
    )
    return path


def test_calibration_finds_the_planted_guide_and_beats_every_baseline(planted):
    network = untrained(planted)
    rows = calibration_rows(len(planted), 40, seed=1)
    assert len(np.unique(rows)) == 40
    calibrated = calibrate(network, planted, rows)
    pool = calibrated.pool
    assert pool.guides == guide_names(planted.model_names[:-1]) and pool.rows == 40
    # the guess pool leans on the second model above all, the distribution pool past 1 (sharper)
    assert int(np.argmax(pool.guess)) == 1 and int(np.argmax(pool.distribution)) == 1
    assert pool.distribution[1] > 1.2
    assert abs(pool.distribution[-1]) < 0.2  # the prior tells nothing here: its weight stays low
    rest = np.setdiff1d(np.arange(len(planted)), rows)
    from emergence_model.evaluate import make_baselines

    per_row = score_rows(planted, {**make_baselines(), "network": network, "cal": calibrated}, rest)
    scored = per_row["strategies"]
    assert scored["cal"]["top1"].mean() > 0.85
    others = [n for n in scored if n != "cal"]
    assert scored["cal"]["top1"].mean() > max(scored[n]["top1"].mean() for n in others) + 0.2
    with_kl = [n for n in others if "kl" in scored[n]]
    assert scored["cal"]["kl"].mean() < 0.5 * min(scored[n]["kl"].mean() for n in with_kl)
    assert scored["cal"]["accept"].mean() > max(scored[n]["accept"].mean() for n in with_kl)
    assert "in_candidates" not in scored["cal"]  # the pools rank every token
    # its distribution is normalised and its mode is its guess
    x = torch.from_numpy(planted.rows(rest[:8])[:, :-1])
    scores = calibrated.score_tensor(x, None, None)
    assert torch.allclose(scores.exp().sum(1), torch.ones(8), atol=1e-4)
    # the challenge's signature gives the same guesses from float16 probabilities
    probs = x.exp().half().numpy()
    names = planted.model_names[:-1]
    guesses = calibrated(planted.prefixes[:8], names, planted.target_name, probs)
    assert guesses == scored["cal"]["guess"][:8].astype(int).tolist()
    assert np.array_equal(probs, x.exp().half().numpy())  # the caller's array is left as it was


def test_an_infinite_pull_keeps_the_start_and_the_prior_is_the_targets_mean(planted):
    # the guess is the network's, the distribution the mean's; excluded guides weigh nothing
    network = untrained(planted)
    data = torch.from_numpy(planted.rows(np.arange(20)))
    names = planted.model_names[:-1]
    m = len(names)
    pool = fit_guide_pool(network.predictor, names, data[:, :-1], data[:, -1], penalty=1e6)
    assert np.allclose(pool.guess, [0] * (m + 1) + [1, 0], atol=1e-4)
    assert np.allclose(pool.distribution, [0] * m + [1, 0, 0], atol=1e-4)
    mean = torch.log_softmax(data[:, -1], dim=1).exp().mean(dim=0)
    assert np.allclose(np.exp(pool.prior), mean.numpy(), atol=1e-5)
    pool = fit_guide_pool(
        network.predictor, names, data[:, :-1], data[:, -1], exclude=("network", "prior")
    )
    assert pool.guess[m + 1] == pool.guess[m + 2] == pool.distribution[m + 2] == 0.0
    with pytest.raises(CalibrationError, match="no guide named 'nework'"):
        fit_guide_pool(network.predictor, names, data[:, :-1], data[:, -1], exclude=("nework",))
    with pytest.raises(CalibrationError, match="cannot be excluded"):
        fit_guide_pool(network.predictor, names, data[:, :-1], data[:, -1], exclude=("mean",))
    with pytest.raises(CalibrationError, match="2 to"):
        fit_guide_pool(network.predictor, names, data[:1, :-1], data[:1, -1])


def test_a_pool_saves_as_json_and_bad_files_are_refused(planted, tmp_path):
    names = planted.model_names[:-1]
    pool = GuidePool(guide_names(names), [0.5] * 7, [0.25] * 7, [-np.log(VOCAB)] * VOCAB, rows=12)
    path = pool.save(tmp_path / "calibration.json")
    assert GuidePool.load(path) == pool
    assert json.loads(path.read_text())["rows"] == 12
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(CalibrationError, match="not a calibration"):
        GuidePool.load(tmp_path / "bad.json")
    with pytest.raises(CalibrationError, match="no calibration at"):
        GuidePool.load(tmp_path / "missing.json")
    prior = pool.prior
    with pytest.raises(CalibrationError, match="one weight per guide"):
        GuidePool(guide_names(names), [0.5] * 6, [0.25] * 7, prior, rows=12)
    with pytest.raises(CalibrationError, match="finite"):
        GuidePool(guide_names(names), [float("nan")] * 7, [0.25] * 7, prior, rows=12)
    with pytest.raises(CalibrationError, match="vocabulary of 3"):
        CalibratedStrategy(
            untrained(planted), GuidePool(guide_names(names), [0.5] * 7, [0.25] * 7, [0.0] * 3, 2)
        ).score_tensor(torch.zeros(1, len(names), VOCAB), None, None)
    other = GuidePool(guide_names(["a", "b", "c", "d"]), [0.5] * 7, [0.25] * 7, prior, rows=12)
    with pytest.raises(CalibrationError, match="calibrate it again"):
        CalibratedStrategy(untrained(planted), other)


@pytest.mark.parametrize("n", [0, 1, 160, 500])
def test_calibration_must_leave_prompts_to_score(n):
    with pytest.raises(CalibrationError, match="leaves nothing to score"):
        calibration_rows(160, n)


def test_evaluate_calibrates_on_a_transfer_cache_and_refuses_the_training_cache(planted, tmp_path):
    network = untrained(planted)
    ckpt = saved(tmp_path / "net.ckpt", network, planted, {"fingerprint": "another cache"})
    args = ["--cache", str(planted.path), "--checkpoint", str(ckpt), "--bootstrap", "50"]
    summary = main([*args, "--calibrate", "40", "--out", str(tmp_path / "report")])
    assert summary["num_prefixes"] == 120 and "40 calibrating" in summary["rows"]
    calibrated = summary["strategies"][CALIBRATED]
    assert calibrated["top1"]["value"] > 0.85
    assert summary["comparisons"][CALIBRATED]["beats_best_baseline"]
    assert calibrated["params"]["calibrated_on"] == 40
    pool = GuidePool.load(tmp_path / "report" / "calibration.json")
    assert int(np.argmax(pool.guess)) == 1
    # the draw is seeded: the same prompts calibrate again
    again = main([*args, "--calibrate", "40"])
    assert again["strategies"][CALIBRATED]["top1"] == calibrated["top1"]
    with pytest.raises(SystemExit):  # two checkpoints
        main([*args, "--checkpoint", str(ckpt), "--calibrate", "40"])
    with pytest.raises(CalibrationError, match="leaves nothing to score"):
        main([*args, "--calibrate", "160"])
    split = {"folds": 1, "val_fraction": 0.1, "test_fraction": 0.3, "seed": 0}
    data = {"fingerprint": planted.fingerprint, "split": split}
    trained_here = saved(tmp_path / "here.ckpt", network, planted, data)
    with pytest.raises(SystemExit):  # its own training cache
        main(["--cache", str(planted.path), "--checkpoint", str(trained_here), "--calibrate", "4"])


def test_train_refuses_to_calibrate_on_its_own_prefixes(planted, tmp_path):
    small = write_synthetic_cache(tmp_path / "small", num_prefixes=10, seed=3)
    digests = {"x": 0}
    with pytest.raises(CalibrationError, match="leaves nothing to score"):
        check_calibration([small], digests, 10)
    with pytest.raises(ValueError, match="shares prefixes with the training cache"):
        check_calibration([planted], {prefix_digest(planted.prefixes[3]): 0}, 10)
    check_calibration([planted], digests, 10)


def test_the_prior_carries_a_habit_of_the_target_that_no_small_model_has(tmp_path):
    # the target ranks token 7 first on most prompts (an answer's token after "Answer:"), which
    # no small model does: only the prior, fitted on other prompts than its own, can know it
    x = synthetic_logprobs(120, VOCAB, noise=1.0, seed=4)
    habit = x[:, 2].copy()
    habit[:, 7] += 12.0
    x[:, -1] = habit - np.log(np.exp(habit).sum(axis=1, keepdims=True))
    cache = write_synthetic_cache(tmp_path / "habit", logprobs=x)
    rows = calibration_rows(len(cache), 20, seed=0)
    rest = np.setdiff1d(np.arange(len(cache)), rows)
    network = untrained(cache)
    calibrated = calibrate(network, cache, rows)
    scored = score_rows(cache, {"network": network, "cal": calibrated}, rest)["strategies"]
    target_is_habit = (cache.target_argmax[rest] == 7).mean()
    assert target_is_habit > 0.8 and scored["network"]["top1"].mean() < 0.2
    assert scored["cal"]["top1"].mean() >= target_is_habit - 0.02
    assert calibrated.pool.guess[-1] > 0.5 and calibrated.pool.distribution[-1] > 0.5
    assert scored["cal"]["kl"].mean() < 0.5 * scored["network"]["kl"].mean()


def test_cross_validation_within_the_calibration_prompts_chooses_the_guide(tmp_path):
    # the target is the largest small model sharpened; pools held at the untrained network (an
    # infinite pull) guess as the mean: the prompts themselves show the largest model far ahead,
    # and the calibrated network guesses with it
    x = synthetic_logprobs(160, VOCAB, noise=1.0, seed=5)
    sharp = 2.0 * x[:, -2]
    x[:, -1] = sharp - np.log(np.exp(sharp).sum(axis=1, keepdims=True))
    cache = write_synthetic_cache(tmp_path / "largest", logprobs=x)
    rows = calibration_rows(len(cache), 48, seed=0)
    rest = np.setdiff1d(np.arange(len(cache)), rows)
    network = untrained(cache)
    held = calibrate(network, cache, rows, penalty=1e6, start="network")
    choice = held.pool.guide_choice
    assert choice.guide == "largest" and choice.default == "calibrated" and choice.rows == 48
    assert choice.evidence["largest"]["lead"]["ci"][0] > 0 and "cross-validated" in choice.read
    scored = score_rows(cache, {"largest": largest(), "cal": held}, rest)["strategies"]
    assert np.array_equal(scored["cal"]["guess"], scored["largest"]["guess"])
    again = CalibratedStrategy(network, GuidePool.load(held.pool.save(tmp_path / "c.json")))
    assert again.params()["guide"] == "largest"
    # by default the guess pool starts at the guide that agrees with the target most often, here
    # the largest model: the pools are as good as it, and they are kept
    free = calibrate(network, cache, rows)
    assert free.pool.guide_choice.guide == "calibrated"
    assert int(np.argmax(free.pool.guess)) == len(cache.model_names) - 2  # the largest small one
    assert calibrate(network, cache, rows, choose=False).pool.choice is None


def largest():
    from emergence_model.strategies import LargestModel

    return LargestModel()
