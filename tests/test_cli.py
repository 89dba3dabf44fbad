from dataclasses import dataclass

import pytest

from emergence_model.cache import CacheError
from emergence_model.cli import exit_on_user_error, field_docs


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
