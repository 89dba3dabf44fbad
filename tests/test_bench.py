"""The bench scripts: run as modules from the repository root, flags from config dataclasses,
results written stamped; predictor_cv trains through the package's own training."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from synthetic_cache import write_synthetic_cache

import bench.experiments.predictor_cv as predictor_cv
from bench.benchmarks import bench_predictor
from bench.common import REPO, module_name, start_run
from bench.experiments import predictor_ladders
from bench.experiments.ladders import LadderRoot
from emergence_model.cache import open_cache
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
    assert len(SCRIPTS) == 13
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


def test_a_script_that_reads_no_suite_refuses_suite_dir():
    with pytest.raises(ValueError, match="reads no demo suite: leave out --suite-dir"):
        predictor_ladders.main(["--build-only", "--ladders", "seed0", "--suite-dir", "x"])


def test_a_benchmark_writes_its_stamped_results(tmp_path):
    argv = ["--rows", "4", "--vocab", "64", "--repeats", "1", "--heads", "2"]
    bench_predictor.main([*argv, "--results-dir", str(tmp_path)])
    stamp = read_stamp(tmp_path / "bench_predictor.md")
    assert stamp["command"].startswith("python -m bench.benchmarks.bench_predictor --rows 4 ")
    numbers = json.loads((tmp_path / "bench_predictor.json").read_text())["sections"][0]
    assert numbers["numbers"]["ratio"] > 0 and numbers["numbers"]["shape"] == [4, 6, 64]


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
