import argparse
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_cache import write_synthetic_cache

from emergence_model.model import PredictorConfig
from emergence_model.strategies import MeanProbability
from emergence_model.training import (
    CacheDataModule,
    TrainConfig,
    add_config_arguments,
    config_from_args,
    field_docs,
    fit_cross_fitted,
    fit_predictor,
    fold_splits,
    split_indices,
)

QUIET = dict(progress=False, num_workers=0)


def test_split_is_deterministic_disjoint_and_keeps_repeated_prefixes_together():
    prefixes = [f"p{i % 80}" for i in range(100)]  # p0..p19 appear twice
    train, val, test = split_indices(prefixes, 0.1, 0.2, seed=3)
    again = split_indices(prefixes, 0.1, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(100))
    side = {}
    for name, rows in (("train", train), ("val", val), ("test", test)):
        for r in rows:
            assert side.setdefault(prefixes[r], name) == name
    assert len({prefixes[r] for r in test}) == 16 and len({prefixes[r] for r in val}) == 8
    assert not np.array_equal(split_indices(prefixes, 0.1, 0.2, seed=4)[2], test)
    with pytest.raises(ValueError, match="too few"):
        split_indices(prefixes[:2], 0.4, 0.4, seed=0)


def test_folds_partition_the_prefixes_and_never_train_on_their_test_rows():
    prefixes = [f"p{i % 90}" for i in range(100)]
    splits = fold_splits(prefixes, 4, 0.1, 0.2, seed=0)
    tests = np.concatenate([test for _, _, test in splits])
    assert sorted(tests.tolist()) == list(range(100))  # every row held out exactly once
    for train, val, test in splits:
        assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(100))
        texts = [{prefixes[r] for r in rows} for rows in (train, val, test)]
        assert not (texts[0] & texts[2]) and not (texts[1] & texts[2]) and not (texts[0] & texts[1])
        assert len(texts[1]) == 9
    assert np.array_equal(
        fold_splits(prefixes, 1, 0.1, 0.2, 0)[0][2], split_indices(prefixes, 0.1, 0.2, 0)[2]
    )


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"batch_size": 0}, "--batch-size"),
        ({"soft_weight": 1.5}, "--soft-weight"),
        ({"folds": 1, "val_fraction": 0.5, "test_fraction": 0.5}, "--val-fraction"),
        ({"folds": 0}, "--folds"),
        ({"target_temperature": 0}, "--target-temperature"),
    ],
)
def test_train_config_names_the_flag_to_fix(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        TrainConfig(**kwargs)


def test_flags_come_from_the_config_dataclasses():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, PredictorConfig, "network")
    add_config_arguments(parser, TrainConfig, "training")
    help_text = parser.format_help()
    assert "Width of the shared per-token MLP" in help_text
    assert "--param-counts" not in help_text and "--num-heads" not in help_text  # not flags
    args = parser.parse_args(["--hidden-size", "7", "--no-context", "--soft-weight", "0.5"])
    assert config_from_args(PredictorConfig, args).hidden_size == 7
    assert config_from_args(PredictorConfig, args).context is False
    assert config_from_args(TrainConfig, args).soft_weight == 0.5
    assert set(field_docs(TrainConfig)) == {f for f in TrainConfig.__dataclass_fields__}


def test_data_module_reads_rows_of_the_cache(tiny_cache):
    data = CacheDataModule(tiny_cache.path, TrainConfig(batch_size=4, soft_weight=0.5))
    batch = next(iter(data.train_dataloader()))
    m, v = tiny_cache.num_models, tiny_cache.vocab_size
    assert batch["logprobs"].shape == (4, m - 1, v)
    rows = data.train_idx
    assert set(batch["target"].tolist()) <= set(tiny_cache.target_argmax[rows].tolist())
    assert batch["target_logprobs"].shape == (4, v)
    config = data.predictor_config(PredictorConfig())
    assert config.num_models == m - 1 and config.vocab_size == v
    assert config.param_counts == tiny_cache.param_counts[:-1]


@pytest.mark.parametrize("soft_weight", [0.0, 0.5])
def test_fast_dev_run_on_a_cache_of_tiny_models(tiny_cache, tmp_path, soft_weight):
    train = TrainConfig(fast_dev_run=True, batch_size=4, soft_weight=soft_weight, **QUIET)
    predictor, data, metrics = fit_predictor(
        tiny_cache.path, PredictorConfig(hidden_size=8), train, tmp_path
    )
    x = torch.from_numpy(tiny_cache.rows([0, 1])[:, :-1])
    assert predictor(x).shape == (2, tiny_cache.vocab_size)
    assert "best_val_top1" not in metrics  # fast_dev_run saves no checkpoint


def test_short_run_beats_the_mean_probability_where_the_answer_is_learnable(tmp_path):
    # the target's top token is each token's extrapolation beyond the largest small model
    cache = write_synthetic_cache(tmp_path / "cache", num_prefixes=300, vocab_size=48)
    train = TrainConfig(
        max_epochs=12, batch_size=16, val_fraction=0.3, test_fraction=0.0, lr=5e-3, **QUIET
    )
    predictor, data, metrics = fit_predictor(
        cache.path, PredictorConfig(hidden_size=16), train, tmp_path / "run"
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


def test_cross_fitting_gives_one_head_per_fold(tiny_cache, tmp_path):
    train = TrainConfig(folds=3, max_epochs=1, batch_size=8, **QUIET)
    predictor, splits, metrics = fit_cross_fitted(
        tiny_cache.path, PredictorConfig(hidden_size=4), train, tmp_path
    )
    assert (
        predictor.config.num_heads == 3
        and len(splits) == 3
        and set(metrics) == {"fold-0", "fold-1", "fold-2"}
    )
    assert all((tmp_path / f"fold-{k}" / "logs").is_dir() for k in range(3))


def test_cross_fitting_resumes_from_finished_folds(tiny_cache, tmp_path, monkeypatch):
    from emergence_model import training

    train = TrainConfig(folds=3, max_epochs=1, batch_size=8, **QUIET)
    config = PredictorConfig(hidden_size=4)
    first, _, metrics = fit_cross_fitted(tiny_cache.path, config, train, tmp_path)
    (tmp_path / "fold-1" / training.MEMBER_FILE).unlink()  # as if interrupted during fold 1
    (tmp_path / "fold-2" / training.MEMBER_FILE).write_bytes(b"torn")
    trained = []
    real_fit = training.fit_predictor

    def counting_fit(*args, **kwargs):
        trained.append(Path(args[3]).name)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit_predictor", counting_fit)
    again, _, metrics_again = fit_cross_fitted(tiny_cache.path, config, train, tmp_path)
    assert trained == ["fold-1", "fold-2"] and metrics_again == metrics
    x = torch.from_numpy(tiny_cache.rows(range(8))[:, :-1])
    torch.testing.assert_close(again.log_probs(x), first.log_probs(x))
    trained.clear()
    fit_cross_fitted(tiny_cache.path, config, dataclasses.replace(train, lr=1e-2), tmp_path)
    assert trained == ["fold-0", "fold-1", "fold-2"]  # another config: nothing is reused
    trained.clear()
    rebuilt = tmp_path / "rebuilt"
    shutil.copytree(tiny_cache.path, rebuilt)
    argmax = np.load(rebuilt / "argmax.npy")
    np.save(rebuilt / "argmax.npy", argmax[:, ::-1].copy())  # same prefixes, other contents
    fit_cross_fitted(rebuilt, config, train, tmp_path)
    assert trained == ["fold-0", "fold-1", "fold-2"]
