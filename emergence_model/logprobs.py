"""Log-probabilities as numbers: the floor that stands for a probability of zero, casts between
numpy and torch, and the size of the pieces that passes over whole arrays of them take.

Log-probabilities rather than probabilities: float16 probabilities flush to zero below ~6e-8, which
erases the tail of the distribution the predictor learns from; float16 log-probabilities keep it.
torch is imported only where a tensor is made, so that reading a cache's metadata never loads it.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# A float16 probability of 0 stands for anything below half the smallest subnormal (2**-24).
# log(0) = -inf would poison every sum and mean taken over log-probabilities, so every consumer
# (the challenge's pickles, the strategies, the predictor) floors them at log(2**-24) = -16.6,
# the smallest value float16 can hold: the honest "no more than this".
PROB_FLOOR = float(np.finfo(np.float16).smallest_subnormal)
LOG_PROB_FLOOR = math.log(PROB_FLOOR)
# Full checks and copies go through a cache in float32 pieces of this size: a few MB are reused
# by the allocator and stay in CPU cache, where large temporaries cost page faults every time
# (4x slower on a 40M-value cache).
CHUNK_BYTES = 4 * 2**20


def rows_per_chunk(num_models: int, vocab_size: int, itemsize: int = 4) -> int:
    """Rows of [num_models, vocab_size] values of `itemsize` bytes in one CHUNK_BYTES piece (at
    least one)."""
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


def floor_logprobs(logprobs: torch.Tensor) -> torch.Tensor:
    """Floor log-probs at log(2**-24) (-inf from log(0) lands there too), as float32: the
    challenge's float16 probabilities are zero below it, so a log-prob cache looks like them."""
    return logprobs.float().clamp_min(LOG_PROB_FLOOR)


def probs_to_logprobs(probs: torch.Tensor) -> torch.Tensor:
    """Challenge probabilities (float16 is fine) -> floored float32 log-probs."""
    return floor_logprobs(probs.float().log())
