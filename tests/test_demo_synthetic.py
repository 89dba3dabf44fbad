"""The emergent ladder's synthetic share: its windows, and each step's batch."""

import dataclasses

import numpy as np
import pytest
from tiny_demo import TINY

from emergence_model.demo.config import DemoConfig
from emergence_model.demo.pretrain import StepBatches
from emergence_model.demo.synthetic import (
    alternation_batch,
    copy_alphabet,
    copying_batch,
    copying_window,
    single_token_words,
)

ALPHABET = np.arange(1000, 1032)
REAL = np.arange(20 * 129).reshape(20, 129) % 500  # no alphabet word in the real text
SHARES = dataclasses.replace(TINY, batch_size=8, copy_share=0.25, alternation_share=0.25)


def test_copying_windows_repeat_one_span_at_gaps_that_vary():
    rng = np.random.default_rng(0)
    window, starts = copying_window(rng, REAL[0], ALPHABET, (6, 10), 16)
    assert window.shape == (129,) and len(starts) >= 3
    length = int(np.isin(window[starts[0] : starts[1]], ALPHABET).sum())
    span = window[starts[0] : starts[0] + length]
    assert 6 <= length <= 10 and len(set(span.tolist())) == length
    for start in starts[1:-1]:
        assert (window[start : start + length] == span).all()
    # the text between copies is the real window, in order, and its length varies
    filler = window[~np.isin(window, ALPHABET)]
    assert (filler == REAL[0][: len(filler)]).all()
    gaps = np.diff(starts) - length
    assert gaps.min() >= 0 and gaps.max() <= 16 and len(set(gaps.tolist())) > 1


def test_windows_are_a_function_of_seed_and_step():
    a = copying_batch(0, 5, 3, REAL, ALPHABET, (6, 16), 16)
    assert (a == copying_batch(0, 5, 3, REAL, ALPHABET, (6, 16), 16)).all()
    assert not (a == copying_batch(0, 6, 3, REAL, ALPHABET, (6, 16), 16)).all()
    assert not (a == copying_batch(1, 5, 3, REAL, ALPHABET, (6, 16), 16)).all()
    b = alternation_batch(0, 5, 2, 129, ALPHABET)
    assert (b == alternation_batch(0, 5, 2, 129, ALPHABET)).all()
    assert not (b == alternation_batch(0, 6, 2, 129, ALPHABET)).all()
    assert np.isin(b, ALPHABET).all()
    # each token of a run is the one two before it, so most are
    assert (b[:, 2:] == b[:, :-2]).mean() > 0.7


def test_a_step_batch_is_real_windows_then_the_synthetic_share():
    batches = StepBatches(REAL, SHARES, ALPHABET)
    batch = batches(3, 0)
    assert batch.shape == (8, 129)
    assert not np.isin(batch[:4], ALPHABET).any()  # four real windows
    assert np.isin(batch[4:6], ALPHABET).any(axis=1).all()  # two copying windows
    assert np.isin(batch[6:], ALPHABET).all()  # two alternation windows
    assert (batch == StepBatches(REAL, SHARES, ALPHABET)(3, 0)).all()
    assert not (batch == batches(3, 1)).all()
    # without a share the batch is the demo's
    plain = StepBatches(REAL, TINY)(3, 0)
    assert plain.shape == (TINY.batch_size, 129) and not np.isin(plain, ALPHABET).any()
    with pytest.raises(ValueError, match="alphabet"):
        StepBatches(REAL, SHARES)


def test_the_alphabet_is_single_token_words_and_refuses_a_small_vocabulary():
    from tiny_demo import small_tokenizer

    tokenizer = small_tokenizer()
    words = single_token_words(tokenizer)
    for i in words:
        text = tokenizer.decode([int(i)])
        assert text.startswith(" ") and text[1:].isalpha()
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == [i]
    with pytest.raises(ValueError, match="--copy-alphabet"):
        copy_alphabet(tokenizer, len(words) + 1)
    assert (copy_alphabet(tokenizer, 2) == copy_alphabet(tokenizer, 2)).all()


def test_the_synthetic_share_is_validated_in_one_line():
    for changes, flag in (
        ({"copy_share": 1.2}, "--copy-share"),
        ({"copy_share": 0.01}, "no window a step"),
        ({"copy_share": 0.5, "alternation_share": 0.5}, "no real-text window"),
        ({"copy_span_min": 9, "copy_span_max": 8}, "--copy-span-min"),
        ({"copy_span_max": 40}, "--copy-alphabet at least 40"),
        ({"copy_gap_max": -1}, "--copy-gap-max"),
        ({"target_steps": 10}, "--target-steps must be at least --steps"),
    ):
        with pytest.raises(ValueError, match=flag):
            DemoConfig(**changes)
    assert SHARES.synthetic_windows_per_step() == (2, 2) and SHARES.real_windows_per_step() == 4
    assert DemoConfig().synthetic_windows_per_step() == (0, 0)
