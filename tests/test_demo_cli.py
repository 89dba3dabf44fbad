import shutil
from pathlib import Path

import pytest

from emergence_model.commands.demo import demo_config, main, make_parser
from emergence_model.demo.config import DemoConfig

pytestmark = pytest.mark.usefixtures("stdlib_subtree")


@pytest.mark.slow
def test_cli_build_prints_the_suite_and_refuses_a_changed_config(demo_suite_dir, capsys):
    copy = demo_suite_dir.parent / "cli-copy"
    shutil.copytree(demo_suite_dir, copy)
    assert main(["build", "--suite-dir", str(copy), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "demo-" in out and "valid loss" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--suite-dir", str(copy), "--seed", "3"])
    assert exit_info.value.code == 2
    assert "another configuration" in capsys.readouterr().err


def test_flags_are_demo_config_fields_and_only_given_ones_count(tmp_path):
    parser = make_parser()
    args = parser.parse_args(["build", "--suite-dir", str(tmp_path)])
    assert demo_config(args) is None  # an existing suite keeps its own
    args = parser.parse_args(["caches", "--steps", "70", "--corpus", "wiki.txt"])
    config = demo_config(args)
    assert config.steps == 70 and config.batch_size == DemoConfig().batch_size
    assert config.corpus == str(Path("wiki.txt").resolve())  # recorded absolute
    with pytest.raises(SystemExit):
        parser.parse_args(["build", "--ladder", "x"])  # not a flag: a tuple of rungs


def test_user_errors_are_one_line_with_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--suite-dir", str(tmp_path), "--steps", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --steps must be at least 1"
    missing = tmp_path / "missing.txt"
    with pytest.raises(SystemExit) as exit_info:  # an OSError: a missing corpus file
        main(["build", "--suite-dir", str(tmp_path / "s"), "--corpus", str(missing)])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_preset_is_the_start_that_the_other_flags_change():
    from emergence_model.demo.config import PRESETS, preset_config

    args = make_parser().parse_args(["build", "--preset", "emergent", "--steps", "600"])
    config = demo_config(args)
    assert config == preset_config("emergent", steps=600) and config.steps == 600
    assert config.ladder == PRESETS["emergent"].ladder and config.target_steps == 4000
    assert (
        demo_config(make_parser().parse_args(["build", "--preset", "emergent"]))
        == PRESETS["emergent"]
    )
    with pytest.raises(SystemExit):
        make_parser().parse_args(["build", "--preset", "nope"])
    with pytest.raises(ValueError, match="unknown --preset 'nope'; pick one of emergent"):
        preset_config("nope")
