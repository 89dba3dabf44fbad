"""Results files: every measured table is written by the run that measured it, never retyped.

`write_results` writes NAME.md (the tables, for people) and NAME.json beside it (the same tables
and their unrounded numbers, for docs and tests), both stamped with what made them: the commit
(and whether tracked files had changes not yet committed), the exact command, the machine, the
date and the wall time. `read_stamp` reads the stamp back from a Markdown file and refuses one
that has none, so a test can check every results file in the repository.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emergence_model.files import atomic_file, write_json_atomic
from emergence_model.report import markdown_table

# The checkout this package is in: its commit is the code that made a result.
REPO = Path(__file__).resolve().parents[1]
UNCOMMITTED = " + uncommitted changes"
# The stamp's lines in the Markdown, in order: "- command: `...`" and so on.
STAMP_LINES = {
    "command": re.compile(r"^- command: `(?P<value>python -m \S+.*)`$"),
    "commit": re.compile(rf"^- commit: (?P<value>[0-9a-f]{{7,40}}(?:{re.escape(UNCOMMITTED)})?)$"),
    "machine": re.compile(r"^- machine: (?P<value>.+)$"),
    "date": re.compile(r"^- date: (?P<value>\d{4}-\d\d-\d\d \d\d:\d\d UTC)$"),
    "wall time": re.compile(r"^- wall time: (?P<value>\d+(?:\.\d+)? s)$"),
}


@dataclass
class Section:
    """One table of a results file: its heading, an optional paragraph under it, the table's
    cells as shown, and its numbers unrounded (anything JSON can hold) for the JSON file."""

    title: str
    head: list[str]
    rows: list[list[str]]
    notes: str = ""
    numbers: Any = field(default=None)


def git_commit(repo: Path = REPO, ignore: Path | None = None) -> str:
    """`git rev-parse --short HEAD` of `repo`, plus " + uncommitted changes" when tracked files
    differ from it (files under `ignore`, the results being written, are outputs, not code);
    "unknown" outside a git checkout."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        paths = ["."]
        if ignore is not None and ignore.resolve().is_relative_to(repo.resolve()):
            paths.append(f":(exclude){ignore.resolve().relative_to(repo.resolve())}")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (UNCOMMITTED if changed else "")


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict:
    """What a timing depends on: the CPU, its cores, torch's version and its thread count."""
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def run_stamp(command: str, wall_seconds: float, ignore: Path | None = None) -> dict:
    """What made a result: commit, command, machine, date (UTC) and wall time in seconds."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "commit": git_commit(ignore=ignore),
        "command": command,
        "machine": machine(),
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "wall_seconds": round(wall_seconds, 1),
    }


def stamp_lines(stamp: dict) -> list[str]:
    """The stamp as the Markdown's list under the title (`STAMP_LINES` reads it back)."""
    m = stamp["machine"]
    return [
        f"- command: `{stamp['command']}`",
        f"- commit: {stamp['commit']}",
        f"- machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, {m['threads']} threads",
        f"- date: {stamp['date']}",
        f"- wall time: {stamp['wall_seconds']} s",
    ]


def results_markdown(title: str, stamp: dict, sections: Sequence[Section]) -> str:
    """The Markdown of a results file: the title, the stamp, then each section's table."""
    lines = [f"# {title}", "", *stamp_lines(stamp), ""]
    lines.append("Written by the command above: run it again rather than edit this file.")
    for section in sections:
        lines += ["", f"## {section.title}", ""]
        if section.notes:
            lines += [section.notes, ""]
        lines += markdown_table(section.head, section.rows)
    return "\n".join(lines) + "\n"


def write_results(
    path: str | os.PathLike,
    title: str,
    sections: Sequence[Section],
    *,
    command: str,
    wall_seconds: float,
) -> tuple[Path, Path]:
    """Write `path` (Markdown) and the same name with .json, stamped (`run_stamp`); returns both.

    `command` is the exact command line that made the results (`python -m MODULE ARGS`)."""
    path = Path(path)
    if not command.startswith("python -m "):
        raise ValueError(f"a results file names the command that made it, got {command!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = run_stamp(command, wall_seconds, ignore=path.parent)
    with atomic_file(path) as f:
        f.write(results_markdown(title, stamp, sections).encode())
    numbers = path.with_suffix(".json")
    record = {"title": title, "stamp": stamp, "sections": [asdict(s) for s in sections]}
    write_json_atomic(numbers, record, default=float)
    return path, numbers


def read_stamp(path: str | os.PathLike) -> dict:
    """The stamp of a results Markdown file: {"command", "commit", "machine", "date", "wall
    time"} as written; ValueError naming the first line missing or malformed."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    stamp = {}
    for key, pattern in STAMP_LINES.items():
        found = [m for m in map(pattern.match, lines) if m]
        if not found:
            raise ValueError(f"{path} has no '- {key}:' line of the form {pattern.pattern}")
        stamp[key] = found[0]["value"]
    return stamp
