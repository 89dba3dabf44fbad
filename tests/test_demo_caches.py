"""The demo's caches, made from the tiny demo suite through the registries and `extract_suite`:
train.py's two, and the study's (every set on sizes, along training steps, under the ceiling)."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_demo import SUBTREE_ROOT, TINY, model_dirs, suite_record

from emergence_model.cache import CacheError, create_cache, open_cache
from emergence_model.demo.__main__ import main
from emergence_model.demo.build import build_suite
from emergence_model.demo.caches import (
    SIZE_DATASETS,
    prepare_demo_caches,
    prepare_demo_study_caches,
)
from emergence_model.demo.prefix_sets import demo_prefixes

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stdlib_subtree")]


def test_prepare_demo_caches_goes_through_extraction_and_is_reused(
    demo_suite_dir, tmp_path, monkeypatch
):
    wiki, rte = prepare_demo_caches(demo_suite_dir, tmp_path, progress=False)
    assert (wiki, rte) == (tmp_path / "demo-wiki", tmp_path / "demo-rte")
    cache = open_cache(wiki, full_check=True)
    assert cache.model_names == [str(d) for d in model_dirs(demo_suite_dir)]
    assert cache.prefixes == demo_prefixes("wiki", demo_suite_dir)
    assert cache.vocab_size == 300 and cache.logprobs.shape[1] == 3
    assert open_cache(rte).prefixes == demo_prefixes("rte", demo_suite_dir)

    def fail(*args, **kwargs):
        raise AssertionError("a finished cache was extracted again")

    monkeypatch.setattr("emergence_model.demo.caches.extract_suite", fail)
    assert prepare_demo_caches(demo_suite_dir, tmp_path, progress=False) == (wiki, rte)


def test_a_demo_cache_of_other_prefixes_is_rebuilt_and_other_caches_are_left_alone(
    demo_suite_dir, tmp_path
):
    wiki, rte = prepare_demo_caches(demo_suite_dir, tmp_path, progress=False)
    done = open_cache(wiki)

    def unfinished_cache(root: Path, dataset: str) -> None:
        writer = create_cache(
            root / "demo-wiki",
            model_names=done.model_names,
            param_counts=done.param_counts,
            prefixes=done.prefixes[:5],
            vocab_size=done.vocab_size,
            tokenizer="t",
            source={"dataset": dataset},
        )
        writer.write(0, [0], done.rows([0])[:, 0])  # it holds a row: it is not empty
        writer.commit()

    unfinished_cache(tmp_path / "old", "demo-wiki")  # an earlier version's, left unfinished
    shutil.copytree(rte, tmp_path / "old" / "demo-rte")
    assert prepare_demo_caches(demo_suite_dir, tmp_path / "old", progress=False)
    assert open_cache(tmp_path / "old" / "demo-wiki").prefixes == done.prefixes
    unfinished_cache(tmp_path / "mine", "my-prefixes")  # not the demo's: never deleted
    with pytest.raises(CacheError, match="other prefixes"):
        prepare_demo_caches(demo_suite_dir, tmp_path / "mine", progress=False)
    prefixes_file = tmp_path / "mine" / "demo-wiki" / "prefixes.json"
    assert json.loads(prefixes_file.read_text()) == done.prefixes[:5]


def test_caches_build_the_suite_first(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(
        "emergence_model.demo.caches.build_suite", lambda suite_dir, **kw: built.append(suite_dir)
    )
    with pytest.raises(ValueError, match="not built"):  # the fake build left nothing
        prepare_demo_caches(tmp_path / "suite", progress=False)
    assert built == [tmp_path / "suite"]


@pytest.fixture(scope="module")
def study_suite_dir(tmp_path_factory) -> Path:
    """A tiny demo suite with 256-token windows, which hold the one-shot RTE prompts."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("emergence_model.demo.corpus.stdlib_root", lambda: SUBTREE_ROOT)
        suite_dir = tmp_path_factory.mktemp("study") / "suite"
        build_suite(suite_dir, dataclasses.replace(TINY, seq_len=256), progress=False)
    return suite_dir


@pytest.fixture(scope="module")
def study_caches(study_suite_dir, tmp_path_factory):
    """The study's caches of the suite: a cache root and what `prepare_demo_study_caches` gave."""
    root = tmp_path_factory.mktemp("study_caches")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("emergence_model.demo.corpus.stdlib_root", lambda: SUBTREE_ROOT)
        return root, prepare_demo_study_caches(study_suite_dir, root, progress=False)


def test_study_caches_cover_sizes_training_steps_and_the_ceiling(
    study_suite_dir, study_caches, monkeypatch, capsys
):
    tmp_path, caches = study_caches
    assert list(caches.size) == list(SIZE_DATASETS)
    assert list(caches.steps) == ["demo-wiki", "demo-induction"]
    assert list(caches.ceiling) == list(SIZE_DATASETS)
    record = suite_record(study_suite_dir)
    target = str(study_suite_dir / record["models"][-1]["directory"])
    for dataset, path in caches.size.items():
        cache = open_cache(path, full_check=True)
        assert cache.model_names == [str(d) for d in model_dirs(study_suite_dir)]
        assert cache.meta["source"]["dataset"] == dataset and cache.scale_axis == "parameters"
        ceiling = open_cache(caches.ceiling[dataset])
        replica = str(study_suite_dir / record["replica"]["directory"])
        assert ceiling.model_names == [replica, target] and ceiling.prefixes == cache.prefixes
        assert np.array_equal(ceiling.target_argmax, cache.target_argmax)
    steps = open_cache(caches.steps["demo-induction"])
    assert steps.scale_axis == "tokens" and steps.scales == [512.0, 1536.0, 3072.0]
    assert steps.model_names[-1] == target and "step1" in steps.model_names[0]
    induction = open_cache(caches.size["demo-induction"])
    assert len(induction.meta["source"]["expected"]) == induction.num_prefixes
    fewshot = open_cache(caches.size["demo-rte-fewshot"]).meta["source"]
    assert fewshot["shots"] == 1 and len(fewshot["labels"]) == len(fewshot["expected"])

    def fail(*args, **kwargs):
        raise AssertionError("something finished was made again")

    monkeypatch.setattr("emergence_model.demo.caches.extract_suite", fail)
    monkeypatch.setattr("emergence_model.demo.build.train_model", fail)
    assert prepare_demo_study_caches(study_suite_dir, tmp_path, progress=False) == caches
    assert main(["caches", "--suite-dir", str(study_suite_dir), "--cache-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ceiling  demo-rte-fewshot" in out and "noise ceiling (demo-50k-seed1)" in out
    assert "top token is the expected one, along steps: demo-50k-steps/step1" in out


def test_a_suite_without_checkpoints_of_its_target_gets_no_steps_caches(study_suite_dir, tmp_path):
    copy = tmp_path / "suite"
    shutil.copytree(study_suite_dir, copy, ignore=shutil.ignore_patterns("caches"))
    record = suite_record(copy)
    del record["models"][-1]["checkpoints"]
    (copy / "suite.json").write_text(json.dumps(record))
    caches = prepare_demo_study_caches(copy, progress=False)
    assert caches.steps == {} and list(caches.ceiling) == list(SIZE_DATASETS)


def test_a_time_ladder_and_a_size_ladder_go_through_the_same_network_and_baselines(
    study_caches, tmp_path
):
    import importlib.util

    from emergence_model.checkpoint import load_checkpoint

    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    _, caches = study_caches
    fast = ["--folds", "2", "--max-epochs", "1", "--hidden-size", "8", "--no-progress"]
    for axis, path in (
        ("parameters", caches.size["demo-wiki"]),
        ("tokens", caches.steps["demo-wiki"]),
    ):
        out = tmp_path / f"{axis}.ckpt"
        panels = train.main(
            ["--train-cache", str(path), "--out", str(out), "--run-dir", str(tmp_path / axis)]
            + ["--bootstrap", "20", *fast]
        )
        (summary,) = panels.values()
        assert {"network", "extrapolate", "mean-prob", "largest"} <= set(summary["strategies"])
        checkpoint = load_checkpoint(out)
        assert checkpoint["scale_axis"] == axis
        assert checkpoint["scales"] == open_cache(path).scales[:-1]


def test_the_study_with_no_arguments_studies_both_demo_ladders_and_reuses_them(
    study_suite_dir, tmp_path, monkeypatch
):
    from emergence_model.study.__main__ import main as study

    out = tmp_path / "study"
    args = ["--suite-dir", str(study_suite_dir), "--out", str(out), "--bootstrap", "20"]
    args += ["--no-subset-networks", "--generate-prompts", "2", "--generate-tokens", "2"]
    first = study(args)
    assert [s["title"] for s in first] == ["demo-size", "demo-steps"]
    assert [s["name"] for s in first[0]["sets"]] == list(SIZE_DATASETS)
    assert first[1]["scale_axis"] == "tokens" and "ceiling" in first[0]["sets"][0]
    assert (out / "work" / "checkpoints" / "demo-size.ckpt").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("a network trained again")

    monkeypatch.setattr("emergence_model.demo.study.train_and_evaluate", fail)
    again = study(args)
    assert again[0]["sets"][0]["emergence"] == first[0]["sets"][0]["emergence"]


def test_the_random_copy_sets_are_cached_along_size_and_training_and_scored_paired(tmp_path):
    from bench.experiments.emergent_ladder import EmergentLadderConfig, answer_scores
    from emergence_model.demo.caches import RANDOM_COPY_DATASETS, prepare_random_copy_caches
    from emergence_model.demo.config import preset_config
    from emergence_model.study.ladder import load_cache_tokenizer

    config = preset_config(
        "emergent", steps=2, target_steps=4, warmup_steps=1, vocab_size=600, valid_tokens=256
    )
    suite_dir = tmp_path / "suite"
    build_suite(suite_dir, config, progress=False)
    caches = prepare_random_copy_caches(suite_dir, progress=False, steps_wiki=False)
    assert list(caches.size) == ["demo-wiki", "demo-rte", *RANDOM_COPY_DATASETS]
    assert list(caches.steps) == list(RANDOM_COPY_DATASETS)
    task, control = (open_cache(caches.steps[d]) for d in RANDOM_COPY_DATASETS)
    assert task.scale_axis == "tokens" and len(task.model_names) == 3  # steps 1, 2; the target
    tokenizer = load_cache_tokenizer([task])
    scores = answer_scores(task, control, EmergentLadderConfig(bootstrap=20), tokenizer)
    assert [s["scale"] for s in scores] == task.scales
    for s in scores:
        assert s["prompts"] == len(task) and -30 < s["logprob"]["value"] < 0
        assert 0 <= s["exact"]["value"] <= 1
        difference = s["logprob"]["value"] - s["logprob_control"]["value"]
        assert s["logprob_difference"]["value"] == pytest.approx(difference)
