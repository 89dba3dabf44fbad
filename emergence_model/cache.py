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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emergence_model.files import atomic_file, write_json_atomic

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


def rows_fingerprint(model_names: Sequence[str], prefixes: Sequence[str]) -> str:
    """Identifies a cache's rows (its models and prefixes), so that evaluation can tell a
    checkpoint's training cache when it sees it again."""
    digest = hashlib.sha256(json.dumps([list(model_names), list(prefixes)]).encode())
    return digest.hexdigest()[:16]


def cast(array: np.ndarray, dtype) -> np.ndarray:
    """`array.astype(dtype)` through torch, whose float16 casts are ~6x faster than numpy's."""
    import torch

    out = torch.empty(array.shape, dtype=getattr(torch, np.dtype(dtype).name))
    out.copy_(as_tensor(array))
    return out.numpy()


class FeatureCache:
    """A finished cache, opened read-only; `logprobs` is a memory map, read only when used."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.meta = _read_meta(self.path)
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
        import torch

        tolerance = NORMALISATION_TOLERANCE[self.meta["dtype"]]
        step = rows_per_chunk(self.num_models, self.vocab_size)
        for start in range(0, self.num_prefixes, step):
            block = as_tensor(self.logprobs[start : start + step]).float()  # (n, M, V)
            bad = ~torch.isfinite(block).all(dim=-1).numpy()
            if bad.any():
                n, m = np.argwhere(bad)[0]
                raise CacheError(
                    f"{self.path}: non-finite log-probabilities at prefix {start + n}, model "
                    f"{self.model_names[m]!r}; delete the cache and extract it again"
                )
            error = torch.logsumexp(block, dim=-1).abs().numpy()  # (n, M)
            if (error > tolerance).any():
                n, m = np.argwhere(error > tolerance)[0]
                raise CacheError(
                    f"{self.path}: row of prefix {start + n}, model {self.model_names[m]!r} does "
                    f"not normalise (logsumexp {float(error[n, m]):.3g}); delete the cache and "
                    "extract it again"
                )
        if self.argmax.size and (self.argmax.min() < 0 or self.argmax.max() >= self.vocab_size):
            raise CacheError(
                f"{self.path}: argmax.npy holds token ids outside the vocabulary; delete the cache "
                "and extract it again"
            )


def open_cache(path: str | os.PathLike, full_check: bool = False) -> FeatureCache:
    """Open a finished cache, checking metadata, shapes and completeness; `full_check` reads all."""
    cache = FeatureCache(path)
    if full_check:
        cache.verify()
    return cache


def _read_meta(path: Path) -> dict:
    if not path.is_dir():
        raise CacheError(f"no cache at {path}: run cache_features.py with --out {path} first")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CacheError(
            f"{path} is not a feature cache (no {META_FILE}); pass the directory that "
            "cache_features.py --out wrote"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(
            f"{meta_path} is not valid JSON ({e}); delete the cache and rebuild it"
        ) from None
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise CacheError(f"{meta_path} lacks {', '.join(missing)}; delete the cache and rebuild it")
    if meta["format_version"] != FORMAT_VERSION:
        raise CacheError(
            f"{path} has cache format {meta['format_version']}, this package reads format "
            f"{FORMAT_VERSION}; rebuild the cache with this version of cache_features.py"
        )
    names, counts = meta["model_names"], meta["param_counts"]
    if not names or len(names) != len(counts):
        raise CacheError(
            f"{meta_path}: {len(names)} model names but {len(counts)} parameter counts; "
            "delete the cache and rebuild it"
        )
    if any(not isinstance(c, int) or c <= 0 for c in counts):
        raise CacheError(
            f"{meta_path}: parameter counts must be positive integers, got {counts}; fix them in "
            "meta.json or rebuild the cache"
        )
    if meta["target_name"] != names[-1]:
        raise CacheError(
            f"{meta_path}: target_name {meta['target_name']!r} is not the last model "
            f"{names[-1]!r}; delete the cache and rebuild it"
        )
    scales = meta.get("scales", counts)
    if (
        not isinstance(scales, list)
        or len(scales) != len(names)
        or any(
            isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0
            for s in scales
        )
    ):
        raise CacheError(
            f"{meta_path}: scales must be one positive number per model, got {scales!r}; "
            "delete the cache and rebuild it"
        )
    if meta.get("scale_axis", "parameters") not in SCALE_AXES:
        raise CacheError(
            f"{meta_path}: scale_axis {meta.get('scale_axis')!r} is not one of {SCALE_AXES}; "
            "delete the cache and rebuild it"
        )
    if meta["dtype"] not in CACHE_DTYPES:
        raise CacheError(f"{meta_path}: dtype {meta['dtype']!r} is not one of {CACHE_DTYPES}")
    return meta


def read_cache_header(path: str | os.PathLike) -> tuple[dict, list[str]]:
    """A cache's metadata and prefixes, finished or not; CacheError if they are missing or
    broken."""
    path = Path(path)
    meta = _read_meta(path)
    return meta, _read_prefixes(path, meta)


def _read_prefixes(path: Path, meta: dict) -> list[str]:
    prefixes_path = path / PREFIXES_FILE
    try:
        prefixes = json.loads(prefixes_path.read_text())
    except FileNotFoundError:
        raise CacheError(f"{path} lacks {PREFIXES_FILE}; delete the cache and rebuild it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(
            f"{prefixes_path} is not valid JSON ({e}); delete the cache and rebuild it"
        ) from None
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
        shape = (self.num_prefixes, len(self.model_names))
        self._logprobs = _open_array(
            path / LOGPROBS_FILE, (*shape, self.vocab_size), self.meta["dtype"], mode="r+"
        )
        self._argmax = _open_array(path / ARGMAX_FILE, shape, "int32", mode="r+")
        self.done = np.array(_open_array(path / DONE_FILE, shape[::-1], "bool"))
        self._uncommitted = False
        self._last_commit = time.monotonic()

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
        if argmax is None:
            argmax = logprobs.argmax(axis=-1)
        if logprobs.dtype != self._logprobs.dtype:
            logprobs = cast(logprobs, self._logprobs.dtype)
        self._logprobs[prefix_indices, model_index] = logprobs
        self._argmax[prefix_indices, model_index] = argmax
        self.done[model_index, prefix_indices] = True
        self._uncommitted = True
        if time.monotonic() - self._last_commit >= self.commit_seconds:
            self.commit()

    def commit(self) -> None:
        """Flush written rows to disk, then atomically mark them done in `done.npy`."""
        if not self._uncommitted:
            return
        self._logprobs.flush()
        self._argmax.flush()
        _atomic_save_npy(self.path / DONE_FILE, self.done)
        self._uncommitted = False
        self._last_commit = time.monotonic()

    def is_done(self, model_index: int, prefix_index: int) -> bool:
        return bool(self.done[model_index, prefix_index])

    def pending(self, model_index: int) -> np.ndarray:
        """Indices of the prefixes not yet written for model `model_index`, ascending."""
        return np.flatnonzero(~self.done[model_index])

    def finalize(self, verify: bool = True) -> FeatureCache:
        """Open the finished cache; `verify` reads every row back from disk and checks it."""
        self.commit()
        del self._logprobs, self._argmax
        return open_cache(self.path, full_check=verify)


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
    """Start a cache at `path`, or reopen a partly written one of the same models and prefixes.

    Returns a writer; rows already marked done are kept, so callers write only `pending(m)`.
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
    if any(not isinstance(p, (int, np.integer)) or p <= 0 for p in param_counts):
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
    if (path / META_FILE).is_file():
        _check_resumable(path, model_names, prefixes, vocab_size, dtype)
        return CacheWriter(path)
    if path.exists() and not path.is_dir():
        raise CacheError(f"{path} is a file, not a directory; pick another --out")
    if path.is_dir():
        strangers = [p.name for p in path.iterdir() if p.name not in _ours()]
        if strangers:
            raise CacheError(
                f"{path} is not empty and not a feature cache (holds {strangers[0]!r}); "
                "pick another --out"
            )
    path.mkdir(parents=True, exist_ok=True)
    n, m = len(prefixes), len(model_names)
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
    meta = {
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "model_names": model_names,
        "param_counts": [int(p) for p in param_counts],
        "scale_axis": scale_axis,
        "scales": scales,
        "target_name": model_names[-1],
        "tokenizer": str(tokenizer),
        "vocab_size": int(vocab_size),
        "num_prefixes": n,
        "source": source or {},
        "seed": seed,
        "dtype": dtype,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "extraction": {"host_python": platform.python_version(), **(extraction or {})},
    }
    write_json_atomic(path / META_FILE, meta)
    return CacheWriter(path)


def _ours() -> set[str]:
    return set(CACHE_FILES) | {name + ".tmp" for name in CACHE_FILES}


def _check_resumable(
    path: Path, model_names: list[str], prefixes: list[str], vocab_size: int, dtype: str
) -> None:
    """A rerun may continue a cache only if it would write exactly the same rows."""
    meta, old_prefixes = read_cache_header(path)
    for what, old, new in (
        ("models", meta["model_names"], model_names),
        ("vocabulary size", meta["vocab_size"], vocab_size),
        ("dtype", meta["dtype"], dtype),
        ("prefixes", old_prefixes, prefixes),
    ):
        if old != new:
            shown = (
                f"{len(old)} vs {len(new)} prefixes or different text"
                if what == "prefixes"
                else f"{old} vs {new}"
            )
            raise CacheError(
                f"{path} already holds a cache with other {what} ({shown}); pick another --out "
                "or delete it"
            )


def combine_caches(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> FeatureCache:
    """Join caches made in separate runs into one at `out`.

    Same prefixes in every cache: models are concatenated in the order of `paths` (one run per
    model or per GPU), so the target is the last model of the last cache. Same models in every
    cache: prefixes are concatenated (one run per shard of the prefixes). Anything else is refused.
    """
    if len(paths) < 2:
        raise CacheError("combine needs at least two caches")
    caches = [open_cache(p) for p in paths]
    first = caches[0]
    for cache in caches[1:]:
        if cache.vocab_size != first.vocab_size:
            raise CacheError(
                f"{cache.path} has vocabulary size {cache.vocab_size}, {first.path} has "
                f"{first.vocab_size}; only caches of one tokenizer combine"
            )
        if cache.scale_axis != first.scale_axis:
            raise CacheError(
                f"{cache.path} measures scale in {cache.scale_axis}, {first.path} in "
                f"{first.scale_axis}; only caches of one kind of ladder combine"
            )
    same_prefixes = all(c.prefixes == first.prefixes for c in caches)
    same_models = all(c.model_names == first.model_names for c in caches)
    dtype = "float32" if any(c.meta["dtype"] == "float32" for c in caches) else "float16"
    common = dict(
        vocab_size=first.vocab_size,
        tokenizer=first.meta["tokenizer"],
        seed=first.meta.get("seed"),
        dtype=dtype,
        extraction={"combined_from": [str(c.path) for c in caches]},
        scale_axis=first.scale_axis,
    )
    if same_prefixes and same_models:
        raise CacheError("the caches hold the same models and prefixes; nothing to combine")
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
    elif same_models:
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
    else:
        raise CacheError(
            "the caches share neither their prefixes nor their models; combine caches of one "
            "dataset (different models) or of one suite (different prefix shards)"
        )
    return writer.finalize(verify=True)


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
