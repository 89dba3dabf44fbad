"""Atomic writes: a reader, or a run resumed after a crash, sees the old file or the new one."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open `path` for writing so that readers see the old file or the whole new one, never half.

    The data goes to a temporary file beside it, reaches the disk (fsync), then is renamed over.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj, **dumps_kwargs) -> None:
    """`obj` as indented JSON at `path`, written with `atomic_file`."""
    with atomic_file(path) as f:
        f.write((json.dumps(obj, indent=1, **dumps_kwargs) + "\n").encode())
