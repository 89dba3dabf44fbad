import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_cache import write_synthetic_cache

from emergence_model.calibrate import GuidePool
from emergence_model.checkpoint import load_checkpoint, load_strategy
from emergence_model.strategies import ModelMismatchError

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "--folds",
    "2",
    "--max-epochs",
    "3",
    "--batch-size",
    "16",
    "--hidden-size",
    "8",
    "--no-progress",
    "--bootstrap",
    "50",
]


def load_train_script():
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    train = write_synthetic_cache(root / "wiki", num_prefixes=120, vocab_size=32, seed=0)
    transfer = write_synthetic_cache(root / "rte", num_prefixes=40, vocab_size=32, seed=1)
    return train, transfer


@pytest.mark.slow
def test_train_evaluates_in_domain_and_on_transfer_and_saves_a_challenge_strategy(
    caches, tmp_path, capsys
):
    train, transfer = caches
    out = tmp_path / "checkpoints" / "wiki.ckpt"
    panels = load_train_script().main(
        [
            "--train-cache",
            str(train.path),
            "--transfer-cache",
            str(transfer.path),
            "--out",
            str(out),
            "--run-dir",
            str(tmp_path / "run"),
            *FAST,
            "--calibrate",
            "10",
        ]
    )
    printed = capsys.readouterr().out
    assert "in-domain (wiki)" in printed and "transfer (rte)" in printed and "network" in printed
    in_domain, on_transfer = panels["in-domain (wiki)"], panels["transfer (rte)"]
    assert in_domain["num_prefixes"] == 120  # cross-fitted
    assert "network" in in_domain["comparisons"]
    # transfer: 10 prompts calibrate the network, every strategy is scored on the other 30
    assert on_transfer["num_prefixes"] == 30 and "10 calibrating" in on_transfer["rows"]
    assert "network, calibrated" in on_transfer["comparisons"]
    pool = GuidePool.load(tmp_path / "run" / "report" / "rte.calibration.json")
    assert pool.rows == 10 and pool.guides[-2:] == ["network", "prior"]

    checkpoint = load_checkpoint(out)
    # the synthetic target extrapolates past the largest small model: contrastive tunes beta up
    assert checkpoint["baselines"]["contrastive"]["beta"] > 0
    assert (
        checkpoint["metrics"]["transfer (rte)"]["network"]
        == (on_transfer["strategies"]["network"]["top1"]["value"])
    )
    config = json.loads((tmp_path / "checkpoints" / "wiki.config.json").read_text())
    assert config["predictor"]["hidden_size"] == 8 and config["training"]["max_epochs"] == 3
    for name in ("results.json", "results.md", "agreement.png"):
        assert (tmp_path / "run" / "report" / name).is_file()

    # the evaluation command finds the same held-out scores from the checkpoint alone
    from emergence_model.commands.evaluate import main as evaluate

    again = evaluate(["--cache", str(train.path), "--checkpoint", str(out), "--bootstrap", "50"])
    assert again["num_prefixes"] == 120
    assert again["strategies"]["network"]["top1"] == in_domain["strategies"]["network"]["top1"]

    probs = np.exp(transfer.rows(range(5))[:, :-1]).astype(np.float16)
    strategy = load_strategy(out)
    guesses = strategy(
        transfer.prefixes[:5], transfer.model_names[:-1], transfer.target_name, probs
    )
    logprobs = torch.log(torch.from_numpy(probs).float())
    # the challenge's guesses are the mode of the predicted distribution, whichever guide the
    # training folds chose for the network (the checkpoint records it and why)
    assert guesses == strategy.scores(logprobs.numpy()).argmax(1).tolist()
    chosen = checkpoint["selection"]["ensemble"]
    assert strategy.guide_name == chosen["guide"] and chosen["rows"] == 120
    assert f"guesses with {chosen['guide']}" in printed
    assert len(checkpoint["selection"]["folds"]) == 2
    assert "network alone" in in_domain["strategies"]


@pytest.mark.slow
def test_a_small_labelled_set_is_cross_fitted_and_the_rest_scored_as_unseen(caches, tmp_path):
    train, _ = caches
    out = tmp_path / "small.ckpt"
    panels = load_train_script().main(
        ["--train-cache", str(train.path), "--out", str(out), "--max-train-prefixes", "60", *FAST]
    )
    assert panels["in-domain (wiki)"]["num_prefixes"] == 60
    unseen = panels["unseen (wiki)"]
    assert unseen["num_prefixes"] == 60 and "outside the 60 learnt from" in unseen["rows"]
    checkpoint = load_checkpoint(out)
    assert len(checkpoint["data"]["prefix_folds"]) == 60
    assert checkpoint["selection"]["ensemble"]["rows"] == 60  # the choice read the 60 alone
    from emergence_model.commands.evaluate import main as evaluate

    again = evaluate(["--cache", str(train.path), "--checkpoint", str(out), "--bootstrap", "50"])
    assert again["num_prefixes"] == 120  # 60 by the fold networks, 60 by the ensemble
    with pytest.raises(ValueError, match="--max-train-prefixes must be 0"):
        load_train_script().main(["--train-cache", str(train.path), "--max-train-prefixes", "-1"])


def test_transfer_cache_of_other_models_is_refused(caches, tmp_path):
    train, _ = caches
    other = write_synthetic_cache(
        tmp_path / "other", num_prefixes=20, vocab_size=32, model_names=[f"m{i}" for i in range(5)]
    )
    with pytest.raises(ModelMismatchError, match="use a checkpoint and caches of one suite"):
        load_train_script().main(
            [
                "--train-cache",
                str(train.path),
                "--transfer-cache",
                str(other.path),
                "--out",
                str(tmp_path / "x.ckpt"),
                *FAST,
            ]
        )


@pytest.mark.slow
def test_no_arguments_runs_the_demo(caches, tmp_path, monkeypatch):
    train, transfer = caches
    calls = []

    def fake_prepare_demo_caches(suite_dir=None, **kwargs):
        calls.append(suite_dir)
        return train.path, transfer.path

    script = load_train_script()
    monkeypatch.setattr(
        "emergence_model.commands.train.prepare_demo_caches", fake_prepare_demo_caches
    )
    monkeypatch.chdir(tmp_path)
    panels = script.main(FAST)  # no cache given: the demo
    assert calls == [None]
    assert (tmp_path / "checkpoints" / "demo.ckpt").is_file()
    assert set(panels) == {"in-domain (wiki)", "transfer (rte)"}


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_the_network_one_process_trains_at_twice_the_batch(
    caches, tmp_path
):
    """train.py --devices 2 --strategy ddp (gloo): each process takes half of each batch of 16,
    so the network is the one a single process trains at --batch-size 16, to float rounding;
    the first process alone evaluates, reports and saves."""
    train, transfer = caches
    common = ["--train-cache", str(train.path), "--transfer-cache", str(transfer.path),
              *FAST, "--accelerator", "cpu", "--threads", "1"]  # fmt: skip
    one = tmp_path / "one" / "wiki.ckpt"
    single = load_train_script().main([*common, "--out", str(one), "--devices", "1"])
    out = tmp_path / "ddp" / "wiki.ckpt"
    argv = [*common, "--out", str(out), "--batch-size", "8", "--devices", "2", "--strategy", "ddp"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *argv],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    # the first process speaks: one leaderboard, one line per fold, one checkpoint
    assert run.stdout.count(f"saved {out}") == 1 and run.stdout.count("fold 1/2: 54 training") == 1
    assert sorted(p.name for p in out.parent.glob("*.ckpt")) == ["wiki.ckpt"]
    for fold in ("fold-0", "fold-1"):
        assert len(list((out.parent / "runs" / "wiki" / fold / "lightning").glob("*.ckpt"))) == 1
    results = json.loads((out.parent / "runs" / "wiki" / "report" / "results.json").read_text())
    for panel, summary in single.items():
        assert (
            results[panel]["strategies"]["network"]["top1"]
            == (summary["strategies"]["network"]["top1"])
        )
    weights, reference = load_checkpoint(out)["state_dict"], load_checkpoint(one)["state_dict"]
    for name, value in reference.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-5)
