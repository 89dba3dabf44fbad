"""What a participant's function sees of a scoring set, and the scoring set itself.

A scoring set is a cache directory or one of the challenge's pickles. The evaluation scores
every strategy on a cache (a pickle is imported into a temporary one, as `cache_features.py
--from-pickle` would import it, once the functions have run); a function is given only
`ChallengeInputs`: the prefixes, the small models' names, the target's name and the small
models' probabilities as float16, the challenge's dtype. From a pickle they are the pickle's own
float16 numbers; from a cache, the exponent of its log-probabilities. The target's column is
never in them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emergence_model.cache import NORMALISATION_TOLERANCE, CacheError, FeatureCache, open_cache
from emergence_model.challenge import challenge_cache, check_probabilities, load_challenge_pickle
from emergence_model.strategies import model_basename
from emergence_model.suites import param_count_for, resolve_param_counts
from emergence_model.vocab import TokenizerId

# How a pickle is imported for scoring: as `cache_features.py --from-pickle` imports it.
PICKLE_CACHE_DTYPE = "float16"


@dataclass(frozen=True)
class ChallengeInputs:
    """A scoring set as a function sees it: everything but the target's column."""

    sentences: list[str]
    model_names: list[str]
    """The small models, smallest first; the target is not among them."""
    target_name: str
    tokenizer: TokenizerId
    """What is known of the tokenizer (a pickle records only its vocabulary's size)."""
    small_probs: Callable[[np.ndarray], np.ndarray]
    """Rows -> the small models' probabilities of those rows, float16 (n, M - 1, V)."""

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def batch(self, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
        """The prefixes of `rows` and their small models' float16 probabilities."""
        return [self.sentences[i] for i in rows.tolist()], self.small_probs(rows)


def cache_inputs(cache: FeatureCache) -> ChallengeInputs:
    """A cache's prefixes and small models' probabilities (the exponent of its log-probs)."""

    def small_probs(rows: np.ndarray) -> np.ndarray:
        logprobs = cache.rows(rows)[:, :-1]  # (n, M - 1, V): the target's column left here
        return np.exp(logprobs).astype(np.float16)

    return ChallengeInputs(
        list(cache.prefixes),
        list(cache.model_names[:-1]),
        cache.target_name,
        TokenizerId.of_cache(cache.meta),
        small_probs,
    )


def pickle_inputs(names: Sequence[str], sentences: Sequence[str], probs: np.ndarray):
    """A challenge pickle's prefixes and small models' own probabilities, as float16."""
    small = probs[:, :-1]  # a view: the target's column is never copied out

    def small_probs(rows: np.ndarray) -> np.ndarray:
        return np.asarray(small[rows], dtype=np.float16)

    return ChallengeInputs(
        list(sentences), list(names[:-1]), names[-1], TokenizerId(None, probs.shape[2]), small_probs
    )


def pickle_param_counts(
    names: Sequence[str], given: Sequence[int] | None, known: dict[str, int]
) -> list[int]:
    """Parameter counts of a pickle's models: `given` (--param-counts), else Pythia's by name,
    else `known` (model basename -> count, e.g. from a checkpoint of the same models)."""
    if given is None and known:
        counts = [param_count_for(n) or known.get(model_basename(n)) for n in names]
        given = None if None in counts else counts
    return resolve_param_counts(names, given)


class ScoringSet:
    """A cache or a challenge pickle to score: `inputs`, what functions see of it, at once, and
    `cache()`, what every strategy is scored on. A pickle becomes a cache only when `cache()`
    is first called, so that functions can run before the target's column is written anywhere."""

    def __init__(self, inputs: ChallengeInputs, make_cache: Callable[[], FeatureCache]) -> None:
        self.inputs = inputs
        self._make_cache = make_cache
        self._cache: FeatureCache | None = None

    def cache(self) -> FeatureCache:
        if self._cache is None:
            self._cache = self._make_cache()
        return self._cache


@contextmanager
def scoring_set(
    path: str | os.PathLike,
    *,
    param_counts: Sequence[int] | None = None,
    known_counts: dict[str, int] | None = None,
) -> Iterator[ScoringSet]:
    """A cache directory, or a challenge pickle (read by the restricted unpickler, every number
    checked now; imported into a temporary cache, removed on exit, when its cache is asked for).
    A pickle's models need parameter counts (`pickle_param_counts`)."""
    path = Path(path)
    if path.is_dir():
        cache = open_cache(path)
        yield ScoringSet(cache_inputs(cache), lambda: cache)
        return
    if not path.exists():
        raise CacheError(f"no cache directory or challenge pickle at {path}; check the path")
    loaded = load_challenge_pickle(path)
    names, sentences, probs = loaded
    counts = pickle_param_counts(names, param_counts, known_counts or {})
    # the import's own check, now rather than after the functions have run
    check_probabilities(path, probs, NORMALISATION_TOLERANCE[PICKLE_CACHE_DTYPE])
    with tempfile.TemporaryDirectory(prefix="emergence-pickle-") as tmp:

        def make_cache() -> FeatureCache:
            out = Path(tmp) / "cache"
            return challenge_cache(path, loaded, out, param_counts=counts, dtype=PICKLE_CACHE_DTYPE)

        yield ScoringSet(pickle_inputs(names, sentences, probs), make_cache)
