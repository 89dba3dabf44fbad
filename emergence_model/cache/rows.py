"""Where a cache's rows go on disk, from whichever process of a job writes them: `RowFile` writes
rows of one array into its file, and each process of a job of several commits the rows it wrote to
its own `done.PART.npy`, which the holder of the cache's lock merges (`merge_done_parts`).

Rows are written with `pwrite`, not through a memory map: a process changes only its own bytes of
the file, which holds on a filesystem that several machines share (a memory map writes back whole
pages, the neighbours' bytes as this machine last saw them), and a full disk is an error, never a
SIGBUS.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from emergence_model.cache.format import DONE_PARTS


def done_part_file(part: str) -> str:
    """The file in which the process `part` of a job commits its rows (`done.PART.npy`)."""
    if not part or not all(c.isalnum() or c in "-_" for c in part):
        raise ValueError(f"a writer's part is letters, digits, - and _, got {part!r}")
    return f"done.{part}.npy"


def merge_done_parts(path: Path, done: np.ndarray) -> list[Path]:
    """OR every process's committed rows (`done.PART.npy`) into `done` in place; returns their
    files. A part that cannot be read, or of another shape, counts for nothing (a part is
    renamed into place whole, so a crash never leaves one torn)."""
    parts = sorted(path.glob(DONE_PARTS))
    for part in parts:
        try:
            rows = np.load(part)
        except (OSError, ValueError):
            continue
        if rows.shape == done.shape and rows.dtype == np.bool_:
            done |= rows
    return parts


class RowFile:
    """One array of the cache open for writing rows with `pwrite`, from its memory map opened
    for writing (which checked it against meta.json): its file, where its data starts, its
    shape and dtype."""

    def __init__(self, mapped: np.memmap) -> None:
        self.offset, self.dtype = int(mapped.offset), mapped.dtype
        self.row_items = int(np.prod(mapped.shape[2:], dtype=np.int64))  # per (prefix, model)
        self.models = mapped.shape[1]
        self.fd = os.open(mapped.filename, os.O_RDWR)

    def write(self, model_index: int, prefix_indices: np.ndarray, values: np.ndarray) -> None:
        """Row (prefix, model) of `values` [b, ...] for each prefix index, at its place."""
        values = np.ascontiguousarray(values, dtype=self.dtype)
        row_bytes = self.row_items * self.dtype.itemsize
        for n, row in zip(prefix_indices.tolist(), values, strict=True):
            place = self.offset + (n * self.models + model_index) * row_bytes
            data = memoryview(row).cast("B")  # the row's bytes, not a copy
            while data:  # a regular file writes all at once; a short write goes on
                written = os.pwrite(self.fd, data, place)
                data, place = data[written:], place + written

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)
