import argparse
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_cache import write_synthetic_cache

from emergence_model.cache import open_cache
from emergence_model.cli import add_config_arguments, config_from_args, field_docs
from emergence_model.model import PredictorConfig, default_mixture
from emergence_model.strategies import MeanProbability
from emergence_model.training import (
    PredictorModule,
    TrainConfig,
    fit_cross_fitted,
    fit_predictor,
)

QUIET = dict(progress=False, num_workers=0)


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"batch_size": 0}, "--batch-size"),
        ({"soft_weight": 1.5}, "--soft-weight"),
        ({"folds": 1, "val_fraction": 0.5, "test_fraction": 0.5}, "--val-fraction"),
        ({"folds": 0}, "--folds"),
        ({"target_temperature": 0}, "--target-temperature"),
        ({"train_fraction": 0}, "--train-fraction"),
    ],
)
def test_train_config_names_the_flag_to_fix(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        TrainConfig(**kwargs)


def test_train_config_flags_come_from_the_dataclass():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, PredictorConfig, "network")
    add_config_arguments(parser, TrainConfig, "training")
    help_text = parser.format_help()
    assert "Width of the shared per-token MLP" in help_text
    assert "--param-counts" not in help_text and "--num-heads" not in help_text  # not flags
    args = parser.parse_args(
        ["--hidden-size", "7", "--features", "", "--soft-weight", "0.5", "--base", "mean"]
    )
    assert config_from_args(PredictorConfig, args).hidden_size == 7
    assert config_from_args(PredictorConfig, args).feature_groups == ()
    assert config_from_args(PredictorConfig, args).base == "mean"
    assert config_from_args(TrainConfig, args).soft_weight == 0.5
    assert set(field_docs(TrainConfig)) == {f for f in TrainConfig.__dataclass_fields__}


@pytest.mark.parametrize("soft_weight", [0.0, 0.5, 1.0])
def test_fast_dev_run_on_a_cache_of_tiny_models(tiny_cache, tmp_path, soft_weight):
    train = TrainConfig(fast_dev_run=True, batch_size=4, soft_weight=soft_weight, **QUIET)
    predictor, data, metrics = fit_predictor(
        tiny_cache, PredictorConfig(hidden_size=8), train, tmp_path
    )
    x = torch.from_numpy(tiny_cache.rows([0, 1])[:, :-1])
    assert predictor(x).shape == (2, tiny_cache.vocab_size)
    assert "best_val_top1" not in metrics  # fast_dev_run saves no checkpoint


@pytest.mark.slow
def test_short_run_beats_the_mean_probability_where_the_answer_is_learnable(tmp_path):
    # the target's top token is each token's extrapolation beyond the largest small model
    cache = write_synthetic_cache(tmp_path / "cache", num_prefixes=300, vocab_size=48)
    train = TrainConfig(
        max_epochs=12, batch_size=16, val_fraction=0.3, test_fraction=0.0, lr=5e-3, **QUIET
    )
    predictor, data, metrics = fit_predictor(
        cache, PredictorConfig(hidden_size=16), train, tmp_path / "run"
    )
    val = data.val_idx
    x = cache.rows(val)[:, :-1]
    target = cache.target_argmax[val]
    baseline = (MeanProbability().scores(x).argmax(1) == target).mean()
    network = (predictor.log_probs(torch.from_numpy(x)).argmax(1).numpy() == target).mean()
    assert metrics["best_val_top1"] == pytest.approx(network, abs=1e-6)
    assert network > baseline + 0.15, (network, baseline)
    logs = list((tmp_path / "run" / "logs").rglob("metrics.csv"))
    assert logs and "val/top1" in logs[0].read_text()
    assert list((tmp_path / "run" / "lightning").glob("best-*.ckpt"))


def test_the_learning_rate_finder_chooses_the_rate_and_the_network_still_learns(tmp_path):
    cache = write_synthetic_cache(tmp_path / "cache", num_prefixes=300, vocab_size=48)
    train = TrainConfig(
        max_epochs=12, batch_size=16, val_fraction=0.3, test_fraction=0.0, lr_find=True, **QUIET
    )
    predictor, data, metrics = fit_predictor(
        cache, PredictorConfig(hidden_size=16), train, tmp_path / "run"
    )
    assert 1e-5 < metrics["lr"] < 1.0 and metrics["lr"] != train.lr
    x = cache.rows(data.val_idx)[:, :-1]
    target = cache.target_argmax[data.val_idx]
    baseline = (MeanProbability().scores(x).argmax(1) == target).mean()
    network = (predictor.log_probs(torch.from_numpy(x)).argmax(1).numpy() == target).mean()
    assert network > baseline + 0.15, (network, baseline, metrics["lr"])
    assert not list((tmp_path / "run").glob(".lr_find*"))  # the finder's own checkpoint is gone


@pytest.mark.parametrize(
    "param_counts",
    [(1_000_000, 64_000_000), (1_000_000, 1_000_000, 64_000_000)],
    ids=["one small model", "equal scales"],
)
def test_trains_on_one_small_model_or_equal_scales(tmp_path, param_counts):
    cache = write_synthetic_cache(tmp_path / "cache", num_prefixes=40, param_counts=param_counts)
    train = TrainConfig(max_epochs=1, batch_size=8, folds=2, **QUIET)
    predictor, _, _ = fit_cross_fitted(cache, PredictorConfig(hidden_size=4), train, tmp_path)
    x = torch.from_numpy(cache.rows(range(4))[:, :-1])
    assert predictor.log_probs(x).exp().sum(dim=1) == pytest.approx(torch.ones(4))


@pytest.mark.parametrize("soft_weight", [1.0, 0.0, 0.5])
def test_the_loss_mixes_cross_entropy_and_kl_to_the_sharpened_target(soft_weight):
    predictor_config = PredictorConfig(
        hidden_size=4, num_models=2, vocab_size=6, scales=[1, 2], target_scale=4
    )
    train_config = TrainConfig(soft_weight=soft_weight)  # the default temperature, 0.25
    module = PredictorModule(dataclasses.asdict(predictor_config), dataclasses.asdict(train_config))
    x = torch.log_softmax(torch.randn(3, 2, 6), dim=-1)
    target_logprobs = torch.log_softmax(torch.randn(3, 6), dim=-1)
    batch = {"target": target_logprobs.argmax(1), "target_logprobs": target_logprobs}
    loss = module.loss(module(x), batch)
    mean = torch.log(x.exp().mean(dim=1))  # an untrained network: the logits are the mean's
    log_q = torch.log_softmax(mean, -1)
    sharpened = torch.log_softmax(target_logprobs / 0.25, dim=-1)
    expected_soft = torch.nn.functional.kl_div(
        log_q, sharpened, log_target=True, reduction="batchmean"
    )
    expected_ce = torch.nn.functional.cross_entropy(mean, batch["target"])
    expected = (1 - soft_weight) * expected_ce + soft_weight * expected_soft
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_train_fraction_keeps_a_share_of_the_training_prefixes(tiny_cache, tmp_path):
    train = TrainConfig(fast_dev_run=True, batch_size=4, train_fraction=0.5, **QUIET)
    _, data, _ = fit_predictor(tiny_cache, PredictorConfig(hidden_size=4), train, tmp_path)
    _, full, _ = fit_predictor(
        tiny_cache,
        PredictorConfig(hidden_size=4),
        dataclasses.replace(train, train_fraction=1.0),
        tmp_path,
    )
    assert len(data.train_idx) == round(len(full.train_idx) / 2)
    assert set(data.train_idx) <= set(full.train_idx)
    assert np.array_equal(data.val_idx, full.val_idx)


def test_cross_fitting_gives_one_head_per_fold(tiny_cache, tmp_path):
    train = TrainConfig(folds=3, max_epochs=1, batch_size=8, **QUIET)
    predictor, splits, metrics = fit_cross_fitted(
        tiny_cache, PredictorConfig(hidden_size=4), train, tmp_path
    )
    assert (
        predictor.config.num_heads == 3
        and len(splits) == 3
        and set(metrics) == {"fold-0", "fold-1", "fold-2"}
    )
    assert all((tmp_path / f"fold-{k}" / "logs").is_dir() for k in range(3))


def test_networks_that_learn_from_few_prefixes_have_no_token_embedding(tiny_cache, tmp_path):
    train = TrainConfig(folds=2, max_epochs=1, batch_size=8, **QUIET)
    learnt = min(len(split[0]) for split in train.folds_of(tiny_cache.prefixes).splits)
    few = PredictorConfig(hidden_size=4, embedding_min_prefixes=learnt + 1)
    predictor, _, _ = fit_cross_fitted(tiny_cache, few, train, tmp_path / "few")
    assert predictor.config.token_embedding == 0
    assert all(head.embedding is None for head in predictor.heads)
    enough = PredictorConfig(hidden_size=4, embedding_min_prefixes=learnt)
    predictor, _, _ = fit_cross_fitted(tiny_cache, enough, train, tmp_path / "enough")
    assert predictor.config.token_embedding == 16
    assert all(head.embedding is not None for head in predictor.heads)
    # --train-fraction counts: the networks learn from half the split's training prefixes
    half = dataclasses.replace(train, train_fraction=0.5)
    predictor, _, _ = fit_cross_fitted(tiny_cache, enough, half, tmp_path / "half")
    assert predictor.config.token_embedding == 0


@pytest.mark.slow
def test_cross_fitting_resumes_from_finished_folds(tiny_cache, tmp_path, monkeypatch):
    from emergence_model import training

    train = TrainConfig(folds=3, max_epochs=1, batch_size=8, **QUIET)
    config = PredictorConfig(hidden_size=4)
    first, _, metrics = fit_cross_fitted(tiny_cache, config, train, tmp_path)
    (tmp_path / "fold-1" / training.MEMBER_FILE).unlink()  # as if interrupted during fold 1
    (tmp_path / "fold-2" / training.MEMBER_FILE).write_bytes(b"torn")
    trained = []
    real_fit = training.fit_predictor

    def counting_fit(*args, **kwargs):
        trained.append(Path(args[3]).name)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit_predictor", counting_fit)
    again, _, metrics_again = fit_cross_fitted(tiny_cache, config, train, tmp_path)
    assert trained == ["fold-1", "fold-2"] and metrics_again == metrics
    x = torch.from_numpy(tiny_cache.rows(range(8))[:, :-1])
    torch.testing.assert_close(again.log_probs(x), first.log_probs(x))
    alone, _, _ = fit_cross_fitted(
        tiny_cache, config, dataclasses.replace(train, mixture=False), tmp_path
    )
    assert trained == ["fold-1", "fold-2"]  # the mixture is fitted after the network: reused
    assert torch.equal(alone.mixture, default_mixture(alone.config.num_models))
    assert again.mixture.sum().item() == pytest.approx(1.0)
    assert not torch.equal(again.mixture, alone.mixture)
    torch.testing.assert_close(
        again.log_probs(x).argmax(1), alone.log_probs(x).argmax(1)
    )  # the mixture never changes the guess
    trained.clear()
    fit_cross_fitted(tiny_cache, config, dataclasses.replace(train, lr=1e-2), tmp_path)
    assert trained == ["fold-0", "fold-1", "fold-2"]  # another config: nothing is reused
    trained.clear()
    fit_cross_fitted(tiny_cache, config, train, tmp_path)  # the first config's, saved again
    monkeypatch.setattr(training, "PREDICTOR_DESIGN", training.PREDICTOR_DESIGN + 1)
    fit_cross_fitted(tiny_cache, config, train, tmp_path)
    assert trained == ["fold-0", "fold-1", "fold-2"] * 2  # a new design of the network: retrained
    trained.clear()
    rebuilt = tmp_path / "rebuilt"
    shutil.copytree(tiny_cache.path, rebuilt)
    argmax = np.load(rebuilt / "argmax.npy")
    np.save(rebuilt / "argmax.npy", argmax[:, ::-1].copy())  # same prefixes, other contents
    fit_cross_fitted(open_cache(rebuilt), config, train, tmp_path)
    assert trained == ["fold-0", "fold-1", "fold-2"]


def largest_leads_ladder(num_prefixes: int, vocab: int, seed: int = 0) -> np.ndarray:
    """(N, 7, V) log-probs of six small models and a target: the target's logits are a prefix's
    own (sharpened); the largest small model reads them with little noise, the five others share a
    strong bias of their own (a habit the target grew out of), so the mean of the small models'
    probabilities follows the bias and the largest model follows the target."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0.0, 1.5, (num_prefixes, 1, vocab))
    habit = rng.normal(0.0, 2.5, (num_prefixes, 1, vocab))
    smaller = truth + habit + rng.normal(0.0, 0.5, (num_prefixes, 5, vocab))
    largest = truth + rng.normal(0.0, 0.4, (num_prefixes, 1, vocab))
    logits = np.concatenate([smaller, largest, 2.0 * truth], axis=1)
    return torch.log_softmax(torch.from_numpy(logits), dim=2).float().numpy()


def test_no_collapse_to_the_mean_where_the_largest_model_leads(tmp_path):
    # the largest small model is right far more often than the mean: a network trained on such a
    # ladder follows it, and its guesses are not the mean's
    x = largest_leads_ladder(400, 40)
    counts = [1_000_000 * 2**i for i in range(7)]
    cache = write_synthetic_cache(tmp_path / "cache", logprobs=x, param_counts=counts)
    # the default training, its step budget shrunk for a test: a few hundred prefixes are passed
    # over as often as make that many steps
    train = TrainConfig(steps=600, batch_size=16, val_fraction=0.1, test_fraction=0.3, **QUIET)
    predictor, data, _ = fit_predictor(cache, PredictorConfig(), train, tmp_path / "run")
    rows = data.test_idx
    small = torch.from_numpy(cache.rows(rows)[:, :-1])
    target = cache.target_argmax[rows]
    mean_guess = MeanProbability().scores(small).argmax(axis=1)
    largest_guess = small[:, -1].argmax(dim=1).numpy()
    with torch.no_grad():
        guess = predictor(small).argmax(dim=1).numpy()
    assert (largest_guess == target).mean() > (mean_guess == target).mean() + 0.3  # the ladder
    differ = mean_guess != largest_guess
    assert differ.mean() > 0.3
    # where the mean and the largest model part ways, the network goes with the largest
    assert (guess[differ] == largest_guess[differ]).mean() > 0.8
    assert (guess[differ] == mean_guess[differ]).mean() < 0.1
    assert (guess == target).mean() > (mean_guess == target).mean() + 0.25


def test_a_small_training_set_is_passed_over_as_often_as_makes_the_step_budget():
    config = TrainConfig(steps=3000, batch_size=32, max_epochs=100)
    assert config.epochs_for(9000) == 11  # 282 steps an epoch
    assert config.epochs_for(1200) == 79  # 38 steps an epoch
    assert config.epochs_for(100) == 100  # at most --max-epochs
    assert TrainConfig(steps=10, batch_size=32).epochs_for(9000) == 1
    assert TrainConfig().monitored == ("val/loss", "min")
    assert TrainConfig(monitor="top1").monitored == ("val/top1", "max")
    for kwargs, flag in [({"steps": 0}, "--steps"), ({"monitor": "acc"}, "--monitor")]:
        with pytest.raises(ValueError, match=flag):
            TrainConfig(**kwargs)
