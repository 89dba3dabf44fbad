"""The original challenge's data format: a pickle of `(model_names, sentences, probs)`.

`probs` is float16 [N, M, V] next-token probabilities (the target model last). Import turns it
into a cache of log-probabilities, export turns a cache back into it, so the challenge's own
scripts and its held-out test file work with this package.

A pickle can run any code when loaded, so it is read by `RestrictedUnpickler`, which builds only
numpy arrays and dtypes from the standard containers and refuses every other global.
"""

from __future__ import annotations

import codecs
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emergence_model.cache import (
    LOG_PROB_FLOOR,
    PROB_FLOOR,
    CacheError,
    FeatureCache,
    as_tensor,
    create_cache,
    open_cache,
    rows_per_chunk,
)
from emergence_model.files import atomic_file
from emergence_model.suites import resolve_param_counts

try:
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

# Everything a pickle of (list[str], list[str], np.ndarray) references, under numpy 1.x
# (numpy.core) and 2.x (numpy._core) names, pickle protocols 0-5. `_codecs.encode` is how
# protocols 0-2 spell bytes.
ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): codecs.encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes, lists, tuples, strings and numbers; refuses anything else."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a challenge pickle holds only names, sentences "
                "and a numpy array, so this file is not one (and loading it could run code)"
            ) from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id: not a challenge pickle")


def load_challenge_pickle(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """Read and check `(model_names, sentences, probs)` without running code from the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = RestrictedUnpickler(f).load()
    except FileNotFoundError:
        raise CacheError(f"no pickle at {path}; check --from-pickle") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise CacheError(
            f"{path} is not a readable challenge pickle of (model_names, sentences, probs): {e}"
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
    `PROB_FLOOR`, then logged)."""
    names, sentences, probs = load_challenge_pickle(pkl)
    counts = resolve_param_counts(names, param_counts)
    num_prefixes, num_models, vocab_size = probs.shape
    writer = create_cache(
        out_dir,
        model_names=names,
        param_counts=counts,
        prefixes=sentences,
        vocab_size=vocab_size,
        tokenizer=tokenizer or names[-1],
        source={"challenge_pickle": str(Path(pkl).resolve()), "probs_dtype": str(probs.dtype)},
        seed=None,
        dtype=dtype,
        extraction={"imported": True, "log_probability_floor": LOG_PROB_FLOOR},
    )
    step = rows_per_chunk(1, vocab_size)
    for m in range(num_models):
        for start in range(0, num_prefixes, step):
            stop = min(start + step, num_prefixes)
            block = as_tensor(probs[start:stop, m]).float()  # (b, V)
            logprobs = block.clamp_min(PROB_FLOOR).log().numpy()
            # The challenge scores against the argmax of these probabilities: keep it exactly.
            argmax = block.argmax(dim=-1).numpy()
            writer.write(m, np.arange(start, stop), logprobs, argmax=argmax)
    return writer.finalize(verify=True)


def export_challenge_pickle(
    cache_dir: str | os.PathLike | FeatureCache, pkl: str | os.PathLike
) -> Path:
    """Write a cache as the challenge's `(model_names, sentences, probs float16 [N, M, V])`."""
    cache = cache_dir if isinstance(cache_dir, FeatureCache) else open_cache(cache_dir)
    probs = np.empty((cache.num_prefixes, cache.num_models, cache.vocab_size), dtype=np.float16)
    step = rows_per_chunk(cache.num_models, cache.vocab_size)
    for start in range(0, cache.num_prefixes, step):
        block = as_tensor(cache.logprobs[start : start + step])
        probs[start : start + step] = block.float().exp().half().numpy()
    pkl = Path(pkl)
    pkl.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(pkl) as f:
        # Protocol 4: arrays over 4 GB, and readable by every Python 3 the challenge runs on.
        pickle.dump((list(cache.model_names), list(cache.prefixes), probs), f, protocol=4)
    return pkl
