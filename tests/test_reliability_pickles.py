"""Hostile and broken challenge pickles: every one is refused in one line, none crashes.

Each load runs in a subprocess, so that a crash (a segmentation fault from numpy reading memory
it was pointed at, a MemoryError from a size the file claims) fails its test, not the test run.
"""

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["pythia-70m", "pythia-160m", "pythia-12b"]
F2 = np.dtype("float16")

# Loads pickles in a fresh interpreter (with its address space capped, so that allocating the
# size a file claims fails there) and prints one JSON line per file as it goes: a crash shows as
# the files without a line, from the one that crashed on.
LOADER = """
import json, resource, sys
from emergence_model.challenge import load_challenge_pickle
from emergence_model.cache import CacheError
resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, resource.RLIM_INFINITY))
for path in sys.argv[1:]:
    try:
        names, sentences, probs = load_challenge_pickle(path)
        outcome = {"ok": True, "shape": list(probs.shape), "sum": float(probs.sum())}
    except CacheError as e:
        outcome = {"ok": False, "error": str(e)}
    print(json.dumps({"path": path, **outcome}), flush=True)
"""


def load_in_subprocess(*paths: Path) -> dict[str, dict]:
    """Each path's outcome; a path the subprocess never reported (it crashed) is missing."""
    done = subprocess.run(
        [sys.executable, "-c", LOADER, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    outcomes = {}
    for line in done.stdout.splitlines():
        outcome = json.loads(line)
        outcomes[outcome.pop("path")] = outcome
    for path in paths:
        outcomes.setdefault(str(path), {"crashed": done.returncode, "stderr": done.stderr[-2000:]})
    return outcomes


def check_refused(outcome: dict, message: str) -> str:
    assert "crashed" not in outcome, f"the load crashed: {outcome}"
    assert not outcome["ok"], f"loaded a hostile pickle: {outcome}"
    assert "\n" not in outcome["error"]
    assert message.lower() in outcome["error"].lower(), outcome["error"]
    return outcome["error"]


class Reduces:
    """Pickles as `fn(*args)` (with `state` for BUILD): a hostile pickle written by pickle."""

    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        if self.state is None:
            return (self.fn, self.args)
        return (self.fn, self.args, self.state)


def write(tmp_path: Path, obj, protocol: int = 4, name: str = "x.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def challenge(probs) -> tuple:
    return (NAMES, ["a", "b", "c", "d"], probs)


def dumps(obj, protocol: int = 2) -> bytes:
    return pickle.dumps(obj, protocol=protocol)


def out_of_band(obj) -> bytes:
    buffers = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    assert buffers  # the array's bytes went out of band
    return data


def claims(opcode: bytes, size: int) -> bytes:
    return b"\x80\x05" + opcode + struct.pack("<Q", size) + b"abc"


ZEROS = np.zeros((4, 3, 5), F2)
REDUCE = (np.ndarray, (0,), b"b")  # numpy's own first step: an empty array to fill
DEPTH = 200_000
# Each hostile or broken pickle (bytes) and what its one-line refusal says. All of them load in
# one subprocess (`outcomes`), each reported as it finishes.
CASES = {
    # numpy.ndarray is never called: numpy.ndarray(shape, dtype, buffer, offset) reads any memory
    "ndarray at offset -2**40 (segfaulted)": (
        dumps(challenge(Reduces(np.ndarray, ((4, 3, 5), F2, b"\0" * 8, -(2**40))))),
        "refused a call to numpy.ndarray",
    ),
    "ndarray at offset -16 (copied heap bytes)": (
        dumps(challenge(Reduces(np.ndarray, ((4, 3, 5), F2, b"\0" * 120, -16)))),
        "refused a call to numpy.ndarray",
    ),
    "ndarray with a shape only": (
        dumps(challenge(Reduces(np.ndarray, ((4, 3, 5), F2)))),
        "refused a call",
    ),
    # _reconstruct only as numpy writes it
    "reconstruct of a real shape": (
        dumps(challenge(Reduces(_reconstruct, (np.ndarray, (4, 3, 5), b"b")))),
        "refused _reconstruct",
    ),
    "reconstruct of another typecode": (
        dumps(challenge(Reduces(_reconstruct, (np.ndarray, (0,), b"B")))),
        "refused _reconstruct",
    ),
    "reconstruct of a memmap": (
        dumps(challenge(Reduces(_reconstruct, (np.memmap, (0,), b"b")))),
        "refused to load numpy.memmap",
    ),
    # a declared shape must fit the bytes, through either path
    "state with too few bytes": (
        dumps(challenge(Reduces(_reconstruct, REDUCE, (1, (4, 3, 5), F2, False, b"\0" * 8)))),
        "claims shape (4, 3, 5) of float16 (120 bytes) but holds 8 bytes",
    ),
    "state claiming ten trillion rows": (
        dumps(challenge(Reduces(_reconstruct, REDUCE, (1, (10**13, 3, 5), F2, False, b"")))),
        "claims shape (10000000000000, 3, 5)",
    ),
    "state with a negative dimension": (
        dumps(challenge(Reduces(_reconstruct, REDUCE, (1, (4, -3, 5), F2, False, b"")))),
        "refused an array of shape",
    ),
    "frombuffer with too few bytes": (
        dumps(challenge(Reduces(_frombuffer, (b"\0" * 8, F2, (4, 3, 5), "C")))),
        "but holds 8 bytes",
    ),
    "frombuffer transposed": (
        dumps(challenge(Reduces(_frombuffer, (b"\0" * 120, F2, (4, 3, 5), "K", (2, 0, 1))))),
        "order",
    ),
    "protocol 5 out-of-band buffer": (out_of_band(challenge(ZEROS)), "out-of-band"),
    # numeric dtypes only: never objects, not even inside a structured dtype
    "object array": (dumps(challenge(np.zeros((4, 3, 5), object))), "refused dtype 'O8'"),
    "structured array with an object field": (
        dumps(challenge(np.zeros((4, 3, 5), [("p", "f2"), ("o", "O")]))),
        "refused dtype 'V10'",
    ),
    "string array": (dumps(challenge(np.zeros((4, 3, 5), "U3"))), "refused dtype 'U3'"),
    "array data as a list": (
        dumps(challenge(Reduces(_reconstruct, REDUCE, (1, (1,), F2, False, [1.0])))),
        "refused array data of type list",
    ),
    "dtype with fields": (
        dumps(Reduces(np.dtype, ("f2", False, True), (3, "<", None, ("a",), {"a": 1}, -1, -1, 0))),
        "refused a dtype state",
    ),
    # sizes the file claims are checked against what it holds before anything is allocated
    "bytes of ten terabytes": (claims(pickle.BINBYTES8, 10**13), "left"),
    "bytearray of ten terabytes": (claims(pickle.BYTEARRAY8, 10**13), "left"),
    "text of ten terabytes": (claims(pickle.BINUNICODE8, 10**13), "left"),
    "a vocabulary of 0": (dumps(challenge(np.zeros((4, 3, 0), F2))), "vocabulary of 0"),
    "no sentences": (dumps((NAMES, [], np.zeros((0, 3, 5), F2))), "sentences must be"),
    # hand-written opcodes
    "BUILD on an allowed name": (
        b"\x80\x02cnumpy\ndtype\n}X\x01\x00\x00\x00aK\x01sb.",
        "refused to change numpy.dtype",
    ),
    "NEWOBJ of numpy.ndarray": (b"\x80\x02cnumpy\nndarray\n)\x81.", "not a type object"),
    "persistent id": (b"\x80\x02P0\n.", "persistent id"),
    "os.system": (
        b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00idq\x00\x85R.",
        "refused to load os.system",
    ),
    "copyreg extension": (b"\x80\x02\x82\x01.", "extension"),
    "truncated": (b"\x80\x02]]a", "truncated"),
    # the wrong nesting
    "the tuple inside another": (dumps((challenge(ZEROS),)), "must hold a tuple"),
    "the array inside a list": (dumps((NAMES, ["a"] * 4, [ZEROS])), "probs must be a float"),
    "names nested": (dumps(([NAMES], ["a"], ZEROS[:1])), "model_names must be"),
    "sentences as one string": (dumps((NAMES, "abcd", ZEROS)), "sentences must be"),
    "a 4-d array": (dumps((NAMES, ["a"], ZEROS[:1, :, None])), "probs must be a float"),
    "an integer array": (dumps((NAMES, ["a"], np.ones((1, 3, 5), np.int32))), "probs must be"),
    "200,000 nested lists": (
        b"\x80\x02" + b"]" * DEPTH + b"a" * (DEPTH - 1) + b".",
        "must hold a tuple",
    ),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("hostile")
    paths = {}
    for i, (name, (data, _)) in enumerate(CASES.items()):
        paths[name] = root / f"{i}.pkl"
        paths[name].write_bytes(data)
    loaded = load_in_subprocess(*paths.values())
    return {name: loaded[str(path)] for name, path in paths.items()}


@pytest.mark.parametrize("case", CASES)
def test_hostile_and_broken_pickles_are_refused_in_one_line_without_a_crash(outcomes, case):
    check_refused(outcomes[case], CASES[case][1])


@pytest.mark.slow
def test_the_pickle_that_segfaulted_the_command_now_exits_2(tmp_path):
    """`cache_features.py --from-pickle` of numpy.ndarray(shape, dtype, buffer, offset=-2**40):
    one line, exit status 2, nothing written."""
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(CASES["ndarray at offset -2**40 (segfaulted)"][0])
    out = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "cache_features.py", "--from-pickle", str(pkl), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "refused a call to numpy.ndarray" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("protocol", [2, 5])
def test_big_endian_and_fortran_ordered_arrays_load_as_native(tmp_path, protocol):
    from emergence_model.challenge import load_challenge_pickle

    probs = np.full((4, 3, 5), 0.2, dtype=">f4")
    for array in (probs, np.asfortranarray(probs)):
        _, _, got = load_challenge_pickle(write(tmp_path, challenge(array), protocol))
        assert got.dtype.isnative and np.array_equal(got, probs)
