import os
import pickle

import numpy as np
import pytest

from emergence_model.cache import CacheError
from emergence_model.challenge import (
    export_challenge_pickle,
    import_challenge_pickle,
    load_challenge_pickle,
)
from emergence_model.logprobs import LOG_PROB_FLOOR
from emergence_model.suites import PYTHIA_PARAM_COUNTS, resolve_param_counts

NAMES = ["pythia-70m", "pythia-160m", "pythia-12b"]


def challenge_probs(num_sentences=4, vocab=11, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(num_sentences, len(NAMES), vocab)) * 8
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float16)
    assert (probs == 0).any()  # float16 flushed part of the tail to zero, as in the real data
    return probs


def write_pickle(path, obj, protocol=4):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", range(6))
def test_every_pickle_protocol_loads(tmp_path, protocol):
    probs = challenge_probs()
    sentences = [f"s{i}" for i in range(4)]
    pkl = write_pickle(tmp_path / "c.pkl", (NAMES, sentences, probs), protocol)
    names, got_sentences, got = load_challenge_pickle(pkl)
    assert names == NAMES and got_sentences == sentences
    np.testing.assert_array_equal(got, probs)


class RunsCode:
    """Unpickling this calls os.system: exactly what a hostile pickle does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = write_pickle(tmp_path / "evil.pkl", (NAMES, ["s"], RunsCode(marker)))
    # The same file through plain pickle.load would create the marker.
    assert b"system" in evil.read_bytes()
    with pytest.raises(CacheError, match="refused to load (posix|nt).system") as error:
        load_challenge_pickle(evil)
    assert "\n" not in str(error.value)
    assert not marker.exists()


def test_object_arrays_cannot_smuggle_code(tmp_path):
    marker = tmp_path / "pwned"
    smuggled = np.array([RunsCode(marker)], dtype=object)
    pkl = write_pickle(tmp_path / "obj.pkl", (NAMES, ["s"], smuggled))
    # The object dtype is refused before the array's items (and their globals) are even read.
    with pytest.raises(CacheError, match="refused dtype 'O8'"):
        load_challenge_pickle(pkl)
    assert not marker.exists()
    harmless = write_pickle(tmp_path / "str.pkl", (NAMES, ["s"], np.array([["x"]], dtype=object)))
    with pytest.raises(CacheError, match="only numeric arrays"):
        load_challenge_pickle(harmless)


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"names": NAMES}, "must hold a tuple"),
        ((NAMES, ["s"]), "must hold a tuple"),
        (([1, 2, 3], ["s"], np.zeros((1, 3, 5))), "model_names must be"),
        ((NAMES, [], np.zeros((0, 3, 5))), "sentences must be"),
        ((NAMES, ["s"], [[0.5]]), "probs must be"),
        ((NAMES, ["s", "t"], np.zeros((1, 3, 5), np.float16)), r"\(1, 3, 5\) for 2 sentences"),
    ],
)
def test_malformed_pickles(tmp_path, obj, message):
    with pytest.raises(CacheError, match=message):
        load_challenge_pickle(write_pickle(tmp_path / "bad.pkl", obj))


def test_missing_or_truncated_pickle(tmp_path):
    with pytest.raises(CacheError, match="no pickle at"):
        load_challenge_pickle(tmp_path / "absent.pkl")
    pkl = write_pickle(tmp_path / "c.pkl", (NAMES, ["s"], challenge_probs(1)))
    pkl.write_bytes(pkl.read_bytes()[:50])
    with pytest.raises(CacheError):
        load_challenge_pickle(pkl)


def test_param_counts_of_pythia_names_are_known_others_must_be_given():
    assert resolve_param_counts(["EleutherAI/pythia-70m", "pythia-12b"]) == [
        PYTHIA_PARAM_COUNTS["pythia-70m"],
        PYTHIA_PARAM_COUNTS["pythia-12b"],
    ]
    with pytest.raises(ValueError, match="unknown parameter counts for gpt2; pass --param-counts"):
        resolve_param_counts(["pythia-70m", "gpt2"])
    assert resolve_param_counts(["a", "b"], [1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="has 1 numbers for 2 models"):
        resolve_param_counts(["a", "b"], [1])


def test_import_floors_zeros_and_keeps_the_challenges_argmax(tmp_path):
    probs = challenge_probs()
    pkl = write_pickle(tmp_path / "c.pkl", (NAMES, [f"s{i}" for i in range(4)], probs))
    cache = import_challenge_pickle(pkl, tmp_path / "cache", dtype="float32")
    logprobs = cache.rows(range(4))
    assert np.isfinite(logprobs).all()
    assert np.allclose(logprobs[probs == 0], LOG_PROB_FLOOR)
    positive = probs > 0
    expected = probs[positive].astype(np.float32)
    np.testing.assert_allclose(np.exp(logprobs[positive]), expected, rtol=1e-6)
    np.testing.assert_array_equal(cache.argmax, probs.argmax(-1))
    np.testing.assert_array_equal(cache.target_argmax, probs[:, -1].argmax(-1))
    assert cache.param_counts == [PYTHIA_PARAM_COUNTS[n] for n in NAMES]
    assert cache.target_name == "pythia-12b"


def test_pickle_round_trip(tmp_path):
    probs = challenge_probs(num_sentences=6, vocab=40)
    sentences = [f"sentence {i}" for i in range(6)]
    pkl = write_pickle(tmp_path / "c.pkl", (NAMES, sentences, probs))
    cache = import_challenge_pickle(pkl, tmp_path / "cache")
    out = export_challenge_pickle(tmp_path / "cache", tmp_path / "out" / "again.pkl")
    names, got_sentences, got = load_challenge_pickle(out)
    assert names == NAMES and got_sentences == sentences and got.dtype == np.float16
    # float16 log-probabilities carry ~3 significant digits: probabilities agree to ~1%.
    np.testing.assert_allclose(got, probs, rtol=0.02, atol=1e-7)
    np.testing.assert_array_equal(got.argmax(-1), probs.argmax(-1))
    assert len(cache) == 6


def test_export_of_an_extracted_cache(tiny_cache, tmp_path):
    out = export_challenge_pickle(tiny_cache, tmp_path / "tiny.pkl")
    with open(out, "rb") as f:
        names, sentences, probs = pickle.load(f)  # what the challenge's own script does
    assert names == tiny_cache.model_names and sentences == tiny_cache.prefixes
    assert probs.shape == tiny_cache.logprobs.shape and probs.dtype == np.float16
    np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1.0, atol=0.02)
    back = import_challenge_pickle(out, tmp_path / "back", param_counts=tiny_cache.param_counts)
    np.testing.assert_array_equal(back.target_argmax, probs[:, -1].argmax(-1))
