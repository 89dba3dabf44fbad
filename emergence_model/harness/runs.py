"""Running participants' functions over a scoring set, batch by batch, as the challenge does.

`run_entries` calls every function on the rows to score, `batch` prefixes at a time, and
returns each as `RecordedGuesses` (its checked guesses and what its calls cost) or, for one
that fails, a one-line reason. In this process (`isolate=False`: a participant trying their own
function) all functions see each batch in turn, and an error or a bad answer fails that entry
only; a crash or a hang takes the run with it. Isolated (`evaluate --test`, a host's
leaderboard), each function runs in a process of its own (worker.py), one after another, fed
its batches through a pipe and killed, with its process group, `timeout` seconds after it
started: a crash, a hang or a bad answer fails that entry only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import emergence_model
from emergence_model.evaluate import RecordedGuesses
from emergence_model.harness.entries import (
    EntryError,
    EntrySpec,
    call_entry,
    check_guesses,
    load_function,
    parse_spec,
)
from emergence_model.harness.inputs import ChallengeInputs
from emergence_model.harness.worker import ChannelClosed, read_json, write_frame, write_json
from emergence_model.meter import Cost

CHALLENGE_BATCH = 100
DEFAULT_TIMEOUT = 600.0
# A worker's answer to a batch: JSON of at most ~20 bytes a guess, and a little more.
ANSWER_BYTES_PER_GUESS, ANSWER_BYTES = 32, 4096
LOADING = "while loading"


def batches(rows: np.ndarray, batch: int) -> list[np.ndarray]:
    """`rows` cut into consecutive batches of `batch` (the last one may be shorter)."""
    return [rows[start : start + batch] for start in range(0, len(rows), batch)]


def parse_entries(texts: Sequence[str]) -> list[EntrySpec]:
    """Every --strategy parsed; a malformed one or one given twice is a ValueError."""
    specs = [parse_spec(t) for t in texts]
    seen = set()
    for spec in specs:
        if spec.text in seen:
            raise ValueError(f"--strategy {spec.text} is given twice; give each entry once")
        seen.add(spec.text)
    return specs


def run_entries(
    specs: Sequence[EntrySpec],
    inputs: ChallengeInputs,
    rows: np.ndarray,
    *,
    batch: int = CHALLENGE_BATCH,
    isolate: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    threads: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, RecordedGuesses], dict[str, str]]:
    """Run every entry on `rows` of `inputs`: ({name: its recorded guesses}, {name: why it
    failed}), names as given on the command line."""
    parts = batches(np.asarray(rows, dtype=np.int64), batch)
    if isolate:
        outcomes = {}
        for spec in specs:
            try:
                outcomes[spec.text] = run_isolated(spec, inputs, parts, timeout, threads)
            except EntryError as e:
                outcomes[spec.text] = str(e)
            _say(spec.text, outcomes[spec.text], progress)
    else:
        outcomes = run_in_process(specs, inputs, parts)
        for name, outcome in outcomes.items():
            _say(name, outcome, progress)
    recorded = {n: o for n, o in outcomes.items() if isinstance(o, RecordedGuesses)}
    failed = {n: o for n, o in outcomes.items() if isinstance(o, str)}
    return recorded, failed


def _say(name: str, outcome: RecordedGuesses | str, progress: bool) -> None:
    if isinstance(outcome, str):
        print(f"{name}: failed: {outcome}", file=sys.stderr)
    elif progress and outcome.cost.rows:
        cost = outcome.cost.summary()
        print(
            f"{name}: {cost['calls']} batches, {cost['ms_per_100']:.1f} ms per 100 prefixes",
            file=sys.stderr,
        )


def _batch_name(k: int, parts: Sequence[np.ndarray]) -> str:
    return f"batch {k + 1} of {len(parts)}"


def run_in_process(
    specs: Sequence[EntrySpec], inputs: ChallengeInputs, parts: Sequence[np.ndarray]
) -> dict[str, RecordedGuesses | str]:
    """Every entry in this process: each batch is read once and given to every function that
    has not failed, a copy each."""
    outcomes: dict[str, RecordedGuesses | str] = {}
    functions = {}
    for spec in specs:
        try:
            functions[spec.text] = load_function(spec)
        except EntryError as e:
            outcomes[spec.text] = str(e)
    guesses = {name: np.full(len(inputs), -1, dtype=np.int64) for name in functions}
    costs = {name: Cost() for name in functions}
    for k, rows in enumerate(parts):
        if not functions:
            break
        sentences, probs = inputs.batch(rows)
        for name, function in list(functions.items()):
            try:
                got, seconds, peak = call_entry(
                    function, sentences, inputs.model_names, inputs.target_name, probs
                )
            except EntryError as e:
                outcomes[name] = f"{e} ({_batch_name(k, parts)})"
                del functions[name]
                continue
            guesses[name][rows] = got
            costs[name].add(seconds, len(rows), peak)
    for name in functions:
        outcomes[name] = RecordedGuesses(name, guesses[name], costs[name])
    return {spec.text: outcomes[spec.text] for spec in specs}


def run_isolated(
    spec: EntrySpec,
    inputs: ChallengeInputs,
    parts: Sequence[np.ndarray],
    timeout: float = DEFAULT_TIMEOUT,
    threads: int | None = None,
) -> RecordedGuesses:
    """One entry in a worker process of its own (worker.py); EntryError with the reason if it
    fails to load, raises, answers badly, crashes or is still running `timeout` seconds after
    it started (then it and its process group are killed)."""
    worker = _start_worker(threads)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _kill_group(worker)

    watchdog = threading.Timer(timeout, expire)
    watchdog.start()
    stage = LOADING
    guesses = np.full(len(inputs), -1, dtype=np.int64)
    cost = Cost()
    try:
        hello = {
            "spec": spec.text,
            "sys_path": [p for p in sys.path if isinstance(p, str)],
            "model_names": inputs.model_names,
            "target_name": inputs.target_name,
        }
        write_json(worker.stdin, hello)
        _answer(worker, ANSWER_BYTES)  # {"ready": true}
        for k, rows in enumerate(parts):
            stage = f"({_batch_name(k, parts)})"
            sentences, probs = inputs.batch(rows)
            write_json(worker.stdin, {"sentences": sentences, "shape": list(probs.shape)})
            write_frame(worker.stdin, memoryview(np.ascontiguousarray(probs)).cast("B"))
            answer = _answer(worker, ANSWER_BYTES + ANSWER_BYTES_PER_GUESS * len(rows))
            try:
                got = check_guesses(answer.get("guesses"), len(rows), inputs.vocab_size)
                seconds = float(answer["seconds"])
                peak = answer["peak_bytes"]
            except (KeyError, TypeError, ValueError):
                raise EntryError("sent an answer the harness cannot read") from None
            guesses[rows] = got
            cost.add(seconds, len(rows), None if peak is None else int(peak))
        write_json(worker.stdin, {})  # done: it exits, or the group is killed below
    except EntryError as e:
        if expired.is_set():
            raise EntryError(f"timed out: still running after {timeout:g} s {stage}") from None
        raise EntryError(str(e) if stage == LOADING else f"{e} {stage}") from None
    except (ChannelClosed, OSError):
        raise EntryError(_why_it_stopped(worker, expired, timeout, stage)) from None
    finally:
        watchdog.cancel()
        _kill_group(worker)  # whatever it left running
        worker.wait()
        for stream in (worker.stdin, worker.stdout):
            stream.close()
    return RecordedGuesses(spec.text, guesses, cost)


def _start_worker(threads: int | None) -> subprocess.Popen:
    """A worker process in a session (and process group) of its own, importing this very copy
    of the package, its prints on our stderr."""
    env = dict(os.environ)
    package_root = str(Path(emergence_model.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    if threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
    return subprocess.Popen(
        [sys.executable, "-m", "emergence_model.harness.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=os.name == "posix",
    )


def _answer(worker: subprocess.Popen, limit: int) -> dict:
    """The worker's next message; its {"error": reason} becomes an EntryError."""
    try:
        answer = read_json(worker.stdout, limit)
    except (ValueError, UnicodeDecodeError) as e:
        raise EntryError(f"sent a message the harness cannot read ({e})") from None
    if "error" in answer:
        raise EntryError(str(answer["error"]))
    return answer


def _kill_group(worker: subprocess.Popen) -> None:
    """Kill the worker and every process it started in its process group."""
    if os.name == "posix":
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if worker.poll() is None:
        worker.kill()


def _why_it_stopped(
    worker: subprocess.Popen, expired: threading.Event, timeout: float, stage: str
) -> str:
    """Why the channel to a worker broke: the timeout, a signal, or an exit."""
    try:
        code = worker.wait(5)
    except subprocess.TimeoutExpired:
        code = None
    if expired.is_set():
        return f"timed out: still running after {timeout:g} s {stage}"
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"crashed: killed by {name} {stage}"
    if code is None:
        return f"stopped answering {stage}"
    return f"exited with status {code} before answering {stage}"


def describe_run(isolate: bool, batch: int, timeout: float) -> str:
    """The report's note on how the functions were run."""
    how = (
        f"each in its own process, one after another, killed {timeout:g} s after it started"
        if isolate
        else "in this process"
    )
    return (
        f"participants' functions (--strategy) were called as the challenge calls them, {how}: "
        f"{batch} prefixes a call, the small models' float16 probabilities, never the target's"
    )
