"""Atomic writes: a reader, or a run resumed after a crash, sees the old file or the new one."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open `path` for writing so that readers see the old file or the whole new one, never half.

    The data goes to a temporary file beside it (`NAME.*.tmp`, one of its own for each writer, so
    that two processes writing the same file never write into one temporary), reaches the disk
    (fsync), then is renamed over.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    # O_EXCL: never another writer's temporary; mode 0o666 less the umask, as open() gives.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        # A full disk, an error or Ctrl-C mid-write: the old file stays, the torn copy goes.
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj, **dumps_kwargs) -> None:
    """`obj` as indented JSON at `path`, written with `atomic_file`."""
    with atomic_file(path) as f:
        f.write((json.dumps(obj, indent=1, **dumps_kwargs) + "\n").encode())


def check_output_path(path: str | os.PathLike, flag: str, *, directory: bool) -> Path:
    """Refuse, before anything is written, an output path that cannot be written as asked: a
    symbolic link to nothing (a loop or a missing target), a file where a directory is wanted or
    the reverse, or a file among its parents. `flag` names the option in the message."""
    path = Path(path)
    # exists() follows links and is False for a loop or a missing target; is_symlink() is not.
    if path.is_symlink() and not path.exists():
        raise ValueError(
            f"{flag} {path} is a symbolic link to nothing (a loop or a missing target); remove "
            "the link or pick another path"
        )
    if path.exists() and path.is_dir() != directory:
        wanted, found = ("a directory", "a file") if directory else ("a file", "a directory")
        raise ValueError(f"{flag} {path} is {found}, not {wanted}; pick another path")
    for parent in path.parents:
        if parent.is_symlink() or parent.exists():
            if not parent.is_dir():
                raise ValueError(
                    f"{flag} {path} cannot be written: {parent} is not a directory (a file or a "
                    "broken link); pick another path"
                )
            break
    return path
