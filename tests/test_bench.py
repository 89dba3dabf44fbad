"""The bench scripts: run as modules from the repository root, flags from config dataclasses,
results written stamped; predictor_cv trains through the package's own training."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_cache import write_synthetic_cache

import bench.experiments.predictor_cv as predictor_cv
from bench.benchmarks import bench_gpu, bench_predictor, bench_strategy_memory
from bench.common import REPO, module_name, start_run
from bench.experiments import gpu_estimates, predictor_ladders
from bench.experiments.ladders import LadderRoot
from emergence_model.cache import IncompleteCacheError, create_cache, open_cache
from emergence_model.data import predictor_config_for
from emergence_model.model import PerTokenPredictor, PredictorConfig
from emergence_model.results import read_stamp
from emergence_model.training import TrainConfig

SCRIPTS = sorted(
    path
    for folder in ("benchmarks", "experiments", "builders")
    for path in (REPO / "bench" / folder).glob("*.py")
    if path.name != "__init__.py" and path.name != "ladders.py"
)


def test_every_script_shows_how_to_run_it_as_a_module_and_none_edits_sys_path():
    assert len(SCRIPTS) == 17
    for path in SCRIPTS:
        source = path.read_text()
        doc = ast.get_docstring(ast.parse(source))
        assert f"python -m {module_name(str(path))}" in doc, path
        assert "def main(argv" in source, path
    for path in (REPO / "bench").rglob("*.py"):
        assert "sys.path" not in path.read_text(), path


def test_flags_after_dashes_go_to_train_py_and_the_command_is_recorded_whole():
    argv = ["--ladders", "seed0", "--threads", "1", "--", "--max-epochs", "8"]
    (config, where), run = start_run(
        predictor_ladders.__file__,
        predictor_ladders.__doc__,
        argv,
        predictor_ladders.LaddersConfig,
        LadderRoot,
    )
    assert config.ladders == ["seed0"] and config.train_args == ["--max-epochs", "8"]
    assert where.root == LadderRoot().root and run.options.threads == 1
    assert run.command == (
        "python -m bench.experiments.predictor_ladders --ladders seed0 --threads 1 -- "
        "--max-epochs 8"
    )


def test_a_script_that_reads_no_suite_has_no_suite_dir(capsys):
    with pytest.raises(SystemExit) as info:
        predictor_ladders.main(["--build-only", "--ladders", "seed0", "--suite-dir", "x"])
    assert info.value.code == 2 and "unrecognized arguments: --suite-dir" in capsys.readouterr().err


def test_a_benchmark_writes_its_stamped_results(tmp_path):
    argv = ["--rows", "4", "--vocab", "64", "--repeats", "1", "--heads", "2"]
    bench_predictor.main([*argv, "--results-dir", str(tmp_path)])
    stamp = read_stamp(tmp_path / "bench_predictor.md")
    assert stamp["command"].startswith("python -m bench.benchmarks.bench_predictor --rows 4 ")
    numbers = json.loads((tmp_path / "bench_predictor.json").read_text())["sections"][0]
    assert numbers["numbers"]["ratio"] > 0 and numbers["numbers"]["shape"] == [4, 6, 64]


def test_the_memory_benchmark_measures_each_call_against_its_input(tmp_path, monkeypatch):
    def in_this_process(name, config, threads, whole):
        return bench_strategy_memory.measure(name, config.rows, config.vocab, config.heads, whole)

    monkeypatch.setattr(bench_strategy_memory, "measure_in_child", in_this_process)
    argv = ["--rows", "4", "--vocab", "64", "--heads", "1", "--strategies", "mean-prob", "network"]
    bench_strategy_memory.main([*argv, "--unchunked", "mean-prob", "--results-dir", str(tmp_path)])
    assert read_stamp(tmp_path / "bench_strategy_memory.md")["command"].startswith(
        "python -m bench.benchmarks.bench_strategy_memory --rows 4 "
    )
    numbers = json.loads((tmp_path / "bench_strategy_memory.json").read_text())
    results = numbers["sections"][0]["numbers"]["results"]
    assert [(r["strategy"], r["whole"]) for r in results] == [
        ("mean-prob", False),
        ("network", False),
        ("mean-prob", True),
    ]
    for r in results:
        assert r["input_bytes"] == 4 * 6 * 64 * 2 and r["call_bytes"] >= 0
        assert r["ratio"] == (r["input_bytes"] + r["call_bytes"]) / r["input_bytes"]


@pytest.fixture(scope="module")
def ladder_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ladders")
    write_synthetic_cache(LadderRoot(root).cache("seed0"), num_prefixes=120, vocab_size=32)
    return root


def test_inner_folds_never_hold_the_outer_folds_scored_prefixes(ladder_root):
    cache = open_cache(LadderRoot(ladder_root).cache("seed0"))
    train, val, scored = TrainConfig().folds_of(cache.prefixes).splits[0]  # train.py's first
    splits = predictor_cv.inner_splits(cache, 4)
    held_out = np.concatenate([split[2] for split in splits])
    assert sorted(held_out) == sorted(np.concatenate([train, val]))  # each seen prefix once
    for split in splits:
        assert not set(np.concatenate(split)) & set(scored)
        assert len(set(np.concatenate(split))) == sum(map(len, split))  # the parts are disjoint


def test_inner_folds_learn_from_a_small_set_and_score_every_held_out_prefix(ladder_root):
    cache = open_cache(LadderRoot(ladder_root).cache("seed0"))
    whole = predictor_cv.inner_splits(cache, 3)
    small = predictor_cv.inner_splits(cache, 3, max_prefixes=30)
    for (train, val, held_out), (learnt, checked, scored) in zip(whole, small, strict=True):
        assert len(learnt) + len(checked) == 30
        assert set(learnt) <= set(train) and set(checked) <= set(val)
        assert np.array_equal(held_out, scored)


def test_trained_networks_go_beside_ladders_that_are_only_read(ladder_root, tmp_path):
    where = LadderRoot(ladder_root, runs=tmp_path / "runs")
    assert (
        where.runs_dir == tmp_path / "runs"
        and LadderRoot(ladder_root).runs_dir.parent == ladder_root
    )
    assert where.built("seed0") == (where.cache("seed0"), [])  # no transfer set cached
    assert where.built("seed1") is None  # not built: predictor_ladders would build it


def test_variants_are_the_package_defaults_with_their_changes(ladder_root, monkeypatch):
    calls = []

    def fit_predictor(cache, network, training, run_dir, split):
        calls.append((network, training, split))
        return PerTokenPredictor(predictor_config_for(cache, network)), None, {}

    monkeypatch.setattr(predictor_cv, "fit_predictor", fit_predictor)
    cache = open_cache(LadderRoot(ladder_root).cache("seed0"))
    config = predictor_cv.PredictorCVConfig(variants=["MLP width 64", "three seeds per fold"])
    agree = predictor_cv.compare_variants(cache, config, progress=False)
    assert len(calls) == 4 + 3 * 4  # one network per inner fold; three seeds, three each
    network, training, _ = calls[0]
    assert network == dataclasses.replace(PredictorConfig(), hidden_size=64)
    assert training == TrainConfig(progress=False)
    assert [t.seed for _, t, _ in calls[4:7]] == [0, 1, 2]
    assert {len(a) for a in agree.values()} == {len(np.concatenate([c[2][2] for c in calls[:4]]))}


@pytest.mark.slow
def test_predictor_cv_trains_with_lightning_and_writes_its_table(ladder_root, tmp_path):
    argv = ["--root", str(ladder_root), "--variants", "default", "base: mean", "--no-progress"]
    predictor_cv.main([*argv, "--results-dir", str(tmp_path)])
    record = json.loads((tmp_path / "predictor_cv.json").read_text())
    section = record["sections"][0]
    assert [row[0] for row in section["rows"]] == [
        "default: top-1 %, and minus mean-prob",
        "base: mean",
    ]
    seed0 = section["numbers"]["seed0"]
    assert seed0["prefixes"] == 96 and 0 <= seed0["default"]["top1"] <= 1
    assert set(seed0["base: mean"]["minus_default"]) == {"value", "ci"}


@pytest.fixture
def offline_text(tiny_suite, monkeypatch):
    """Paragraphs and the tiny suite's tokenizer in place of WikiText-2 and Pythia's tokenizer
    from ../shared, which tests never read."""
    from conftest import make_sentences

    from emergence_model.lm import load_tokenizer

    sentences = make_sentences(400, seed=3)
    paragraphs = [" ".join(sentences[i : i + 8]) for i in range(0, 400, 8)]
    text = (paragraphs, load_tokenizer(str(tiny_suite.tokenizer_dir)), "tiny sentences")
    for module in (bench_gpu, gpu_estimates):
        monkeypatch.setattr(module, "load_text_and_tokenizer", lambda: text)


def test_the_gpu_benchmark_runs_its_whole_path_shrunk_on_a_cpu(offline_text, tmp_path):
    argv = ["--device", "cpu", "--tiny", "--peak-tflops", "0.5", "--train-epochs", "2"]
    bench_gpu.main([*argv, "--dir", str(tmp_path / "work"), "--results-dir", str(tmp_path)])
    extraction, predictor = json.loads((tmp_path / "bench_gpu.json").read_text())["sections"]
    assert [m["size"] for m in extraction["numbers"]] == ["1b", "12b"]
    for m in extraction["numbers"]:
        assert m["prefixes"] == 48 and m["prefixes_per_second"] > 0 and m["backoffs"] == []
        assert m["share_of_peak"] == pytest.approx(m["tflops"] / 0.5)
    numbers = predictor["numbers"]
    assert numbers["steps"] == 2 * -(-numbers["train_rows"] // 32) and 0 <= numbers["scored_top1"]
    assert "Card: CPU; dense bf16 peak 0.5 TFLOP/s" in extraction["notes"]
    assert not (tmp_path / "work" / "train-cache").exists()


@pytest.mark.parametrize(
    "name, peak",
    [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H200", 989.4),
     ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.1), ("NVIDIA L4", 121.0),
     ("NVIDIA A10G", 70.0), ("Some Future GPU", None)],
)  # fmt: skip
def test_a_card_s_bf16_peak_comes_from_its_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: name)
    assert bench_gpu.card("cuda", None) == (name, None if peak is None else peak * 1e12)
    assert bench_gpu.card("cuda", 100.0) == (name, 100.0 * 1e12)  # --peak-tflops wins


def test_gpu_estimates_say_they_are_estimates_and_count_the_cache_s_bytes(offline_text, tmp_path):
    gpu_estimates.main(["--results-dir", str(tmp_path)])
    disk, extraction, predictor = json.loads((tmp_path / "gpu_estimates.json").read_text())[
        "sections"
    ]
    assert disk["numbers"]["bytes_per_prefix"] == 7 * (50277 * 2 + 4 + 1)
    assert disk["rows"][1][:2] == ["20,000", "14.08 GB (13.11 GiB)"]
    numbers = extraction["numbers"]
    low, high = numbers["batch_16"]["seconds"]
    assert 0 < low < high and numbers["batch_64"]["seconds"][0] < low  # fewer batches, less host
    for section in (extraction, predictor):
        assert section["notes"].startswith("Estimate, not measured")


def test_a_ladder_whose_cache_was_interrupted_is_not_built_and_its_build_resumes(tmp_path):
    where = LadderRoot(tmp_path)
    writer = create_cache(
        where.cache("seed0"),
        model_names=["a", "b"],
        param_counts=[1, 2],
        prefixes=["x", "y"],
        vocab_size=4,
        tokenizer="t",
        source={"name": "synthetic"},
        seed=0,
        dtype="float32",
    )
    writer.write(0, np.arange(2), np.full((2, 4), np.log(0.25), dtype=np.float32))
    del writer  # interrupted: model b has no rows
    assert where.built("seed0") is None  # predictor_ladders runs the build, which resumes it
    with pytest.raises(IncompleteCacheError, match="rerun the same cache_features.py command"):
        open_cache(where.cache("seed0"))
