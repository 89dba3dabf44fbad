"""The ladder's build: tests that train whole tiny suites are marked slow."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_demo import (
    SUBTREE_ROOT,
    TINY,
    model_dirs,
    partial_dirs,
    small_tokenizer,
    suite_record,
    weights,
)

from emergence_model.demo.build import build_replica, build_suite, plan_ladder, summary_table
from emergence_model.demo.config import STATE_FILE, DemoConfig
from emergence_model.demo.corpus import stdlib_corpus
from emergence_model.demo.pretrain import learning_rate, train_model
from emergence_model.lm import count_parameters

pytestmark = pytest.mark.usefixtures("stdlib_subtree")


def test_ladder_must_grow_strictly():
    with pytest.raises(ValueError, match="grow strictly"):
        config = DemoConfig(**{**TINY.__dict__, "ladder": (TINY.ladder[1], TINY.ladder[0])})
        plan_ladder(Path("unused"), config, small_tokenizer())


def test_plan_names_models_by_size():
    plans = plan_ladder(Path("suite"), TINY, small_tokenizer())
    assert [p.name for p in plans] == ["demo-16k", "demo-26k", "demo-50k"]
    assert all(p.directory == Path("suite/models") / p.name for p in plans)
    assert all(0 < p.non_embedding_params < p.param_count for p in plans)


@pytest.mark.slow
def test_build_records_the_suite(demo_suite_dir):
    info = suite_record(demo_suite_dir)
    assert info["status"] == "complete"
    assert info["python_version"] == info["corpus"]["python_version"]
    assert info["corpus"]["source"] == "python-stdlib-docstrings"
    models = info["models"]
    assert len(models) == 3
    counts = [m["param_count"] for m in models]
    assert counts == sorted(counts) and len(set(counts)) == 3
    assert all(m["tokens_seen"] == TINY.steps * TINY.batch_size * TINY.seq_len for m in models)
    # The same tokens in the same order for every model.
    assert len({m["data_sha256"] for m in models}) == 1
    assert all(np.isfinite(m["valid_loss"]) for m in models)
    assert "target_vs_second_largest" in info and info["build_seconds"] > 0
    assert DemoConfig.from_json(info["config"]) == TINY
    # Prefix sets are drawn at cache time, with a seed that each cache records.
    assert info["seeds"] == {"init": TINY.seed, "batch_order": TINY.seed}
    assert not partial_dirs(demo_suite_dir)
    table = summary_table(info)
    assert all(m["name"] in table for m in models) and "loss gap" in table


@pytest.mark.slow
def test_models_load_like_hub_models(demo_suite_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = suite_record(demo_suite_dir)
    for record, model_dir in zip(info["models"], model_dirs(demo_suite_dir), strict=True):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        config = model.config
        assert config.model_type == "gpt_neox" and not config.tie_word_embeddings
        assert config.rope_parameters["partial_rotary_factor"] == 0.25
        assert count_parameters(model) == record["param_count"]
        assert (len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id) == (300, 0, 1)
        ids = tokenizer("Return the message as a string.", return_tensors="pt")["input_ids"]
        assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.mark.slow
def test_finished_suite_is_not_retrained(demo_suite_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a finished model was trained again")

    monkeypatch.setattr("emergence_model.demo.build.train_model", fail)
    assert build_suite(demo_suite_dir)["status"] == "complete"


@pytest.mark.slow
def test_resume_after_interruption_matches_an_uninterrupted_build(
    demo_suite_dir, tmp_path, monkeypatch
):
    suite_dir = tmp_path / "suite"
    calls = {"rungs": 0}

    def crash_in_second_rung(step, peak_lr, config):
        if peak_lr == TINY.ladder[1].peak_lr and step == 3:
            raise RuntimeError("power cut")
        return learning_rate(step, peak_lr, config)

    monkeypatch.setattr("emergence_model.demo.pretrain.learning_rate", crash_in_second_rung)
    with pytest.raises(RuntimeError, match="power cut"):
        build_suite(suite_dir, TINY, progress=False)
    info = suite_record(suite_dir)
    assert info["status"] == "building" and len(info["models"]) == 1
    partial = partial_dirs(suite_dir)[0]
    state = torch.load(partial / STATE_FILE, weights_only=True)
    assert state["step"] == 2  # the last checkpoint before the crash

    resumed_from = []

    def counting_train(model, train, peak_lr, config, state_path, *args, **kwargs):
        calls["rungs"] += 1
        if state_path.exists():
            resumed_from.append(torch.load(state_path, weights_only=True)["step"])
        return train_model(model, train, peak_lr, config, state_path, *args, **kwargs)

    monkeypatch.setattr("emergence_model.demo.pretrain.learning_rate", learning_rate)
    monkeypatch.setattr("emergence_model.demo.build.train_model", counting_train)
    info = build_suite(suite_dir, progress=False)
    assert info["status"] == "complete"
    assert calls["rungs"] == 2 and resumed_from == [2]  # the first model was kept
    reference = suite_record(demo_suite_dir)
    for ours, theirs in zip(info["models"], reference["models"], strict=True):
        assert ours["data_sha256"] == theirs["data_sha256"]
        assert ours["valid_loss"] == pytest.approx(theirs["valid_loss"], abs=1e-6)
    for ours, theirs in zip(model_dirs(suite_dir), model_dirs(demo_suite_dir), strict=True):
        a, b = weights(ours), weights(theirs)
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_a_deleted_model_is_rebuilt_alone(demo_suite_dir, tmp_path, monkeypatch):
    suite_dir = tmp_path / "suite"
    shutil.copytree(demo_suite_dir, suite_dir)
    target = model_dirs(suite_dir)[-1]
    expected = weights(target)
    shutil.rmtree(target)
    trained = []

    def counting_train(*args, **kwargs):
        trained.append(kwargs.get("desc", args[5] if len(args) > 5 else ""))
        return train_model(*args, **kwargs)

    monkeypatch.setattr("emergence_model.demo.build.train_model", counting_train)
    assert build_suite(suite_dir, progress=False)["status"] == "complete"
    assert len(trained) == 1
    rebuilt = weights(target)
    assert all(torch.allclose(rebuilt[k], expected[k], atol=1e-6) for k in expected)


@pytest.mark.slow
def test_a_different_configuration_is_refused(demo_suite_dir):
    with pytest.raises(ValueError, match="another configuration.*seed 0 -> 1"):
        build_suite(demo_suite_dir, DemoConfig(**{**TINY.__dict__, "seed": 1}))


@pytest.mark.slow
def test_user_corpus_and_tokenizer_files(tmp_path):
    corpus = stdlib_corpus(35, SUBTREE_ROOT)
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n\n".join(corpus.train + corpus.valid))
    tokenizer_file = tmp_path / "tokenizer.json"
    tokenizer_file.write_text(small_tokenizer().backend_tokenizer.to_str())
    config = DemoConfig(**{**TINY.__dict__, "ladder": TINY.ladder[:2], "steps": 2})
    suite_dir = tmp_path / "suite"
    info = build_suite(
        suite_dir, config, corpus=corpus_file, tokenizer=tokenizer_file, progress=False
    )
    assert info["corpus"]["source"] == "text-file"
    assert info["tokenizer"]["source"] == str(tokenizer_file.resolve())
    # Logit rows are rounded up as Pythia's are; the extra rows are padding.
    assert info["tokenizer"]["logit_rows"] == 384
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_suite(tmp_path / "other", config, corpus=tmp_path / "nope.txt")


@pytest.mark.slow
def test_the_target_is_kept_along_its_training_like_hub_revisions(demo_suite_dir):
    from transformers import AutoModelForCausalLM

    models = suite_record(demo_suite_dir)["models"]
    assert all("checkpoints" not in m for m in models[:-1])  # only the target is kept
    target = models[-1]
    checkpoints = target["checkpoints"]
    assert [c["step"] for c in checkpoints] == TINY.target_checkpoint_steps() == [1, 3]
    assert [c["tokens_seen"] for c in checkpoints] == [256, 768]
    assert all(
        c["directory"] == f"models/{target['name']}-steps/step{c['step']}" for c in checkpoints
    )
    losses = [c["valid_loss"] for c in checkpoints] + [target["valid_loss"]]
    assert all(np.isfinite(losses)) and losses[0] > losses[-1]
    kept = [weights(demo_suite_dir / c["directory"]) for c in checkpoints]
    final = weights(model_dirs(demo_suite_dir)[-1])
    assert not torch.equal(kept[-1]["embed_out.weight"], final["embed_out.weight"])
    model = AutoModelForCausalLM.from_pretrained(demo_suite_dir / checkpoints[0]["directory"])
    assert count_parameters(model) == target["param_count"]


@pytest.mark.slow
def test_kept_checkpoints_survive_a_crash_in_the_target(demo_suite_dir, tmp_path, monkeypatch):
    suite_dir = tmp_path / "suite"

    def crash_late_in_the_target(step, peak_lr, config):
        if peak_lr == TINY.ladder[-1].peak_lr and step == 5:
            raise RuntimeError("power cut")
        return learning_rate(step, peak_lr, config)

    monkeypatch.setattr("emergence_model.demo.pretrain.learning_rate", crash_late_in_the_target)
    with pytest.raises(RuntimeError, match="power cut"):
        build_suite(suite_dir, TINY, progress=False)
    monkeypatch.setattr("emergence_model.demo.pretrain.learning_rate", learning_rate)
    info = build_suite(suite_dir, progress=False)  # resumes the target from its step 4
    reference = suite_record(demo_suite_dir)["models"][-1]["checkpoints"]
    for ours, theirs in zip(info["models"][-1]["checkpoints"], reference, strict=True):
        a, b = weights(suite_dir / ours["directory"]), weights(demo_suite_dir / theirs["directory"])
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_the_replica_is_the_target_trained_from_another_seed(demo_suite_dir, tmp_path, monkeypatch):
    suite_dir = tmp_path / "suite"
    shutil.copytree(demo_suite_dir, suite_dir)
    replica = build_replica(suite_dir, progress=False)
    info = suite_record(suite_dir)
    target = info["models"][-1]
    assert info["replica"] == replica and replica["seed"] == TINY.seed + 1
    assert replica["directory"] == f"models/{target['name']}-seed1"
    assert replica["param_count"] == target["param_count"]
    assert replica["data_sha256"] != target["data_sha256"]  # another batch order
    assert "checkpoints" not in replica and "loss_gap" in info["target_vs_replica"]
    a, b = weights(suite_dir / replica["directory"]), weights(model_dirs(suite_dir)[-1])
    assert a.keys() == b.keys() and not torch.equal(a["embed_out.weight"], b["embed_out.weight"])

    def fail(*args, **kwargs):
        raise AssertionError("a finished replica was trained again")

    monkeypatch.setattr("emergence_model.demo.build.train_model", fail)
    assert build_replica(suite_dir, progress=False) == replica
    with pytest.raises(ValueError, match="not built; build it before its replica"):
        build_replica(tmp_path / "empty")


# The emergent preset shrunk to seconds: its ladder and shares, a few steps, a small BPE that still
# has the alphabet's 32 single-token words.
TINY_EMERGENT = dict(
    steps=4, target_steps=8, warmup_steps=1, vocab_size=600, valid_tokens=256, checkpoint_every=3
)


def test_the_emergent_preset_builds_and_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from emergence_model.demo.config import PRESETS, preset_config

    config = preset_config("emergent", **TINY_EMERGENT)
    assert config.ladder == PRESETS["emergent"].ladder and config.copy_share > 0
    reference = build_suite(tmp_path / "whole", config, progress=False)
    models = reference["models"]
    assert [m["steps"] for m in models] == [4] * 6 + [8]
    assert [c["step"] for c in models[-1]["checkpoints"]] == config.target_checkpoint_steps()
    assert config.target_checkpoint_steps() == [1, 2, 4]
    # the small models read the same batches; the target reads them and more
    assert len({m["data_sha256"] for m in models[:-1]}) == 1
    assert suite_record(tmp_path / "whole")["config"]["copy_share"] == config.copy_share

    def crash_in_the_target(step, peak_lr, config):
        if config.steps == 8 and step == 5:
            raise RuntimeError("power cut")
        return learning_rate(step, peak_lr, config)

    suite_dir = tmp_path / "resumed"
    monkeypatch.setattr("emergence_model.demo.pretrain.learning_rate", crash_in_the_target)
    with pytest.raises(RuntimeError, match="power cut"):
        build_suite(suite_dir, config, progress=False)
    state = torch.load(partial_dirs(suite_dir)[0] / STATE_FILE, weights_only=True)
    assert state["step"] == 3
    monkeypatch.setattr("emergence_model.demo.pretrain.learning_rate", learning_rate)
    resumed = build_suite(suite_dir, progress=False)  # the recorded configuration
    for ours, theirs in zip(resumed["models"], models, strict=True):
        assert ours["data_sha256"] == theirs["data_sha256"]
    for ours, theirs in zip(model_dirs(suite_dir), model_dirs(tmp_path / "whole"), strict=True):
        a, b = weights(ours), weights(theirs)
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_the_target_trains_longer_with_its_warm_up_in_proportion():
    config = DemoConfig(steps=100, warmup_steps=10, target_steps=400)
    target = config.target_config()
    assert (target.steps, target.warmup_steps, target.target_steps) == (400, 40, None)
    assert config.target_checkpoint_steps() == [6, 12, 25, 50, 100, 200]
    assert DemoConfig().target_config() == DemoConfig()
