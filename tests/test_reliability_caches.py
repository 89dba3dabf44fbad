"""Caches under a hostile but fair user: bad inputs, changed settings on a resume, combines of
caches made differently, broken metadata, odd output paths, read-only caches and full disks.

Each case ends in a one-line error that says what is wrong and how to fix it, leaves nothing that
blocks the corrected rerun, and never advises deleting good data."""

import errno
import importlib.util
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emergence_model import extract
from emergence_model.cache import (
    DONE_FILE,
    META_FILE,
    PREFIXES_FILE,
    CacheError,
    combine_caches,
    create_cache,
    open_cache,
)
from emergence_model.cache import writer as cache_writer
from emergence_model.challenge import import_challenge_pickle
from emergence_model.cli import exit_on_user_error
from emergence_model.extract import ExtractConfig, extract_suite
from emergence_model.files import atomic_file

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["pythia-70m", "pythia-160m", "pythia-12b"]
VOCAB = 7
QUIET = ExtractConfig(device="cpu", batch_size=4, progress=False)


def load_script():
    spec = importlib.util.spec_from_file_location("cache_features", ROOT / "cache_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cache_features = load_script()


def run_cli(capsys, *argv) -> tuple[int, str]:
    """The script as a user runs it: (exit status, stderr)."""
    capsys.readouterr()
    try:
        exit_on_user_error(lambda: cache_features.main([str(a) for a in argv]))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    assert "delete" not in message or "rebuild" in message or "extract it again" in message
    return message


def rows(n, vocab=VOCAB, seed=0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, vocab)) * 3
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


JOB = dict(
    model_names=["s", "m", "t"],
    param_counts=[10, 20, 30],
    prefixes=[f"prefix {i}" for i in range(5)],
    vocab_size=VOCAB,
    tokenizer="tok",
    extraction={"model_dtype": "float32", "model_configs": ["a", "b", "c"]},
)


def finished(path, job=JOB, seed=0):
    writer = create_cache(path, **job)
    for m in range(len(job["model_names"])):
        writer.write(m, np.arange(len(job["prefixes"])), rows(len(job["prefixes"]), seed=seed + m))
    return writer.finalize()


def probs_pickle(path, probs, sentences=None):
    sentences = sentences or [f"s{i}" for i in range(probs.shape[0])]
    path.write_bytes(pickle.dumps((NAMES, sentences, probs), protocol=4))
    return path


def good_probs(n=4, vocab=VOCAB, seed=0) -> np.ndarray:
    return np.exp(rows(n * 3, vocab, seed)).reshape(n, 3, vocab).astype(np.float16)


# --- silent wrong results -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, message",
    [(np.nan, "NaN"), (np.inf, "infinite"), (-0.25, "negative"), (1.5, "above 1")],
)
def test_a_pickle_of_bad_probabilities_writes_nothing_and_the_fixed_one_imports(
    tmp_path, value, message
):
    probs = good_probs()
    probs[2, 1, 3] = value
    out = tmp_path / "cache"
    with pytest.raises(CacheError, match=rf"probs\[2, 1\] .*{message}") as error:
        import_challenge_pickle(probs_pickle(tmp_path / "bad.pkl", probs), out)
    one_line(str(error.value))
    assert not out.exists()
    cache = import_challenge_pickle(probs_pickle(tmp_path / "good.pkl", good_probs()), out)
    assert len(open_cache(cache.path, full_check=True)) == 4


def test_rows_that_do_not_sum_to_one_are_refused_before_writing(tmp_path):
    probs = good_probs()
    probs[1, 0] *= 0.5
    with pytest.raises(CacheError, match=r"probs\[1, 0\] sums to 0.5"):
        import_challenge_pickle(probs_pickle(tmp_path / "half.pkl", probs), tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_a_cache_that_fails_its_check_never_opens_and_the_rerun_starts_over(tmp_path, capsys):
    path = tmp_path / "c"
    writer = create_cache(path, **JOB)
    bad = rows(5)
    bad[3, 2] = np.nan
    for m in range(3):
        writer.write(m, np.arange(5), bad if m == 1 else rows(5, seed=m))
    with pytest.raises(CacheError, match="failed its full check .*prefix 3, model 'm'") as error:
        writer.finalize()
    one_line(str(error.value))
    for opening in (lambda: open_cache(path), lambda: open_cache(path, full_check=True)):
        with pytest.raises(CacheError, match="failed its full check when it was written"):
            opening()
    code, err = run_cli(capsys, "--verify", path)
    assert code == 2 and "failed its full check" in one_line(err)
    from emergence_model.commands.evaluate import main as evaluate

    with pytest.raises(CacheError, match="failed its full check"):
        evaluate(["--cache", str(path)])

    rerun = create_cache(path, **JOB)  # the same job again: it starts over
    assert all(rerun.pending(m).tolist() == list(range(5)) for m in range(3))
    for m in range(3):
        rerun.write(m, np.arange(5), rows(5, seed=m))
    assert rerun.finalize().meta["check"] == {"status": "passed"}


def test_a_run_killed_after_its_last_row_but_before_its_check_does_not_open(tmp_path):
    path = tmp_path / "c"
    writer = create_cache(path, **JOB)
    for m in range(3):
        writer.write(m, np.arange(5), rows(5, seed=m))
    writer.commit()  # every row is on disk and marked done; the process dies before finalize
    del writer  # and the kernel releases its lock
    with pytest.raises(CacheError, match="stopped before the full check .* rerun the same"):
        open_cache(path)
    assert create_cache(path, **JOB).finalize().meta["check"]["status"] == "passed"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"param_counts": [10, 20, 31]}, r"other parameter counts .*--param-counts"),
        ({"scales": [1.0, 2.0, 3.0]}, "other scales"),
        ({"scale_axis": "tokens", "scales": [10, 20, 30]}, "other scale axis"),
        ({"tokenizer": "other-tok"}, "other tokenizer"),
        ({"model_names": ["s@step1", "m", "t"]}, "other models"),
        ({"extraction": {**JOB["extraction"], "model_dtype": "bfloat16"}}, "weights dtype"),
        ({"extraction": {**JOB["extraction"], "model_configs": ["a", "B", "c"]}}, "model configs"),
        ({"dtype": "float32"}, r"other dtype .*--cache-dtype"),
    ],
)
def test_a_resume_refuses_anything_that_shapes_the_numbers(tmp_path, change, message):
    path = tmp_path / "c"
    writer = create_cache(path, **JOB)
    writer.write(0, [0], rows(1))
    writer.commit()  # one row done: a partly written cache of this job
    del writer  # its process ended
    with pytest.raises(CacheError, match=message) as error:
        create_cache(path, **{**JOB, **change})
    assert "delete" not in one_line(str(error.value))  # its rows are good
    finished(tmp_path / "done")
    with pytest.raises(CacheError, match=message):  # a finished one keeps its numbers too
        create_cache(tmp_path / "done", **{**JOB, **change})


def test_a_cache_of_no_rows_yet_gives_way_to_the_corrected_job(tmp_path):
    path = tmp_path / "c"
    create_cache(path, **JOB)  # e.g. a run that failed before its first row
    fixed = {**JOB, "prefixes": ["other"], "extraction": {"model_dtype": "bfloat16"}}
    writer = create_cache(path, **fixed)
    assert writer.pending(0).tolist() == [0]
    assert json.loads((path / PREFIXES_FILE).read_text()) == ["other"]


def test_an_extraction_resumed_with_another_dtype_or_changed_model_is_refused(
    tiny_suite, tmp_path, monkeypatch
):
    models = tmp_path / "models"
    dirs = [shutil.copytree(d, models / d.name) for d in tiny_suite.model_dirs[:2]]
    ids, prefixes, out = [str(d) for d in dirs], tiny_suite.prefixes[:4], tmp_path / "c"
    real_batch, calls = extract.batch_logprobs, []

    def die_after_the_first_model(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # 4 prefixes: one batch per model
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(extract, "batch_logprobs", die_after_the_first_model)
    with pytest.raises(KeyboardInterrupt):
        extract_suite(ids, prefixes, out, QUIET)
    monkeypatch.setattr(extract, "batch_logprobs", real_batch)
    bfloat16 = ExtractConfig(device="cpu", dtype="bfloat16", batch_size=4, progress=False)
    with pytest.raises(CacheError, match=r"other weights dtype \('float32' vs 'bfloat16'\)"):
        extract_suite(ids, prefixes, out, bfloat16)
    with pytest.raises(CacheError, match="other parameter counts"):
        extract_suite(ids, prefixes, out, QUIET, param_counts=[1, 2])
    config = json.loads((dirs[1] / "config.json").read_text())
    (dirs[1] / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 0.1}))
    with pytest.raises(CacheError, match="other model configs"):
        extract_suite(ids, prefixes, out, QUIET)
    (dirs[1] / "config.json").write_text(json.dumps(config))
    cache = extract_suite(ids, prefixes, out, QUIET)  # the same job resumes
    assert cache.meta["extraction"]["model_dtype"] == "float32"
    assert len(cache.meta["extraction"]["model_configs"]) == 2


def test_reimporting_another_pickle_of_the_same_sentences_is_refused(tmp_path):
    out = tmp_path / "c"
    import_challenge_pickle(probs_pickle(tmp_path / "a.pkl", good_probs(seed=0)), out)
    with pytest.raises(CacheError, match="other probabilities .*another challenge pickle"):
        import_challenge_pickle(probs_pickle(tmp_path / "b.pkl", good_probs(seed=1)), out)


# --- combine --------------------------------------------------------------------------------


def part(path, names, tokenizer="tok", seed=0, **extraction):
    job = {
        **JOB,
        "model_names": names,
        "param_counts": [10 * (i + 1) for i in range(len(names))],
        "tokenizer": tokenizer,
        "extraction": extraction,
    }
    return finished(path, job, seed)


def test_combine_refuses_caches_of_other_tokenizers_or_weights(tmp_path):
    a = part(tmp_path / "a", ["s", "m"], tokenizer="tok-a")
    b = part(tmp_path / "b", ["t"], tokenizer="tok-b")  # the same vocabulary size
    with pytest.raises(CacheError, match="tokenizer 'tok-b', .* has 'tok-a'; only caches of one"):
        combine_caches([a.path, b.path], tmp_path / "x")
    c = part(tmp_path / "c", ["s", "m"], model_dtype="float32")
    d = part(tmp_path / "d", ["t"], model_dtype="bfloat16")
    with pytest.raises(CacheError, match="weights dtype 'bfloat16', .* 'float32'"):
        combine_caches([c.path, d.path], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_combine_by_model_knows_one_tokenizer_by_its_vocabulary(tmp_path):
    """One run per model names each model's own copy of one tokenizer."""
    a = part(
        tmp_path / "a", ["s", "m"], tokenizer="s", tokenizer_fingerprint="f", model_configs=[1, 2]
    )
    b = part(tmp_path / "b", ["t"], tokenizer="t", tokenizer_fingerprint="f", model_configs=[3])
    joined = combine_caches([a.path, b.path], tmp_path / "ab")
    assert joined.meta["tokenizer"] == "t"  # the target's
    assert joined.meta["extraction"]["tokenizer_fingerprint"] == "f"
    assert joined.meta["extraction"]["model_configs"] == [1, 2, 3]
    c = part(tmp_path / "c", ["t"], tokenizer="t", tokenizer_fingerprint="g")
    with pytest.raises(CacheError, match="tokenizer"):
        combine_caches([a.path, c.path], tmp_path / "ac")


def test_combine_refuses_shards_made_differently_and_its_own_inputs_as_out(tmp_path):
    names = ["s", "m", "t"]
    job = {**JOB, "extraction": {}}
    a = finished(tmp_path / "a", job)
    b = finished(tmp_path / "b", {**job, "prefixes": ["other"], "param_counts": [10, 20, 31]})
    with pytest.raises(CacheError, match=r"parameter counts \[10, 20, 31\].*shards of one"):
        combine_caches([a.path, b.path], tmp_path / "x")
    c = part(tmp_path / "c", names[2:])
    with pytest.raises(CacheError, match="is one of the caches to combine"):
        combine_caches([a.path, c.path], a.path)


def test_a_combine_rerun_over_rebuilt_inputs_is_refused(tmp_path):
    a = part(tmp_path / "a", ["s", "m"])
    b = part(tmp_path / "b", ["t"])
    combine_caches([a.path, b.path], tmp_path / "ab")
    shutil.rmtree(b.path)
    b = part(tmp_path / "b", ["t"], seed=5)  # rebuilt: other numbers
    with pytest.raises(CacheError, match="other input caches"):
        combine_caches([a.path, b.path], tmp_path / "ab")


# --- clear errors ---------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    "device, message",
    [("cuda", "no CUDA GPU"), ("cuda:0", "no CUDA GPU"), ("bogus", "not a device"), ("meta", "")],
)
def test_a_device_this_machine_lacks_is_refused_before_anything_is_written(
    tiny_suite, tmp_path, capsys, device, message
):
    txt = tmp_path / "p.txt"
    txt.write_text("a b c\n")
    out = tmp_path / "c"
    args = ["--models", ",".join(tiny_suite.model_ids[:2]), "--dataset", txt, "--out", out]
    code, err = run_cli(capsys, *args, "--device", device, "--no-progress")
    assert code == 2 and "--device" in one_line(err) and message in err
    assert not out.exists()
    assert run_cli(capsys, *args, "--device", "cpu", "--no-progress")[0] == 0


def test_a_prefix_too_long_for_a_context_is_refused_before_anything_is_written(
    tiny_suite, tmp_path, capsys
):
    txt = tmp_path / "p.txt"
    txt.write_text("short one\n" + " ".join(["river"] * 200) + "\n")
    out = tmp_path / "c"
    args = ["--models", ",".join(tiny_suite.model_ids[:2]), "--out", out, "--no-progress"]
    code, err = run_cli(capsys, *args, "--dataset", txt)
    assert code == 2 and "prefix 1 has" in one_line(err) and "context of 128" in err
    assert not out.exists()
    txt.write_text("short one\n" + " ".join(["river"] * 20) + "\n")
    assert run_cli(capsys, *args, "--dataset", txt)[0] == 0


def test_outputs_inside_a_cache_through_a_link_loop_or_onto_a_file_are_refused(tmp_path, capsys):
    a = finished(tmp_path / "a")
    pkl = probs_pickle(tmp_path / "p.pkl", good_probs())
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    (tmp_path / "file").write_text("x")
    for out, message in [
        (a.path / "inner", "is inside the feature cache"),
        (loop, "symbolic link to nothing"),
        (loop / "x", "is not a directory"),
        (tmp_path / "file", "is a file, not a directory"),
        (tmp_path / "file" / "x", "is not a directory"),
    ]:
        code, err = run_cli(capsys, "--from-pickle", pkl, "--out", out)
        assert code == 2 and message in one_line(err), (out, err)
    code, err = run_cli(capsys, "--export-pickle", a.path, "--out", a.path / "x.pkl")
    assert code == 2 and "inside the feature cache" in err
    code, err = run_cli(capsys, "--export-pickle", a.path, "--out", tmp_path)
    assert code == 2 and "is a directory, not a file" in err
    with pytest.raises(CacheError, match="symbolic link to nothing"):
        open_cache(loop)
    assert not (a.path / "inner").exists()


@pytest.mark.parametrize(
    "meta, message",
    [
        ("null", "holds None, not a cache's metadata"),
        ("[1, 2]", "holds [1, 2]"),
        ('{"format_version": 1', f"{META_FILE}:1 is not valid JSON"),
        (b"\xff\xfe{}", f"{META_FILE}:1 is not UTF-8"),
    ],
)
def test_broken_metadata_is_one_line(tmp_path, capsys, meta, message):
    a = finished(tmp_path / "a")
    data = meta if isinstance(meta, bytes) else meta.encode()
    (a.path / META_FILE).write_bytes(data)
    code, err = run_cli(capsys, "--verify", a.path)
    assert code == 2 and message in one_line(err), err


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model_names", "s,m,t", "model_names must be a non-empty list of strings"),
        ("param_counts", 7, "param_counts must be a list"),
        ("vocab_size", "7", "vocab_size must be a positive integer"),
        ("num_prefixes", True, "num_prefixes must be a positive integer"),
        ("tokenizer", None, "tokenizer must be a string"),
        ("extraction", [], "extraction must be a JSON object"),
        ("check", {"status": "maybe"}, "check must be"),
    ],
)
def test_metadata_of_the_wrong_types_is_one_line(tmp_path, field, value, message):
    a = finished(tmp_path / "a")
    meta = json.loads((a.path / META_FILE).read_text())
    (a.path / META_FILE).write_text(json.dumps({**meta, field: value}))
    with pytest.raises(CacheError, match=message) as error:
        open_cache(a.path)
    one_line(str(error.value))


def test_prefixes_that_are_not_strings_are_one_line(tmp_path):
    a = finished(tmp_path / "a")
    (a.path / PREFIXES_FILE).write_text(json.dumps([1, 2, 3, 4, 5]))
    with pytest.raises(CacheError, match="something other than strings"):
        open_cache(a.path)


def test_rerunning_a_finished_cache_only_reads_it(tmp_path, monkeypatch):
    """A finished cache, read-only say, is never opened for writing by a rerun of its job."""
    finished(tmp_path / "c")
    modes = []
    real = cache_writer.open_array

    def spy(path, shape, dtype, mode="r"):
        modes.append(mode)
        return real(path, shape, dtype, mode)

    monkeypatch.setattr(cache_writer, "open_array", spy)
    meta_before = (tmp_path / "c" / META_FILE).read_bytes()
    writer = create_cache(tmp_path / "c", **JOB)  # the same job run again, as extraction does
    assert not any(writer.pending(m).size for m in range(3))
    writer.finalize()
    assert "r+" not in modes
    assert (tmp_path / "c" / META_FILE).read_bytes() == meta_before


def test_a_read_only_cache_is_never_told_to_be_deleted(tmp_path, monkeypatch):
    path = tmp_path / "c"
    writer = create_cache(path, **JOB)
    real_load = np.load

    def read_only(file, mmap_mode=None, **kwargs):
        if mmap_mode == "r+":
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_load(file, mmap_mode=mmap_mode, **kwargs)

    monkeypatch.setattr(np, "load", read_only)
    with pytest.raises(CacheError, match="cannot write .* read-only; make it writable") as error:
        writer.write(0, [0], rows(1))
    assert "delete" not in one_line(str(error.value))
    monkeypatch.setattr(
        np, "load", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
    )
    with pytest.raises(CacheError, match="cannot read .*fix its permissions") as error:
        open_cache(path)
    assert "delete" not in one_line(str(error.value))


def test_a_full_disk_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "done.npy"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="No space left"):
        with atomic_file(target) as f:
            f.write(b"half of the new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["done.npy"]


def test_two_writers_of_one_file_never_share_a_temporary(tmp_path):
    target = tmp_path / DONE_FILE
    with atomic_file(target) as first:
        with atomic_file(target) as second:
            second.write(b"second, whole")
        first.write(b"first, whole")
    assert target.read_bytes() == b"first, whole"
    assert [p.name for p in tmp_path.iterdir()] == [DONE_FILE]


def test_a_cache_the_disk_cannot_hold_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(cache_writer.shutil, "disk_usage", lambda p: usage._replace(free=100))
    with pytest.raises(CacheError, match=r"needs 0.00 GiB but .* has 0.00 GiB free"):
        create_cache(tmp_path / "c", **JOB)
    assert not (tmp_path / "c").exists()


def test_temporaries_left_by_a_killed_writer_do_not_block_a_new_cache(tmp_path):
    path = tmp_path / "c"
    path.mkdir()
    (path / "done.npy.1234-abcd.tmp").write_bytes(b"torn")
    (path / "meta.json.tmp").write_bytes(b"torn")
    assert create_cache(path, **JOB).pending(0).tolist() == list(range(5))


def test_a_model_that_cannot_be_loaded_is_named_in_one_line(tiny_suite, tmp_path, capsys):
    broken = shutil.copytree(tiny_suite.model_dirs[1], tmp_path / "broken")
    (broken / "config.json").write_text("{not json")
    txt = tmp_path / "p.txt"
    txt.write_text("a b c\n")
    out = tmp_path / "c"
    models = f"{tiny_suite.model_ids[0]},{broken}"
    code, err = run_cli(capsys, "--models", models, "--dataset", txt, "--out", out)
    assert code == 2 and f"cannot load the config of {broken}" in one_line(err)
    assert not out.exists()
