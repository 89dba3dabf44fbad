import json
import pickle
import shutil

import numpy as np
import pytest

from emergence_model.cache import (
    DONE_FILE,
    LOGPROBS_FILE,
    META_FILE,
    PREFIXES_FILE,
    CacheError,
    combine_caches,
    create_cache,
    open_cache,
)

VOCAB = 17


def random_logprobs(rng, rows, vocab=VOCAB):
    x = rng.normal(size=(rows, vocab)) * 6
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


def make_cache(path, names=("s", "m", "t"), prefixes=None, seed=0, dtype="float16", vocab=VOCAB):
    """A finished cache of random normalised rows; returns (cache, the float32 rows [N, M, V])."""
    rng = np.random.default_rng(seed)
    prefixes = prefixes or [f"prefix {i}" for i in range(9)]
    writer = create_cache(
        path,
        model_names=list(names),
        param_counts=[10 * (i + 1) for i in range(len(names))],
        prefixes=prefixes,
        vocab_size=vocab,
        tokenizer="tok",
        source={"dataset": "test"},
        seed=seed,
        dtype=dtype,
    )
    full = np.stack([random_logprobs(rng, len(prefixes), vocab) for _ in names], axis=1)
    for m in range(len(names)):
        writer.write(m, np.arange(len(prefixes)), full[:, m])
    return writer.finalize(), full


@pytest.fixture
def cache_dir(tmp_path):
    make_cache(tmp_path / "c")
    return tmp_path / "c"


def test_tiny_cache_api(tiny_cache, tiny_suite):
    cache = tiny_cache
    n, m, v = len(tiny_suite.prefixes), len(tiny_suite.model_dirs), tiny_suite.vocab_size
    assert len(cache) == cache.num_prefixes == n and cache.num_models == m
    assert cache.logprobs.shape == (n, m, v) and cache.logprobs.dtype == np.float16
    assert not cache.logprobs.flags.writeable  # read-only memory map
    assert isinstance(cache.logprobs, np.memmap)
    assert cache.model_names == tiny_suite.model_ids
    assert cache.target_name == tiny_suite.model_ids[-1]
    assert cache.param_counts == tiny_suite.param_counts
    assert cache.prefixes == tiny_suite.prefixes
    assert cache.argmax.shape == (n, m) and cache.argmax.dtype == np.int32
    assert cache.target_argmax.dtype == np.int64
    np.testing.assert_array_equal(cache.target_argmax, cache.argmax[:, -1])
    meta = cache.meta
    assert meta["format_version"] == 1 and meta["vocab_size"] == v and meta["dtype"] == "float16"
    assert meta["extraction"]["model_dtype"] == "float32" and "package_version" in meta
    cache.verify()


def test_rows_reads_any_index_order_as_float32(cache_dir):
    cache = open_cache(cache_dir)
    index = [5, 0, 5, -1, 3]
    rows = cache.rows(index)
    assert rows.dtype == np.float32 and rows.shape == (5, 3, VOCAB)
    np.testing.assert_array_equal(rows, cache.logprobs[index].astype(np.float32))
    assert cache.rows(np.array([], dtype=int)).shape == (0, 3, VOCAB)
    assert cache.rows([2], dtype=None).dtype == np.float16
    with pytest.raises(IndexError):
        cache.rows([9])


def test_float16_rows_keep_the_tail_and_normalise(tmp_path):
    cache, full = make_cache(tmp_path / "c", dtype="float16")
    # Log-probabilities far below float16's smallest probability (6e-8) survive.
    assert np.exp(full.min()) < 1e-8 and np.isfinite(cache.rows(range(9))).all()
    np.testing.assert_allclose(cache.rows(range(9)), full, atol=0.02)
    np.testing.assert_array_equal(cache.argmax, full.argmax(-1))
    cache32, full32 = make_cache(tmp_path / "d", dtype="float32")
    np.testing.assert_array_equal(cache32.rows(range(9)), full32)


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def edit_meta(path, **changes):
    meta = json.loads((path / META_FILE).read_text())
    meta.update(changes)
    (path / META_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda p: shutil.rmtree(p), "no cache at"),
        (lambda p: (p / META_FILE).unlink(), "not a feature cache"),
        (lambda p: (p / META_FILE).write_text("{"), "not valid JSON"),
        (lambda p: edit_meta(p, format_version=99), "format 99"),
        (lambda p: edit_meta(p, param_counts=[1, 2]), "3 model names but 2 parameter counts"),
        (lambda p: edit_meta(p, param_counts=[1, 2, -3]), "positive integers"),
        (lambda p: edit_meta(p, target_name="s"), "not the last model"),
        (lambda p: edit_meta(p, dtype="int8"), "dtype 'int8'"),
        (lambda p: edit_meta(p, vocab_size=99), r"is float16\[9, 3, 17\] but meta.json says"),
        (lambda p: (p / PREFIXES_FILE).unlink(), "lacks prefixes.json"),
        (lambda p: (p / PREFIXES_FILE).write_text('["a"]'), "holds 1 prefixes"),
        (lambda p: (p / LOGPROBS_FILE).unlink(), "lacks logprobs.npy"),
        (lambda p: (p / LOGPROBS_FILE).write_bytes(b"junk"), "unreadable"),
        (lambda p: np.save(p / "argmax.npy", np.zeros((9, 3), np.int64)), "argmax.npy is int64"),
        (lambda p: np.save(p / DONE_FILE, np.eye(3, 9, dtype=bool)), "'s' has 1/9 prefixes done"),
    ],
)
def test_open_refuses_broken_caches_in_one_line(cache_dir, breakage, message):
    breakage(cache_dir)
    with pytest.raises(CacheError, match=message) as error:
        open_cache(cache_dir)
    assert one_line(error)


def corrupt_row(path, value):
    logprobs = np.load(path / LOGPROBS_FILE, mmap_mode="r+")
    logprobs[4, 1, 2] = value
    logprobs.flush()


@pytest.mark.parametrize(
    "value, message",
    [
        (np.nan, "non-finite .* prefix 4, model 'm'"),
        (5.0, "prefix 4, model 'm' does not normalise"),
    ],
)
def test_full_check_finds_bad_values(cache_dir, value, message):
    corrupt_row(cache_dir, value)
    open_cache(cache_dir)  # the cheap check does not read rows
    with pytest.raises(CacheError, match=message) as error:
        open_cache(cache_dir, full_check=True)
    assert one_line(error)


def test_full_check_finds_bad_argmax(cache_dir):
    np.save(cache_dir / "argmax.npy", np.full((9, 3), VOCAB, np.int32))
    with pytest.raises(CacheError, match="outside the vocabulary"):
        open_cache(cache_dir).verify()


def test_create_rejects_bad_arguments(tmp_path):
    good = dict(
        model_names=["a", "b"],
        param_counts=[1, 2],
        prefixes=["x"],
        vocab_size=5,
        tokenizer="t",
    )
    for change, message in [
        ({"dtype": "bfloat16"}, "dtype 'bfloat16'"),
        ({"model_names": [], "param_counts": []}, "no models"),
        ({"param_counts": [1]}, "2 models but 1 parameter counts"),
        ({"param_counts": [1, None]}, "positive integers"),
        ({"model_names": ["a", "a"]}, "repeat"),
        ({"prefixes": []}, "no prefixes"),
    ]:
        with pytest.raises(CacheError, match=message):
            create_cache(tmp_path / "c", **{**good, **change})
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError, match="is a file"):
        create_cache(tmp_path / "file", **good)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(CacheError, match="not empty and not a feature cache"):
        create_cache(tmp_path / "busy", **good)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_names": ["s", "m", "x"]}, "other models"),
        ({"prefixes": [f"prefix {i}" for i in range(8)]}, "other prefixes"),
        ({"dtype": "float32"}, "other dtype"),
        ({"vocab_size": VOCAB + 1}, "other vocabulary size"),
    ],
)
def test_resume_refuses_a_different_job(cache_dir, change, message):
    args = dict(
        model_names=["s", "m", "t"],
        param_counts=[10, 20, 30],
        prefixes=[f"prefix {i}" for i in range(9)],
        vocab_size=VOCAB,
        tokenizer="tok",
    )
    with pytest.raises(CacheError, match=message):
        create_cache(cache_dir, **{**args, **change})


def test_only_committed_rows_count_as_done(tmp_path):
    """A kill between writing rows and committing them loses those rows, never marks them."""
    rng = np.random.default_rng(0)
    args = dict(model_names=["a", "b"], param_counts=[1, 2], prefixes=list("wxyz"), vocab_size=5)
    writer = create_cache(tmp_path / "c", tokenizer="t", **args)
    writer.commit_seconds = 0.0
    writer.write(0, [0, 1], random_logprobs(rng, 2, 5))  # committed at once
    writer.commit_seconds = 3600.0
    writer.write(0, [2], random_logprobs(rng, 1, 5))  # in the memory map, not yet committed
    del writer  # the process dies here
    resumed = create_cache(tmp_path / "c", tokenizer="t", **args)
    np.testing.assert_array_equal(resumed.pending(0), [2, 3])
    assert resumed.is_done(0, 1) and not resumed.is_done(0, 2)
    for m in range(2):
        pending = resumed.pending(m)
        resumed.write(m, pending, random_logprobs(rng, len(pending), 5))
    assert len(resumed.finalize()) == 4


def test_the_processes_of_one_job_commit_their_own_parts_and_the_holder_merges_them(tmp_path):
    """A torchrun job's ranks: rank 0 holds the lock and finishes; the others commit their rows
    to done.PART.npy, so a rank that dies loses only what it had not committed."""
    rng = np.random.default_rng(0)
    args = dict(model_names=["a", "b"], param_counts=[1, 2], prefixes=list("wxyz"), vocab_size=5)
    full = np.stack([random_logprobs(rng, 4, 5) for _ in range(2)], axis=1)
    first = create_cache(tmp_path / "c", tokenizer="t", **args)
    other = create_cache(tmp_path / "c", tokenizer="t", job=first.lock.job, part="rank1", **args)
    for m in range(2):
        first.write(m, [0, 1], full[[0, 1], m])
        other.write(m, [2, 3], full[[2, 3], m])
    other.close()  # committed to its part, not to done.npy
    assert not np.load(tmp_path / "c" / DONE_FILE)[:, 2:].any()
    assert np.load(tmp_path / "c" / "done.rank1.npy")[:, 2:].all()
    with pytest.raises(RuntimeError, match="does not finalize"):
        other.finalize()
    cache = first.finalize()  # merges the part, then reads every row back
    np.testing.assert_array_equal(cache.rows(range(4)), full.astype(np.float16))
    assert not (tmp_path / "c" / "done.rank1.npy").exists()


def test_a_resumed_job_keeps_the_rows_a_dead_process_committed_to_its_part(tmp_path):
    rng = np.random.default_rng(1)
    args = dict(model_names=["a"], param_counts=[1], prefixes=list("wxyz"), vocab_size=5)
    first = create_cache(tmp_path / "c", tokenizer="t", **args)
    other = create_cache(tmp_path / "c", tokenizer="t", job=first.lock.job, part="rank1", **args)
    other.write(0, [3], random_logprobs(rng, 1, 5))
    other.commit()
    (tmp_path / "c" / "done.rank2.npy.123-ab.tmp").write_bytes(b"torn")  # a part half written
    del first, other  # the whole job dies; a plain process reruns it
    resumed = create_cache(tmp_path / "c", tokenizer="t", **args)
    assert resumed.pending(0).tolist() == [0, 1, 2]
    assert np.load(tmp_path / "c" / DONE_FILE)[0].tolist() == [False, False, False, True]
    assert not (tmp_path / "c" / "done.rank1.npy").exists()
    with pytest.raises(ValueError, match="a writer's part is letters"):
        create_cache(tmp_path / "c", tokenizer="t", job=resumed.lock.job, part="../x", **args)


def test_a_crash_while_creating_is_redone(tmp_path):
    args = dict(model_names=["a"], param_counts=[1], prefixes=["x"], vocab_size=5, tokenizer="t")
    create_cache(tmp_path / "c", **args)
    (tmp_path / "c" / META_FILE).unlink()  # as if killed before meta.json was written
    (tmp_path / "c" / "done.npy.tmp").write_bytes(b"half")
    writer = create_cache(tmp_path / "c", **args)
    assert writer.pending(0).tolist() == [0]


def test_combine_models_of_one_dataset(tmp_path):
    a, full_a = make_cache(tmp_path / "a", names=("s", "m"), seed=1)
    b, full_b = make_cache(tmp_path / "b", names=("t",), seed=2)
    combined = combine_caches([a.path, b.path], tmp_path / "ab")
    assert combined.model_names == ["s", "m", "t"] and combined.target_name == "t"
    assert combined.param_counts == [10, 20, 10]
    np.testing.assert_array_equal(
        combined.logprobs, np.concatenate([a.logprobs, b.logprobs], axis=1)
    )
    np.testing.assert_array_equal(combined.argmax, np.concatenate([a.argmax, b.argmax], axis=1))


def test_combine_prefix_shards_and_promote_dtype(tmp_path):
    a, _ = make_cache(tmp_path / "a", prefixes=["p0", "p1"], seed=1)
    b, _ = make_cache(tmp_path / "b", prefixes=["p2"], seed=2, dtype="float32")
    combined = combine_caches([a.path, b.path], tmp_path / "ab")
    assert combined.prefixes == ["p0", "p1", "p2"] and combined.meta["dtype"] == "float32"
    np.testing.assert_array_equal(combined.rows([0, 1]), a.rows([0, 1]))
    np.testing.assert_array_equal(combined.rows([2]), b.rows([0]))
    assert len(combined.meta["source"]["combined"]) == 2


def test_combine_errors(tmp_path):
    a, _ = make_cache(tmp_path / "a")
    with pytest.raises(CacheError, match="at least two"):
        combine_caches([a.path], tmp_path / "x")
    with pytest.raises(CacheError, match="nothing to combine"):
        combine_caches([a.path, a.path], tmp_path / "x")
    b, _ = make_cache(tmp_path / "b", names=("u", "v"), prefixes=["other"])
    with pytest.raises(CacheError, match="share neither"):
        combine_caches([a.path, b.path], tmp_path / "x")
    c, _ = make_cache(tmp_path / "c", names=("u",), vocab=VOCAB + 1)
    with pytest.raises(CacheError, match="vocabulary size"):
        combine_caches([a.path, c.path], tmp_path / "x")
    d, _ = make_cache(tmp_path / "d", names=("t",))
    with pytest.raises(CacheError, match="more than one cache"):
        combine_caches([a.path, d.path], tmp_path / "x")


def test_pickles_as_its_path(cache_dir):
    """DataLoader workers that spawn get the cache by path, not 14 GB of copied rows."""
    cache = open_cache(cache_dir)
    data = pickle.dumps(cache)
    assert len(data) < 1000
    again = pickle.loads(data)
    np.testing.assert_array_equal(again.rows([1, 2]), cache.rows([1, 2]))


def test_a_cache_of_some_of_the_models(tiny_cache, tmp_path):
    from emergence_model.cache import select_models

    part = select_models(tiny_cache, [0, 2, -1], tmp_path / "part")
    assert part.model_names == [tiny_cache.model_names[i] for i in (0, 2, 3)]
    assert part.scales == [tiny_cache.scales[i] for i in (0, 2, 3)]
    np.testing.assert_array_equal(part.logprobs, tiny_cache.logprobs[:, [0, 2, 3]])
    np.testing.assert_array_equal(part.target_argmax, tiny_cache.target_argmax)
    assert part.prefixes == tiny_cache.prefixes
    with pytest.raises(CacheError, match="not in"):
        select_models(tiny_cache, [7], tmp_path / "bad")


def test_every_public_name_imports_from_the_package():
    import emergence_model.cache as package

    for name in package.__all__:
        assert getattr(package, name) is not None
    assert dir(package) == sorted(package.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'prefix_digest'"):
        package.prefix_digest  # noqa: B018  (fold identity lives in emergence_model.folds)
