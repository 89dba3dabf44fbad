import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from emergence_model import extract
from emergence_model.cache import CacheError, open_cache
from emergence_model.extract import (
    ExtractConfig,
    batch_logprobs,
    check_model,
    default_dtype,
    extract_suite,
    length_batches,
    next_token_logprobs,
    run_batches,
    tokenize_prefixes,
)
from emergence_model.lm import count_parameters, load_model, load_tokenizer

QUIET = ExtractConfig(progress=False)
BATCH_5 = ExtractConfig(batch_size=5, progress=False)


@pytest.fixture(scope="module")
def target(tiny_suite):
    """The target model: it has 29 padding logit rows beyond the tokenizer, like Pythia-12b."""
    model = load_model(tiny_suite.model_ids[-1])
    assert model.get_output_embeddings().weight.shape[0] == tiny_suite.vocab_size + 29
    return model, load_tokenizer(tiny_suite.model_ids[-1])


def reference_logprobs(model, tokenizer, prefix, vocab_size):
    """The challenge's way: one prefix, logits at every position, the last one taken."""
    ids = tokenizer(prefix, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1, :vocab_size]
    return torch.log_softmax(logits.float(), dim=-1).numpy()


@pytest.mark.parametrize("batch_size", [1, 4, 24])
def test_batched_equals_one_prefix_at_a_time(tiny_suite, target, batch_size):
    model, tokenizer = target
    prefixes = tiny_suite.prefixes
    lengths = [len(ids) for ids in tokenize_prefixes(tokenizer, prefixes)]
    assert len(set(lengths)) > 5  # batches really are padded
    got = next_token_logprobs(
        model, tokenizer, prefixes, batch_size=batch_size, vocab_size=tiny_suite.vocab_size
    )
    assert got.shape == (len(prefixes), tiny_suite.vocab_size) and got.dtype == np.float32
    expected = np.stack(
        [reference_logprobs(model, tokenizer, p, tiny_suite.vocab_size) for p in prefixes]
    )
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, atol=1e-5)


def test_length_batches_group_neighbours():
    lengths = [5, 1, 9, 1, 5, 7, 2]
    batches = length_batches(lengths, 3)
    assert [sorted(np.take(lengths, b)) for b in batches] == [[1, 1, 2], [5, 5, 7], [9]]
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    with pytest.raises(ValueError, match="--batch-size"):
        length_batches(lengths, 0)


def test_empty_prefix_is_refused(target):
    _, tokenizer = target
    with pytest.raises(ValueError, match="prefix 1 .* has no tokens"):
        tokenize_prefixes(tokenizer, ["fine", ""])


def test_check_model_refuses_mismatches(target, tiny_suite):
    model, _ = target
    n = count_parameters(model)
    with pytest.raises(CacheError, match="logit rows but the target's tokenizer"):
        check_model(model, "m", 10_000, [[1]], n)
    with pytest.raises(CacheError, match="more than m's context of 128"):
        check_model(model, "m", tiny_suite.vocab_size, [[1] * 129], n)
    with pytest.warns(UserWarning, match="parameters but 5 are recorded"):
        check_model(model, "m", tiny_suite.vocab_size, [[1]], 5)


def test_missing_local_model_is_named(tmp_path, tiny_suite):
    with pytest.raises(ValueError, match="no model directory at /nonexistent/model"):
        extract_suite(["/nonexistent/model"], ["a"], tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_default_dtype():
    assert default_dtype("cpu") == "float32" and default_dtype("cuda:1") == "bfloat16"
    with pytest.raises(ValueError, match="--dtype"):
        load_model("unused", dtype="int8")


def test_cache_holds_each_models_distribution(tiny_cache, tiny_suite):
    for m, model_dir in enumerate(tiny_suite.model_ids):
        model = load_model(model_dir)
        tokenizer = load_tokenizer(model_dir)
        expected = next_token_logprobs(
            model, tokenizer, tiny_suite.prefixes, vocab_size=tiny_suite.vocab_size
        )
        stored = tiny_cache.rows(range(len(tiny_cache)))[:, m]
        np.testing.assert_allclose(stored, expected, atol=0.01, rtol=0.002)  # float16 rounding
        np.testing.assert_array_equal(tiny_cache.argmax[:, m], expected.argmax(-1))


def test_one_model_in_memory_at_a_time(tiny_suite, tmp_path, monkeypatch):
    alive = []
    real_load = extract.load_model

    def load_and_track(*args, **kwargs):
        assert all(ref() is None for ref in alive), "the previous model was not freed"
        model = real_load(*args, **kwargs)
        alive.append(weakref.ref(model))
        return model

    monkeypatch.setattr(extract, "load_model", load_and_track)
    extract_suite(tiny_suite.model_ids[:3], tiny_suite.prefixes[:4], tmp_path / "c", QUIET)
    assert len(alive) == 3


def test_resume_after_a_crash_continues_and_matches(tiny_suite, tiny_cache, tmp_path, monkeypatch):
    calls = []
    real_batch = extract.batch_logprobs

    def crash_on_the_ninth_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 9:  # mid-way through the second model (5 batches per model)
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(extract, "batch_logprobs", crash_on_the_ninth_batch)
    out = tmp_path / "resumed"
    args = (tiny_suite.model_ids, tiny_suite.prefixes, out)
    with pytest.raises(KeyboardInterrupt):
        extract_suite(*args, BATCH_5)
    with pytest.raises(CacheError, match="incomplete: model .*tiny-neox-1' has 15/24"):
        open_cache(out)

    loaded = []
    real_load = extract.load_model
    monkeypatch.setattr(extract, "batch_logprobs", real_batch)
    monkeypatch.setattr(
        extract, "load_model", lambda m, **kw: loaded.append(m) or real_load(m, **kw)
    )
    cache = extract_suite(*args, BATCH_5)
    assert loaded == tiny_suite.model_ids[1:]  # the finished first model is not even loaded
    np.testing.assert_allclose(cache.logprobs, tiny_cache.logprobs, atol=0.004)
    np.testing.assert_array_equal(cache.argmax, tiny_cache.argmax)
    # A rerun of a finished cache loads nothing and changes nothing.
    loaded.clear()
    again = extract_suite(*args, BATCH_5)
    assert loaded == [] and np.array_equal(again.logprobs, cache.logprobs)


def test_extract_float32_cache_with_bfloat16_weights(tiny_suite, tmp_path):
    cache = extract_suite(
        tiny_suite.model_ids[-2:],
        tiny_suite.prefixes[:6],
        tmp_path / "c",
        ExtractConfig(dtype="bfloat16", cache_dtype="float32", batch_size=4, progress=False),
        seed=7,
        source={"dataset": "unit"},
    )
    assert cache.logprobs.dtype == np.float32
    assert cache.meta["extraction"]["model_dtype"] == "bfloat16"
    assert cache.meta["seed"] == 7 and cache.meta["source"] == {"dataset": "unit"}
    np.testing.assert_allclose(np.exp(cache.rows(range(6))).sum(-1), 1.0, atol=1e-4)


def test_batch_logprobs_cuts_padding_rows(target, tiny_suite):
    model, _ = target
    out = batch_logprobs(model, [[5, 6, 7], [8]], "cpu", tiny_suite.vocab_size)
    assert out.shape == (2, tiny_suite.vocab_size) and out.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"batch_size": 0}, "--batch-size"),
        ({"dtype": "int8"}, "--dtype"),
        ({"cache_dtype": "bfloat16"}, "--cache-dtype"),
        ({"device_map": "everywhere"}, "--device-map"),
        ({"device_map": "auto", "device": "cpu"}, "--device and --device-map: pick one"),
    ],
)
def test_extract_config_names_the_flag_to_fix(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        ExtractConfig(**kwargs)


class FakeOutOfMemory(Exception):
    """Stands in for torch.OutOfMemoryError, which a CPU never raises."""


class MemoryBound(torch.nn.Module):
    """A causal LM whose next-token logits are a table's row for the last token, and which runs
    out of memory on batches of more than `limit` prefixes."""

    def __init__(self, limit: int, vocab: int) -> None:
        super().__init__()
        self.limit = limit
        self.table = torch.randn(vocab, vocab + 3, generator=torch.Generator().manual_seed(0))
        self.sizes = []

    def forward(self, input_ids, attention_mask, logits_to_keep):
        self.sizes.append(len(input_ids))
        if len(input_ids) > self.limit:
            raise FakeOutOfMemory
        last = input_ids.gather(1, logits_to_keep)  # (b, 1): the last real token of each row
        return SimpleNamespace(logits=self.table[last])  # (b, 1, rows)


def test_a_batch_that_runs_out_of_memory_is_halved_and_its_rows_retried():
    token_ids = [[i % 7, (3 * i) % 7] for i in range(10)]
    model, messages = MemoryBound(limit=2, vocab=7), []
    batches = [np.arange(8), np.arange(8, 10)]
    out = list(
        run_batches(
            model, token_ids, batches, device="cpu", vocab_size=7,
            out_of_memory=FakeOutOfMemory, on_backoff=messages.append,
        )
    )  # fmt: skip
    assert messages == ["batch 8 -> 4 (out of memory)", "batch 4 -> 2 (out of memory)"]
    assert model.sizes == [8, 4, 2, 2, 2, 2, 2]  # later batches start at the size that fitted
    rows = np.concatenate([r for r, _ in out])
    assert rows.tolist() == list(range(10))
    expected = torch.log_softmax(model.table[[ids[-1] for ids in token_ids], :7], -1).numpy()
    np.testing.assert_allclose(np.concatenate([lp for _, lp in out]), expected, rtol=0, atol=1e-6)


def test_one_prefix_that_does_not_fit_is_one_line_naming_the_model_and_its_length():
    model = MemoryBound(limit=0, vocab=7)
    batches = run_batches(
        model, [[1, 2, 3]], [np.array([0])], device="cpu", vocab_size=7, model_name="org/big",
        out_of_memory=FakeOutOfMemory,
    )  # fmt: skip
    with pytest.raises(CacheError, match="org/big runs out of memory on one prefix of 3 tokens"):
        next(batches)


def test_a_resumed_extraction_runs_each_row_in_its_first_run_s_batch(
    tiny_suite, tmp_path, monkeypatch
):
    """Batches are cut from every prefix, not from those left, so a rerun writes the bytes of an
    uninterrupted run."""
    out, ids = tmp_path / "c", tiny_suite.model_ids[-1:]
    first = extract_suite(ids, tiny_suite.prefixes, out, BATCH_5)
    done = np.load(out / "done.npy")
    done[0, [0, 1, 2]] = False  # three rows of (at most) three batches were never committed
    np.save(out / "done.npy", done)
    sizes, real = [], extract.batch_logprobs

    def spy(model, token_ids, *args):
        sizes.append(len(token_ids))
        return real(model, token_ids, *args)

    monkeypatch.setattr(extract, "batch_logprobs", spy)
    again = extract_suite(ids, tiny_suite.prefixes, out, BATCH_5)
    assert 1 <= len(sizes) <= 3 and set(sizes) <= {5, 24 % 5}  # whole batches of the first run
    np.testing.assert_array_equal(again.logprobs, first.logprobs)


def test_device_map_without_accelerate_is_one_line_saying_how_to_get_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name)
    )
    with pytest.raises(ValueError, match="--device-map needs accelerate.*: pip install accelerate"):
        ExtractConfig(device_map="auto")


def test_device_map_auto_extracts_the_same_rows(tiny_suite, tiny_cache, tmp_path):
    pytest.importorskip("accelerate")
    config = ExtractConfig(device_map="auto", batch_size=5, progress=False)
    cache = extract_suite(tiny_suite.model_ids, tiny_suite.prefixes, tmp_path / "c", config)
    assert cache.meta["extraction"]["device"] == "map:auto"
    np.testing.assert_array_equal(cache.logprobs, tiny_cache.logprobs)
