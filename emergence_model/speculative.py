"""Speculative decoding with a draft made of the small models: what predicting the target buys.

A draft proposes `g` tokens, the target scores them all in one forward pass and keeps the longest
prefix it agrees with, plus one token of its own (Leviathan et al. 2023, arXiv 2211.17192; Chen
et al. 2023, "Accelerating large language model decoding with speculative sampling"). The better
the draft predicts the target, the more tokens each target pass yields; the draft here can be any
strategy over the small models (`StrategyDraft`).

Two halves:

- offline formulas, from cached next-token distributions: the per-position acceptance of a draft
  (`greedy_acceptance`, `sampled_acceptance`), and from its mean `a` the expected tokens per target
  pass, the expected speed-up at a draft cost `c`, and the best draft length;
- a real implementation, `speculative_generate`, that decodes with a target and a draft (exactly the
  target's greedy output, or exactly the target's distribution when sampling) and counts what
  happened, and `measure_speculative`, which runs it over prompts with bootstrap intervals.

```python
target = HFCausalLM(load_model("EleutherAI/pythia-12b"), vocab_size=50277)
small = [HFCausalLM(load_model(m), vocab_size=50277) for m in small_ids]
draft = StrategyDraft(small, lambda x: torch.from_numpy(MeanProbability().scores(x)))
report = measure_speculative(target, draft, prompts, 64, 4, greedy=True, seed=0)
```
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Protocol

import numpy as np
import torch

from emergence_model.lm import count_parameters
from emergence_model.stats import mean_with_ci

DEFAULT_MAX_DRAFT = 16
"""Longest draft `best_draft_length` considers."""

LogProbs = np.ndarray | torch.Tensor


# ---------------------------------------------------------------------------------------------
# Offline formulas
# ---------------------------------------------------------------------------------------------


def greedy_acceptance(target_logprobs: LogProbs, draft_logprobs: LogProbs) -> LogProbs:
    """Per-position acceptance of greedy speculative decoding: [argmax q == argmax p].

    (..., V) target log-probs p and draft log-probs q -> (...) 0/1 as float64, numpy for numpy
    input. A greedy draft token is kept exactly when it is the target's own greedy token. Ties
    resolve to the lowest id on both sides, as `speculative_generate` resolves them.
    """
    p, q, as_numpy = _paired_rows(target_logprobs, draft_logprobs)
    accepted = (p.argmax(dim=-1) == q.argmax(dim=-1)).double()
    return accepted.numpy() if as_numpy else accepted


def sampled_acceptance(
    target_logprobs: LogProbs, draft_logprobs: LogProbs, *, normalized: bool = False
) -> LogProbs:
    """Per-position acceptance of sampled speculative decoding: sum_x min(p(x), q(x)).

    (..., V) target log-probs p and draft log-probs q -> (...) float, numpy for numpy input.
    A draft token x ~ q is kept with probability min(1, p(x) / q(x)), so the chance of keeping it
    is sum_x q(x) min(1, p(x)/q(x)) = sum_x min(p(x), q(x)) = 1 - TV(p, q).

    Rows are renormalised first unless `normalized` says they already are (log_softmax output):
    float16 caches round log-probs, so their rows sum to 1 only to about 1e-3, which would let the
    overlap exceed 1. Summed in float32: a token below exp(-103) that flushes to zero changes
    the sum by less than float32 can show.
    """
    p, q, as_numpy = _paired_rows(target_logprobs, draft_logprobs)
    if not normalized:
        p, q = p.log_softmax(dim=-1), q.log_softmax(dim=-1)
    overlap = torch.minimum(p, q).exp().sum(dim=-1).clamp(0.0, 1.0)
    return overlap.double().numpy() if as_numpy else overlap


def _paired_rows(target: LogProbs, draft: LogProbs) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Both inputs as float32 tensors of one shape, and whether the caller gave numpy."""
    as_numpy = isinstance(target, np.ndarray)
    p = torch.as_tensor(np.asarray(target) if as_numpy else target).float()
    q = torch.as_tensor(np.asarray(draft) if isinstance(draft, np.ndarray) else draft).float()
    if p.shape != q.shape or p.ndim == 0:
        raise ValueError(
            f"target and draft log-probs must have one shape (..., vocab), got {tuple(p.shape)} "
            f"and {tuple(q.shape)}"
        )
    return p, q, as_numpy


def expected_tokens_per_pass(acceptance: float, draft_length: int) -> float:
    """Expected tokens emitted per target pass: (1 - a^(g+1)) / (1 - a), g + 1 at a = 1.

    With each drafted token kept independently with probability `a` (the mean acceptance) and `g`
    drafted tokens per round, a round emits the accepted run plus one token of the target's own.
    Summed as the geometric series 1 + a + ... + a^g, which has no 0/0 at a = 1 and no
    cancellation just below it.
    """
    _check_acceptance(acceptance)
    _check_draft_length(draft_length)
    return float(sum(acceptance**i for i in range(draft_length + 1)))


def expected_speedup(acceptance: float, draft_length: int, cost_ratio: float) -> float:
    """Expected wall-clock speed-up over decoding with the target alone:
    (1 - a^(g+1)) / ((1 - a)(g c + 1)).

    A round costs one target pass plus `g` draft passes of relative cost `c` (the draft's time per
    token over the target's time per pass) and emits `expected_tokens_per_pass(a, g)` tokens.
    """
    if not cost_ratio >= 0.0:
        raise ValueError(f"the draft's cost ratio must be at least 0, got {cost_ratio}")
    tokens = expected_tokens_per_pass(acceptance, draft_length)
    return tokens / (draft_length * cost_ratio + 1.0)


def best_draft_length(
    acceptance: float, cost_ratio: float, max_draft: int = DEFAULT_MAX_DRAFT
) -> tuple[int, float]:
    """The draft length g in 1..max_draft with the largest `expected_speedup`, and that speed-up.

    If even the best g gives a speed-up below 1, speculating is slower than decoding with the
    target alone: the answer is then (0, 1.0), meaning "do not speculate". Ties go to the
    shorter draft, which does less work for the same speed.
    """
    if max_draft < 1:
        raise ValueError(f"the longest draft to consider must be at least 1, got {max_draft}")
    speedups = [expected_speedup(acceptance, g, cost_ratio) for g in range(1, max_draft + 1)]
    best = int(np.argmax(speedups))  # the first maximum: the shortest draft
    if speedups[best] < 1.0:
        return 0, 1.0
    return best + 1, speedups[best]


def draft_cost_ratio(draft_param_counts: Sequence[int], target_param_count: int) -> float:
    """The draft's cost relative to one target pass, estimated from parameter counts: the sum of
    the parameters of the models the draft runs (all of them, for a combining strategy) over the
    target's. Forward-pass time grows roughly with parameters; measured times are better where
    there are any, hence the flag the error names."""
    total = float(sum(draft_param_counts))
    ratio = total / target_param_count if target_param_count > 0 else math.inf
    if not 0.0 < ratio <= 1.0:
        raise ValueError(
            f"the draft's models have {ratio:.3g}x the target's parameters, outside (0, 1]: "
            "give the draft's measured cost per target pass with --cost-ratio"
        )
    return ratio


def _check_acceptance(acceptance: float) -> None:
    if not 0.0 <= acceptance <= 1.0:
        raise ValueError(f"the acceptance must be in [0, 1], got {acceptance}")


def _check_draft_length(draft_length: int) -> None:
    if int(draft_length) != draft_length or draft_length < 0:
        raise ValueError(f"the draft length must be a whole number >= 0, got {draft_length}")


# ---------------------------------------------------------------------------------------------
# Speculative decoding
# ---------------------------------------------------------------------------------------------


class Target(Protocol):
    """A model that scores several positions in one forward pass (one "target pass")."""

    def last_logprobs(self, tokens: Sequence[int], k: int) -> torch.Tensor:
        """(k, V) next-token log-probs after tokens[:len - k + 1], ..., after all of `tokens`."""
        ...


class Draft(Protocol):
    """A model that proposes one token at a time."""

    def next_token_logprobs(self, tokens: Sequence[int]) -> torch.Tensor:
        """(V,) normalised next-token log-probs after `tokens`."""
        ...


@dataclass
class SpeculativeStats:
    """What one decoding did. Every count is counted on its own, so that the identities between
    them (emitted = accepted + target_tokens, verified <= drafted) check the implementation."""

    target_passes: int = 0
    drafted: int = 0
    """Tokens the draft proposed (its forward passes)."""
    verified: int = 0
    """Drafted tokens that reached the accept/reject test: a round stops testing at the first
    rejection, so the rest of its draft is never judged."""
    accepted: int = 0
    target_tokens: int = 0
    """Tokens the target chose itself: the correction after a rejection, or the bonus token after
    a fully accepted draft (one per pass, except after an accepted end-of-text)."""
    emitted: int = 0

    @property
    def acceptance_rate(self) -> float:
        """accepted / drafted: the share of the draft's work that was kept."""
        return self.accepted / self.drafted if self.drafted else math.nan

    @property
    def verified_acceptance_rate(self) -> float:
        """accepted / verified: the estimate of the per-token acceptance `a` of the formulas
        (accepted / drafted is lower, as it counts the untested tail of each rejected draft)."""
        return self.accepted / self.verified if self.verified else math.nan

    @property
    def passes_per_token(self) -> float:
        return self.target_passes / self.emitted if self.emitted else math.nan

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "acceptance_rate": self.acceptance_rate,
            "verified_acceptance_rate": self.verified_acceptance_rate,
            "passes_per_token": self.passes_per_token,
        }


def speculative_generate(
    target: Target,
    draft: Draft,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    draft_length: int,
    *,
    greedy: bool,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
) -> tuple[list[int], SpeculativeStats]:
    """Decode up to `max_new_tokens` tokens after `prompt_ids`; returns the new tokens and stats.

    Each round the draft proposes up to `draft_length` tokens (fewer where the token budget has
    less room, or when it proposes `eos_token_id`) and the target scores all of them in one pass.
    Greedy: drafted tokens are argmax q, kept while they equal argmax p, and the first mismatch is
    replaced by argmax p; if all are kept, argmax p at the next position is a bonus token. The
    output is the target's own greedy output. Sampled: x ~ q is kept with probability
    min(1, p(x)/q(x)); the first rejected one is replaced by a sample of norm(max(0, p - q)), and
    a fully kept draft earns a bonus sample of p. The output then follows the target's
    distribution exactly, whatever the draft. Decoding stops after `eos_token_id` (emitted).
    `draft_length` 0 is plain decoding with the target, one pass per token.
    """
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token: the target scores after it")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be at least 0, got {max_new_tokens}")
    _check_draft_length(draft_length)
    context = list(prompt_ids)
    new: list[int] = []
    stats = SpeculativeStats()
    while len(new) < max_new_tokens and not (new and new[-1] == eos_token_id):
        # A round emits at most its draft plus one: never draft past the budget.
        budget = min(draft_length, max_new_tokens - len(new) - 1)
        drafted, draft_rows = _draft(draft, context, budget, greedy, generator, eos_token_id)
        p = target.last_logprobs(context + drafted, len(drafted) + 1)  # (g + 1, V)
        stats.target_passes += 1
        if draft_rows and draft_rows[0].shape[-1] != p.shape[-1]:
            raise ValueError(
                f"the draft has a vocabulary of {draft_rows[0].shape[-1]}, the target of "
                f"{p.shape[-1]}: cut both to the tokenizer's vocab_size"
            )
        if greedy:
            kept = _verify_greedy(drafted, p)
        else:
            kept = _verify_sampled(drafted, draft_rows, p, generator)
        round_tokens = drafted[:kept]
        stats.drafted += len(drafted)
        stats.verified += min(kept + 1, len(drafted))
        stats.accepted += kept
        ended = kept > 0 and kept == len(drafted) and drafted[-1] == eos_token_id
        if not ended:
            if greedy:
                round_tokens.append(int(p[kept].argmax()))
            elif kept < len(drafted):
                round_tokens.append(_sample_residual(p[kept], draft_rows[kept], generator))
            else:
                round_tokens.append(_sample(p[kept], generator))
            stats.target_tokens += 1
        context += round_tokens
        new += round_tokens
    stats.emitted = len(new)
    return new, stats


def _draft(
    draft: Draft,
    context: list[int],
    count: int,
    greedy: bool,
    generator: torch.Generator | None,
    eos_token_id: int | None,
) -> tuple[list[int], list[torch.Tensor]]:
    """Up to `count` draft tokens after `context`, and the draft's (V,) log-probs for each."""
    tokens: list[int] = []
    rows: list[torch.Tensor] = []
    for _ in range(count):
        q = draft.next_token_logprobs(context + tokens)  # (V,)
        token = int(q.argmax()) if greedy else _sample(q, generator)
        tokens.append(token)
        rows.append(q)
        if token == eos_token_id:  # nothing after the end of the text is worth drafting
            break
    return tokens, rows


def _verify_greedy(drafted: list[int], p: torch.Tensor) -> int:
    """How many drafted tokens the target's greedy choices (rows of (g + 1, V) p) keep."""
    choices = p[: len(drafted)].argmax(dim=-1).tolist()
    kept = 0
    while kept < len(drafted) and drafted[kept] == choices[kept]:
        kept += 1
    return kept


def _verify_sampled(
    drafted: list[int],
    draft_rows: list[torch.Tensor],
    p: torch.Tensor,
    generator: torch.Generator | None,
) -> int:
    """How many drafted tokens pass the test u < p(x) / q(x), u ~ U[0, 1), in order."""
    for i, (token, q) in enumerate(zip(drafted, draft_rows, strict=True)):
        ratio = math.exp(float(p[i, token]) - float(q[token]))  # 0 where p(x) = 0
        if not float(torch.rand((), generator=generator, dtype=torch.float64)) < ratio:
            return i
    return len(drafted)


def _sample(logprobs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from a (V,) log-distribution (float64, so that small probabilities count)."""
    return int(torch.multinomial(logprobs.double().exp(), 1, generator=generator))


def _sample_residual(p: torch.Tensor, q: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from norm(max(0, p - q)), given (V,) log-probs: after a rejection, the residual
    puts back the mass that q under-proposes, so that accepted and corrected tokens add up to p."""
    residual = (p.double().exp() - q.double().exp()).clamp_min(0.0)
    if not residual.sum() > 0.0:
        # p == q up to rounding: the rejection was a rounding accident, and p is the limit.
        return _sample(p, generator)
    return int(torch.multinomial(residual, 1, generator=generator))


# ---------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------


class HFCausalLM:
    """A transformers causal LM as a target or a draft: float32 log-probs over the first
    `vocab_size` logit rows (Pythia-12b has 50688 rows for 50277 tokens; the rest are padding).

    It keeps a KV cache of the last sequence it scored: a call whose tokens begin with those runs
    only the positions after them (and at least the last k), as a decoder does; a call that
    departs from them (a rejected draft) crops the cache back to where they agree.
    `use_cache=False` runs the whole sequence every call.
    """

    def __init__(
        self, model: torch.nn.Module, vocab_size: int | None = None, *, use_cache: bool = True
    ) -> None:
        self.model = model.eval()
        rows = model.get_output_embeddings().weight.shape[0]
        self.vocab_size = rows if vocab_size is None else int(vocab_size)
        if not 0 < self.vocab_size <= rows:
            raise ValueError(
                f"vocab_size {self.vocab_size} is outside the model's {rows} logit rows: pass the "
                "tokenizer's length"
            )
        self.device = next(model.parameters()).device
        self.param_count = count_parameters(model)
        self.use_cache = use_cache
        self._past = None  # the KV cache of self._cached
        self._cached: list[int] = []

    @torch.inference_mode()
    def last_logprobs(self, tokens: Sequence[int], k: int) -> torch.Tensor:
        """(k, V) next-token log-probs at the last k positions of `tokens`, on the CPU."""
        tokens = list(tokens)
        if not 1 <= k <= len(tokens):
            raise ValueError(f"can score the last 1 to {len(tokens)} positions, asked for {k}")
        start = 0
        if self.use_cache and self._past is not None:
            start = min(_common_prefix(self._cached, tokens), len(tokens) - k)
        if start:
            crop_cache(self._past, start)
        past = self._past if start else None
        input_ids = torch.tensor([tokens[start:]], dtype=torch.long, device=self.device)
        # logits_to_keep (transformers 5.x) projects only the last k hidden states to the vocab.
        out, cache = cached_forward(self.model, input_ids, past, self.use_cache, logits_to_keep=k)
        if self.use_cache:
            self._past, self._cached = cache, tokens
        return torch.log_softmax(out.logits[0, :, : self.vocab_size].float(), dim=-1).cpu()

    def next_token_logprobs(self, tokens: Sequence[int]) -> torch.Tensor:
        """(V,) next-token log-probs after `tokens`."""
        return self.last_logprobs(tokens, 1)[0]


def cached_forward(model: torch.nn.Module, input_ids: torch.Tensor, cache, use_cache: bool = True,
                   **kwargs):  # fmt: skip
    """model(input_ids) after the KV cache `cache` (None: none yet) -> (its output, the cache
    after it). transformers 5.x names the cache `cache` in and out, 4.x `past_key_values`."""
    name = _cache_argument(type(model))
    out = model(input_ids=input_ids, use_cache=use_cache, **{name: cache}, **kwargs)
    return out, getattr(out, name, None)


@functools.cache
def _cache_argument(model_class: type) -> str:
    """The keyword a model class's forward takes its KV cache by: looked up once per class, not
    in every (timed) decode step."""
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def crop_cache(past, length: int) -> None:
    """Cut a transformers KV cache back to its first `length` positions (a negative count to
    remove: what transformers 4.x and 5.x both read the same way)."""
    remove = past.get_seq_length() - length
    if remove > 0:
        past.crop(-remove)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class StrategyDraft:
    """A draft that combines the small models' next-token distributions.

    `combine` maps the (1, M, V) small models' log-probs to a (1, V) log-distribution, e.g.
    `lambda x: torch.from_numpy(MeanProbability().scores(x))`, or `lambda x: x[:, -1]` for the
    largest model alone. Its output is renormalised, so a strategy whose rows are off by rounding
    (floored log-probs) cannot bias the acceptance test, which reads q(x).
    """

    def __init__(
        self,
        small_models: Sequence[HFCausalLM],
        combine: Callable[[torch.Tensor], LogProbs],
    ) -> None:
        if not small_models:
            raise ValueError("a strategy draft needs at least one small model")
        sizes = {m.vocab_size for m in small_models}
        if len(sizes) != 1:
            raise ValueError(f"the small models have vocabularies of {sorted(sizes)}: use one")
        self.small_models = list(small_models)
        self.combine = combine
        self.param_count = sum(m.param_count for m in self.small_models)

    def next_token_logprobs(self, tokens: Sequence[int]) -> torch.Tensor:
        """(V,) combined next-token log-probs after `tokens`."""
        return self.last_logprobs(tokens, 1)[0]

    def last_logprobs(self, tokens: Sequence[int], k: int) -> torch.Tensor:
        """(k, V) combined next-token log-probs at the last k positions of `tokens` (as the
        draft would have proposed them there: teacher-forced, for the offline estimate on the
        positions a decoding went through)."""
        x = torch.stack([m.last_logprobs(tokens, k) for m in self.small_models], dim=1)  # (k, M, V)
        scores = torch.as_tensor(self.combine(x)).float()  # (k, M, V) -> (k, V)
        if scores.shape != (k, x.shape[-1]):
            raise ValueError(
                f"combine must map (1, M, V) log-probs to (1, V), gave {tuple(scores.shape)}"
            )
        return torch.log_softmax(scores, dim=-1)


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


def measure_speculative(
    target: Target,
    draft: Draft,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    draft_length: int,
    greedy: bool,
    seed: int,
    *,
    eos_token_id: int | None = None,
) -> dict:
    """Speculative decoding of every prompt, with totals and 95% bootstrap intervals over prompts.

    Returns the settings, the summed counts, per-prompt means with intervals of the acceptance
    rate (accepted / drafted), the verified acceptance rate (the formulas' `a`) and target passes
    per token, and each prompt's stats (for paired comparisons between drafts). One generator
    seeded with `seed` drives all the sampling, so a run is reproducible.
    """
    if not prompts:
        raise ValueError("no prompts to decode")
    generator = torch.Generator().manual_seed(seed)
    per_prompt = []
    for prompt in prompts:
        _, stats = speculative_generate(
            target,
            draft,
            prompt,
            max_new_tokens,
            draft_length,
            greedy=greedy,
            generator=generator,
            eos_token_id=eos_token_id,
        )
        per_prompt.append(stats)
    totals = SpeculativeStats(
        **{f.name: sum(getattr(s, f.name) for s in per_prompt) for f in fields(SpeculativeStats)}
    )

    def over_prompts(rates: list[float]) -> dict:
        # A prompt that drafted nothing (a budget of one token) has no rate to average.
        return mean_with_ci(np.array([r for r in rates if not math.isnan(r)]), seed=seed)

    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "draft_length": draft_length,
        "greedy": greedy,
        "seed": seed,
        "totals": totals.as_dict(),
        "acceptance_rate": over_prompts([s.acceptance_rate for s in per_prompt]),
        "verified_acceptance_rate": over_prompts([s.verified_acceptance_rate for s in per_prompt]),
        "passes_per_token": over_prompts([s.passes_per_token for s in per_prompt]),
        "per_prompt": [s.as_dict() for s in per_prompt],
    }
