import json

import numpy as np
import pytest
import torch
from synthetic_cache import write_synthetic_cache

from emergence_model.checkpoint import save_checkpoint
from emergence_model.commands.evaluate import main
from emergence_model.evaluate import EvalConfig, make_baselines, score_rows, summarize
from emergence_model.folds import fold_splits
from emergence_model.model import PerTokenPredictor, PredictorConfig
from emergence_model.strategies import MeanProbability, NetworkStrategy


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("eval") / "cache", num_prefixes=60)


def test_summary_of_hand_made_rows():
    # 10 prefixes; the network is right on 9, the best baseline on 5, the other on 3;
    # easy prefixes (the largest small model agrees with the target) are the first 4
    config = PredictorConfig(vocab_size=4, scales=[1, 2], target_scale=4)
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
    per_row = {"easy": np.array([True] * 4 + [False] * 6), "strategies": {}}
    for name, values in top1.items():
        per_row["strategies"][name] = {"top1": np.array(values, float), "top5": np.ones(10)}
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
    scored = per_row["strategies"]
    x = torch.from_numpy(cache.rows(range(len(cache))))
    target = cache.target_argmax
    mean = torch.log(x[:, :-1].exp().mean(dim=1))
    assert scored["mean-prob"]["top1"] == pytest.approx((mean.argmax(1).numpy() == target) * 1.0)
    assert scored["mean-prob"]["guess"] == pytest.approx(mean.argmax(1).numpy())
    assert scored["largest"]["top1"] == pytest.approx((cache.argmax[:, -2] == target) * 1.0)
    assert scored["token-0"]["top1"] == pytest.approx((target == 0) * 1.0)
    assert "loglik" not in scored["token-0"] and "accept" not in scored["token-0"]
    target_logp = torch.log_softmax(x[:, -1], dim=1)
    q = torch.log_softmax(mean, dim=1)
    kl = (target_logp.exp() * (target_logp - q)).sum(1)
    assert scored["mean-prob"]["kl"] == pytest.approx(kl.numpy(), abs=1e-4)
    overlap = torch.minimum(target_logp.exp(), q.exp()).sum(1)
    assert scored["mean-prob"]["accept"] == pytest.approx(overlap.numpy(), abs=1e-5)
    assert scored["mean-prob"]["confidence"] == pytest.approx(q.exp().amax(1).numpy(), abs=1e-6)
    assert per_row["easy"].tolist() == (cache.argmax[:, -2] == target).tolist()
    assert per_row["target"]["token"].tolist() == target.tolist()
    rows = np.arange(len(cache))
    small_top = x[rows, :-1, target]  # (n, M) each small model's log-prob of the target's top
    assert per_row["target"]["small_logprob"] == pytest.approx(small_top.numpy(), abs=1e-6)
    assert per_row["target"]["logprob"] == pytest.approx(
        target_logp[rows, target].numpy(), abs=1e-6
    )
    # chunking changes nothing; no rows give empty columns of every metric
    whole = score_rows(cache, strategies, chunk_rows=len(cache))
    for name, metrics in scored.items():
        for metric, values in metrics.items():
            assert np.array_equal(whole["strategies"][name][metric], values), (name, metric)
    empty = score_rows(cache, strategies, indices=np.array([], dtype=np.int64))
    assert set(empty["strategies"]["mean-prob"]) == set(scored["mean-prob"])
    assert empty["target"]["small_logprob"].shape == (0, cache.num_models - 1)


@pytest.mark.parametrize("folds", [1, 3])
def test_cli_scores_held_out_rows_of_the_training_cache_and_writes_reports(cache, tmp_path, folds):
    config = PredictorConfig(
        hidden_size=8,
        vocab_size=cache.vocab_size,
        scales=cache.scales[:-1],
        target_scale=cache.scales[-1],
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
        data={"fingerprint": cache.fingerprint, "split": split},
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
    assert (out / "agreement.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*args, "--all-rows"])["num_prefixes"] == 60
    with pytest.raises(SystemExit):
        main([*args, "--checkpoint", str(ckpt)])  # two checkpoints, one trained on this cache


@pytest.mark.parametrize(
    "flag, value", [("--bootstrap", 0), ("--chunk-rows", 0), ("--chunk-rows", -3)]
)
def test_eval_config_names_the_flag_to_fix(flag, value):
    with pytest.raises(ValueError, match=flag):
        EvalConfig(**{flag.removeprefix("--").replace("-", "_"): value})
