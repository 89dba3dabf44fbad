"""Writing a cache: `create_cache` starts one or resumes a partly written one of the same job, and
the `CacheWriter` it returns stores rows, commits them and runs the full check at the end.

One writer at a time: `create_cache` takes the cache's lock (`files.lock_for_writing`, the file
`.lock` in it) and the writer holds it until `finalize()` or `close()`; a second writer is refused
in one line naming the first, and the kernel releases the lock of a killed process, so its rerun
resumes. The space of the arrays is reserved on the disk when they are made (and when a cache
made without it resumes), so a disk that fills up is a one-line error before any row, never a
SIGBUS in a memory map.

Crash safety: rows are written into the arrays' files first and reach the disk (fsync), and only
then is the new `done.npy` written beside the old one and renamed over it. A crash at any point
leaves a `done.npy` that marks only rows that are really on disk. Progress is committed this way at
most every `COMMIT_SECONDS` (each commit costs an fsync), so a killed run redoes at most that much
work.

Several processes of one job (the ranks of a torchrun job): the first makes the cache and holds its
lock; the others join its job (`create_cache(..., job=..., part=...)`) and write their own rows
into the same files, each committing its own `done.PART.npy` the same way. The holder merges the
parts into `done.npy` when it finishes, and when it resumes a cache whose job died, so that a
process that died loses only the rows it had not committed. Rows are written with `pwrite`, never
through a shared memory map: processes on several machines then change only their own bytes of a
file on a shared filesystem.

A finished run reads every row back and records the result in meta.json ("check"), and with it
the sha256 of its files ("digests"): a cache that failed it, or whose run stopped before it, does
not open. A rerun resumes a cache only if it would
write the same numbers (`RESUME_EXTRACTION_KEYS` and the fields `create_cache` names).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emergence_model.cache.format import (
    ARGMAX_FILE,
    CACHE_DTYPES,
    CACHE_FILES,
    CHECK_FAILED,
    CHECK_PASSED,
    CHECK_PENDING,
    CHECK_SKIPPED,
    DONE_FILE,
    DONE_PARTS,
    FORMAT_VERSION,
    LOGPROBS_FILE,
    META_FILE,
    PREFIXES_FILE,
    SCALE_AXES,
    CacheError,
    check_status,
    open_array,
    read_cache_header,
    read_meta,
    short_repr,
)
from emergence_model.cache.paths import check_cache_destination
from emergence_model.cache.reader import FeatureCache
from emergence_model.cache.rows import RowFile, done_part_file, merge_done_parts
from emergence_model.files import (
    LOCK_FILE,
    NO_SPACE,
    WriterLock,
    atomic_file,
    lock_for_writing,
    reserve,
    write_json_atomic,
)
from emergence_model.logprobs import cast

COMMIT_SECONDS = 2.0
# What a resume compares besides the models, prefixes, vocabulary, dtypes, counts and scales:
# entries of meta["extraction"] that shape the numbers, compared where both runs record them.
RESUME_EXTRACTION_KEYS = {
    "model_dtype": ("weights dtype", "rerun with the --dtype it was made with"),
    "model_configs": ("model configs", "a model (or how transformers reads it) changed since"),
    "tokenizer_fingerprint": ("tokenizer vocabulary", "the target's tokenizer changed since"),
    "probs_sha256": ("probabilities", "this is another challenge pickle"),
    "inputs": ("input caches", "--combine was given other or rebuilt caches"),
}


def _package_version() -> str:
    from emergence_model import __version__

    return __version__


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as f:
        np.save(f, array)


class CacheWriter:
    """Writes rows into a new or partly written cache; `finalize()` checks it and opens it.

    It holds the cache's lock (`lock`) until `finalize()` or `close()`; as a context manager it
    closes on the way out, whatever happened. A writer with a `part` is one process of a job
    whose first process holds the lock: it commits its rows to its own `done.PART.npy` and
    never finalizes; the holder merges the parts."""

    def __init__(
        self,
        path: Path,
        commit_seconds: float = COMMIT_SECONDS,
        lock: WriterLock | None = None,
        part: str | None = None,
    ) -> None:
        self.path = path
        self.commit_seconds = commit_seconds
        self.lock = lock
        self.part = part
        self.done_file = DONE_FILE if part is None else done_part_file(part)
        self.meta = read_meta(path)
        self.num_prefixes = int(self.meta["num_prefixes"])
        self.model_names = list(self.meta["model_names"])
        self.vocab_size = int(self.meta["vocab_size"])
        self.done = np.array(
            open_array(path / DONE_FILE, (len(self.model_names), self.num_prefixes), "bool")
        )
        if part is None:
            self._merge_parts()  # the rows of a job whose processes died before it finished
        # The files open for writing at the first write, so that rerunning a finished cache
        # (read-only, say) only reads it.
        self._maps: tuple[RowFile, RowFile] | None = None
        self._wrote = False
        self._uncommitted = False
        self._last_commit = time.monotonic()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Commit what was written and release the lock, finished or not (a rerun resumes)."""
        try:
            if self._maps is not None:
                self.commit()
        finally:
            for row_file in self._maps or ():
                row_file.close()
            self._maps = None
            if self.lock is not None:
                self.lock.release()

    def _merge_parts(self) -> None:
        """Fold the processes' `done.PART.npy` into `done.npy`, then remove them (a crash in
        between leaves parts that mark only rows done.npy marks too)."""
        parts = merge_done_parts(self.path, self.done)
        if parts:
            _atomic_save_npy(self.path / DONE_FILE, self.done)
            for part in parts:
                part.unlink(missing_ok=True)

    def _writable_maps(self) -> tuple[RowFile, RowFile]:
        if self._maps is None:
            shape = (self.num_prefixes, len(self.model_names))
            # Opened as memory maps for writing, which checks them (and refuses a read-only
            # cache in one line); rows then go in with pwrite (`cache.rows`).
            logprobs = open_array(
                self.path / LOGPROBS_FILE, (*shape, self.vocab_size), self.meta["dtype"], "r+"
            )
            argmax = open_array(self.path / ARGMAX_FILE, shape, "int32", mode="r+")
            # A cache made by a version that did not reserve its space: reserve it before the
            # first row (a no-op for a cache that has it).
            _reserve_arrays(self.path)
            self._maps = (RowFile(logprobs), RowFile(argmax))
        return self._maps

    def write(
        self,
        model_index: int,
        prefix_indices: Sequence[int] | np.ndarray,
        logprobs: np.ndarray,
        argmax: np.ndarray | None = None,
    ) -> None:
        """Store rows [b, V] of one model; they count as done once committed.

        `logprobs` is float32 (or already the cache dtype). `argmax` defaults to its argmax;
        copies pass the source's, taken before the source was rounded.
        """
        prefix_indices = np.asarray(prefix_indices, dtype=np.int64)
        if logprobs.shape != (prefix_indices.size, self.vocab_size):
            raise ValueError(
                f"expected logprobs of shape {(prefix_indices.size, self.vocab_size)}, "
                f"got {logprobs.shape}"
            )
        stored_logprobs, stored_argmax = self._writable_maps()
        if argmax is None:
            argmax = logprobs.argmax(axis=-1)
        if logprobs.dtype != stored_logprobs.dtype:
            logprobs = cast(logprobs, stored_logprobs.dtype)
        stored_logprobs.write(model_index, prefix_indices, logprobs)
        stored_argmax.write(model_index, prefix_indices, np.asarray(argmax))
        self.done[model_index, prefix_indices] = True
        self._wrote = self._uncommitted = True
        if time.monotonic() - self._last_commit >= self.commit_seconds:
            self.commit()

    def commit(self) -> None:
        """Flush written rows to disk, then atomically mark them done in `done.npy` (a part's
        own `done.PART.npy`)."""
        if not self._uncommitted:
            return
        for row_file in self._writable_maps():
            row_file.sync()
        _atomic_save_npy(self.path / self.done_file, self.done)
        self._uncommitted = False
        self._last_commit = time.monotonic()

    def is_done(self, model_index: int, prefix_index: int) -> bool:
        return bool(self.done[model_index, prefix_index])

    def pending(self, model_index: int) -> np.ndarray:
        """Indices of the prefixes not yet written for model `model_index`, ascending."""
        return np.flatnonzero(~self.done[model_index])

    def finalize(self, verify: bool = True) -> FeatureCache:
        """Open the finished cache; `verify` reads every row back from disk and checks it.

        The check's result goes into meta.json, with the sha256 of its files when it passed (or
        was skipped): a cache that fails it never opens (and the next run into it starts over).
        A cache checked before and not written to since is not read again. The lock is released
        either way. The holder of a job of several processes finalizes once all of them closed
        their writers: it merges their rows first."""
        if self.part is not None:
            raise RuntimeError("a part of a job does not finalize: its lock holder does")
        try:
            return self._finalize(verify)
        finally:
            self.close()

    def _finalize(self, verify: bool) -> FeatureCache:
        self.commit()
        if any(self.path.glob(DONE_PARTS)):
            self._merge_parts()
            self._wrote = True  # rows of the other processes: the full check reads them
        status = check_status(self.meta)
        cache = FeatureCache(self.path, finished=False)  # refuses an incomplete cache
        if not self._wrote and (status == CHECK_PASSED or status == CHECK_SKIPPED and not verify):
            return cache
        problem = cache.problem() if verify else None
        record: dict = {"status": CHECK_PASSED if verify else CHECK_SKIPPED}
        meta = {key: value for key, value in self.meta.items() if key != "digests"}
        if problem is not None:
            record = {"status": CHECK_FAILED, "problem": problem}
        else:
            meta["digests"] = cache.digests()
        meta["check"] = record
        if meta != self.meta:
            try:
                write_json_atomic(self.path / META_FILE, meta)
            except OSError as e:
                # A finished cache on a read-only disk needs no record; anything else does.
                if problem is not None or status == CHECK_PENDING or self._wrote:
                    raise CacheError(
                        f"cannot record the full check of {self.path} in {META_FILE} "
                        f"({e.strerror or e}); make the cache writable and rerun"
                    ) from None
            self.meta = meta
        if problem is not None:
            raise CacheError(
                f"{self.path} failed its full check ({problem}), so it is marked failed and will "
                "not open; fix the cause and rerun the same command, which starts the cache over"
            )
        return FeatureCache(self.path)


def create_cache(
    path: str | os.PathLike,
    *,
    model_names: Sequence[str],
    param_counts: Sequence[int],
    prefixes: Sequence[str],
    vocab_size: int,
    tokenizer: str,
    scales: Sequence[float] | None = None,
    scale_axis: str = "parameters",
    source: dict | None = None,
    seed: int | None = None,
    dtype: str = "float16",
    extraction: dict | None = None,
    job: str | None = None,
    part: str | None = None,
) -> CacheWriter:
    """Start a cache at `path`, or reopen a partly written one of the same job.

    Returns a writer that holds the cache's lock (use it as a context manager, or `finalize()`
    it); a cache another process is writing is refused in one line naming it. Rows already
    marked done are kept, so callers write only `pending(m)`. A rerun resumes only a cache of
    the same models (revisions included), prefixes, vocabulary, dtype, parameter counts, scales
    and, where both runs record them, the extraction entries in `RESUME_EXTRACTION_KEYS`
    (weights dtype, model configs, tokenizer, ...); anything else is refused, except a cache
    that holds no rows yet or failed its full check, which starts over.

    `job`: the lock's `WriterLock.job` when this process writes as part of the job whose first
    process made the cache and holds its lock (the other ranks of a torchrun job): it takes no
    lock and never starts the cache over; rows of different processes must not overlap. It
    commits its rows to `done.PART.npy` (`part`: its name in the job, e.g. "rank1"; default
    "pid" and its pid), which the holder merges when it finishes or resumes.
    """
    path = Path(path)
    model_names, prefixes = [str(n) for n in model_names], [str(p) for p in prefixes]
    if dtype not in CACHE_DTYPES:
        raise CacheError(f"cache dtype {dtype!r} is not one of {CACHE_DTYPES}; pick one of them")
    if not model_names:
        raise CacheError("no models given; pass at least one model, the target last")
    if len(param_counts) != len(model_names):
        raise CacheError(
            f"{len(model_names)} models but {len(param_counts)} parameter counts; "
            "give one per model"
        )
    if any(
        isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p <= 0 for p in param_counts
    ):
        raise CacheError(
            f"parameter counts must be positive integers, got {list(param_counts)}; "
            "pass --param-counts with one count per model"
        )
    scales = [float(s) for s in (param_counts if scales is None else scales)]
    if len(scales) != len(model_names) or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise CacheError(
            f"scales must be one positive number per model, got {scales}; pass --scales with "
            "one number per model"
        )
    if scale_axis not in SCALE_AXES:
        raise CacheError(f"scale axis {scale_axis!r} is not one of {', '.join(SCALE_AXES)}")
    if len(set(model_names)) != len(model_names):
        raise CacheError(f"model names repeat in {model_names}; give each model once")
    if not prefixes:
        raise CacheError("no prefixes given; check the dataset and --num-prefixes")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise CacheError(f"vocabulary size must be an integer, got {vocab_size!r}")
    if vocab_size < 1:
        raise CacheError(f"vocabulary size must be at least 1, got {vocab_size}")
    check_cache_destination(path)
    # Through JSON, as a resumed cache's meta.json will be read back.
    meta = json.loads(
        json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "package_version": _package_version(),
                "model_names": model_names,
                "param_counts": [int(p) for p in param_counts],
                "scale_axis": scale_axis,
                "scales": scales,
                "target_name": model_names[-1],
                "tokenizer": str(tokenizer),
                "vocab_size": int(vocab_size),
                "num_prefixes": len(prefixes),
                "source": source or {},
                "seed": seed,
                "dtype": dtype,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "extraction": {"host_python": platform.python_version(), **(extraction or {})},
                "check": {"status": CHECK_PENDING},
            },
            default=_plain_json,
        )
    )
    n, m = len(prefixes), len(model_names)
    size = n * m * (vocab_size * np.dtype(dtype).itemsize + 4 + 1)
    if not (path / META_FILE).is_file():
        # Not a cache (yet): nothing is written, the lock file included, into a directory of
        # someone else's files or onto a disk that cannot hold the cache.
        _refuse_strangers(path)
        _check_free_space(path, size)
    if job is None:
        path.mkdir(parents=True, exist_ok=True)
        part = None  # the lock's holder commits to done.npy itself
    elif part is None:
        part = f"pid{os.getpid()}"
    else:
        done_part_file(part)  # refuse a part that is not a file name before anything else
    lock = lock_for_writing(path / LOCK_FILE, f"the cache {path}", job=job)
    try:
        # Everything below reads the cache as this writer alone may change it.
        if (path / META_FILE).is_file():
            if _resumable(path, meta, prefixes):
                return CacheWriter(path, lock=lock, part=part)
            if job is not None:
                raise CacheError(
                    f"{path} holds no rows of job {job} to add to; its first process makes it"
                )
            for name in os.listdir(path):  # nothing of value in it: start over
                if _is_ours(name) and name != LOCK_FILE:
                    (path / name).unlink()
            _refuse_strangers(path)
            _check_free_space(path, size)
        elif job is not None:
            raise CacheError(f"{path} is not made yet: job {job}'s first process makes it")
        _make_files(path, meta, prefixes)
        return CacheWriter(path, lock=lock, part=part)
    except BaseException:
        lock.release()
        raise


def _make_files(path: Path, meta: dict, prefixes: list[str]) -> None:
    """A new cache's files, its arrays' space reserved; meta.json last."""
    n, m, vocab_size = len(prefixes), len(meta["model_names"]), meta["vocab_size"]
    write_json_atomic(path / PREFIXES_FILE, prefixes)
    # A crash before meta.json exists leaves only our own files, which the next run overwrites.
    for name, shape, array_dtype in (
        (LOGPROBS_FILE, (n, m, vocab_size), meta["dtype"]),
        (ARGMAX_FILE, (n, m), "int32"),
    ):
        array = np.lib.format.open_memmap(path / name, mode="w+", dtype=array_dtype, shape=shape)
        array.flush()
        del array
    _reserve_arrays(path, new=True)
    _atomic_save_npy(path / DONE_FILE, np.zeros((m, n), dtype=bool))
    write_json_atomic(path / META_FILE, meta)


def _reserve_arrays(path: Path, new: bool = False) -> None:
    """Reserve the disk space of the cache's arrays (sparse files otherwise: a memory map that
    meets a full disk kills the process with SIGBUS). Where the filesystem cannot reserve, the
    free-space check before the cache was made is the only guard. A new cache the disk cannot
    hold is removed, so that the rerun finds no half-made cache."""
    try:
        for name in (LOGPROBS_FILE, ARGMAX_FILE):
            reserve(path / name)
    except OSError as e:
        if new:
            for name in (LOGPROBS_FILE, ARGMAX_FILE, PREFIXES_FILE):
                (path / name).unlink(missing_ok=True)
        if e.errno in NO_SPACE:
            raise CacheError(
                f"the disk of {path} has no room for the cache's arrays ({e.strerror}); free "
                "some space or pick another --out, then rerun"
            ) from None
        raise


def _refuse_strangers(path: Path) -> None:
    """Refuse a directory that holds files other than a cache's own."""
    if path.is_dir():
        strangers = sorted(p.name for p in path.iterdir() if not _is_ours(p.name))
        if strangers:
            raise CacheError(
                f"{path} is not empty and not a feature cache (holds {strangers[0]!r}); "
                "pick another --out"
            )


def _plain_json(value):
    """numpy scalars (a count, a seed) as JSON numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _is_ours(name: str) -> bool:
    """One of a cache's files, its lock, a process's done part, or a temporary of one
    (`atomic_file`'s NAME.*.tmp)."""
    return (
        name in (*CACHE_FILES, LOCK_FILE)
        or fnmatch.fnmatchcase(name, DONE_PARTS)
        or fnmatch.fnmatchcase(name, f"{DONE_PARTS}.*.tmp")
        or any(name.startswith(f + ".") and name.endswith(".tmp") for f in CACHE_FILES)
    )


def _check_free_space(path: Path, needed: int) -> None:
    """Refuse a cache the disk cannot hold: its arrays are sparse files that fill as rows are
    written, and a memory map that hits a full disk kills the process (SIGBUS)."""
    existing = next((p for p in [path, *path.absolute().parents] if p.is_dir()), None)
    if existing is None:
        return
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise CacheError(
            f"a cache of this size needs {needed / 2**30:.2f} GiB but {existing} has "
            f"{free / 2**30:.2f} GiB free; free some space or pick another --out"
        )


def _resumable(path: Path, meta: dict, prefixes: list[str]) -> bool:
    """Whether a rerun continues the cache at `path` (the same job); False if it may start over
    (it holds no rows yet, or failed its full check); CacheError if it holds rows of another."""
    old_meta, old_prefixes = read_cache_header(path)
    if check_status(old_meta) == CHECK_FAILED:
        return False
    difference = _job_difference(old_meta, old_prefixes, meta, prefixes)
    if difference is None:
        return True
    try:
        started = bool(np.load(path / DONE_FILE).any())
    except (OSError, ValueError):
        started = True  # cannot tell: keep it
    if not started:
        return False
    what, hint = difference
    raise CacheError(
        f"{path} already holds a cache with other {what}; {hint}, or pick another --out (the "
        "cache keeps its rows)"
    )


def _job_difference(
    old: dict, old_prefixes: list[str], new: dict, prefixes: list[str]
) -> tuple[str, str] | None:
    """(what differs, with both values; how to match it) between a cache and a rerun, or None."""
    if old_prefixes != prefixes:
        return (
            f"prefixes ({len(old_prefixes)} vs {len(prefixes)} prefixes or different text)",
            "rerun with the same --dataset, --num-prefixes, --seed and --shard",
        )
    old_extraction, new_extraction = old.get("extraction", {}), new["extraction"]
    same = "rerun with the {} it was made with"
    checks = [
        ("models", "model_names", same.format("--suite, --models and --revision")),
        ("vocabulary size", "vocab_size", "the target's tokenizer differs"),
        ("dtype", "dtype", same.format("--cache-dtype")),
        ("parameter counts", "param_counts", same.format("--param-counts")),
        ("scale axis", "scale_axis", same.format("--scale-axis")),
        ("scales", "scales", same.format("--scales")),
        ("tokenizer", "tokenizer", "the target model differs"),
    ]
    defaults = {"scale_axis": "parameters", "scales": old["param_counts"]}
    pairs = [(what, old.get(key, defaults.get(key)), new[key], hint) for what, key, hint in checks]
    for key, (what, hint) in RESUME_EXTRACTION_KEYS.items():
        if key in old_extraction and key in new_extraction:
            pairs.append((what, old_extraction[key], new_extraction[key], hint))
    for what, before, after, hint in pairs:
        if before != after:
            return f"{what} ({short_repr(before)} vs {short_repr(after)})", hint
    return None
