"""Reading a finished cache: `open_cache` and the `FeatureCache` it returns, whose rows stay on
disk (a memory map) until they are used."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emergence_model.cache.format import (
    ARGMAX_FILE,
    CHECK_PENDING,
    DIGESTED_FILES,
    DONE_FILE,
    LOGPROBS_FILE,
    NORMALISATION_TOLERANCE,
    CacheError,
    check_complete,
    check_not_failed,
    check_status,
    open_array,
    read_meta,
    read_prefixes,
)
from emergence_model.files import file_sha256
from emergence_model.folds import rows_fingerprint
from emergence_model.logprobs import as_tensor, rows_per_chunk


class FeatureCache:
    """A finished cache, opened read-only; `logprobs` is a memory map, read only when used."""

    def __init__(self, path: str | os.PathLike, *, finished: bool = True) -> None:
        """`finished=False` opens a complete cache whose full check has not been recorded yet
        (for the writer that runs it); every other reader needs a finished one."""
        self.path = Path(path)
        self.meta = read_meta(self.path)
        check_not_failed(self.path, self.meta)
        self.prefixes = read_prefixes(self.path, self.meta)
        self.model_names: list[str] = list(self.meta["model_names"])
        self.param_counts: list[int] = [int(p) for p in self.meta["param_counts"]]
        # Caches from before the scale axis are size ladders: their scales are parameter counts.
        self.scale_axis: str = self.meta.get("scale_axis", "parameters")
        self.scales: list[float] = [float(s) for s in self.meta.get("scales", self.param_counts)]
        self.target_name: str = self.meta["target_name"]
        self.vocab_size: int = int(self.meta["vocab_size"])
        self.num_prefixes = len(self.prefixes)
        self.num_models = len(self.model_names)
        self.logprobs: np.ndarray = open_array(
            self.path / LOGPROBS_FILE,
            (self.num_prefixes, self.num_models, self.vocab_size),
            self.meta["dtype"],
        )
        self._plain = np.asarray(self.logprobs)
        self.argmax: np.ndarray = np.array(
            open_array(self.path / ARGMAX_FILE, (self.num_prefixes, self.num_models), "int32")
        )
        self.target_argmax: np.ndarray = self.argmax[:, -1].astype(np.int64)
        done = open_array(self.path / DONE_FILE, (self.num_models, self.num_prefixes), "bool")
        check_complete(self.path, done, self.model_names)
        if finished and check_status(self.meta) == CHECK_PENDING:
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

    def verify(self) -> str:
        """Full check: every row (`problem`, which names a bad one), then the recorded digests
        (where the version that finished the cache recorded them: a change that leaves every
        row plausible); CacheError says what is wrong. Returns what was checked of the digests,
        for a report line."""
        problem = self.problem()
        if problem is not None:
            raise CacheError(f"{self.path}: {problem}; delete the cache and extract it again")
        digests = self.check_digests()
        return "digests match" if digests else "no digests recorded (made by an older version)"

    def check_digests(self) -> bool:
        """Whether the files are those the cache was finished with: False where no digests were
        recorded (a cache finished by an older version); CacheError naming a file whose sha256
        is not the one recorded (changed on disk since)."""
        recorded = self.meta.get("digests")
        if not recorded:
            return False
        for name, expected in recorded.items():
            if file_sha256(self.path / name) != expected:
                raise CacheError(
                    f"{self.path / name} is not the file its cache was finished with (its sha256 "
                    "differs from the one in meta.json: changed on disk since); delete the cache "
                    "and extract it again"
                )
        return True

    def digests(self) -> dict[str, str]:
        """The sha256 of each of `DIGESTED_FILES` as they are on disk now (what a finished
        cache records in meta.json)."""
        return {name: file_sha256(self.path / name) for name in DIGESTED_FILES}

    def problem(self) -> str | None:
        """The first thing the full check finds wrong (a top token outside the vocabulary, a
        non-finite value, a row that does not normalise, a stored top token that is not its
        row's), or None."""
        import torch

        if self.argmax.size and (self.argmax.min() < 0 or self.argmax.max() >= self.vocab_size):
            return "argmax.npy holds token ids outside the vocabulary"
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
            # Each label was taken before rounding to the cache dtype, which keeps the order of
            # values: the stored row's maximum is at its label (ties included).
            labels = torch.from_numpy(self.argmax[start : start + step].astype(np.int64))
            at_label = block.gather(-1, labels[..., None])[..., 0]  # (n, M)
            wrong = (at_label < block.amax(dim=-1)).numpy()
            if wrong.any():
                n, m = np.argwhere(wrong)[0]
                return (
                    f"argmax.npy's top token of prefix {start + n}, model "
                    f"{self.model_names[m]!r} ({int(labels[n, m])}) is not its row's top token"
                )
        return None


def open_cache(path: str | os.PathLike, full_check: bool = False) -> FeatureCache:
    """Open a finished cache, checking metadata, shapes and completeness; `full_check` reads all."""
    cache = FeatureCache(path)
    if full_check:
        cache.verify()
    return cache
