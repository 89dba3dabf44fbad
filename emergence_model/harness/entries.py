"""Participants' functions: how one is named and loaded, how it is called, what it must return.

An entry is named `PATH.py:FUNCTION` (a file, loaded as a module of its own) or
`package.module:FUNCTION` (imported from the path, as `python -c "import package.module"`
would). It is called exactly as the challenge calls it:

    guesses = function(sentences, model_names, target_model_name, probs)

with `sentences` a list of prefixes, `model_names` the small models' names (smallest first, the
target left out), `target_model_name` the target's, and `probs` a float16 numpy array
(len(sentences), len(model_names), vocabulary) of the small models' next-token probabilities.
Each call gets its own copies, so a function that changes its inputs changes nobody else's.
Its answer must be one token id per prefix: a list, tuple or 1-D array of integers (not bools,
not floats), each in [0, vocabulary). Anything else fails the entry, in one line.

Loading an entry runs its code: that is the point, it is the participant's strategy. Only numpy
is imported here, so that the worker process (worker.py) starts light.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emergence_model.meter import measure

SPEC_FORMS = "PATH.py:FUNCTION or package.module:FUNCTION"
REASON_CHARS = 300  # a reason is one line of a leaderboard: an error's message is cut to this


class EntryError(Exception):
    """An entry that cannot be scored: it does not load, it raised, it crashed, it ran out of
    time or its answer is not a guess per prefix. The message is the one-line reason."""


@dataclass(frozen=True)
class EntrySpec:
    """Where a participant's function is: a file or a module, and the function's name."""

    text: str
    """As given on the command line: the entry's name on the leaderboard."""
    target: str
    """The file (PATH.py) or the dotted module name."""
    function: str
    is_file: bool


def parse_spec(text: str) -> EntrySpec:
    """`PATH.py:FUNCTION` or `package.module:FUNCTION` -> EntrySpec; a malformed one, or a file
    that does not exist, is a ValueError naming --strategy."""
    target, colon, function = text.rpartition(":")
    if not colon or not target or not function.isidentifier():
        raise ValueError(f"--strategy takes {SPEC_FORMS}, got {text!r}")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    if is_file and not Path(target).is_file():
        raise ValueError(f"--strategy {text}: no file {target}; check the path")
    if not is_file and not all(part.isidentifier() for part in target.split(".")):
        raise ValueError(f"--strategy {text}: {target!r} is neither a .py file nor a module name")
    return EntrySpec(text, target, function, is_file)


def load_function(spec: EntrySpec) -> Callable:
    """Import the entry's file or module (running its code) and return its function."""
    try:
        if spec.is_file:
            path = Path(spec.target).resolve()
            # A module name of its own per file: two participants' strategy.py never collide.
            name = "emergence_entry_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module  # dataclasses and pickling in the module look it up
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(spec.target)
    except (Exception, SystemExit) as e:
        traceback.print_exc()
        raise EntryError(f"cannot load {spec.target}: {describe_exception(e)}") from None
    function = getattr(module, spec.function, None)
    if not callable(function):
        raise EntryError(f"{spec.target} has no function {spec.function}")
    return function


def describe_exception(error: BaseException) -> str:
    """ "ValueError: its message", on one line, cut to a leaderboard's width."""
    message = " ".join(str(error).split())
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def check_guesses(answer, num_prefixes: int, vocab_size: int) -> np.ndarray:
    """A function's answer as (num_prefixes,) int64 token ids; EntryError says what is wrong."""
    try:
        guesses = np.asarray(answer)
    except Exception as e:  # whatever numpy cannot read (a GPU tensor, a generator's failure)
        raise EntryError(
            f"returned a {type(answer).__name__} that is not a list of token ids "
            f"({describe_exception(e)})"
        ) from None
    if guesses.dtype == object and guesses.ndim == 1:
        # Python ints too large for int64, or a list that mixes ints with other things
        if all(isinstance(g, int | np.integer) and not isinstance(g, bool) for g in guesses):
            raise EntryError(f"returned token ids outside the vocabulary of {vocab_size}")
    if guesses.ndim != 1:
        raise EntryError(
            f"returned {'a scalar' if guesses.ndim == 0 else f'an array of shape {guesses.shape}'}"
            f" for {num_prefixes} prefixes; return a list of one token id per prefix"
        )
    if len(guesses) != num_prefixes:
        raise EntryError(
            f"returned {len(guesses)} guesses for {num_prefixes} prefixes; return one token id "
            "per prefix"
        )
    if guesses.dtype.kind not in "iu":
        kinds = {"b": "bools", "f": "floats", "c": "complex numbers", "U": "strings"}
        what = kinds.get(guesses.dtype.kind, f"values of type {guesses.dtype}")
        raise EntryError(f"returned {what}, not integer token ids")
    guesses = guesses.astype(np.int64, copy=False)
    outside = (guesses < 0) | (guesses >= vocab_size)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise EntryError(
            f"returned token id {int(guesses[first])} for prefix {first} of the batch, outside "
            f"the vocabulary [0, {vocab_size})"
        )
    return guesses


def call_entry(
    function: Callable,
    sentences: Sequence[str],
    model_names: Sequence[str],
    target_model_name: str,
    probs: np.ndarray,
) -> tuple[np.ndarray, float, int | None]:
    """One call as the challenge makes it, on copies of the inputs: (its checked guesses, wall
    seconds, peak bytes it added; meter.measure). Its error or a bad answer is an EntryError."""
    args = (list(sentences), list(model_names), str(target_model_name), probs.copy())
    try:
        answer, seconds, peak = measure(function, *args)
    except (Exception, SystemExit) as e:
        traceback.print_exc()
        raise EntryError(f"raised {describe_exception(e)}") from None
    return check_guesses(answer, probs.shape[0], probs.shape[2]), seconds, peak
