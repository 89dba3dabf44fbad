import shutil
from pathlib import Path

import pytest
from tiny_demo import model_dirs, suite_record

from emergence_model.suites import (
    PYTHIA_PARAM_COUNTS,
    SUITES,
    Suite,
    custom_suite,
    describe_suites,
    get_suite,
    param_count_for,
)


@pytest.mark.parametrize(
    "name",
    [
        "pythia-70m",
        "EleutherAI/pythia-70m",
        "EleutherAI/pythia-70m-deduped",
        "pythia-70m@step1000",
        "/models/pythia-70m/",
        "EleutherAI/Pythia-70M",
    ],
)
def test_param_count_for_resolves_every_spelling_of_a_pythia_name(name):
    assert param_count_for(name) == 70_426_624


def test_param_count_for_unknown_model_is_none():
    assert param_count_for("gpt2") is None
    assert param_count_for("/tmp/tiny-neox-0") is None


def test_pythia_table_matches_the_model_cards():
    assert PYTHIA_PARAM_COUNTS["pythia-12b"] == 11_846_072_320
    assert PYTHIA_PARAM_COUNTS["pythia-1.4b"] == 1_414_647_808
    assert list(PYTHIA_PARAM_COUNTS.values()) == sorted(PYTHIA_PARAM_COUNTS.values())


def test_pythia_suite_is_the_challenge_ladder_with_the_12b_last():
    suite = get_suite("pythia", revision="step143000")
    assert suite.model_ids[0] == "EleutherAI/pythia-70m"
    assert suite.target_id == "EleutherAI/pythia-12b"
    assert len(suite.model_ids) == 7 and "EleutherAI/pythia-6.9b" not in suite.model_ids
    assert suite.param_counts == tuple(sorted(suite.param_counts))
    assert suite.revision == "step143000"


def test_deduped_suite():
    suite = get_suite("pythia-deduped")
    assert all(m.endswith("-deduped") for m in suite.model_ids)
    assert suite.param_counts == get_suite("pythia").param_counts


def test_registry_lists_every_suite_in_help():
    assert {"pythia", "pythia-deduped", "demo"} <= set(SUITES)
    text = describe_suites()
    for name in SUITES:
        assert name in text


def test_unknown_suite_names_the_choices():
    with pytest.raises(ValueError, match="unknown suite 'gpt'.*pythia"):
        get_suite("gpt")


def test_demo_suite_has_no_revisions():
    with pytest.raises(ValueError, match="--revision"):
        get_suite("demo", revision="step1")


def test_the_demo_suite_must_be_built_first(tmp_path):
    with pytest.raises(ValueError, match="not built.*python -m emergence_model.demo build"):
        get_suite("demo", suite_dir=tmp_path)


@pytest.mark.slow
def test_demo_suite_is_the_built_suites_local_dirs(demo_suite_dir, tmp_path):
    suite = get_suite("demo", suite_dir=demo_suite_dir)
    assert suite.name == "demo" and suite.revision is None
    assert [Path(m) for m in suite.model_ids] == model_dirs(demo_suite_dir)
    info = suite_record(demo_suite_dir)
    assert list(suite.param_counts) == [m["param_count"] for m in info["models"]]
    assert "3 GPT-NeoX models (16k to 50k) trained on python-stdlib-docstrings" in suite.description
    copy = tmp_path / "suite"
    shutil.copytree(demo_suite_dir, copy)
    shutil.rmtree(model_dirs(copy)[-1])
    with pytest.raises(ValueError, match="not built"):
        get_suite("demo", suite_dir=copy)


def test_custom_suite_keeps_order_and_knows_pythia_counts():
    suite = custom_suite(["EleutherAI/pythia-70m", " ./local ", "EleutherAI/pythia-160m"])
    assert suite.model_ids == ("EleutherAI/pythia-70m", "./local", "EleutherAI/pythia-160m")
    assert suite.param_counts == (70_426_624, None, 162_322_944)


def test_suite_validation():
    with pytest.raises(ValueError, match="no models"):
        Suite(name="x", model_ids=(), param_counts=())
    with pytest.raises(ValueError, match="2 models but 1 parameter counts"):
        Suite(name="x", model_ids=("a", "b"), param_counts=(1,))
