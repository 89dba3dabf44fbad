import json
from pathlib import Path

import pytest
from tiny_demo import TINY

from emergence_model.demo.config import (
    SUITE_FILE,
    SUITE_FORMAT_VERSION,
    DemoConfig,
    Rung,
    default_suite_dir,
    read_suite_record,
    resolve_config,
    short_count,
)


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="--steps"):
        DemoConfig(steps=0)
    with pytest.raises(ValueError, match="--warmup-steps"):
        DemoConfig(steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="multiple of 4"):
        Rung(30, 1, 4, 1e-3)
    with pytest.raises(ValueError, match="at least two models"):
        DemoConfig(ladder=TINY.ladder[:1])


def test_config_round_trips_through_json():
    assert DemoConfig.from_json(json.loads(json.dumps(TINY.to_json()))) == TINY


def test_default_suite_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_suite_dir() == tmp_path / "emergence-model" / "demo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_suite_dir() == Path.home() / ".cache" / "emergence-model" / "demo"


def test_model_names_round_counts_as_the_readme_does():
    assert [short_count(n) for n in (143_840, 617_088, 1_119_360, 2_566_272)] == [
        "144k",
        "617k",
        "1.1m",
        "2.6m",
    ]


def test_suite_record_is_empty_until_built_and_checked_when_read(tmp_path):
    assert read_suite_record(tmp_path) == {}
    assert resolve_config(tmp_path) == DemoConfig()
    record = json.loads(
        json.dumps({"format_version": SUITE_FORMAT_VERSION, "config": TINY.to_json()})
    )
    (tmp_path / SUITE_FILE).write_text(json.dumps(record))
    assert read_suite_record(tmp_path) == record
    assert resolve_config(tmp_path) == TINY
    with pytest.raises(ValueError, match="another configuration.*seed 0 -> 1"):
        resolve_config(tmp_path, DemoConfig(**{**TINY.__dict__, "seed": 1}))
    (tmp_path / SUITE_FILE).write_text(json.dumps({**record, "format_version": 0}))
    with pytest.raises(ValueError, match="format version 0.*rebuild"):
        read_suite_record(tmp_path)
    (tmp_path / SUITE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON.*rebuild"):
        read_suite_record(tmp_path)


def test_the_target_is_kept_at_halvings_of_its_training():
    assert DemoConfig().target_checkpoint_steps() == [8, 17, 35, 70, 140, 280]
    assert TINY.target_checkpoint_steps() == [1, 3]  # 6 steps: 3, 1, then 0 is dropped
    assert DemoConfig(target_checkpoints=0).target_checkpoint_steps() == []
    with pytest.raises(ValueError, match="--target-checkpoints"):
        DemoConfig(target_checkpoints=-1)


def test_the_replica_trains_from_another_seed():
    assert DemoConfig().resolved_replica_seed() == 1
    assert DemoConfig(seed=3, replica_seed=7).resolved_replica_seed() == 7
    with pytest.raises(ValueError, match="--replica-seed must differ from --seed"):
        DemoConfig(seed=2, replica_seed=2)


def test_a_suite_recorded_before_checkpoints_were_kept_has_none():
    old = {
        k: v for k, v in TINY.to_json().items() if k not in ("target_checkpoints", "replica_seed")
    }
    assert DemoConfig.from_json(old).target_checkpoints == 0
