"""Caches and training runs under faults a machine makes and mistakes two users make at once: two
writers of one cache, a writer killed or interrupted mid-run, a disk that fills up, an output
that cannot be written, shards that overlap, and files changed on disk after they were finished.

Each case ends in a one-line error that says what is wrong and how to fix it, and leaves what was
there as it was (or, for a killed run, as its rerun resumes it)."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emergence_model import files
from emergence_model.cache import (
    ARGMAX_FILE,
    LOGPROBS_FILE,
    META_FILE,
    PREFIXES_FILE,
    CacheError,
    combine_caches,
    create_cache,
    open_cache,
    select_models,
)
from emergence_model.cli import exit_on_user_error
from emergence_model.commands.extract import main as extract_main
from emergence_model.commands.train import main as train
from emergence_model.files import (
    LOCK_FILE,
    WriterBusyError,
    atomic_file,
    check_writable,
    lock_for_writing,
)

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 7
JOB = dict(
    model_names=["s", "m", "t"],
    param_counts=[10, 20, 30],
    prefixes=[f"prefix {i}" for i in range(5)],
    vocab_size=VOCAB,
    tokenizer="tok",
)


def rows(n, vocab=VOCAB, seed=0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, vocab)) * 3
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


def finished(path, **change):
    job = {**JOB, **change}
    with create_cache(path, **job) as writer:
        for m in range(len(job["model_names"])):
            writer.write(m, np.arange(len(job["prefixes"])), rows(len(job["prefixes"]), seed=m))
        return writer.finalize()


def one_line(message: str) -> str:
    assert message and "\n" not in message.strip(), message
    return message


def run_extract(capsys, *argv) -> tuple[int, str]:
    """cache_features.py as a user runs it: (exit status, stderr)."""
    capsys.readouterr()
    try:
        exit_on_user_error(lambda: extract_main([str(a) for a in argv]))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def files_of(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# --- one writer per cache -------------------------------------------------------------------

# An extraction that stops after its first batch and waits for a line on stdin: a run that is
# busy, for as long as the test needs it to be.
PAUSED_EXTRACTION = """
import signal, sys
# Ctrl-C as a shell leaves it, whatever the test's own process does with it (Lightning ignores
# it once it has handled one, and a child inherits that).
signal.signal(signal.SIGINT, signal.default_int_handler)
from emergence_model import extract
from emergence_model.cli import exit_on_user_error
from emergence_model.commands.extract import main

real, calls = extract.batch_logprobs, []

def pause_after_the_first_batch(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        print("paused", flush=True)
        sys.stdin.readline()
    return real(*args, **kwargs)

extract.batch_logprobs = pause_after_the_first_batch
exit_on_user_error(lambda: main(sys.argv[1:]))
"""


def start_paused(argv) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED_EXTRACTION, *map(str, argv)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = process.stdout.readline()
    assert line == "paused\n", process.communicate()[1]
    return process


@pytest.fixture
def extraction(tiny_suite, tmp_path):
    """cache_features.py's arguments for the tiny suite on its 24 prefixes, one at a time."""
    txt = tmp_path / "p.txt"
    txt.write_text("\n".join(tiny_suite.prefixes) + "\n")
    models = ",".join(tiny_suite.model_ids)
    return ["--models", models, "--dataset", txt, "--batch-size", 5, "--device", "cpu",
            "--no-progress", "--threads", 1]  # fmt: skip


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_ones_lock_blocks_nothing(
    extraction, tiny_cache, tmp_path, capsys
):
    out = tmp_path / "c"
    first = start_paused([*extraction, "--out", out])
    try:
        code, err = run_extract(capsys, *extraction, "--dtype", "bfloat16", "--out", out)
        assert code == 2
        assert f"the cache {out} is being written by another process (pid {first.pid} " in err
        assert "--dtype bfloat16" not in one_line(err)  # the first's command line, not ours
        first.kill()  # SIGKILL: no cleanup, its lock file stays behind
        first.wait()
    finally:
        first.kill()
    assert (out / LOCK_FILE).exists()
    meta = json.loads((out / META_FILE).read_text())
    assert meta["extraction"]["model_dtype"] == "float32"  # the refused run changed nothing
    code, err = run_extract(capsys, *extraction, "--out", out)  # the same command resumes
    assert code == 0, err
    resumed = open_cache(out, full_check=True)
    assert not (out / LOCK_FILE).exists()
    np.testing.assert_array_equal(resumed.logprobs, tiny_cache.logprobs)
    np.testing.assert_array_equal(resumed.argmax, tiny_cache.argmax)


def test_ctrl_c_is_one_line_and_the_same_command_resumes(extraction, tiny_cache, tmp_path):
    out = tmp_path / "c"
    run = start_paused([*extraction, "--out", out])
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130
    # the last line (transformers' own progress bars come before it), and no traceback
    assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    assert "Traceback" not in err
    assert not (out / LOCK_FILE).exists()  # released on the way out
    assert exit_code_of(lambda: extract_main([*map(str, extraction), "--out", str(out)])) == 0
    np.testing.assert_array_equal(open_cache(out).logprobs, tiny_cache.logprobs)


def exit_code_of(fn) -> int:
    try:
        exit_on_user_error(fn)
    except SystemExit as e:
        return e.code
    return 0


def test_every_command_turns_ctrl_c_into_one_line(capsys):
    def interrupted():
        raise KeyboardInterrupt

    def interrupted_while_training():  # Lightning's fit on Ctrl-C: its shutdown, then exit(1)
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)

    for command in (interrupted, interrupted_while_training):
        assert exit_code_of(command) == 130
        assert capsys.readouterr().err == "interrupted; rerun the same command to resume\n"
    assert exit_code_of(lambda: sys.exit(3)) == 3  # any other exit is its own


def test_a_writer_in_this_process_holds_its_cache_until_it_closes(tmp_path):
    path = tmp_path / "c"
    writer = create_cache(path, **JOB)
    before = files_of(path)
    with pytest.raises(
        WriterBusyError, match=rf"the cache {path} is being written .*pid {os.getpid()}"
    ):
        create_cache(path, **JOB)
    with pytest.raises(WriterBusyError):  # nor may another job start it over
        create_cache(path, **{**JOB, "dtype": "float32"})
    assert files_of(path) == before
    writer.close()
    assert not (path / LOCK_FILE).exists()
    assert create_cache(path, **JOB).pending(0).tolist() == list(range(5))


def test_the_ranks_of_one_job_write_beside_the_process_that_holds_the_lock(tmp_path):
    """What a torchrun job needs: rank 0 takes the lock, the others join its job by its id."""
    path = tmp_path / "c"
    first = create_cache(path, **JOB)
    job = first.lock.job
    other = create_cache(path, **JOB, job=job)  # takes no lock: part of rank 0's job
    assert not other.lock.held and other.lock.job == job
    with pytest.raises(WriterBusyError, match="not locked by job nope"):
        create_cache(path, **JOB, job="nope")
    first.close()
    with pytest.raises(WriterBusyError, match=f"not locked by job {job}"):
        create_cache(path, **JOB, job=job)  # its rank 0 is gone: the job is over
    with pytest.raises(WriterBusyError, match="start the job's first process"):
        create_cache(tmp_path / "new", **JOB, job=job)
    assert not (tmp_path / "new").exists()


def test_a_lock_file_replaced_under_a_waiting_writer_is_not_mistaken_for_the_lock(tmp_path):
    lock_file = tmp_path / LOCK_FILE
    held = lock_for_writing(lock_file, "x")
    record = json.loads(lock_file.read_text())
    assert record["pid"] == os.getpid() and record["job"] == held.job
    assert record["command"] and record["started"]
    held.release()
    assert not lock_file.exists()
    lock_file.write_text("left by a killed writer")  # stale: nobody holds it
    again = lock_for_writing(lock_file, "x")
    assert json.loads(lock_file.read_text())["job"] == again.job
    again.release()


# --- space and writability ------------------------------------------------------------------


def test_a_cache_reserves_its_space_when_it_is_made(tmp_path):
    path = tmp_path / "c"
    big = {**JOB, "vocab_size": 2**16}
    create_cache(path, **big).close()
    if not hasattr(os, "posix_fallocate") or not files.reserve(path / LOGPROBS_FILE):
        pytest.skip("this filesystem cannot reserve space")
    stat = os.stat(path / LOGPROBS_FILE)
    assert stat.st_blocks * 512 >= stat.st_size  # allocated, not a sparse file


def test_a_disk_that_cannot_hold_the_arrays_is_one_line_before_any_row(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    path = tmp_path / "c"
    with pytest.raises(CacheError, match=f"the disk of {path} has no room .*free some space"):
        create_cache(path, **JOB)
    assert sorted(p.name for p in path.iterdir()) == []  # nothing half-made, no lock left
    monkeypatch.undo()
    assert create_cache(path, **JOB).pending(0).tolist() == list(range(5))


def test_a_full_disk_while_writing_a_file_names_the_file(tmp_path):
    target = tmp_path / "meta.json"
    with pytest.raises(OSError, match=f"No space left on device: '{target}'"):
        with atomic_file(target) as f:
            f.write(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    "error, message",
    [
        (errno.EACCES, r"--out .* cannot be written \(Permission denied\); make it writable"),
        (errno.EROFS, r"cannot be written \(Read-only file system\)"),
        (errno.ENOSPC, r"--out .* has no room for 1.0 MiB of output"),
    ],
)
def test_an_output_directory_that_cannot_be_written_is_refused(
    tmp_path, monkeypatch, error, message
):
    real_open = open

    def failing(path, mode="r", *args, **kwargs):
        if ".write-test" in str(path):
            raise OSError(error, os.strerror(error), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", failing, raising=False)
    with pytest.raises(ValueError, match=message) as e:
        check_writable(tmp_path / "out", "--out", 2**20)
    one_line(str(e.value))
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


# --- combining shards -----------------------------------------------------------------------


def shard(path, prefixes, spec, source="p.txt"):
    source = {"dataset": source, "num_prefixes": 6, "seed": 0, "shard": spec}
    return finished(path, prefixes=prefixes, source=source)


def test_combine_refuses_shards_that_overlap_naming_both(tmp_path):
    prefixes = [f"p{i}" for i in range(6)]
    halves = [
        shard(tmp_path / "h0", prefixes[:3], "0/2"),
        shard(tmp_path / "h1", prefixes[3:], "1/2"),
    ]
    thirds = [shard(tmp_path / "t0", prefixes[:2], "0/3")]
    copy = shard(tmp_path / "copy", prefixes[:3], "0/2")
    for given, first, second in [
        ([halves[0], thirds[0]], halves[0], thirds[0]),  # --shard 0/2 and 0/3 of one file
        ([*halves, copy], halves[0], copy),  # shard 0, shard 1 and a copy of shard 0
    ]:
        with pytest.raises(CacheError, match="is in both") as e:
            combine_caches([c.path for c in given], tmp_path / "x")
        assert f"in both {first.path} and {second.path}" in one_line(str(e.value))
        assert not (tmp_path / "x").exists()
    joined = combine_caches([h.path for h in halves], tmp_path / "x")
    assert joined.prefixes == prefixes


def test_a_prefix_the_source_repeats_may_sit_in_two_shards_of_one_cut(tmp_path):
    a = shard(tmp_path / "a", ["p0", "same", "p2"], "0/2")
    b = shard(tmp_path / "b", ["same", "p4", "p5"], "1/2")
    assert combine_caches([a.path, b.path], tmp_path / "x").prefixes.count("same") == 2


# --- digests --------------------------------------------------------------------------------


def verify(capsys, path) -> tuple[int, str, str]:
    """cache_features.py --verify PATH: (exit status, stderr, stdout)."""
    capsys.readouterr()
    code = exit_code_of(lambda: extract_main(["--verify", str(path)]))
    captured = capsys.readouterr()
    return code, captured.err, captured.out


@pytest.fixture
def cache(tmp_path):
    return finished(tmp_path / "c")


def test_a_finished_cache_records_the_digests_verify_checks(cache, capsys):
    assert set(cache.meta["digests"]) == {PREFIXES_FILE, LOGPROBS_FILE, ARGMAX_FILE}
    capsys.readouterr()
    assert exit_code_of(lambda: extract_main(["--verify", str(cache.path)])) == 0
    assert capsys.readouterr().out.strip().endswith("; digests match")


def flip_low_bit(path: Path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 1  # the last mantissa bit of a value: its row still normalises
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: flip_low_bit(p / LOGPROBS_FILE, 2), f"{LOGPROBS_FILE} is not the file"),
        (
            lambda p: (p / PREFIXES_FILE).write_text(
                json.dumps([f"prefix {i}" for i in (1, 0, 2, 3, 4)])
            ),
            f"{PREFIXES_FILE} is not the file",
        ),
    ],
)
def test_verify_finds_a_change_that_leaves_every_row_plausible(cache, capsys, damage, message):
    damage(cache.path)
    open_cache(cache.path, full_check=False)  # opening reads no digest: it stays fast
    assert cache.problem() is None  # every row still looks right
    before = files_of(cache.path)
    code, err, _ = verify(capsys, cache.path)
    assert code == 2 and message in one_line(err) and "changed on disk since" in err
    assert files_of(cache.path) == before  # --verify never changes a cache


def test_verify_finds_a_training_label_that_is_not_its_rows_top_token(cache, capsys):
    argmax = np.load(cache.path / ARGMAX_FILE)
    row = cache.logprobs[2, 2]
    argmax[2, 2] = int(np.argsort(row)[-2])  # the target's second token, not its top one
    np.save(cache.path / ARGMAX_FILE, argmax)
    code, err, _ = verify(capsys, cache.path)
    assert code == 2
    assert "argmax.npy's top token of prefix 2, model 't'" in one_line(err)


def test_a_cache_of_an_older_version_verifies_without_digests_and_is_left_as_it_was(cache, capsys):
    meta = json.loads((cache.path / META_FILE).read_text())
    del meta["digests"]  # as the previous version finished it
    (cache.path / META_FILE).write_text(json.dumps(meta))
    before = files_of(cache.path)
    code, _, out = verify(capsys, cache.path)
    assert code == 0
    assert out.strip().endswith("; no digests recorded (made by an older version)")
    assert files_of(cache.path) == before
    assert len(select_models(open_cache(cache.path), [0, 2], cache.path.parent / "sel")) == 5


def test_opening_a_cache_reads_no_digest(cache, monkeypatch):
    def never(path):
        raise AssertionError("a digest was computed on open")

    monkeypatch.setattr("emergence_model.cache.reader.file_sha256", never)
    assert len(open_cache(cache.path)) == 5


def test_combine_and_select_refuse_an_input_changed_since_it_was_finished(tmp_path):
    a = finished(tmp_path / "a", model_names=["s", "m"], param_counts=[10, 20])
    b = finished(tmp_path / "b", model_names=["t"], param_counts=[30])
    flip_low_bit(b.path / LOGPROBS_FILE, 2)
    with pytest.raises(CacheError, match=f"{b.path / LOGPROBS_FILE} is not the file"):
        combine_caches([a.path, b.path], tmp_path / "ab")
    with pytest.raises(CacheError, match="is not the file"):
        select_models(open_cache(b.path), [0], tmp_path / "sel")
    assert not (tmp_path / "ab").exists() and not (tmp_path / "sel").exists()


# --- train.py's outputs ---------------------------------------------------------------------


class Trained(Exception):
    """Raised where the first run trains: what came before it ran for real."""


@pytest.fixture
def train_cache(tmp_path):
    from synthetic_cache import write_synthetic_cache

    return write_synthetic_cache(tmp_path / "wiki", num_prefixes=30, vocab_size=16)


def test_a_second_train_py_on_the_same_out_is_refused_while_the_first_runs(
    train_cache, tmp_path, monkeypatch
):
    out = tmp_path / "ck" / "net.ckpt"
    argv = ["--train-cache", str(train_cache.path), "--out", str(out), "--no-progress"]
    refusals = []

    def first_run_trains(cache, predictor_config, train_config, run_dir, folds=None):
        # While the first run trains, a second one starts: with the same --out, and with the
        # same --out but its own --run-dir.
        for extra in ([], ["--run-dir", str(tmp_path / "other-run")]):
            with pytest.raises(WriterBusyError) as e:
                train([*argv, *extra])
            refusals.append(one_line(str(e.value)))
        raise Trained

    monkeypatch.setattr("emergence_model.pipeline.fit_cross_fitted", first_run_trains)
    with pytest.raises(Trained):
        train(argv)
    run_dir = tmp_path / "ck" / "runs" / "net"
    assert refusals[0].startswith(f"the run {run_dir} is being written by another process (pid")
    assert refusals[1].startswith(f"the checkpoint {out} is being written by another process")
    assert not (run_dir / LOCK_FILE).exists() and not (out.parent / ".net.ckpt.lock").exists()


def test_train_py_refuses_a_checkpoint_directory_it_cannot_write_before_training(
    train_cache, tmp_path, monkeypatch
):
    real_open = open
    ckpt_dir = tmp_path / "ck"

    def read_only(path, mode="r", *args, **kwargs):
        if Path(path).parent == ckpt_dir and "w" in mode:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, mode, *args, **kwargs)

    def never(*args, **kwargs):
        raise AssertionError("training began")

    monkeypatch.setattr(files, "open", read_only, raising=False)
    monkeypatch.setattr("emergence_model.pipeline.fit_cross_fitted", never)
    out = ckpt_dir / "net.ckpt"
    with pytest.raises(ValueError, match=f"--out {ckpt_dir} cannot be written") as e:
        train(["--train-cache", str(train_cache.path), "--out", str(out)])
    one_line(str(e.value))
