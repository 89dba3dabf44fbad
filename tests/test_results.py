"""Results files: stamped with what made them, and every one in the repository carries its stamp."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from emergence_model.results import (
    REPO,
    UNCOMMITTED,
    Section,
    git_commit,
    read_stamp,
    write_results,
)

COMMAND = "python -m bench.experiments.example --ladders seed0 'two words'"


def git(repo, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_the_writer_stamps_commit_command_machine_date_and_wall_time(tmp_path):
    sections = [
        Section("first", ["variant", "top-1"], [["default", "77.1"]], "notes", {"top1": 0.771}),
        Section("second", ["a"], [["1"]]),
    ]
    markdown, numbers = write_results(
        tmp_path / "example.md", "An example", sections, command=COMMAND, wall_seconds=12.34
    )
    assert numbers == tmp_path / "example.json"
    stamp = read_stamp(markdown)
    assert stamp["command"] == COMMAND
    head = git(REPO, "rev-parse", "--short", "HEAD")
    assert stamp["commit"] in (head, head + UNCOMMITTED)
    assert f"torch {torch.__version__}, {torch.get_num_threads()} threads" in stamp["machine"]
    assert stamp["wall time"] == "12.3 s"
    text = markdown.read_text()
    assert text.startswith("# An example\n")
    assert "## first\n\nnotes\n\n| variant | top-1 |\n| --- | --- |\n| default | 77.1 |" in text
    record = json.loads(numbers.read_text())
    assert record["stamp"]["command"] == COMMAND and record["stamp"]["commit"] == stamp["commit"]
    assert record["stamp"]["machine"]["threads"] == torch.get_num_threads()
    assert record["sections"][0]["numbers"] == {"top1": 0.771}
    assert record["sections"][1]["rows"] == [["1"]]


def test_a_results_file_names_the_command_that_made_it(tmp_path):
    with pytest.raises(ValueError, match="names the command"):
        write_results(tmp_path / "x.md", "x", [], command="bench/x.py", wall_seconds=1)


def test_uncommitted_changes_to_tracked_files_are_named_but_results_are_not(tmp_path):
    assert git_commit(tmp_path) == "unknown"  # not a git checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "old.md").write_text("old\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    head = git(tmp_path, "rev-parse", "--short", "HEAD")
    assert git_commit(tmp_path) == head
    (tmp_path / "untracked.py").write_text("y = 2\n")
    (tmp_path / "results" / "old.md").write_text("rewritten by the next run\n")
    assert git_commit(tmp_path, ignore=tmp_path / "results") == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path, ignore=tmp_path / "results") == head + UNCOMMITTED


def stamp_problem(path) -> str | None:
    """What is wrong with the stamp of a results file, or None."""
    try:
        stamp = read_stamp(path)
    except ValueError as e:
        return str(e)
    if not stamp["command"].startswith("python -m bench."):
        return f"{path}: made by {stamp['command']!r}, not a bench script"
    numbers = path.with_suffix(".json")
    if not numbers.is_file():
        return f"{path} has no {numbers.name} beside it"
    record = json.loads(numbers.read_text())["stamp"]
    if (record["command"], record["commit"]) != (stamp["command"], stamp["commit"]):
        return f"{numbers.name} and {path.name} were made by different runs"
    return None


def test_every_results_file_in_the_repository_is_stamped():
    # none yet (or no docs/results at all) passes: each file there must carry its stamp
    paths = sorted((REPO / "docs" / "results").rglob("*.md"))
    assert [problem for problem in map(stamp_problem, paths) if problem] == []


def test_the_stamp_check_finds_a_file_that_is_not_stamped(tmp_path):
    typed = tmp_path / "typed.md"
    typed.write_text("# Typed by hand\n")
    assert "no '- command:' line" in stamp_problem(typed)
    made, _ = write_results(tmp_path / "made.md", "x", [], command=COMMAND, wall_seconds=1)
    assert stamp_problem(made) is None
    made.with_suffix(".json").unlink()
    assert "has no made.json" in stamp_problem(made)
