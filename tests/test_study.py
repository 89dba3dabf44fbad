"""The study end to end on tiny GPT-NeoX models: the command, what it writes, and its errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_sentences
from synthetic_cache import write_synthetic_cache
from transformers import AutoTokenizer

from emergence_model.checkpoint import build_predictor, load_checkpoint
from emergence_model.extract import ExtractConfig, extract_suite
from emergence_model.prompts import induction_prefixes
from emergence_model.study.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ladder(tiny_suite, tmp_path_factory):
    """Two prefix sets of the tiny suite and a network cross-fitted on the first."""
    root = tmp_path_factory.mktemp("study")
    config = ExtractConfig(device="cpu", batch_size=8, progress=False)
    wiki = extract_suite(tiny_suite.model_ids, make_sentences(60, seed=1), root / "wiki", config)
    rte = extract_suite(tiny_suite.model_ids, make_sentences(30, seed=2), root / "rte", config)
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    ckpt = root / "net.ckpt"
    train.main(
        [
            "--train-cache", str(wiki.path), "--transfer-cache", str(rte.path),
            "--out", str(ckpt), "--run-dir", str(root / "run"), "--folds", "2",
            "--max-epochs", "2", "--batch-size", "8", "--hidden-size", "8",
            "--no-progress", "--bootstrap", "50",
        ]
    )  # fmt: skip
    return {"root": root, "wiki": wiki, "rte": rte, "ckpt": ckpt}


def run_study(ladder, out, *extra):
    args = ["--checkpoint", ladder["ckpt"], "--cache", ladder["wiki"].path]
    args += ["--cache", ladder["rte"].path, "--out", out, "--bootstrap", "40", *extra]
    return main([str(a) for a in args])


@pytest.mark.slow
def test_the_study_writes_its_report_and_every_prefix(ladder, tmp_path):
    out = tmp_path / "study"
    (study,) = run_study(ladder, out, "--subset-networks", "--generate-prompts", "2",
                         "--generate-tokens", "3")  # fmt: skip
    assert [s["name"] for s in study["sets"]] == ["wiki", "rte"]
    report = (out / "report.md").read_text()
    for section in (
        "How emergent each prefix is",
        "The scaling view",
        "Speculative decoding",
        "Cascade",
        "The most emergent prefixes",
        "Measured: speculative decoding",
        "Sampled acceptance (%) of each draft on every set",
    ):
        assert section in report
    for link in [line.split("](")[1][:-1] for line in report.splitlines() if "![" in line]:
        assert (out / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
    json.loads((out / "study.json").read_text())  # strict JSON: no NaN or Infinity
    lines = (out / "per_prefix.jsonl").read_text().splitlines()
    assert len(lines) == 60 + 30
    first = json.loads(lines[0])
    assert first["prefix"] == ladder["wiki"].prefixes[0]
    assert first["target_token"] == int(ladder["wiki"].target_argmax[0])
    # the networks on the k smallest models are drafts of their own, cheaper than the network
    drafts = study["sets"][0]["speculative"]
    assert drafts["network:1-smallest"]["cost"] < drafts["network"]["cost"]
    assert {"network:1-smallest", "network:2-smallest", "network:3-smallest"} <= set(drafts)
    for entry in drafts.values():
        for mode in ("greedy", "sampled"):
            best = entry[mode]
            # g = 0 means "do not speculate" (speed-up 1); otherwise it must be a real gain
            assert (best["draft_length"] == 0) == (best["speedup"]["value"] == 1.0)
            # the headline is at the measured cost, reported beside the parameter ratio
            assert entry["cost_kind"] == "measured, batch 1"
            assert set(best["by_cost"]) == {"measured, batch 1", "measured, batch 16", "parameters"}
    # a draft over several models costs their steps and its combination: more than one of them
    costs = study["costs"]
    assert (
        costs["threads"] == 1
        and drafts["network"]["costs"]["measured, batch 1"]
        == (costs["drafts"]["network"]["cost"]["1"])
    )
    assert drafts["network"]["cost"] > drafts["model:tiny-neox-0"]["cost"]
    # the real decoder: tokens per second of the target alone and of each draft, in one run,
    # and the offline estimate on the positions decoded
    generation = study["generation"]
    assert generation["target"]["greedy"]["tokens_per_second"]["value"] > 0
    for modes in generation["drafts"].values():
        for m in modes.values():
            assert 0 <= m["offline_acceptance"] <= 1 and m["speedup"]["value"] > 0
    assert set(generation["cascade"]["levels"]) == {"0.95", "0.99"}
    # the curve over scale: the tiny suite's third small model and its target, predicted from
    # the rungs below them
    curve = study["sets"][0]["rung_curve"]
    assert [r["model"] for r in curve["rungs"]] == ["tiny-neox-2", "tiny-neox-3"]
    assert all(r["below"] == [f"tiny-neox-{i}" for i in range(r["position"])]
               for r in curve["rungs"])  # fmt: skip
    # the cascade's net compute: its predictor's cost on every prefix and the target's share
    point = study["sets"][0]["cascade"]["network"]["levels"]["0.95"]
    cascade = study["sets"][0]["cascade"]["network"]
    expected = cascade["cost"] + 1 - point["saved"]["value"] * (1 - cascade["catch_up"])
    assert point["net_compute"]["value"] == pytest.approx(expected)
    record = json.loads((out / "report.json").read_text())
    assert record["stamp"]["command"].startswith("python -m emergence_model.study --checkpoint")
    assert record["claims"] == [c for s in [study] for c in s["claims"]]


def test_scores_on_a_transfer_set_are_those_of_the_chosen_predictor(ladder, tmp_path):
    (study,) = run_study(ladder, tmp_path / "s")
    best = study["best_predictor"]["overall"]
    rte = study["sets"][1]
    rows = [json.loads(line) for line in (tmp_path / "s" / "per_prefix.jsonl").open()]
    rte_rows = [r for r in rows if r["set"] == "rte"]
    # KL(target || best) of each prefix, computed here from the cache and the checkpoint
    cache = ladder["rte"]
    x = torch.from_numpy(cache.rows(range(len(cache))))
    p = torch.log_softmax(x[:, -1], dim=1)
    if best == "network":
        checkpoint = load_checkpoint(ladder["ckpt"])
        q = build_predictor(checkpoint).log_probs(x[:, :-1])
    else:
        from emergence_model.evaluate import make_baselines

        strategy = make_baselines([best])[best]
        q = torch.from_numpy(strategy.scores(x[:, :-1], cache.scales[:-1], cache.scales[-1]))
    kl = (p.exp() * (p - q)).sum(dim=1).numpy()
    assert [r["kl"] for r in rte_rows] == pytest.approx(kl.tolist(), abs=1e-4)
    assert rte["emergence"]["kl"]["value"] == pytest.approx(kl.mean(), abs=1e-4)
    # the jump: the target's log-prob of its top token minus the small models' trend
    assert [r["jump"] for r in rte_rows] == pytest.approx(
        [r["target_logprob"] - r["trend"] for r in rte_rows], abs=1e-6
    )
    # greedy acceptance of a draft is its top-1 agreement with the target
    board = rte["leaderboard"]["strategies"]
    assert rte["speculative"]["mean-prob"]["greedy"]["acceptance"]["value"] == pytest.approx(
        board["mean-prob"]["top1"]["value"]
    )
    # every draft is reported; one that costs a target pass or more is never worth running
    assert {"mean-prob", "network"} <= set(rte["speculative"])
    for draft in rte["speculative"].values():
        if draft["cost"] >= 1:
            assert draft["greedy"]["draft_length"] == 0
            assert draft["greedy"]["speedup"]["value"] == 1.0
    assert "vs_reference" in rte and "vs_reference" not in study["sets"][0]
    assert np.isfinite(rte["vs_reference"]["emergence"]["kl"]["value"])


def test_the_network_guesses_with_the_guide_its_checkpoint_chose(ladder, tmp_path):
    checkpoint = load_checkpoint(ladder["ckpt"])
    for choice in [checkpoint["selection"]["ensemble"], *checkpoint["selection"]["folds"]]:
        choice.update(guide="largest", params={})  # as if the training folds showed it ahead
    chose_largest = tmp_path / "largest.ckpt"
    torch.save(checkpoint, chose_largest)
    (study,) = run_study({**ladder, "ckpt": chose_largest}, tmp_path / "s")
    rows = [json.loads(line) for line in (tmp_path / "s" / "per_prefix.jsonl").open()]
    for name, cache in (("wiki", ladder["wiki"]), ("rte", ladder["rte"])):
        x = cache.rows(range(len(cache)))
        largest = x[:, int(np.argmax(cache.scales[:-1]))].argmax(axis=1)
        scored = {r["row"]: r["guesses"] for r in rows if r["set"] == name}
        assert scored and all(g["network"] == largest[i] for i, g in scored.items())


def test_bad_input_is_refused_in_one_line(ladder, tmp_path):
    synthetic = write_synthetic_cache(tmp_path / "syn", num_prefixes=20, vocab_size=16)
    with pytest.raises(ValueError, match="small models"):
        main(["--checkpoint", str(ladder["ckpt"]), "--cache", str(synthetic.path)])
    with pytest.raises(ValueError, match="--cost-ratio must be in \\(0, 1\\]"):
        run_study(ladder, tmp_path / "x", "--cost-ratio", "1.5")
    with pytest.raises(ValueError, match="give --checkpoint and at least one --cache"):
        main(["--checkpoint", str(ladder["ckpt"])])
    with pytest.raises(ValueError, match="a cache is given twice"):
        main(["--checkpoint", str(ladder["ckpt"]), "--cache", str(ladder["wiki"].path),
              "--cache", str(ladder["wiki"].path)])  # fmt: skip
    with pytest.raises(ValueError, match="SET=CACHE"):
        run_study(ladder, tmp_path / "y", "--ceiling-cache", "nothing")


def test_caches_whose_tokenizer_is_gone_are_studied_by_token_id(ladder, tmp_path, capsys):
    # a cache imported from a challenge pickle names its target, whose tokenizer may not load:
    # the study runs, shows token ids and says so once; caches of two tokenizers are refused
    moved = {}
    for name in ("wiki", "rte"):
        moved[name] = tmp_path / name
        shutil.copytree(ladder[name].path, moved[name])
        meta = json.loads((moved[name] / "meta.json").read_text())
        meta["tokenizer"] = str(tmp_path / "deleted-tokenizer")
        (moved[name] / "meta.json").write_text(json.dumps(meta))
    args = ["--checkpoint", ladder["ckpt"], "--out", tmp_path / "out", "--bootstrap", "20",
            "--no-rung-curve", "--no-measure-costs"]  # fmt: skip
    with pytest.raises(ValueError, match="different tokenizers") as error:
        main([str(a) for a in [*args, "--cache", ladder["wiki"].path, "--cache", moved["rte"]]])
    assert "\n" not in str(error.value)
    (study,) = main([str(a) for a in [*args, "--cache", moved["wiki"], "--cache", moved["rte"]]])
    assert "does not load" in study["tokenizer_note"]
    assert capsys.readouterr().out.count("does not load") == 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.count("does not load") == 1
    first = json.loads((tmp_path / "out" / "per_prefix.jsonl").open().readline())
    assert first["target_text"] == f"<id {first['target_token']}>"


def test_copying_is_split_by_whether_the_target_copies(ladder, tiny_suite, tmp_path):
    texts = [" ".join(make_sentences(3, seed=s)) for s in range(80)]
    prefixes, expected = induction_prefixes(texts, seed=0, words=(12, 20))
    config = ExtractConfig(device="cpu", batch_size=8, progress=False)
    probe = extract_suite(tiny_suite.model_ids, prefixes, tmp_path / "probe", config)
    # tiny models never copy: make the target's own choice the expected word of every other
    # prompt, so that both groups are there
    tokenizer = AutoTokenizer.from_pretrained(tiny_suite.model_ids[-1])
    chosen = [tokenizer.decode([int(t)]) for t in probe.target_argmax]
    expected = [c if i % 2 else e for i, (c, e) in enumerate(zip(chosen, expected, strict=True))]
    source = {"dataset": "induction", "task": "induction", "expected": expected}
    induction = extract_suite(tiny_suite.model_ids, prefixes, tmp_path / "induction", config,
                              source=source)  # fmt: skip
    out = tmp_path / "study"
    args = ["--checkpoint", ladder["ckpt"], "--cache", ladder["wiki"].path, "--cache"]
    (study,) = main([str(a) for a in [*args, induction.path, "--out", out, "--bootstrap", "30"]])
    split = study["sets"][1]["copies"]["split"]
    rows = [json.loads(line) for line in (out / "per_prefix.jsonl").open()]
    rows = [r for r in rows if r["set"] == "induction" and r.get("copy_token", -1) >= 0]
    copies = [r for r in rows if r["target_token"] == r["copy_token"]]
    others = [r for r in rows if r["target_token"] != r["copy_token"]]
    assert split["copies"]["prefixes"] == len(copies) > 0
    assert split["other"]["prefixes"] == len(others) > 0
    assert split["copies"]["kl"]["value"] == pytest.approx(np.mean([r["kl"] for r in copies]))
    assert split["other"]["miss"]["value"] == pytest.approx(np.mean([r["miss"] for r in others]))
    difference = np.mean([r["kl"] for r in copies]) - np.mean([r["kl"] for r in others])
    assert split["copies"]["minus_other"]["kl"]["value"] == pytest.approx(difference)
    assert split["new"]["prefixes"] <= split["copies"]["prefixes"]
    assert "the target copies, the largest small model does not" in (out / "report.md").read_text()


def test_the_demo_study_trains_again_a_checkpoint_of_an_older_training(ladder, tmp_path):
    from emergence_model.demo.study import trained_on

    assert trained_on(ladder["ckpt"], ladder["wiki"].path)
    assert not trained_on(ladder["ckpt"], ladder["rte"].path)  # another cache
    checkpoint = load_checkpoint(ladder["ckpt"])
    # the checkpoint's fitted mixture, on the simplex
    assert build_predictor(checkpoint).mixture.sum().item() == pytest.approx(1.0)
    del checkpoint["train_config"]["mixture"]  # as made before the mixture existed
    older = tmp_path / "older.ckpt"
    torch.save(checkpoint, older)
    assert not trained_on(older, ladder["wiki"].path)
    checkpoint = load_checkpoint(ladder["ckpt"])
    checkpoint["design"] -= 1  # weights fitted by an older network design
    torch.save(checkpoint, older)
    assert load_checkpoint(older) and not trained_on(older, ladder["wiki"].path)


def test_the_demo_study_trains_again_its_own_network_of_older_defaults(ladder, monkeypatch):
    from emergence_model.demo import study as demo

    path = ladder["wiki"].path
    assert demo.trained_on(ladder["ckpt"], path)  # train.py's network: reused, whatever its flags
    assert not demo.trained_on(ladder["ckpt"], path, defaults=True)  # 2 folds, width 8, ...
    predictor, training = demo.default_settings()
    assert {"hidden_size", "num_candidates", "token_embedding"} <= set(predictor)  # flags
    assert not {"num_models", "scales", "num_heads", "progress"} & {*predictor, *training}
    checkpoint = load_checkpoint(ladder["ckpt"])
    as_trained = (
        {k: checkpoint["config"][k] for k in predictor},
        {k: checkpoint["train_config"][k] for k in training},
    )
    monkeypatch.setattr(demo, "default_settings", lambda: as_trained)
    assert demo.trained_on(ladder["ckpt"], path, defaults=True)
    as_trained[0]["num_candidates"] += 1  # a default changed since the study trained it
    assert not demo.trained_on(ladder["ckpt"], path, defaults=True)


def test_a_challenge_pickle_is_studied_with_the_tokenizer_it_was_given(ladder, tiny_suite,
                                                                       tmp_path):  # fmt: skip
    from emergence_model.challenge import export_challenge_pickle
    from emergence_model.commands.extract import main as extract

    pkl = export_challenge_pickle(ladder["rte"], tmp_path / "rte.pkl")
    imported = tmp_path / "imported"
    counts = ",".join(map(str, ladder["rte"].param_counts))
    extract(["--from-pickle", str(pkl), "--out", str(imported), "--param-counts", counts,
             "--tokenizer", str(tiny_suite.tokenizer_dir)])  # fmt: skip
    assert json.loads((imported / "meta.json").read_text())["tokenizer"] == str(
        tiny_suite.tokenizer_dir
    )
    out = tmp_path / "study"
    args = ["--checkpoint", ladder["ckpt"], "--cache", imported, "--out", out, "--bootstrap", "20",
            "--folds", "2", "--no-rung-curve", "--no-measure-costs"]  # fmt: skip
    (study,) = main([str(a) for a in args])
    assert study["tokenizer_note"] is None
    rows = [json.loads(line) for line in (out / "per_prefix.jsonl").open()]
    assert not any(r["target_text"].startswith("<id ") for r in rows)
    with pytest.raises(ValueError, match="--tokenizer goes with --from-pickle"):
        extract(["--out", str(tmp_path / "x"), "--tokenizer", "t", "--dataset", "demo-wiki"])
