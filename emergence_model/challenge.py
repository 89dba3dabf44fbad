"""The original challenge's data format: a pickle of `(model_names, sentences, probs)`.

`probs` is float16 [N, M, V] next-token probabilities (the target model last). Import turns it
into a cache of log-probabilities, export turns a cache back into it, so the challenge's own
scripts and its held-out test file work with this package.

A pickle can run any code when loaded, so it is read by `RestrictedUnpickler`, which builds only
numeric numpy arrays from the standard containers, checks every shape, dtype and buffer before
numpy sees it and every size against what the file holds, and refuses every other global. Every
probability is checked before anything is written.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emergence_model.cache import (
    CACHE_DTYPES,
    NORMALISATION_TOLERANCE,
    CacheError,
    FeatureCache,
    check_cache_destination,
    check_output_file,
    create_cache,
    open_cache,
)
from emergence_model.files import atomic_file
from emergence_model.logprobs import (
    CHUNK_BYTES,
    LOG_PROB_FLOOR,
    PROB_FLOOR,
    as_tensor,
    rows_per_chunk,
)
from emergence_model.suites import resolve_param_counts
from emergence_model.vocab import FINGERPRINT_KEY, tokenizer_fingerprint

# A pickle is a program for a small stack machine, so every object it names is replaced by a
# stand-in that checks its arguments and builds nothing until they are known to be safe: numpy
# itself never sees a shape, a dtype or a buffer from the file (numpy.ndarray(shape, dtype, buffer,
# offset) reads any memory it is pointed at). What a pickle of (list[str], list[str], np.ndarray)
# references, under numpy 1.x (numpy.core) and 2.x (numpy._core) names, protocols 0-5:
# `_reconstruct(ndarray, (0,), b"b")` and a state (shape, dtype, fortran, bytes) for protocols 0-4,
# `_frombuffer(bytes, dtype, shape, order)` for protocol 5, `dtype(code, align, copy)` with a
# state (version, byte order, ...), and `_codecs.encode(text, "latin1")` and `bytes()`, how
# protocols 0-2 spell bytes.
NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats: never objects, never structs
MAX_NDIM = 32


class _Global:
    """A name the pickle may reference: calls go to `fn`; anything else it tries is refused."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn) -> None:
        self.name, self.fn = name, fn

    def __call__(self, *args):
        return self.fn(*args)

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"refused to change {self.name}: not a challenge pickle")


class _NdarrayType:
    """numpy.ndarray as the type argument of `_reconstruct`; it is never called."""

    __slots__ = ()

    def __call__(self, *args):
        # numpy.ndarray(shape, dtype, buffer, offset) reads whatever memory it is pointed at.
        raise pickle.UnpicklingError(
            "refused a call to numpy.ndarray: a challenge pickle never makes one, and its "
            "arguments could read any memory"
        )

    def __setstate__(self, state):
        raise pickle.UnpicklingError("refused to change numpy.ndarray: not a challenge pickle")


class _Dtype:
    """A numeric dtype, made from its code ("f2") and byte order only once both are checked."""

    __slots__ = ("dtype", "built")

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype, self.built = dtype, False

    def __setstate__(self, state) -> None:
        if self.built:
            raise pickle.UnpicklingError("a dtype was set twice: not a challenge pickle")
        if (
            not isinstance(state, tuple)
            or len(state) not in (8, 9)
            or state[1] not in ("<", ">", "|", "=")
            or any(part is not None for part in state[2:5])
        ):
            raise pickle.UnpicklingError(
                f"refused a dtype state {_short(state)}: only plain numeric dtypes are read"
            )
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])
        self.built = True


class _Array:
    """An array whose shape, dtype and bytes are checked against each other before numpy sees
    them; `array` is set once they are."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray | None = None) -> None:
        self.array = array

    def __setstate__(self, state) -> None:
        if self.array is not None:
            raise pickle.UnpicklingError("an array was set twice: not a challenge pickle")
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise pickle.UnpicklingError(f"refused an array state {_short(state)}")
        shape, dtype, fortran, data = state
        if not isinstance(fortran, bool):
            raise pickle.UnpicklingError(f"refused an array order {_short(fortran)}")
        self.array = _checked_array(data, dtype, shape, "F" if fortran else "C")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _make_dtype(code, align=False, copy=True) -> _Dtype:
    if (
        not isinstance(code, str)
        or len(code) > 4
        or code[:1] not in NUMERIC_KINDS
        or not code[1:].isdigit()
        or not isinstance(align, bool | int)
        or not isinstance(copy, bool | int)
    ):
        raise pickle.UnpicklingError(
            f"refused dtype {_short(code)}: a challenge pickle holds only numeric arrays"
        )
    try:
        return _Dtype(np.dtype(code))
    except TypeError:
        raise pickle.UnpicklingError(f"refused dtype {_short(code)}: not a numeric dtype") from None


def _reconstruct(subtype, shape, typecode) -> _Array:
    """numpy's `_reconstruct(ndarray, (0,), b"b")`: an empty array that the state then fills."""
    if not isinstance(subtype, _NdarrayType) or shape != (0,) or typecode not in (b"b", "b"):
        raise pickle.UnpicklingError(
            f"refused _reconstruct{_short((subtype, shape, typecode))}: not a plain numpy array"
        )
    return _Array()


def _frombuffer(data, dtype, shape, order, axis_order=None) -> _Array:
    """numpy's protocol-5 `_frombuffer(buffer, dtype, shape, order)`."""
    if order not in ("C", "F") or axis_order is not None:
        raise pickle.UnpicklingError(f"refused an array order {_short(order)}")
    return _Array(_checked_array(data, dtype, shape, order))


def _empty_bytes(*args) -> bytes:
    """`bytes()`: how pickle protocols 0-2 write an empty bytes object (an empty array's data)."""
    if args:
        raise pickle.UnpicklingError(f"refused bytes{_short(args)}: only bytes() is read")
    return b""


def _encode(text, encoding="utf-8") -> bytes:
    """`_codecs.encode(text, "latin1")`: how pickle protocols 0-2 write bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with {_short(encoding)}")
    return text.encode("latin1")


def _checked_array(data, dtype, shape, order: str) -> np.ndarray:
    """A numpy array of `shape` over `data`, after checking that `data` is bytes of exactly
    prod(shape) items of the numeric `dtype` (no object arrays, no reads past the data)."""
    if not isinstance(dtype, _Dtype):
        raise pickle.UnpicklingError(f"refused an array of dtype {_short(dtype)}")
    if (
        not isinstance(shape, tuple)
        or len(shape) > MAX_NDIM
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape)
    ):
        raise pickle.UnpicklingError(f"refused an array of shape {_short(shape)}")
    if not isinstance(data, bytes | bytearray):
        raise pickle.UnpicklingError(
            f"refused array data of type {type(data).__name__}: only numeric arrays are read"
        )
    expected = math.prod(shape) * dtype.dtype.itemsize
    if len(data) != expected:
        raise pickle.UnpicklingError(
            f"an array claims shape {shape} of {dtype.dtype} ({expected} bytes) but holds "
            f"{len(data)} bytes"
        )
    return np.frombuffer(data, dtype=dtype.dtype).reshape(shape, order=order)


def _allowed_globals() -> dict[tuple[str, str], object]:
    """Fresh stand-ins for one load, so that nothing one pickle does reaches another's."""
    reconstruct, frombuffer = (
        _Global("_reconstruct", _reconstruct),
        _Global("_frombuffer", _frombuffer),
    )
    return {
        ("numpy", "ndarray"): _NdarrayType(),
        ("numpy", "dtype"): _Global("numpy.dtype", _make_dtype),
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("_codecs", "encode"): _Global("_codecs.encode", _encode),
        ("__builtin__", "bytes"): _Global("bytes", _empty_bytes),
        ("builtins", "bytes"): _Global("bytes", _empty_bytes),
    }


ALLOWED_GLOBALS = tuple(_allowed_globals())


class _BoundedFile:
    """A file whose reads never ask for more bytes than it has left: a pickle that claims a
    10 TB string is refused before anything is allocated for it."""

    def __init__(self, f) -> None:
        self.f = f
        self.size = os.fstat(f.fileno()).st_size

    def remaining(self) -> int:
        return self.size - self.f.tell()

    def read(self, n: int = -1) -> bytes:
        if n is not None and n > self.remaining():
            raise pickle.UnpicklingError(
                f"the pickle claims {n} bytes but the file has {self.remaining()} left: it is "
                "truncated or not a challenge pickle"
            )
        return self.f.read(n)

    def readline(self) -> bytes:
        return self.f.readline()


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickles numpy arrays of numbers, lists, tuples, strings and numbers; refuses anything
    else. numpy objects are checked stand-ins (see `_allowed_globals`) until the load is over.

    Python's own unpickler, not the C one: the C unpickler allocates whatever size the file
    claims for a string before reading it, this one reads through `_BoundedFile`."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, f) -> None:
        self._bounded = _BoundedFile(f)
        super().__init__(self._bounded)
        self._globals = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._globals[(module, name)]
        except (KeyError, TypeError):
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a challenge pickle holds only names, sentences "
                "and a numpy array, so this file is not one (and loading it could run code)"
            ) from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id: not a challenge pickle")

    def _load_bytearray8(self) -> None:
        # The base class allocates the claimed size first: check it against what is left.
        (size,) = struct.unpack("<Q", self.read(8))
        frame = self._unframer.current_frame
        left = self._bounded.remaining()
        if frame is not None:
            left += len(frame.getbuffer()) - frame.tell()
        if size > left:
            raise pickle.UnpicklingError(
                f"the pickle claims a {size}-byte array but the file has {left} bytes left"
            )
        data = bytearray(size)
        self.readinto(data)
        self.append(data)

    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8


def _materialize(value):
    """The loaded object with its numpy stand-ins replaced by real arrays (top level and the
    tuple's items only: that is where a challenge pickle keeps its array)."""
    if isinstance(value, _Array):
        if value.array is None:
            raise pickle.UnpicklingError("an array was never given its data")
        array = value.array
        return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))
    if isinstance(value, tuple | list) and len(value) == 3:
        return type(value)(_materialize(v) if isinstance(v, _Array) else v for v in value)
    return value


def check_probabilities(path: Path, probs: np.ndarray, tolerance: float | None = None) -> None:
    """Every probability finite and in [0, 1] and, with a `tolerance`, every row normalised as a
    cache's full check counts it (|log of the floored sum| at most `tolerance`).

    One pass of cheap reductions in the pickle's own dtype (about 0.5 s for 70M float16 values
    on one core); a chunk that fails is searched again for the first bad row, to name it."""
    import torch

    num_prefixes, num_models, vocab_size = probs.shape
    step = rows_per_chunk(num_models, vocab_size)
    for start in range(0, num_prefixes, step):
        block = as_tensor(probs[start : start + step])  # (n, M, V)
        low, high = torch.aminmax(block)  # NaN in, NaN out: fails both comparisons below
        if not (float(low) >= 0 and float(high) <= 1):
            _name_bad_row(path, block.float(), start)
        if tolerance is None:
            continue
        # as the import floors zeros at PROB_FLOOR before taking logs
        zeros = (block == 0).sum(dim=-1)
        total = torch.log(block.sum(dim=-1, dtype=torch.float32) + zeros * PROB_FLOOR)  # (n, M)
        bad = total.abs() > tolerance
        if bad.any():
            n, m = (int(i) for i in torch.nonzero(bad)[0])
            raise CacheError(
                f"{path}: probs[{start + n}, {m}] sums to {float(total[n, m].exp()):.4g}, not 1; "
                "fix the pickle and import it again"
            )


def _name_bad_row(path: Path, block, start: int) -> None:
    """Raise for the first row of `block` (n, M, V) that holds NaN, infinite, negative or
    above-one values."""
    import torch

    problems = (
        (~torch.isfinite(block), "holds NaN or infinite values"),
        (block < 0, "holds negative probabilities"),
        (block > 1, "holds probabilities above 1"),
    )
    for bad, what in problems:
        rows = bad.any(dim=-1)  # (n, M)
        if rows.any():
            n, m = (int(i) for i in torch.nonzero(rows)[0])
            raise CacheError(
                f"{path}: probs[{start + n}, {m}] (sentence {start + n}, model {m}) {what}; "
                "fix the pickle and import it again"
            )


def load_challenge_pickle(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """Read and check `(model_names, sentences, probs)` without running code from the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _materialize(RestrictedUnpickler(f).load())
    except FileNotFoundError:
        raise CacheError(f"no pickle at {path}; check --from-pickle") from None
    except IsADirectoryError:
        raise CacheError(f"{path} is a directory, not a pickle; check --from-pickle") from None
    except PermissionError as e:
        raise CacheError(f"cannot read {path} ({e.strerror}); check its permissions") from None
    except Exception as e:  # anything a hostile or broken file makes the unpickler raise
        message = " ".join(str(e).split()) or type(e).__name__
        raise CacheError(
            f"{path} is not a readable challenge pickle of (model_names, sentences, probs): "
            f"{message}"
        ) from None
    if not isinstance(data, tuple | list) or len(data) != 3:
        raise CacheError(f"{path} must hold a tuple (model_names, sentences, probs)")
    names, sentences, probs = data
    if not _is_str_list(names) or not names:
        raise CacheError(f"{path}: model_names must be a non-empty list of strings")
    if not _is_str_list(sentences) or not sentences:
        raise CacheError(f"{path}: sentences must be a non-empty list of strings")
    if not isinstance(probs, np.ndarray) or probs.dtype.kind != "f" or probs.ndim != 3:
        raise CacheError(f"{path}: probs must be a float numpy array [sentences, models, vocab]")
    if probs.shape[:2] != (len(sentences), len(names)):
        raise CacheError(
            f"{path}: probs has shape {probs.shape} for {len(sentences)} sentences and "
            f"{len(names)} models"
        )
    if probs.shape[2] < 1:
        raise CacheError(f"{path}: probs has a vocabulary of 0 tokens; it holds no distribution")
    check_probabilities(path, probs)
    return list(names), list(sentences), probs


def _is_str_list(value) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def import_challenge_pickle(
    pkl: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    param_counts: Sequence[int] | None = None,
    dtype: str = "float16",
    tokenizer: str | None = None,
) -> FeatureCache:
    """Turn a challenge pickle into a cache at `out_dir` (probabilities floored at
    `PROB_FLOOR`, then logged). Every probability is checked before anything is written."""
    if dtype not in CACHE_DTYPES:
        raise CacheError(f"--cache-dtype {dtype!r} is not one of {', '.join(CACHE_DTYPES)}")
    check_cache_destination(out_dir)
    loaded = load_challenge_pickle(pkl)
    return challenge_cache(
        pkl, loaded, out_dir, param_counts=param_counts, dtype=dtype, tokenizer=tokenizer
    )


def challenge_cache(
    pkl: str | os.PathLike,
    loaded: tuple[list[str], list[str], np.ndarray],
    out_dir: str | os.PathLike,
    *,
    param_counts: Sequence[int] | None = None,
    dtype: str = "float16",
    tokenizer: str | None = None,
) -> FeatureCache:
    """`import_challenge_pickle` of a pickle already read (`load_challenge_pickle(pkl)`), so that
    a caller that keeps its numbers scores the very ones it imported."""
    names, sentences, probs = loaded
    counts = resolve_param_counts(names, param_counts)
    check_probabilities(Path(pkl), probs, NORMALISATION_TOLERANCE[dtype])
    num_prefixes, num_models, vocab_size = probs.shape
    with create_cache(
        out_dir,
        model_names=names,
        param_counts=counts,
        prefixes=sentences,
        vocab_size=vocab_size,
        tokenizer=tokenizer or names[-1],
        source={"challenge_pickle": str(Path(pkl).resolve()), "probs_dtype": str(probs.dtype)},
        seed=None,
        dtype=dtype,
        # The digest of the probabilities: a rerun with a corrected pickle of the same sentences
        # must not resume (and keep) the old numbers.
        extraction={
            "imported": True,
            "log_probability_floor": LOG_PROB_FLOOR,
            "probs_sha256": _digest(probs),
            **named_tokenizer_fingerprint(tokenizer),
        },
    ) as writer:
        step = rows_per_chunk(1, vocab_size)
        for m in range(num_models):
            for start in range(0, num_prefixes, step):
                stop = min(start + step, num_prefixes)
                block = as_tensor(probs[start:stop, m]).float()  # (b, V)
                logprobs = block.clamp_min(PROB_FLOOR).log().numpy()
                # The challenge scores against the argmax of these probabilities: keep it.
                argmax = block.argmax(dim=-1).numpy()
                writer.write(m, np.arange(start, stop), logprobs, argmax=argmax)
        return writer.finalize(verify=True)


def named_tokenizer_fingerprint(tokenizer: str | None) -> dict:
    """{FINGERPRINT_KEY: its fingerprint} of the tokenizer --tokenizer names where it loads (so
    that a network trained on the suite's own caches is matched to it by vocabulary, not by a
    name the pickle does not carry); {} where none is named or it does not load (offline, no
    copy on disk: the imported cache is then compared by name and size)."""
    if tokenizer is None:
        return {}
    from emergence_model.lm import load_tokenizer_spec

    try:
        return {FINGERPRINT_KEY: tokenizer_fingerprint(load_tokenizer_spec(tokenizer))}
    except (OSError, ValueError):  # ModelLoadError is a ValueError
        return {}


def _digest(array: np.ndarray) -> str:
    digest = hashlib.sha256(str((array.shape, array.dtype.str)).encode())
    step = max(1, CHUNK_BYTES // max(1, array[:1].nbytes))
    for start in range(0, len(array), step):
        digest.update(np.ascontiguousarray(array[start : start + step]).data)
    return digest.hexdigest()


def export_challenge_pickle(
    cache_dir: str | os.PathLike | FeatureCache, pkl: str | os.PathLike
) -> Path:
    """Write a cache as the challenge's `(model_names, sentences, probs float16 [N, M, V])`."""
    cache = cache_dir if isinstance(cache_dir, FeatureCache) else open_cache(cache_dir)
    pkl = Path(pkl)
    check_output_file(pkl, "--out")
    probs = np.empty((cache.num_prefixes, cache.num_models, cache.vocab_size), dtype=np.float16)
    step = rows_per_chunk(cache.num_models, cache.vocab_size)
    for start in range(0, cache.num_prefixes, step):
        block = as_tensor(cache.logprobs[start : start + step])
        probs[start : start + step] = block.float().exp().half().numpy()
    pkl.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(pkl) as f:
        # Protocol 4: arrays over 4 GB, and readable by every Python 3 the challenge runs on.
        pickle.dump((list(cache.model_names), list(cache.prefixes), probs), f, protocol=4)
    return pkl
