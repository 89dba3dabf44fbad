"""Speculative decoding: the offline formulas on hand-computed cases, greedy decoding that is the
target's own, sampled decoding that follows the target's distribution, and consistent counts.

The models are toys with the Target/Draft interface (Markov chains and unigrams over 6 tokens)
and the tests' shared tiny GPT-NeoX suite (conftest.py), loaded as Pythia is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from emergence_model.lm import load_model
from emergence_model.speculative import (
    HFCausalLM,
    StrategyDraft,
    best_draft_length,
    draft_cost_ratio,
    expected_speedup,
    expected_tokens_per_pass,
    greedy_acceptance,
    measure_speculative,
    sampled_acceptance,
    speculative_generate,
)
from emergence_model.strategies import MeanProbability

VOCAB = 6


class MarkovLM:
    """A first-order Markov chain: the next token depends on the last one only. Target and draft."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logprobs = torch.log_softmax(logits, dim=-1)  # (V, V): row = previous token

    def last_logprobs(self, tokens: Sequence[int], k: int) -> torch.Tensor:
        return self.logprobs[torch.tensor(list(tokens[-k:]))]  # (k, V)

    def next_token_logprobs(self, tokens: Sequence[int]) -> torch.Tensor:
        return self.logprobs[tokens[-1]]  # (V,)


class UnigramLM:
    """The same next-token distribution after any context, so acceptances are independent and
    the formulas' `a` is exactly sum min(p, q)."""

    def __init__(self, probs: Sequence[float]) -> None:
        self.logprobs = torch.tensor(probs, dtype=torch.float32).log()

    def last_logprobs(self, tokens: Sequence[int], k: int) -> torch.Tensor:
        return self.logprobs.expand(k, -1).clone()

    def next_token_logprobs(self, tokens: Sequence[int]) -> torch.Tensor:
        return self.logprobs.clone()


class Counting:
    """Counts the calls to a model, to check the stats against what really ran."""

    def __init__(self, model) -> None:
        self.model, self.passes, self.steps = model, 0, 0

    def last_logprobs(self, tokens, k):
        self.passes += 1
        return self.model.last_logprobs(tokens, k)

    def next_token_logprobs(self, tokens):
        self.steps += 1
        return self.model.next_token_logprobs(tokens)


def markov(seed: int, scale: float = 1.5) -> MarkovLM:
    generator = torch.Generator().manual_seed(seed)
    return MarkovLM(scale * torch.randn(VOCAB, VOCAB, generator=generator))


def target_greedy(target, prompt: list[int], max_new_tokens: int, eos: int | None = None):
    """The target's own greedy decoding, one position per pass."""
    tokens: list[int] = []
    while len(tokens) < max_new_tokens and not (tokens and tokens[-1] == eos):
        tokens.append(int(target.last_logprobs(prompt + tokens, 1)[0].argmax()))
    return tokens


# --- formulas -----------------------------------------------------------------------------


def test_greedy_acceptance_compares_argmaxes():
    p = np.log([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    q = np.log([[0.4, 0.35, 0.25], [0.5, 0.3, 0.2]])
    assert greedy_acceptance(p, q).tolist() == [1.0, 0.0]
    assert isinstance(greedy_acceptance(torch.tensor(p), torch.tensor(q)), torch.Tensor)


def test_sampled_acceptance_is_one_minus_total_variation():
    p = np.array([[0.5, 0.3, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25]])
    q = np.array([[0.2, 0.3, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]])
    with np.errstate(divide="ignore"):
        overlap = sampled_acceptance(np.log(p), np.log(q))  # -inf where a probability is 0
    total_variation = 0.5 * np.abs(p - q).sum(axis=1)
    # min: 0.2 + 0.3 + 0.2 = 0.7 = 1 - 0.5 (0.3 + 0 + 0.3); identical rows overlap fully.
    np.testing.assert_allclose(overlap, [0.7, 1.0], atol=1e-6)  # float32 sums
    np.testing.assert_allclose(overlap, 1 - total_variation, atol=1e-6)
    assert isinstance(overlap, np.ndarray)
    disjoint = sampled_acceptance(torch.tensor([0.0, -math.inf]), torch.tensor([-math.inf, 0.0]))
    assert float(disjoint) == 0.0
    # float16 rows, slightly off normalised, still give an overlap of at most 1
    rounded = torch.log_softmax(torch.randn(3, 50), dim=-1).half()
    assert torch.all(sampled_acceptance(rounded, rounded) <= 1.0)
    with pytest.raises(ValueError, match="one shape"):
        sampled_acceptance(np.zeros((2, 3)), np.zeros((2, 4)))


def test_expected_tokens_per_pass_hand_cases():
    assert expected_tokens_per_pass(0.0, 4) == 1.0  # every draft rejected: the correction only
    assert expected_tokens_per_pass(1.0, 4) == 5.0  # every draft kept, plus the bonus
    assert expected_tokens_per_pass(0.5, 2) == pytest.approx(1.75)  # 1 + 0.5 + 0.25
    assert expected_tokens_per_pass(0.5, 0) == 1.0
    # no 0/0 just below a = 1: the closed form's limit
    assert expected_tokens_per_pass(1 - 1e-12, 4) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="acceptance"):
        expected_tokens_per_pass(1.5, 2)
    with pytest.raises(ValueError, match="draft length"):
        expected_tokens_per_pass(0.5, -1)


def test_expected_speedup_hand_cases():
    assert expected_speedup(0.5, 2, 0.25) == pytest.approx(1.75 / 1.5)
    assert expected_speedup(0.5, 2, 0.0) == pytest.approx(1.75)  # a free draft
    assert expected_speedup(0.8, 3, 0.1) == pytest.approx((1 - 0.8**4) / (0.2 * 1.3))


def test_best_draft_length_hand_cases():
    # a = 0.5, c = 0.25: g = 1 gives 1.5 / 1.25 = 1.2, g = 2 1.75 / 1.5, g = 3 1.875 / 1.75
    assert best_draft_length(0.5, 0.25) == (1, pytest.approx(1.2))
    # a perfect free draft: the longest draft allowed
    assert best_draft_length(1.0, 0.0, max_draft=8) == (8, 9.0)
    # a = 0.1, c = 0.5: every g is slower than the target alone (g = 1: 1.1 / 1.5)
    assert best_draft_length(0.1, 0.5) == (0, 1.0)
    a, c = 0.9, 0.05
    speedups = [expected_speedup(a, g, c) for g in range(1, 17)]
    assert best_draft_length(a, c) == (int(np.argmax(speedups)) + 1, pytest.approx(max(speedups)))


def test_draft_cost_ratio_from_parameter_counts():
    assert draft_cost_ratio([70, 160, 410], 12_000) == pytest.approx(640 / 12_000)
    assert draft_cost_ratio([12_000], 12_000) == 1.0
    for counts in ([8_000, 8_000], [0], []):
        with pytest.raises(ValueError, match="--cost-ratio"):
            draft_cost_ratio(counts, 12_000)


# --- greedy decoding ----------------------------------------------------------------------


@pytest.mark.parametrize("draft_length", [0, 1, 3, 6])
@pytest.mark.parametrize("eos", [None, 2])
def test_greedy_is_the_targets_greedy_markov(draft_length, eos):
    target, draft = markov(0), markov(1)
    for prompt in ([0], [3, 1], [5, 4, 2]):
        tokens, stats = speculative_generate(
            target, draft, prompt, 20, draft_length, greedy=True, generator=None, eos_token_id=eos
        )
        assert tokens == target_greedy(target, prompt, 20, eos)
        assert stats.emitted == len(tokens)


def test_greedy_with_the_target_as_draft_accepts_everything():
    target = markov(0)
    tokens, stats = speculative_generate(target, target, [1], 20, 4, greedy=True, generator=None)
    assert tokens == target_greedy(target, [1], 20)
    assert stats.accepted == stats.drafted == 16  # rounds of 4 + bonus; the last drafts 3
    assert stats.target_passes == 4


@pytest.fixture(scope="module")
def neox_models(tiny_suite):
    """The shared tiny GPT-NeoX suite, loaded through `from_pretrained` as Pythia is: its target
    (with padding logit rows, as Pythia-12b) and its two smallest models."""
    v = tiny_suite.vocab_size
    target = HFCausalLM(load_model(tiny_suite.model_ids[-1]), vocab_size=v)
    return target, *(HFCausalLM(load_model(m), vocab_size=v) for m in tiny_suite.model_ids[:2])


def test_hf_causal_lm_scores_the_last_positions(neox_models):
    target = neox_models[0]
    tokens = [3, 17, 40, 8, 21, 5]
    rows = target.last_logprobs(tokens, 4)
    assert target.model.get_output_embeddings().weight.shape[0] > target.vocab_size
    assert rows.shape == (4, target.vocab_size) and rows.dtype == torch.float32  # padding cut
    torch.testing.assert_close(rows.logsumexp(dim=-1), torch.zeros(4), atol=1e-5, rtol=0)
    for i in range(4):  # row i: after tokens[: len - 4 + 1 + i]
        expected = target.next_token_logprobs(tokens[: len(tokens) - 3 + i])
        torch.testing.assert_close(rows[i], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="last 1 to 6"):
        target.last_logprobs(tokens, 7)
    with pytest.raises(ValueError, match="vocab_size"):
        HFCausalLM(target.model, vocab_size=10_000)


def test_greedy_is_the_targets_greedy_gpt_neox(neox_models):
    target, small, other = neox_models

    def mean_prob(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(MeanProbability().scores(x))

    # Untrained small models never pick the target's token; a mix with the target itself does
    # about 3 times in 4, so that both accepted runs and corrections happen.
    drafts = {
        "small": small,
        "mean-prob": StrategyDraft([small, other], mean_prob),
        "mixed": StrategyDraft([small, target], mean_prob),
        "target": target,
    }
    prompts = [[1, 2, 3], [40, 7], [11, 30, 2, 19, 5]]
    for name, draft in drafts.items():
        accepted = drafted = 0
        for draft_length in (1, 4):
            for prompt in prompts:
                tokens, stats = speculative_generate(
                    target, draft, prompt, 16, draft_length, greedy=True, generator=None
                )
                assert tokens == target_greedy(target, prompt, 16), name
                accepted, drafted = accepted + stats.accepted, drafted + stats.drafted
        if name == "mixed":
            assert 0 < accepted < drafted


def test_the_kv_cache_gives_what_the_whole_sequence_gives(neox_models):
    target, small, other = neox_models
    whole = HFCausalLM(target.model, vocab_size=target.vocab_size, use_cache=False)
    cached = HFCausalLM(target.model, vocab_size=target.vocab_size)
    # extend, verify a draft, reject part of it (the cache is cropped back), start another text
    calls = [([1, 2, 3, 4], 1), ([1, 2, 3, 4, 5, 6], 3), ([1, 2, 3, 9], 2), ([1, 2, 3, 9, 10], 1),
             ([1, 2, 3, 9, 10], 5), ([7, 8], 2)]  # fmt: skip
    for tokens, k in calls:
        torch.testing.assert_close(
            cached.last_logprobs(tokens, k), whole.last_logprobs(tokens, k), atol=1e-5, rtol=1e-5
        )
    # a draft teacher-forced along a text gives, at each position, what it drafts there
    draft = StrategyDraft([small, other], lambda x: torch.from_numpy(MeanProbability().scores(x)))
    rows = draft.last_logprobs([1, 2, 3, 4, 5], 3)
    for i in range(3):
        expected = draft.next_token_logprobs([1, 2, 3, 4, 5][: 3 + i])
        torch.testing.assert_close(rows[i], expected, atol=1e-5, rtol=1e-5)


def test_strategy_draft_checks_what_combine_gives(neox_models):
    _, small, other = neox_models
    draft = StrategyDraft([small, other], lambda x: x[0])  # (M, V), not (1, V)
    with pytest.raises(ValueError, match=r"\(1, V\)"):
        draft.next_token_logprobs([1, 2])
    largest = StrategyDraft([small, other], lambda x: x[:, -1])
    torch.testing.assert_close(
        largest.next_token_logprobs([1, 2]), other.next_token_logprobs([1, 2])
    )
    assert largest.param_count == small.param_count + other.param_count


def test_draft_with_another_vocabulary_is_refused(neox_models):
    target = neox_models[0]
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(target, markov(0), [1, 2], 4, 2, greedy=True, generator=None)


# --- sampled decoding ---------------------------------------------------------------------


def chi_square_p_value(statistic: float, df: int) -> float:
    """P(chi2_df >= statistic): the regularised upper incomplete gamma (no scipy needed)."""
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), torch.tensor(statistic / 2.0)))


@pytest.mark.parametrize(("draft_length", "max_new_tokens"), [(1, 2), (3, 4)])
def test_sampled_follows_the_targets_distribution(draft_length, max_new_tokens):
    # A flat-ish target, so that every pair of tokens is expected at least 5 times, and a draft
    # that differs from it (sharper, other preferences), so that rejections and residuals happen.
    target, draft = markov(0, scale=0.6), markov(7, scale=2.0)
    prompt, runs = [2], 4000
    p = target.logprobs.double().exp()
    exact = (p[prompt[-1]][:, None] * p).flatten().numpy()  # P(x1, x2) = p(x1 | 2) p(x2 | x1)
    assert exact.min() * runs >= 5  # the chi-square approximation holds
    q = draft.logprobs.double().exp()
    draft_joint = (q[prompt[-1]][:, None] * q).flatten().numpy()
    # The test has power: the draft's own joint would give a statistic far past any threshold.
    assert runs * (((draft_joint - exact) ** 2) / exact).sum() > 1000

    generator = torch.Generator().manual_seed(0)
    counts = np.zeros(VOCAB * VOCAB)
    accepted = drafted = 0
    for _ in range(runs):
        tokens, stats = speculative_generate(
            target, draft, prompt, max_new_tokens, draft_length, greedy=False, generator=generator
        )
        counts[tokens[0] * VOCAB + tokens[1]] += 1
        accepted, drafted = accepted + stats.accepted, drafted + stats.drafted
    statistic = float((((counts - runs * exact) ** 2) / (runs * exact)).sum())
    # 35 degrees of freedom; 1 in 1000 seeds of a correct sampler would fail this
    assert chi_square_p_value(statistic, VOCAB * VOCAB - 1) > 1e-3, statistic
    assert 0 < accepted < drafted  # both the accept and the residual paths ran


def test_sampled_with_the_target_as_draft_accepts_everything():
    target = markov(3)
    generator = torch.Generator().manual_seed(0)
    tokens, stats = speculative_generate(
        target, target, [0], 50, 4, greedy=False, generator=generator
    )
    assert len(tokens) == 50
    assert stats.acceptance_rate == 1.0 and stats.verified_acceptance_rate == 1.0


def test_measured_tokens_per_pass_match_the_formula():
    # Unigram target and draft: each drafted token is kept independently with
    # a = sum min(p, q), the formulas' assumption, so the measurement must match them.
    p, q = [0.4, 0.3, 0.1, 0.1, 0.05, 0.05], [0.3, 0.1, 0.3, 0.1, 0.1, 0.1]
    a = float(sampled_acceptance(torch.tensor(p).log(), torch.tensor(q).log()))  # 0.7
    generator = torch.Generator().manual_seed(0)
    _, stats = speculative_generate(
        UnigramLM(p), UnigramLM(q), [0], 3000, 3, greedy=False, generator=generator
    )
    # ~1,200 rounds of at most 4 tokens: standard errors ~0.03 tokens per pass and ~0.01 in a
    assert stats.emitted / stats.target_passes == pytest.approx(
        expected_tokens_per_pass(a, 3), abs=0.1
    )
    assert stats.verified_acceptance_rate == pytest.approx(a, abs=0.03)
    assert stats.acceptance_rate < stats.verified_acceptance_rate  # counts the untested drafts


# --- counts -------------------------------------------------------------------------------


@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("eos", [None, 4])
@pytest.mark.parametrize("draft_length", [0, 2, 5])
def test_stats_are_consistent(greedy, eos, draft_length):
    generator = torch.Generator().manual_seed(1)
    for max_new_tokens in (1, 7, 30):
        target, draft = Counting(markov(0)), Counting(markov(1))
        tokens, stats = speculative_generate(
            target,
            draft,
            [3],
            max_new_tokens,
            draft_length,
            greedy=greedy,
            generator=generator,
            eos_token_id=eos,
        )
        assert stats.target_passes == target.passes and stats.drafted == draft.steps
        assert stats.emitted == len(tokens) == stats.accepted + stats.target_tokens
        assert len(tokens) <= max_new_tokens
        assert eos not in tokens[:-1]
        if eos not in tokens:
            assert len(tokens) == max_new_tokens
        # one target token a pass, except after an accepted end-of-text
        assert stats.target_passes - 1 <= stats.target_tokens <= stats.target_passes
        assert stats.accepted <= stats.verified <= stats.drafted <= draft_length * target.passes
        assert stats.passes_per_token <= 1.0


def test_measure_speculative_is_reproducible():
    target, draft = markov(0), markov(1)
    prompts = [[0], [1, 2], [3], [4, 5, 0], [2]]
    first = measure_speculative(target, draft, prompts, 12, 3, greedy=False, seed=5)
    assert first == measure_speculative(target, draft, prompts, 12, 3, greedy=False, seed=5)
    assert first != measure_speculative(target, draft, prompts, 12, 3, greedy=False, seed=6)
    assert first["totals"]["emitted"] == 5 * 12 and len(first["per_prompt"]) == 5
    for key in ("acceptance_rate", "verified_acceptance_rate", "passes_per_token"):
        lo, hi = first[key]["ci"]
        assert lo <= first[key]["value"] <= hi
    rates = [s["acceptance_rate"] for s in first["per_prompt"]]
    assert first["acceptance_rate"]["value"] == pytest.approx(np.mean(rates))
