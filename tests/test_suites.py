import json
import shutil
from pathlib import Path

import pytest
from tiny_demo import model_dirs, suite_record

from emergence_model.lm import PYTHIA_SHAPES
from emergence_model.suites import (
    PYTHIA_PARAM_COUNTS,
    PYTHIA_TOKENS_PER_STEP,
    SUITES,
    Suite,
    SuiteConfig,
    custom_suite,
    describe_suites,
    get_suite,
    param_count_for,
    parse_model_spec,
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
        "EleutherAI/pythia-70m-seed3",
        "EleutherAI/pythia-70m-seed9@step1000",
    ],
)
def test_param_count_for_resolves_every_spelling_of_a_pythia_name(name):
    assert param_count_for(name) == 70_426_624


def test_param_count_for_unknown_model_is_none():
    assert param_count_for("gpt2") is None
    assert param_count_for("/tmp/tiny-neox-0") is None


@pytest.mark.parametrize("size", list(PYTHIA_SHAPES))
def test_pythia_counts_are_those_of_the_architecture(size):
    """The table's counts are what a GPT-NeoX of each published shape (`lm.PYTHIA_SHAPES`, from
    each model's config) holds, counted on the meta device (no weights): a wrong digit in either
    table fails here."""
    import torch
    from transformers import GPTNeoXForCausalLM

    from emergence_model.lm import count_parameters, pythia_config

    with torch.device("meta"):
        model = GPTNeoXForCausalLM(pythia_config(size))
    assert count_parameters(model) == PYTHIA_PARAM_COUNTS[f"pythia-{size}"]


def test_pythia_suite_is_the_challenge_ladder_with_the_12b_last():
    suite = get_suite("pythia", revision="step143000")
    assert suite.model_ids[0] == "EleutherAI/pythia-70m"
    assert suite.target_id == "EleutherAI/pythia-12b"
    assert len(suite.model_ids) == 7 and "EleutherAI/pythia-6.9b" not in suite.model_ids
    assert suite.param_counts == tuple(sorted(suite.param_counts))
    assert set(suite.revisions) == {"step143000"} and suite.scale_axis == "parameters"
    assert suite.model_names[0] == "EleutherAI/pythia-70m@step143000"
    assert get_suite("pythia").model_names == suite.model_ids  # no revision, no "@"


def test_deduped_suite():
    suite = get_suite("pythia-deduped")
    assert all(m.endswith("-deduped") for m in suite.model_ids)
    assert suite.param_counts == get_suite("pythia").param_counts


def test_registry_lists_every_suite_in_help():
    assert {"pythia", "pythia-deduped", "demo", "demo-steps", "demo-ceiling"} <= set(SUITES)
    assert {"pythia-1b-steps", "polypythias", "polypythias-ceiling"} <= set(SUITES)
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
    assert suite.name == "demo" and suite.revisions == ()
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


def test_model_specs_name_their_revision():
    assert parse_model_spec("EleutherAI/pythia-1b@step1000") == ("EleutherAI/pythia-1b", "step1000")
    assert parse_model_spec(" gpt2 ") == ("gpt2", None)
    with pytest.raises(ValueError, match="ORG/NAME@REVISION"):
        parse_model_spec("EleutherAI/pythia-1b@")


def test_a_local_directory_with_an_at_sign_is_not_a_revision(tmp_path):
    model_dir = tmp_path / "runs@2"
    model_dir.mkdir()
    assert parse_model_spec(str(model_dir)) == (str(model_dir), None)


def test_one_model_at_several_revisions_is_a_ladder_along_training_tokens():
    suite = custom_suite(["EleutherAI/pythia-1b@step1000", "EleutherAI/pythia-1b@step143000"])
    assert suite.scale_axis == "tokens"
    assert suite.scales == (1000 * PYTHIA_TOKENS_PER_STEP, 143000 * PYTHIA_TOKENS_PER_STEP)
    assert suite.model_names == ("EleutherAI/pythia-1b@step1000", "EleutherAI/pythia-1b@step143000")
    assert suite.revision(0) == "step1000" and suite.target_id == "EleutherAI/pythia-1b"
    with pytest.raises(ValueError, match="step0 has seen no training tokens"):
        custom_suite(["EleutherAI/pythia-1b@step0", "EleutherAI/pythia-1b@step1"])
    with pytest.raises(ValueError, match="--scales"):
        custom_suite(["/m@1", "/m@2"], scale_axis="tokens")
    sizes = custom_suite(["/m", "/n"], scales=[3, 9])
    assert sizes.scale_axis == "parameters" and sizes.scale(1, 100) == 9.0


def test_the_registered_time_ladder_is_pythia_1b_along_its_steps():
    suite = get_suite("pythia-1b-steps")
    assert suite.scale_axis == "tokens" and len(set(suite.model_ids)) == 1
    assert list(suite.scales) == sorted(suite.scales)
    assert suite.revisions[-1] == "step143000"
    with pytest.raises(ValueError, match="drop --revision"):
        get_suite("pythia-1b-steps", revision="main")


def test_suite_config_parses_its_flags():
    config = SuiteConfig(models="a,b", scales="1,2_000")
    assert config.resolve().scales == (1.0, 2000.0)
    with pytest.raises(ValueError, match="--scales must be comma-separated integers"):
        SuiteConfig(models="a,b", scales="1,x")
    with pytest.raises(ValueError, match="exactly one of --suite and --models"):
        SuiteConfig().resolve()
    with pytest.raises(ValueError, match="go with --models"):
        SuiteConfig(suite="pythia", scales="1,2").resolve()


def test_polypythias_ladder_and_its_ceiling_on_the_hub():
    ladder = get_suite("polypythias")
    assert ladder.target_id == "EleutherAI/pythia-410m" and len(ladder.model_ids) == 5
    assert ladder.param_counts == tuple(sorted(ladder.param_counts))
    ceiling = get_suite("polypythias-ceiling", revision="step143000")
    assert ceiling.model_ids == ("EleutherAI/pythia-410m-seed1", "EleutherAI/pythia-410m")
    assert ceiling.target_id == ladder.target_id and ceiling.scale_axis == "parameters"
    assert ceiling.param_counts == (PYTHIA_PARAM_COUNTS["pythia-410m"],) * 2
    assert (
        param_count_for("EleutherAI/pythia-160m-data-seed2") == PYTHIA_PARAM_COUNTS["pythia-160m"]
    )


@pytest.mark.parametrize("name", ["demo-steps", "demo-ceiling"])
def test_the_demo_ladders_need_a_built_suite(tmp_path, name):
    with pytest.raises(ValueError, match="not built"):
        get_suite(name, suite_dir=tmp_path)
    with pytest.raises(ValueError, match="drop --revision"):
        get_suite(name, revision="step1", suite_dir=tmp_path)


@pytest.mark.slow
def test_demo_steps_is_the_target_along_its_training(demo_suite_dir, tmp_path):
    suite = get_suite("demo-steps", suite_dir=demo_suite_dir)
    target = suite_record(demo_suite_dir)["models"][-1]
    assert suite.target_id == get_suite("demo", suite_dir=demo_suite_dir).target_id
    assert [Path(m).name for m in suite.model_ids[:-1]] == ["step1", "step3"]  # 6 steps: 3, 1
    assert suite.scale_axis == "tokens" and suite.scales == (256.0, 768.0, 1536.0)  # 2 x 128
    assert suite.scales[-1] == target["tokens_seen"]
    assert all(Path(m).is_dir() for m in suite.model_ids)
    copy = tmp_path / "suite"
    shutil.copytree(demo_suite_dir, copy)
    record = suite_record(copy)
    del record["models"][-1]["checkpoints"]  # a suite built before checkpoints were kept
    (copy / "suite.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="kept no checkpoints of its target.*--suite-dir NEW_DIR"):
        get_suite("demo-steps", suite_dir=copy)
    with pytest.raises(ValueError, match="no second training of its target.*demo caches"):
        get_suite("demo-ceiling", suite_dir=copy)
