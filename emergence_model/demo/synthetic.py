"""The named synthetic share of the emergent ladder's batches: windows that teach copying.

The demo's docstrings hardly repeat themselves, so its ladder barely learns to copy from its
context. Two kinds of synthetic windows, made of a small alphabet of the vocabulary's single-token
words, are mixed into each step's batch (`DemoConfig.copy_share`, `alternation_share`):

- copying windows: one span of L distinct alphabet words written again and again through a real
  text window, each copy after its own random gap of real text. The distance between two copies
  varies within a window and between windows, so predicting a copy from its position cannot work;
  only looking up where the current word occurred before and copying what followed it
  (induction, Olsson et al. 2022) can, and that needs two layers.
- alternation windows: runs "x y x y ..." of random alphabet pairs. Each token is the one two
  before it, which a head that reads the previous token pays off on: they seed the previous-token
  head that an induction head composes with. Without them the two-layer target's copying rose
  smoothly and never became exact.

Every window is a function of (seed, step) alone, so every model of the ladder reads the same
tokens at the same step and a resumed build reads what an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

ALPHABET_SEED = 1
"""Seed of the alphabet's draw from the single-token words: part of the data, not of --seed, so
that the replica and every rung see the same alphabet."""
ALTERNATION_RUN = (6, 16)
"""Tokens in one run of an alternating pair."""
# Streams of the generator per kind of window: seeds [seed, stream, step].
COPY_STREAM, ALTERNATION_STREAM = 17, 29


def single_token_words(tokenizer) -> np.ndarray:
    """Ids, sorted, of the vocabulary's single-token words: a space and 3 or more lowercase
    letters, whose decoded text encodes back to that one token, so that a run of them written as
    text tokenizes as the run."""
    ids = []
    for token, i in tokenizer.get_vocab().items():
        word = token[1:]
        if token.startswith("Ġ") and len(word) >= 3 and word.isalpha() and word.islower():
            if tokenizer(tokenizer.decode([i]), add_special_tokens=False)["input_ids"] == [i]:
                ids.append(i)
    return np.array(sorted(ids), dtype=np.int64)


def copy_alphabet(tokenizer, size: int) -> np.ndarray:
    """`size` single-token words (ids, sorted), drawn with `ALPHABET_SEED`; ValueError if the
    vocabulary has fewer."""
    words = single_token_words(tokenizer)
    if len(words) < size:
        raise ValueError(
            f"the tokenizer has {len(words)} single-token words, fewer than --copy-alphabet "
            f"{size}; lower it"
        )
    return np.sort(np.random.default_rng(ALPHABET_SEED).choice(words, size, replace=False))


def copying_window(
    rng: np.random.Generator,
    filler: np.ndarray,
    alphabet: np.ndarray,
    span: tuple[int, int],
    gap_max: int,
) -> tuple[np.ndarray, list[int]]:
    """A window as long as `filler`: gap, span, gap, span, ... until it is full, each gap the
    next 0..`gap_max` tokens of `filler` (in order), the span L distinct alphabet words (L uniform
    in `span`); the last copy may be cut. Returns the window and the start of each copy."""
    total = len(filler)
    length = int(rng.integers(span[0], span[1] + 1))
    words = rng.choice(alphabet, size=length, replace=False)
    out = np.empty(total, dtype=np.int64)
    starts = []
    t = f = 0
    while t < total:
        gap = min(int(rng.integers(0, gap_max + 1)), total - t)
        out[t : t + gap] = filler[f : f + gap]
        t, f = t + gap, f + gap
        n = min(length, total - t)
        if n:
            starts.append(t)
        out[t : t + n] = words[:n]
        t += n
    return out, starts


def copying_batch(
    seed: int,
    step: int,
    rows: int,
    real: np.ndarray,
    alphabet: np.ndarray,
    span: tuple[int, int],
    gap_max: int,
) -> np.ndarray:
    """`rows` copying windows [rows, T+1] of step `step`, each through a real window of `real`
    [W, T+1] drawn at random."""
    rng = np.random.default_rng([seed, COPY_STREAM, step])
    out = np.empty((rows, real.shape[1]), dtype=np.int64)
    for r in range(rows):
        filler = real[int(rng.integers(0, len(real)))]
        out[r] = copying_window(rng, filler, alphabet, span, gap_max)[0]
    return out


def alternation_batch(
    seed: int, step: int, rows: int, length: int, alphabet: np.ndarray
) -> np.ndarray:
    """`rows` windows [rows, length] of step `step`, each runs "x y x y ..." of random pairs of
    distinct alphabet words (run lengths uniform in `ALTERNATION_RUN`)."""
    rng = np.random.default_rng([seed, ALTERNATION_STREAM, step])
    out = np.empty((rows, length), dtype=np.int64)
    low, high = ALTERNATION_RUN
    for r in range(rows):
        runs, filled = [], 0
        while filled < length:
            pair = rng.choice(alphabet, 2, replace=False)
            run = np.resize(pair, int(rng.integers(low, high + 1)))
            runs.append(run)
            filled += len(run)
        out[r] = np.concatenate(runs)[:length]
    return out
