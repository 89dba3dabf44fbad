import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from synthetic_cache import write_synthetic_cache

from emergence_model.checkpoint import cache_fingerprint, save_checkpoint
from emergence_model.evaluate import (
    agreement_svg,
    bootstrap_ci,
    evaluate_cache,
    format_table,
    main,
    make_baselines,
    score_rows,
    summarize,
)
from emergence_model.model import PerTokenPredictor, PredictorConfig
from emergence_model.strategies import MeanProbability, NetworkStrategy
from emergence_model.training import fold_splits


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("eval") / "cache", num_prefixes=60)


def test_bootstrap_interval_by_hand():
    assert bootstrap_ci(np.full(50, 0.25)) == (0.25, 0.25)
    values = np.array([0.0, 1.0] * 200)  # mean 0.5, standard error 0.025
    lo, hi = bootstrap_ci(values, num_bootstrap=2000)
    assert lo == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01)
    assert hi == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)
    assert bootstrap_ci(values, seed=1) == bootstrap_ci(values, seed=1)


def test_summary_of_hand_made_rows():
    # 10 prefixes; the network is right on 9, the best baseline on 5, the other on 3;
    # easy prefixes (the largest small model agrees with the target) are the first 4
    config = PredictorConfig(vocab_size=4, param_counts=[1, 2], target_param_count=4)
    strategies = {
        "mean-prob": MeanProbability(),
        "largest": MeanProbability(),
        "network": NetworkStrategy(PerTokenPredictor(config), ["a", "b"], "t"),
    }
    top1 = {
        "mean-prob": [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        "largest": [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        "network": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
    }
    per_row = {"easy": np.array([True] * 4 + [False] * 6)}
    for name, values in top1.items():
        per_row[name] = {"top1": np.array(values, float), "top5": np.ones(10)}
    summary = summarize(per_row, strategies, num_bootstrap=500)
    assert summary["easy_share"]["value"] == pytest.approx(0.4)
    assert summary["best_baseline"] == "mean-prob"
    assert summary["strategies"]["network"]["top1"]["value"] == pytest.approx(0.9)
    assert summary["strategies"]["network"]["hard_top1"]["value"] == pytest.approx(5 / 6)
    assert summary["strategies"]["largest"]["hard_top1"]["value"] == pytest.approx(0.0)
    comparison = summary["comparisons"]["network"]
    assert comparison["baseline"] == "mean-prob"
    assert comparison["top1_diff"]["value"] == pytest.approx(0.4)
    assert comparison["top1_diff"]["ci"][0] > 0 and comparison["beats_best_baseline"]


def test_rows_match_a_direct_computation(cache):
    strategies = make_baselines(["mean-prob", "largest", "token-0"])
    per_row = score_rows(cache, strategies, chunk_rows=7)
    x = torch.from_numpy(cache.rows(range(len(cache))))
    target = cache.target_argmax
    mean = torch.log(x[:, :-1].exp().mean(dim=1))
    assert per_row["mean-prob"]["top1"] == pytest.approx((mean.argmax(1).numpy() == target) * 1.0)
    assert per_row["largest"]["top1"] == pytest.approx((cache.argmax[:, -2] == target) * 1.0)
    assert per_row["token-0"]["top1"] == pytest.approx((target == 0) * 1.0)
    assert "loglik" not in per_row["token-0"]
    target_logp = torch.log_softmax(x[:, -1], dim=1)
    kl = (target_logp.exp() * (target_logp - torch.log_softmax(mean, dim=1))).sum(1)
    assert per_row["mean-prob"]["kl"] == pytest.approx(kl.numpy(), abs=1e-4)
    assert per_row["easy"].tolist() == (cache.argmax[:, -2] == target).tolist()


@pytest.mark.parametrize("folds", [1, 3])
def test_cli_scores_held_out_rows_of_the_training_cache_and_writes_reports(cache, tmp_path, folds):
    config = PredictorConfig(
        hidden_size=8,
        vocab_size=cache.vocab_size,
        param_counts=cache.param_counts[:-1],
        target_param_count=cache.param_counts[-1],
        num_heads=folds,
    )
    split = {"folds": folds, "val_fraction": 0.1, "test_fraction": 0.3, "seed": 2}
    ckpt = tmp_path / "net.ckpt"
    save_checkpoint(
        ckpt,
        PerTokenPredictor(config),
        model_names=cache.model_names[:-1],
        target_name=cache.target_name,
        baselines={"contrastive": {"beta": 0.8}},
        data={"fingerprint": cache_fingerprint(cache.model_names, cache.prefixes), "split": split},
    )
    out = tmp_path / "report"
    args = ["--cache", str(cache.path), "--checkpoint", str(ckpt), "--bootstrap", "100"]
    summary = main([*args, "--out", str(out)])
    held_out = np.concatenate([t for _, _, t in fold_splits(cache.prefixes, folds, 0.1, 0.3, 2)])
    assert summary["num_prefixes"] == len(held_out) == (18 if folds == 1 else 60)
    assert "held-out" in summary["rows"]
    assert summary["strategies"]["contrastive"]["params"] == {"beta": 0.8}
    # an untrained network is the mean-probability baseline
    net, mean = summary["strategies"]["network"], summary["strategies"]["mean-prob"]
    assert net["top1"]["value"] == mean["top1"]["value"]
    assert net["candidate_recall"] == 1.0
    written = json.loads((out / "results.json").read_text())
    assert set(written) == {"cache"}
    assert "| network" in (out / "results.md").read_text()
    ET.fromstring((out / "agreement.svg").read_text())  # well-formed
    assert main([*args, "--all-rows"])["num_prefixes"] == 60
    with pytest.raises(SystemExit):
        main([*args, "--checkpoint", str(ckpt)])  # two checkpoints, one trained on this cache


def test_table_and_chart_show_every_strategy(cache):
    summary = evaluate_cache(cache, [(None, make_baselines())], num_bootstrap=50)
    table = format_table(summary, "synthetic")
    svg = agreement_svg([("a", summary), ("b", summary)])
    for name in summary["strategies"]:
        assert name in table and f">{name}<" in svg
    assert ET.fromstring(svg).tag.endswith("svg")
