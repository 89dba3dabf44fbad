import argparse
import ast
import importlib
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import emergence_model
from emergence_model.cache import CacheError
from emergence_model.cli import (
    FlagGroup,
    RunOptions,
    add_config_arguments,
    config_from_args,
    exit_on_user_error,
    field_docs,
    given_fields,
)
from emergence_model.commands import COMMANDS
from emergence_model.commands import main as emergence_model_command

ROOT = Path(__file__).resolve().parents[1]


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
        "emergence_model.commands.evaluate",
        "emergence_model.demo.__main__",
        "emergence_model.study.__main__",
        *(f"emergence_model.commands.{name}" for name in COMMANDS),
        "emergence_model.commands",
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


def test_the_dispatcher_hands_a_command_its_own_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        emergence_model_command(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: emergence-model train") and "--train-cache" in text
    with pytest.raises(SystemExit) as exit_info:
        emergence_model_command(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(f"  {name} " in text for name in COMMANDS)
    with pytest.raises(SystemExit) as exit_info:
        emergence_model_command(["fly"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    "argv", [["-m", "emergence_model", "evaluate", "--help"], ["-m", "emergence_model.evaluate"]]
)
def test_python_dash_m_runs_the_commands(argv):
    run = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: emergence-model evaluate") and "--checkpoint" in run.stdout


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag of a parser and of its subcommands' parsers."""
    flags = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if not isinstance(action, argparse._SubParsersAction):
            continue  # choices of a flag, not subcommands
        for sub in action.choices.values():
            if isinstance(sub, argparse.ArgumentParser):
                flags |= option_strings(sub)
    return flags


@pytest.mark.parametrize("name", COMMANDS)
def test_every_flag_of_a_command_is_a_field_of_its_config_dataclasses(name):
    module = importlib.import_module(f"emergence_model.commands.{name}")
    expected = {"-h", "--help"}
    for group in module.FLAGS:
        assert isinstance(group, FlagGroup)
        parser = argparse.ArgumentParser(add_help=False)
        add_config_arguments(parser, group.config, exclude=group.exclude)
        expected |= option_strings(parser)
    assert option_strings(module.make_parser()) == expected


def test_no_product_code_adds_a_flag_by_hand():
    """Flags come from config dataclasses (cli.py); only the dispatcher names its command."""
    package = Path(emergence_model.__file__).parent
    allowed = {package / "cli.py", package / "commands" / "__init__.py"}
    sources = [*package.rglob("*.py"), ROOT / "train.py", ROOT / "cache_features.py"]
    by_hand = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in sources
        if path not in allowed
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "add_argument"
    ]
    assert not by_hand, f"flags added by hand: {', '.join(by_hand)}"
