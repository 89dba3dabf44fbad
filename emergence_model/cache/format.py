"""A feature cache's files and metadata, and the checks that every reader and writer makes.

A cache is a directory:

    meta.json       model names, parameter counts, scale axis and scales, target, tokenizer,
                    vocabulary size, source, ...
    prefixes.json   the N prefixes, in row order
    logprobs.npy    [N, M, V] log-probabilities (float16 or float32), read through a memory map
    argmax.npy      [N, M] int32, each model's top token, taken before rounding to the cache dtype
    done.npy        [M, N] bool, which (model, prefix) rows are written
    done.PART.npy   while the processes of one job write it: the rows each one committed
    .lock           while a process writes the cache: its lock (`files.lock_for_writing`)

A finished cache records in meta.json ("digests") the sha256 of its arrays and of its prefix
list (`DIGESTED_FILES`); a full check compares them (caches finished by older versions have
none). Everything here reads: the metadata (checked field by field), the prefixes, the arrays
(checked against the shapes the metadata gives) and the recorded full check; a problem is a
`CacheError` in one line that says how to fix it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
META_FILE = "meta.json"
PREFIXES_FILE = "prefixes.json"
LOGPROBS_FILE = "logprobs.npy"
ARGMAX_FILE = "argmax.npy"
DONE_FILE = "done.npy"
CACHE_FILES = (META_FILE, PREFIXES_FILE, LOGPROBS_FILE, ARGMAX_FILE, DONE_FILE)
# The rows each process of a job of several committed (done.rank1.npy, ...), until the process
# that holds the cache's lock merges them into done.npy.
DONE_PARTS = "done.*.npy"
# Files whose sha256 a finished cache records: every number and the prefix list they belong to
# (done.npy of a finished cache is all True, which opening it checks).
DIGESTED_FILES = (PREFIXES_FILE, LOGPROBS_FILE, ARGMAX_FILE)
CACHE_DTYPES = ("float16", "float32")
# |logsumexp(row)| allowed by the full check. float16 keeps ~3 significant digits, so each stored
# log-probability is off by up to half a unit in the last place (0.008 at -20), and a row's total
# mass by about as much in relative terms; float32 rows are exact to rounding.
NORMALISATION_TOLERANCE = {"float16": 0.05, "float32": 1e-3}
# What a model's scale measures along its ladder: parameters for a ladder of sizes, training tokens
# for one model's checkpoints along its training. The predictor extrapolates in log scale.
SCALE_AXES = ("parameters", "tokens")
# meta.json's "check": {"status": ...}: the full check of the rows, recorded when a run finishes.
# "pending" until then, "passed" or "failed" after it, "unchecked" where the writer skipped it
# (rows copied from a checked cache). A failed cache never opens; a rerun starts it over.
CHECK_PENDING = "pending"
CHECK_PASSED = "passed"
CHECK_FAILED = "failed"
CHECK_SKIPPED = "unchecked"
CHECK_STATUSES = (CHECK_PENDING, CHECK_PASSED, CHECK_FAILED, CHECK_SKIPPED)
REQUIRED_META = (
    "format_version",
    "model_names",
    "param_counts",
    "target_name",
    "tokenizer",
    "vocab_size",
    "num_prefixes",
    "dtype",
)


class CacheError(ValueError):
    """A missing, broken, incomplete or incompatible cache; the message says how to fix it."""


class IncompleteCacheError(CacheError):
    """A sound cache whose extraction has not finished: rerunning its command resumes it."""


def read_json(path: Path, advice: str):
    """JSON from `path`; CacheError in one line naming the file (and the line of a syntax error,
    or of a byte that is not UTF-8); `advice` says what to do about broken contents."""
    try:
        data = path.read_bytes()
    except PermissionError as e:
        raise CacheError(f"cannot read {path} ({e.strerror}); fix its permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CacheError(f"{path}:{line} is not UTF-8 text; {advice}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CacheError(f"{path}:{e.lineno} is not valid JSON ({e.msg}); {advice}") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _meta_problem(meta: dict) -> str | None:
    """What is wrong with a metadata dict's fields, or None."""
    names, counts = meta["model_names"], meta["param_counts"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return f"model_names must be a non-empty list of strings, got {short_repr(names)}"
    if not isinstance(counts, list):
        return f"param_counts must be a list, got {short_repr(counts)}"
    if len(names) != len(counts):
        return f"{len(names)} model names but {len(counts)} parameter counts"
    if any(not _is_int(c) or c <= 0 for c in counts):
        return f"parameter counts must be positive integers, got {short_repr(counts)}"
    if meta["target_name"] != names[-1]:
        return f"target_name {short_repr(meta['target_name'])} is not the last model {names[-1]!r}"
    for key in ("vocab_size", "num_prefixes"):
        if not _is_int(meta[key]) or meta[key] <= 0:
            return f"{key} must be a positive integer, got {short_repr(meta[key])}"
    if not isinstance(meta["tokenizer"], str):
        return f"tokenizer must be a string, got {short_repr(meta['tokenizer'])}"
    scales = meta.get("scales", counts)
    if (
        not isinstance(scales, list)
        or len(scales) != len(names)
        or any(
            isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0
            for s in scales
        )
    ):
        return f"scales must be one positive number per model, got {short_repr(scales)}"
    if meta.get("scale_axis", "parameters") not in SCALE_AXES:
        return f"scale_axis {meta.get('scale_axis')!r} is not one of {SCALE_AXES}"
    if meta["dtype"] not in CACHE_DTYPES:
        return f"dtype {short_repr(meta['dtype'])} is not one of {CACHE_DTYPES}"
    for key in ("extraction", "source"):
        if not isinstance(meta.get(key, {}), dict):
            return f"{key} must be a JSON object, got {short_repr(meta[key])}"
    digests = meta.get("digests", {})
    if (
        not isinstance(digests, dict)
        or set(digests) - set(DIGESTED_FILES)
        or not all(isinstance(d, str) for d in digests.values())
    ):
        return f"digests must map {', '.join(DIGESTED_FILES)} to sha256s, got {short_repr(digests)}"
    check = meta.get("check", {"status": CHECK_PASSED})
    if not isinstance(check, dict) or check.get("status") not in CHECK_STATUSES:
        return f"check must be {{'status': one of {CHECK_STATUSES}}}, got {short_repr(check)}"
    return None


def short_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_meta(path: Path) -> dict:
    # exists() follows links and is False for a loop or a missing target; is_symlink() is not.
    if path.is_symlink() and not path.exists():
        raise CacheError(
            f"{path} is a symbolic link to nothing (a loop or a missing target); pass the cache "
            "directory itself"
        )
    if not path.is_dir():
        if path.exists():
            raise CacheError(
                f"{path} is a file, not a feature cache; pass the directory that "
                "cache_features.py --out wrote"
            )
        raise CacheError(f"no cache at {path}: run cache_features.py with --out {path} first")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CacheError(
            f"{path} is not a feature cache (no {META_FILE}); pass the directory that "
            "cache_features.py --out wrote"
        )
    meta = read_json(meta_path, "delete the cache and rebuild it")
    if not isinstance(meta, dict):
        raise CacheError(
            f"{meta_path} holds {short_repr(meta)}, not a cache's metadata; delete the cache and "
            "rebuild it"
        )
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise CacheError(f"{meta_path} lacks {', '.join(missing)}; delete the cache and rebuild it")
    if meta["format_version"] != FORMAT_VERSION:
        raise CacheError(
            f"{path} has cache format {short_repr(meta['format_version'])}, this package reads "
            f"format {FORMAT_VERSION}; rebuild the cache with this version of cache_features.py"
        )
    problem = _meta_problem(meta)
    if problem is not None:
        raise CacheError(
            f"{meta_path}: {problem}; fix meta.json or delete the cache and rebuild it"
        )
    return meta


def check_status(meta: dict) -> str:
    """The recorded full check's status; caches from before it was recorded count as passed."""
    return meta.get("check", {"status": CHECK_PASSED})["status"]


def check_not_failed(path: Path, meta: dict) -> None:
    if check_status(meta) == CHECK_FAILED:
        raise CacheError(
            f"{path} failed its full check when it was written "
            f"({meta['check'].get('problem', 'no details')}), so it does not open; fix the cause "
            "and rerun the command that made it, which starts the cache over"
        )


def read_cache_header(path: str | os.PathLike) -> tuple[dict, list[str]]:
    """A cache's metadata and prefixes, finished or not; CacheError if they are missing or
    broken."""
    path = Path(path)
    meta = read_meta(path)
    return meta, read_prefixes(path, meta)


def read_prefixes(path: Path, meta: dict) -> list[str]:
    prefixes_path = path / PREFIXES_FILE
    if not prefixes_path.is_file():
        raise CacheError(f"{path} lacks {PREFIXES_FILE}; delete the cache and rebuild it")
    prefixes = read_json(prefixes_path, "delete the cache and rebuild it")
    if isinstance(prefixes, list) and not all(isinstance(p, str) for p in prefixes):
        raise CacheError(
            f"{prefixes_path} holds something other than strings; delete the cache and rebuild it"
        )
    if not isinstance(prefixes, list) or len(prefixes) != meta["num_prefixes"]:
        found = len(prefixes) if isinstance(prefixes, list) else type(prefixes).__name__
        raise CacheError(
            f"{prefixes_path} holds {found} prefixes but meta.json says {meta['num_prefixes']}; "
            "delete the cache and rebuild it"
        )
    return prefixes


def open_array(path: Path, shape: tuple[int, ...], dtype: str, mode: str = "r") -> np.ndarray:
    try:
        array = np.load(path, mmap_mode=mode)
    except FileNotFoundError:
        raise CacheError(
            f"{path.parent} lacks {path.name}; delete the cache and rebuild it"
        ) from None
    except PermissionError as e:
        # Good data behind the wrong permissions: never advise deleting it.
        if mode == "r":
            raise CacheError(f"cannot read {path} ({e.strerror}); fix its permissions") from None
        raise CacheError(
            f"cannot write {path} ({e.strerror}): the cache is read-only; make it writable "
            f"(chmod -R u+w {path.parent}) or pick another --out"
        ) from None
    except (ValueError, OSError) as e:
        raise CacheError(f"{path} is unreadable ({e}); delete the cache and rebuild it") from None
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise CacheError(
            f"{path} is {array.dtype}{list(array.shape)} but meta.json says {dtype}{list(shape)}; "
            "delete the cache and rebuild it"
        )
    return array


def check_complete(path: Path, done: np.ndarray, model_names: Sequence[str]) -> None:
    if done.all():
        return
    counts = done.sum(axis=1)
    m = int(np.argmin(counts == done.shape[1]))
    raise IncompleteCacheError(
        f"{path} is incomplete: model {model_names[m]!r} has {int(counts[m])}/{done.shape[1]} "
        "prefixes done; rerun the same cache_features.py command to resume"
    )
