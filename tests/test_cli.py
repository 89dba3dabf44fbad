import argparse
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from emergence_model.cache import CacheError
from emergence_model.cli import (
    RunOptions,
    add_config_arguments,
    config_from_args,
    exit_on_user_error,
    field_docs,
    given_fields,
)


@dataclass
class _Config:
    width: int = 3
    """How wide,
    in units."""
    undocumented: int = 0


def test_field_docs_reads_the_docstring_under_each_field():
    assert field_docs(_Config) == {"width": "How wide, in units."}


def test_user_errors_become_one_line_on_stderr_and_exit_2(capsys):
    def main():
        raise CacheError("no cache at x: run cache_features.py with --out x first")

    with pytest.raises(SystemExit) as info:
        exit_on_user_error(main)
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "error: no cache at x: run cache_features.py with --out x first\n"
    )


def test_bugs_keep_their_traceback():
    with pytest.raises(KeyError):
        exit_on_user_error(lambda: {}["missing"])


@dataclass
class _Paths:
    name: str = "x"
    """A name."""
    path: Path | None = None
    """Somewhere."""
    flag: bool = True
    """On or off."""
    ratio: float = 0.5
    """How much."""
    hidden: int = field(default=3, metadata={"cli": False})
    """Not a flag."""
    steps: tuple[int, ...] = (1, 2)
    """Not a flag either: no scalar type."""


def test_flags_come_from_the_fields_with_their_docs_and_defaults():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, _Paths, "paths")
    text = parser.format_help()
    assert "Somewhere. (default: None)" in text and "How much. (default: 0.5)" in text
    assert "--hidden" not in text and "--steps" not in text
    args = parser.parse_args(["--path", "a/b", "--no-flag", "--ratio", "2"])
    config = config_from_args(_Paths, args)
    assert config == _Paths(path=Path("a/b"), flag=False, ratio=2.0)
    assert config_from_args(_Paths, parser.parse_args([])) == _Paths()


def test_only_given_flags_leave_the_rest_to_a_base():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, _Paths, only_given=True)
    args = parser.parse_args(["--ratio", "0.25"])
    assert given_fields(_Paths, args) == {"ratio": 0.25}
    base = _Paths(name="recorded", hidden=9)
    assert config_from_args(_Paths, args, base=base) == _Paths(
        name="recorded", hidden=9, ratio=0.25
    )


@pytest.mark.parametrize(
    "module",
    [
        "train",
        "cache_features",
        "emergence_model.evaluate",
        "emergence_model.demo.__main__",
        "emergence_model.study.__main__",
    ],
)
def test_every_command_prints_its_help(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--" in capsys.readouterr().out


@dataclass
class _Lists:
    caches: list[Path] = field(default_factory=list)
    """Caches, repeatable."""
    ladders: list[str] = field(default_factory=lambda: ["a", "b"])
    """Ladders."""
    mode: str = field(default="x", metadata={"choices": ("x", "y")})
    """A mode."""


def test_list_fields_take_several_values_and_a_repeated_flag_adds_to_them():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, _Lists)
    assert config_from_args(_Lists, parser.parse_args([])) == _Lists()
    args = parser.parse_args(["--caches", "a", "b", "--caches", "c", "--ladders", "z"])
    assert config_from_args(_Lists, args) == _Lists(
        caches=[Path("a"), Path("b"), Path("c")], ladders=["z"]
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "w"])


def test_run_options_are_one_group_every_command_shares():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, RunOptions)
    options = config_from_args(RunOptions, parser.parse_args(["--threads", "1", "--no-progress"]))
    assert options == RunOptions(threads=1, progress=False)
    with pytest.raises(ValueError, match="--threads"):
        RunOptions(threads=0)
