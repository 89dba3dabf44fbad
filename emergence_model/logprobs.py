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


# How far a row of probabilities may sum from 1, as |log(total)|: a float16 row is off by about
# its rounding (2**-11 relative, the same sign for every value in the worst case) plus the mass
# below float16's smallest subnormal that it flushes to zero (2**-25 a token at most); a cache's
# float16 rows are held to the same (cache.NORMALISATION_TOLERANCE), and so are a challenge
# pickle's rows when imported.
ROW_SUM_TOLERANCE = 0.05


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


def check_rows(x: torch.Tensor, *, log: bool, name: str) -> None:
    """Refuse, in one line naming the first bad row `name[n, m]`, next-token distributions
    (N, M, V) that a strategy or the predictor cannot read. Probabilities (`log=False`): NaN or
    infinite values, negative ones, ones above 1, rows that are all zero or whose total is off 1
    by more than `ROW_SUM_TOLERANCE` (|log of it|). Log-probabilities: NaN, +inf, values above
    `ROW_SUM_TOLERANCE` (probabilities above 1), rows of -inf alone (all zero); they need not be
    normalised, as log-scores of an unnormalised guide are not. Read in chunks of rows, so that
    no copy of the whole input is made; the input is never changed."""
    import torch

    if x.ndim != 3:
        raise ValueError(f"expected {name} of shape (sentences, models, vocab), got {x.shape}")
    if x.is_complex():
        raise ValueError(f"{name} must be real numbers, got {x.dtype}")
    n, m, v = x.shape
    if not n * m * v:
        return
    step = rows_per_chunk(m, v)
    for start in range(0, n, step):
        block = x[start : start + step]
        if not block.is_floating_point():
            block = block.float()  # integer or boolean one-hot rows
        problem = _log_rows_problem(block) if log else _prob_rows_problem(block)
        if problem is not None:
            bad, what = problem
            i, j = (int(k) for k in torch.nonzero(bad)[0])
            kind = "log-probabilities" if log else "probabilities"
            raise ValueError(
                f"{name}[{start + i}, {j}] (sentence {start + i}, model {j}) {what}; pass each "
                f"model's next-token {kind}"
            )


def _prob_rows_problem(block: torch.Tensor) -> tuple[torch.Tensor, str] | None:
    """(bad rows (n, M), what is wrong with them) of a chunk of probabilities, or None."""
    import torch

    low, high = torch.aminmax(block)  # NaN in, NaN out: fails both comparisons below
    if not (float(low) >= 0 and float(high) <= 1):
        for bad, what in (
            (~torch.isfinite(block), "holds NaN or infinite values"),
            (block < 0, "holds negative probabilities"),
            (block > 1, "holds probabilities above 1"),
        ):
            if bad.any():
                return bad.any(dim=-1), what
    total = block.sum(dim=-1, dtype=torch.float32)  # (n, M)
    if bool((total <= 0).any()):
        return total <= 0, "is all zero, not a distribution"
    off = total.log().abs() > ROW_SUM_TOLERANCE
    if bool(off.any()):
        i, j = (int(k) for k in torch.nonzero(off)[0])
        return off, f"sums to {float(total[i, j]):.4g}, not 1 (within {ROW_SUM_TOLERANCE:g})"
    return None


def _log_rows_problem(block: torch.Tensor) -> tuple[torch.Tensor, str] | None:
    """(bad rows (n, M), what is wrong with them) of a chunk of log-probabilities, or None."""
    import torch

    top = block.amax(dim=-1)  # (n, M); NaN in, NaN out
    if bool(torch.isnan(top).any()):
        return torch.isnan(block).any(dim=-1), "holds NaN"
    if bool((top > ROW_SUM_TOLERANCE).any()):
        return top > ROW_SUM_TOLERANCE, "holds values above 0 (probabilities above 1)"
    if bool((top == -math.inf).any()):
        return top == -math.inf, "is all -inf (every probability zero), not a distribution"
    return None
