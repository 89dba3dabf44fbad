"""The feature cache: every model's next-token log-probabilities for every prefix, on disk.

A cache is a directory:

    meta.json       model names, parameter counts, scale axis and scales, target, tokenizer,
                    vocabulary size, source, ...
    prefixes.json   the N prefixes, in row order
    logprobs.npy    [N, M, V] log-probabilities (float16 or float32), read through a memory map
    argmax.npy      [N, M] int32, each model's top token, taken before rounding to the cache dtype
    done.npy        [M, N] bool, which (model, prefix) rows are written

Log-probabilities rather than probabilities: float16 probabilities flush to zero below ~6e-8, which
erases the tail of the distribution the predictor learns from; float16 log-probabilities keep it.

Crash safety: rows go into the memory maps first and are flushed to disk, and only then is the new
`done.npy` written beside the old one and renamed over it. A crash at any point leaves a `done.npy`
that marks only rows that are really on disk. Progress is committed this way at most every
`COMMIT_SECONDS` (each commit costs an fsync), so a killed run redoes at most that much work.

A finished run reads every row back and records the result in meta.json ("check"): a cache that
failed it, or whose run stopped before it, does not open. A rerun resumes a cache only if it would
write the same numbers (`create_cache`); `combine_caches` joins only caches made alike.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emergence_model.files import atomic_file, check_output_path, write_json_atomic
from emergence_model.folds import rows_fingerprint

FORMAT_VERSION = 1
META_FILE = "meta.json"
PREFIXES_FILE = "prefixes.json"
LOGPROBS_FILE = "logprobs.npy"
ARGMAX_FILE = "argmax.npy"
DONE_FILE = "done.npy"
CACHE_FILES = (META_FILE, PREFIXES_FILE, LOGPROBS_FILE, ARGMAX_FILE, DONE_FILE)
CACHE_DTYPES = ("float16", "float32")
# |logsumexp(row)| allowed by the full check. float16 keeps ~3 significant digits, so each stored
# log-probability is off by up to half a unit in the last place (0.008 at -20), and a row's total
# mass by about as much in relative terms; float32 rows are exact to rounding.
NORMALISATION_TOLERANCE = {"float16": 0.05, "float32": 1e-3}
# Full checks and copies go through a cache in float32 pieces of this size: a few MB are reused
# by the allocator and stay in CPU cache, where large temporaries cost page faults every time
# (4x slower on a 40M-value cache).
CHUNK_BYTES = 4 * 2**20
COMMIT_SECONDS = 2.0
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
# What a resume compares besides the models, prefixes, vocabulary, dtypes, counts and scales:
# entries of meta["extraction"] that shape the numbers, compared where both runs record them.
RESUME_EXTRACTION_KEYS = {
    "model_dtype": ("weights dtype", "rerun with the --dtype it was made with"),
    "model_configs": ("model configs", "a model (or how transformers reads it) changed since"),
    "tokenizer_fingerprint": ("tokenizer vocabulary", "the target's tokenizer changed since"),
    "probs_sha256": ("probabilities", "this is another challenge pickle"),
    "inputs": ("input caches", "--combine was given other or rebuilt caches"),
}
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


# A float16 probability of 0 stands for anything below half the smallest subnormal (2**-24).
# log(0) = -inf would poison every sum and mean taken over log-probabilities, so every consumer
# (the challenge's pickles, the strategies, the predictor) floors them at log(2**-24) = -16.6,
# the smallest value float16 can hold: the honest "no more than this".
PROB_FLOOR = float(np.finfo(np.float16).smallest_subnormal)
LOG_PROB_FLOOR = math.log(PROB_FLOOR)


class CacheError(ValueError):
    """A missing, broken, incomplete or incompatible cache; the message says how to fix it."""


def _package_version() -> str:
    from emergence_model import __version__

    return __version__


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as f:
        np.save(f, array)


def rows_per_chunk(num_models: int, vocab_size: int, itemsize: int = 4) -> int:
    return max(1, CHUNK_BYTES // (num_models * vocab_size * itemsize))


def as_tensor(array):
    """A torch view of `array` (a tensor is returned as it is), memory maps included (torch only
    reads them, so its warning about read-only arrays does not apply)."""
    import torch

    if isinstance(array, torch.Tensor):
        return array
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(array))


def cast(array: np.ndarray, dtype) -> np.ndarray:
    """`array.astype(dtype)` through torch, whose float16 casts are ~6x faster than numpy's."""
    import torch

    out = torch.empty(array.shape, dtype=getattr(torch, np.dtype(dtype).name))
    out.copy_(as_tensor(array))
    return out.numpy()


class FeatureCache:
    """A finished cache, opened read-only; `logprobs` is a memory map, read only when used."""

    def __init__(self, path: str | os.PathLike, *, finished: bool = True) -> None:
        """`finished=False` opens a complete cache whose full check has not been recorded yet
        (for the writer that runs it); every other reader needs a finished one."""
        self.path = Path(path)
        self.meta = _read_meta(self.path)
        _check_not_failed(self.path, self.meta)
        self.prefixes = _read_prefixes(self.path, self.meta)
        self.model_names: list[str] = list(self.meta["model_names"])
        self.param_counts: list[int] = [int(p) for p in self.meta["param_counts"]]
        # Caches from before the scale axis are size ladders: their scales are parameter counts.
        self.scale_axis: str = self.meta.get("scale_axis", "parameters")
        self.scales: list[float] = [float(s) for s in self.meta.get("scales", self.param_counts)]
        self.target_name: str = self.meta["target_name"]
        self.vocab_size: int = int(self.meta["vocab_size"])
        self.num_prefixes = len(self.prefixes)
        self.num_models = len(self.model_names)
        self.logprobs: np.ndarray = _open_array(
            self.path / LOGPROBS_FILE,
            (self.num_prefixes, self.num_models, self.vocab_size),
            self.meta["dtype"],
        )
        self._plain = np.asarray(self.logprobs)
        self.argmax: np.ndarray = np.array(
            _open_array(self.path / ARGMAX_FILE, (self.num_prefixes, self.num_models), "int32")
        )
        self.target_argmax: np.ndarray = self.argmax[:, -1].astype(np.int64)
        done = _open_array(self.path / DONE_FILE, (self.num_models, self.num_prefixes), "bool")
        _check_complete(self.path, done, self.model_names)
        if finished and _check_status(self.meta) == CHECK_PENDING:
            raise CacheError(
                f"{self.path} holds every row but its run stopped before the full check of them; "
                "rerun the same command to finish it"
            )

    def __len__(self) -> int:
        return self.num_prefixes

    def __reduce__(self):
        # Pickled (e.g. into spawned DataLoader workers) as its path: a memory map would be
        # pickled as all of its data.
        return open_cache, (str(self.path),)

    def __repr__(self) -> str:
        return (
            f"FeatureCache({str(self.path)!r}, prefixes={self.num_prefixes}, "
            f"models={self.model_names}, vocab={self.vocab_size}, dtype={self.meta['dtype']})"
        )

    @property
    def fingerprint(self) -> str:
        """`rows_fingerprint` of this cache's models and prefixes."""
        return rows_fingerprint(self.model_names, self.prefixes)

    def content_key(self) -> dict:
        """What identifies this cache's contents, not only its rows: the fingerprint, every
        model's top tokens and when and how it was made, so that a rebuilt cache of the same
        models and prefixes is not mistaken for the old one."""
        return {
            "cache": self.fingerprint,
            "top_tokens": hashlib.sha256(np.ascontiguousarray(self.argmax).tobytes()).hexdigest(),
            "made": {k: self.meta.get(k) for k in ("created", "dtype", "extraction")},
        }

    def rows(self, indices: Sequence[int] | np.ndarray, dtype=np.float32) -> np.ndarray:
        """Rows `indices` as an in-memory array [len(indices), M, V] of `dtype` (float32 default).

        The memory map is read in ascending index order (fewer seeks and page faults), and each row
        is cast straight into the output, so no second copy in the cache dtype is made.
        `dtype=None` keeps the cache dtype: half the bytes, for a consumer that casts on a GPU.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < -self.num_prefixes or indices.max() >= len(self)):
            raise IndexError(f"row index out of range for a cache of {len(self)} prefixes")
        indices = np.where(indices < 0, indices + self.num_prefixes, indices)
        order = np.argsort(indices, kind="stable")
        pairs = zip(order.tolist(), indices[order].tolist(), strict=True)
        shape = (indices.size, self.num_models, self.vocab_size)
        # A plain ndarray view of the map: np.memmap's own indexing costs ~20 us a row.
        source = self._plain
        if dtype is None or np.dtype(dtype) == source.dtype:
            out = np.empty(shape, dtype=source.dtype)
            for j, i in pairs:
                out[j] = source[i]
            return out
        out = as_tensor(np.empty(shape, dtype=dtype))
        for j, i in pairs:
            out[j].copy_(as_tensor(source[i]))  # torch casts float16 several times faster
        return out.numpy()

    def verify(self) -> None:
        """Full check: every value finite, every row normalised; CacheError names a bad row."""
        problem = self.problem()
        if problem is not None:
            raise CacheError(f"{self.path}: {problem}; delete the cache and extract it again")

    def problem(self) -> str | None:
        """The first thing the full check finds wrong (a non-finite value, a row that does not
        normalise, a top token outside the vocabulary), or None."""
        import torch

        tolerance = NORMALISATION_TOLERANCE[self.meta["dtype"]]
        step = rows_per_chunk(self.num_models, self.vocab_size)
        for start in range(0, self.num_prefixes, step):
            block = as_tensor(self.logprobs[start : start + step]).float()  # (n, M, V)
            bad = ~torch.isfinite(block).all(dim=-1).numpy()
            if bad.any():
                n, m = np.argwhere(bad)[0]
                return (
                    f"non-finite log-probabilities at prefix {start + n}, model "
                    f"{self.model_names[m]!r}"
                )
            error = torch.logsumexp(block, dim=-1).abs().numpy()  # (n, M)
            if (error > tolerance).any():
                n, m = np.argwhere(error > tolerance)[0]
                return (
                    f"row of prefix {start + n}, model {self.model_names[m]!r} does not "
                    f"normalise (logsumexp {float(error[n, m]):.3g})"
                )
        if self.argmax.size and (self.argmax.min() < 0 or self.argmax.max() >= self.vocab_size):
            return "argmax.npy holds token ids outside the vocabulary"
        return None


def open_cache(path: str | os.PathLike, full_check: bool = False) -> FeatureCache:
    """Open a finished cache, checking metadata, shapes and completeness; `full_check` reads all."""
    cache = FeatureCache(path)
    if full_check:
        cache.verify()
    return cache


def _read_json(path: Path, advice: str):
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
        return f"model_names must be a non-empty list of strings, got {_short(names)}"
    if not isinstance(counts, list):
        return f"param_counts must be a list, got {_short(counts)}"
    if len(names) != len(counts):
        return f"{len(names)} model names but {len(counts)} parameter counts"
    if any(not _is_int(c) or c <= 0 for c in counts):
        return f"parameter counts must be positive integers, got {_short(counts)}"
    if meta["target_name"] != names[-1]:
        return f"target_name {_short(meta['target_name'])} is not the last model {names[-1]!r}"
    for key in ("vocab_size", "num_prefixes"):
        if not _is_int(meta[key]) or meta[key] <= 0:
            return f"{key} must be a positive integer, got {_short(meta[key])}"
    if not isinstance(meta["tokenizer"], str):
        return f"tokenizer must be a string, got {_short(meta['tokenizer'])}"
    scales = meta.get("scales", counts)
    if (
        not isinstance(scales, list)
        or len(scales) != len(names)
        or any(
            isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0
            for s in scales
        )
    ):
        return f"scales must be one positive number per model, got {_short(scales)}"
    if meta.get("scale_axis", "parameters") not in SCALE_AXES:
        return f"scale_axis {meta.get('scale_axis')!r} is not one of {SCALE_AXES}"
    if meta["dtype"] not in CACHE_DTYPES:
        return f"dtype {_short(meta['dtype'])} is not one of {CACHE_DTYPES}"
    for key in ("extraction", "source"):
        if not isinstance(meta.get(key, {}), dict):
            return f"{key} must be a JSON object, got {_short(meta[key])}"
    check = meta.get("check", {"status": CHECK_PASSED})
    if not isinstance(check, dict) or check.get("status") not in CHECK_STATUSES:
        return f"check must be {{'status': one of {CHECK_STATUSES}}}, got {_short(check)}"
    return None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _read_meta(path: Path) -> dict:
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
    meta = _read_json(meta_path, "delete the cache and rebuild it")
    if not isinstance(meta, dict):
        raise CacheError(
            f"{meta_path} holds {_short(meta)}, not a cache's metadata; delete the cache and "
            "rebuild it"
        )
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise CacheError(f"{meta_path} lacks {', '.join(missing)}; delete the cache and rebuild it")
    if meta["format_version"] != FORMAT_VERSION:
        raise CacheError(
            f"{path} has cache format {_short(meta['format_version'])}, this package reads format "
            f"{FORMAT_VERSION}; rebuild the cache with this version of cache_features.py"
        )
    problem = _meta_problem(meta)
    if problem is not None:
        raise CacheError(
            f"{meta_path}: {problem}; fix meta.json or delete the cache and rebuild it"
        )
    return meta


def _check_status(meta: dict) -> str:
    """The recorded full check's status; caches from before it was recorded count as passed."""
    return meta.get("check", {"status": CHECK_PASSED})["status"]


def _check_not_failed(path: Path, meta: dict) -> None:
    if _check_status(meta) == CHECK_FAILED:
        raise CacheError(
            f"{path} failed its full check when it was written "
            f"({meta['check'].get('problem', 'no details')}), so it does not open; fix the cause "
            "and rerun the command that made it, which starts the cache over"
        )


def read_cache_header(path: str | os.PathLike) -> tuple[dict, list[str]]:
    """A cache's metadata and prefixes, finished or not; CacheError if they are missing or
    broken."""
    path = Path(path)
    meta = _read_meta(path)
    return meta, _read_prefixes(path, meta)


def _read_prefixes(path: Path, meta: dict) -> list[str]:
    prefixes_path = path / PREFIXES_FILE
    if not prefixes_path.is_file():
        raise CacheError(f"{path} lacks {PREFIXES_FILE}; delete the cache and rebuild it")
    prefixes = _read_json(prefixes_path, "delete the cache and rebuild it")
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


def _open_array(path: Path, shape: tuple[int, ...], dtype: str, mode: str = "r") -> np.ndarray:
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


def _check_complete(path: Path, done: np.ndarray, model_names: Sequence[str]) -> None:
    if done.all():
        return
    counts = done.sum(axis=1)
    m = int(np.argmin(counts == done.shape[1]))
    raise CacheError(
        f"{path} is incomplete: model {model_names[m]!r} has {int(counts[m])}/{done.shape[1]} "
        "prefixes done; rerun the same cache_features.py command to resume"
    )


class CacheWriter:
    """Writes rows into a new or partly written cache; `finalize()` checks it and opens it."""

    def __init__(self, path: Path, commit_seconds: float = COMMIT_SECONDS) -> None:
        self.path = path
        self.commit_seconds = commit_seconds
        self.meta = _read_meta(path)
        self.num_prefixes = int(self.meta["num_prefixes"])
        self.model_names = list(self.meta["model_names"])
        self.vocab_size = int(self.meta["vocab_size"])
        self.done = np.array(
            _open_array(path / DONE_FILE, (len(self.model_names), self.num_prefixes), "bool")
        )
        # The memory maps open for writing at the first write, so that rerunning a finished
        # cache (read-only, say) only reads it.
        self._maps: tuple[np.ndarray, np.ndarray] | None = None
        self._wrote = False
        self._uncommitted = False
        self._last_commit = time.monotonic()

    def _writable_maps(self) -> tuple[np.ndarray, np.ndarray]:
        if self._maps is None:
            shape = (self.num_prefixes, len(self.model_names))
            self._maps = (
                _open_array(
                    self.path / LOGPROBS_FILE,
                    (*shape, self.vocab_size),
                    self.meta["dtype"],
                    mode="r+",
                ),
                _open_array(self.path / ARGMAX_FILE, shape, "int32", mode="r+"),
            )
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
        stored_logprobs[prefix_indices, model_index] = logprobs
        stored_argmax[prefix_indices, model_index] = argmax
        self.done[model_index, prefix_indices] = True
        self._wrote = self._uncommitted = True
        if time.monotonic() - self._last_commit >= self.commit_seconds:
            self.commit()

    def commit(self) -> None:
        """Flush written rows to disk, then atomically mark them done in `done.npy`."""
        if not self._uncommitted:
            return
        for array in self._writable_maps():
            array.flush()
        _atomic_save_npy(self.path / DONE_FILE, self.done)
        self._uncommitted = False
        self._last_commit = time.monotonic()

    def is_done(self, model_index: int, prefix_index: int) -> bool:
        return bool(self.done[model_index, prefix_index])

    def pending(self, model_index: int) -> np.ndarray:
        """Indices of the prefixes not yet written for model `model_index`, ascending."""
        return np.flatnonzero(~self.done[model_index])

    def finalize(self, verify: bool = True) -> FeatureCache:
        """Open the finished cache; `verify` reads every row back from disk and checks it.

        The check's result goes into meta.json: a cache that fails it never opens (and the next
        run into it starts over). A cache checked before and not written to since is not read
        again."""
        self.commit()
        self._maps = None
        status = _check_status(self.meta)
        cache = FeatureCache(self.path, finished=False)  # refuses an incomplete cache
        if not self._wrote and (status == CHECK_PASSED or status == CHECK_SKIPPED and not verify):
            return cache
        problem = cache.problem() if verify else None
        record: dict = {"status": CHECK_PASSED if verify else CHECK_SKIPPED}
        if problem is not None:
            record = {"status": CHECK_FAILED, "problem": problem}
        if self.meta.get("check") != record:
            try:
                write_json_atomic(self.path / META_FILE, {**self.meta, "check": record})
            except OSError as e:
                # A finished cache on a read-only disk needs no record; anything else does.
                if problem is not None or status == CHECK_PENDING or self._wrote:
                    raise CacheError(
                        f"cannot record the full check of {self.path} in {META_FILE} "
                        f"({e.strerror or e}); make the cache writable and rerun"
                    ) from None
            self.meta["check"] = record
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
) -> CacheWriter:
    """Start a cache at `path`, or reopen a partly written one of the same job.

    Returns a writer; rows already marked done are kept, so callers write only `pending(m)`. A
    rerun resumes only a cache of the same models (revisions included), prefixes, vocabulary,
    dtype, parameter counts, scales and, where both runs record them, the extraction entries in
    `RESUME_EXTRACTION_KEYS` (weights dtype, model configs, tokenizer, ...); anything else is
    refused, except a cache that holds no rows yet or failed its full check, which starts over.
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
    if (path / META_FILE).is_file():
        if _resumable(path, meta, prefixes):
            return CacheWriter(path)
        for name in os.listdir(path):  # nothing of value in it: start over
            if _is_ours(name):
                (path / name).unlink()
    if path.is_dir():
        strangers = sorted(p.name for p in path.iterdir() if not _is_ours(p.name))
        if strangers:
            raise CacheError(
                f"{path} is not empty and not a feature cache (holds {strangers[0]!r}); "
                "pick another --out"
            )
    n, m = len(prefixes), len(model_names)
    _check_free_space(path, n * m * (vocab_size * np.dtype(dtype).itemsize + 4 + 1))
    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path / PREFIXES_FILE, prefixes)
    # A crash before meta.json exists leaves only our own files, which the next run overwrites.
    for name, shape, array_dtype in (
        (LOGPROBS_FILE, (n, m, vocab_size), dtype),
        (ARGMAX_FILE, (n, m), "int32"),
    ):
        array = np.lib.format.open_memmap(path / name, mode="w+", dtype=array_dtype, shape=shape)
        array.flush()
        del array
    _atomic_save_npy(path / DONE_FILE, np.zeros((m, n), dtype=bool))
    write_json_atomic(path / META_FILE, meta)
    return CacheWriter(path)


def _plain_json(value):
    """numpy scalars (a count, a seed) as JSON numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _is_ours(name: str) -> bool:
    """One of a cache's files, or a temporary of one (`atomic_file`'s NAME.*.tmp)."""
    return name in CACHE_FILES or any(
        name.startswith(f + ".") and name.endswith(".tmp") for f in CACHE_FILES
    )


def cache_containing(path: str | os.PathLike) -> Path | None:
    """The feature cache that `path` would be inside of (a parent directory with meta.json and
    logprobs.npy), or None."""
    for parent in Path(path).absolute().parents:
        if (parent / META_FILE).is_file() and (parent / LOGPROBS_FILE).is_file():
            return parent
    return None


def check_cache_destination(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse a path that cannot hold a cache, before anything is written: a file, a link to
    nothing, a directory inside another cache."""
    try:
        path = check_output_path(path, flag, directory=True)
    except ValueError as e:
        raise CacheError(str(e)) from None
    outer = cache_containing(path)
    if outer is not None:
        raise CacheError(
            f"{flag} {path} is inside the feature cache {outer}; pick a directory outside it"
        )
    return path


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse a file path that cannot be written as asked (a directory, a link to nothing, a
    file among its parents) or that lies inside a feature cache, before anything is written."""
    path = check_output_path(path, flag, directory=False)
    outer = cache_containing(path)
    if outer is not None:
        raise ValueError(f"{flag} {path} is inside the feature cache {outer}; write it elsewhere")
    return path


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
    if _check_status(old_meta) == CHECK_FAILED:
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
            return f"{what} ({_short(before)} vs {_short(after)})", hint
    return None


def combine_caches(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> FeatureCache:
    """Join caches made in separate runs into one at `out`.

    Same prefixes in every cache: models are concatenated in the order of `paths` (one run per
    model or per GPU), so the target is the last model of the last cache. Same models in every
    cache: prefixes are concatenated (one run per shard of the prefixes). Anything else is
    refused, and so are caches that were made differently: another vocabulary, tokenizer, scale
    axis or weights dtype, or (for shards) other parameter counts, scales or model configs.
    """
    if len(paths) < 2:
        raise CacheError("combine needs at least two caches")
    out = check_cache_destination(out)
    for p in paths:
        if Path(p).absolute() == out.absolute():
            raise CacheError(f"--out {out} is one of the caches to combine; pick another --out")
    caches = [open_cache(p) for p in paths]
    first = caches[0]
    same_prefixes = all(c.prefixes == first.prefixes for c in caches)
    same_models = all(c.model_names == first.model_names for c in caches)
    if same_prefixes and same_models:
        raise CacheError("the caches hold the same models and prefixes; nothing to combine")
    if not same_prefixes and not same_models:
        raise CacheError(
            "the caches share neither their prefixes nor their models; combine caches of one "
            "dataset (different models) or of one suite (different prefix shards)"
        )
    extraction = _check_combinable(caches, shards=same_models)
    dtype = "float32" if any(c.meta["dtype"] == "float32" for c in caches) else "float16"
    common = dict(
        vocab_size=first.vocab_size,
        # The target's: the last cache holds it (for shards, every cache has the same one).
        tokenizer=caches[-1].meta["tokenizer"],
        seed=first.meta.get("seed"),
        dtype=dtype,
        extraction={
            "combined_from": [str(c.path) for c in caches],
            "inputs": [c.content_key() for c in caches],
            **extraction,
        },
        scale_axis=first.scale_axis,
    )
    if same_prefixes:
        names = [n for c in caches for n in c.model_names]
        if len(set(names)) != len(names):
            raise CacheError(f"a model appears in more than one cache ({names}); combine each once")
        writer = create_cache(
            out,
            model_names=names,
            param_counts=[p for c in caches for p in c.param_counts],
            scales=[s for c in caches for s in c.scales],
            prefixes=first.prefixes,
            source=first.meta.get("source", {}),
            **common,
        )
        offset = 0
        for cache in caches:
            for m in range(cache.num_models):
                _copy_model_rows(cache, m, writer, offset + m, row_offset=0)
            offset += cache.num_models
    else:
        writer = create_cache(
            out,
            model_names=first.model_names,
            param_counts=first.param_counts,
            scales=first.scales,
            prefixes=[p for c in caches for p in c.prefixes],
            source={"combined": [c.meta.get("source", {}) for c in caches]},
            **common,
        )
        offset = 0
        for cache in caches:
            for m in range(cache.num_models):
                _copy_model_rows(cache, m, writer, m, row_offset=offset)
            offset += cache.num_prefixes
    return writer.finalize(verify=True)


def _check_combinable(caches: Sequence[FeatureCache], *, shards: bool) -> dict:
    """Refuse caches that were made differently; returns the extraction entries they share (or,
    for the model configs of caches of different models, join)."""
    first = caches[0]
    extractions = [c.meta.get("extraction", {}) for c in caches]

    def refuse(cache: FeatureCache, what: str, mine, theirs, advice: str) -> CacheError:
        return CacheError(
            f"{cache.path} has {what} {_short(mine)}, {first.path} has {_short(theirs)}; {advice}"
        )

    for cache, extraction in zip(caches[1:], extractions[1:], strict=True):
        if cache.vocab_size != first.vocab_size:
            raise refuse(
                cache, "vocabulary size", cache.vocab_size, first.vocab_size,
                "only caches of one tokenizer combine",
            )  # fmt: skip
        if cache.scale_axis != first.scale_axis:
            raise refuse(
                cache, "scale axis", cache.scale_axis, first.scale_axis,
                "only caches of one kind of ladder combine",
            )  # fmt: skip
        # A tokenizer is known by its vocabulary's fingerprint where both runs recorded it (one
        # run per model names each model's own copy of one tokenizer), else by its name.
        key = "tokenizer_fingerprint"
        if key in extraction and key in extractions[0]:
            mine, theirs = extraction[key], extractions[0][key]
        else:
            mine, theirs = cache.meta["tokenizer"], first.meta["tokenizer"]
        if mine != theirs:
            raise refuse(
                cache, "tokenizer", cache.meta["tokenizer"], first.meta["tokenizer"],
                "only caches of one tokenizer combine",
            )  # fmt: skip
        key = "model_dtype"
        if key in extraction and key in extractions[0] and extraction[key] != extractions[0][key]:
            raise refuse(
                cache, "weights dtype", extraction[key], extractions[0][key],
                "extract every part with one --dtype",
            )  # fmt: skip
        if shards:
            for what, mine, theirs in (
                ("parameter counts", cache.param_counts, first.param_counts),
                ("scales", cache.scales, first.scales),
                (
                    "model configs",
                    extraction.get("model_configs"),
                    extractions[0].get("model_configs"),
                ),
            ):
                if mine != theirs and (what != "model configs" or None not in (mine, theirs)):
                    raise refuse(
                        cache, what, mine, theirs, "only shards of one suite's run combine"
                    )
    shared = {}
    for key in ("model_dtype", "tokenizer_fingerprint"):
        if all(key in e for e in extractions):
            shared[key] = extractions[0][key]
    if all("model_configs" in e for e in extractions):
        configs = [e["model_configs"] for e in extractions]
        shared["model_configs"] = configs[0] if shards else [c for part in configs for c in part]
    return shared


def select_models(
    cache: FeatureCache, models: Sequence[int], out: str | os.PathLike
) -> FeatureCache:
    """A cache at `out` of `cache`'s prefixes with only the models `models` (indices, in order;
    the last one is the new cache's target), copied as stored. Resumable like any cache."""
    models = [int(m) for m in models]
    if not models or any(not -cache.num_models <= m < cache.num_models for m in models):
        raise CacheError(
            f"model indices {models} are not in {cache.path}'s {cache.num_models} models"
        )
    models = [m % cache.num_models for m in models]
    writer = create_cache(
        out,
        model_names=[cache.model_names[m] for m in models],
        param_counts=[cache.param_counts[m] for m in models],
        scales=[cache.scales[m] for m in models],
        scale_axis=cache.scale_axis,
        prefixes=cache.prefixes,
        vocab_size=cache.vocab_size,
        tokenizer=cache.meta["tokenizer"],
        source=cache.meta.get("source", {}),
        seed=cache.meta.get("seed"),
        dtype=cache.meta["dtype"],
        extraction={"selected_from": str(cache.path), "models": models},
    )
    for out_model, m in enumerate(models):
        _copy_model_rows(cache, m, writer, out_model, row_offset=0)
    return writer.finalize(verify=False)


def _copy_model_rows(
    cache: FeatureCache, model: int, writer: CacheWriter, out_model: int, row_offset: int
) -> None:
    step = rows_per_chunk(1, cache.vocab_size)
    for start in range(0, cache.num_prefixes, step):
        stop = min(start + step, cache.num_prefixes)
        rows = np.arange(row_offset + start, row_offset + stop)
        if writer.done[out_model, rows].all():
            continue
        block = cache.logprobs[start:stop, model]  # copied as stored: no rounding twice
        writer.write(out_model, rows, block, argmax=cache.argmax[start:stop, model])
