"""What a draft costs, measured: one decode step of every model with a KV cache, and every
draft's combination of them, timed on the CPU.

A draft's cost c is one draft step over one target step. Parameters are a proxy for it that is
poor at small sizes (the vocabulary projection, attention over the context and per-call overhead
do not shrink with the parameters), so the study times it: for each model, one decode step (one
new token, its KV cache, `use_cache=True`) after a context of CONTEXT_TOKENS tokens, at batch 1
and at a batch of 16, the median of repeats timed in rounds that visit every model and draft in
turn (`interleaved_medians`), with a fixed number of CPU threads; for each draft,
its combination of the small models' distributions (the network's forward pass on its real input,
(batch, models, vocabulary)). A draft over several models costs the sum of their steps plus its
combination. The target's cost of one more token in a pass (what a token the cascade answered
costs when the target catches up on it later) is timed too.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Hashable, Iterator

import torch

from emergence_model.cache import FeatureCache
from emergence_model.lm import load_model_spec
from emergence_model.speculative import cached_forward, crop_cache
from emergence_model.strategies import ModelSubset, OneModel, Strategy

COST_BATCHES = (1, 16)
"""Batch sizes a decode step is timed at: one sequence, and a small serving batch."""
CONTEXT_TOKENS = 32
"""Tokens in the context before the timed steps (the study's prompts are about this long)."""
CATCH_UP_TOKENS = 4
"""New tokens in the target pass that times what one more token in a pass costs."""


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's CPU thread count set to `threads` for the block, then put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def interleaved_medians(
    runs: dict[Hashable, Callable[[], object]], rounds: int = 10, per_round: int = 3
) -> dict[Hashable, float]:
    """The median wall time of each of `runs`, timed in `rounds` that call every run in turn
    (`per_round` calls each), after a call of each to warm up: on a machine whose load changes,
    a change falls on every run alike, so that their ratios hold."""
    for run in runs.values():
        run()
    times: dict[Hashable, list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            for _ in range(per_round):
                start = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


@torch.inference_mode()
def decode_step(
    model: torch.nn.Module, vocab_size: int, batch: int, new_tokens: int = 1
) -> Callable[[], None]:
    """One forward pass over `new_tokens` new tokens per sequence with a KV cache of
    CONTEXT_TOKENS tokens, `batch` sequences (token ids drawn from a fixed seed), to be timed."""
    generator = torch.Generator().manual_seed(0)
    context = torch.randint(0, vocab_size, (batch, CONTEXT_TOKENS), generator=generator)
    new = torch.randint(0, vocab_size, (batch, new_tokens), generator=generator)
    _, past = cached_forward(model, context, None)

    @torch.inference_mode()
    def step() -> None:
        cached_forward(model, new, past)
        crop_cache(past, CONTEXT_TOKENS)  # the next step sees the same context

    return step


def combine_step(
    strategy: Strategy, num_models: int, vocab_size: int, scales, target_scale, batch: int
) -> Callable[[], None]:
    """A draft's combination of `num_models` distributions on its real input, (batch,
    num_models, vocab_size) log-probabilities, to be timed."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, num_models, vocab_size, generator=generator) * 3
    x = torch.log_softmax(logits, dim=-1)

    @torch.inference_mode()
    def step() -> None:
        strategy.score_tensor(x, scales, target_scale)

    return step


def models_used(strategy: Strategy, num_small: int) -> list[int]:
    """The small models (indices) a draft runs at every step."""
    return draft_inputs(strategy, num_small)[0]


def draft_inputs(strategy: Strategy, num_small: int) -> tuple[list[int], Strategy]:
    """The small models (indices) a draft runs at every step, and the strategy that combines
    their distributions alone: one model's own, a subset network's inner network, or any other
    strategy over every small model."""
    if isinstance(strategy, OneModel):
        return [strategy.index], OneModel(0)
    if isinstance(strategy, ModelSubset):
        return list(strategy.indices), strategy.inner
    return list(range(num_small)), strategy


def measure_costs(
    cache: FeatureCache, drafts: dict[str, Strategy], threads: int, log=print
) -> dict:
    """Decode-step seconds of every model of `cache` (loaded from its local directories) at each
    of COST_BATCHES, each draft's combination, and each draft's cost over the target's step.

    Returns {"threads", "context_tokens", "batches", "models": {name: {batch: s}},
    "catch_up_token": the target's cost of one more token in a pass over one step (batch 1),
    "drafts": {draft: {"combine": {batch: s}, "cost": {batch: c}, "models": [indices]}}}."""
    vocab = cache.vocab_size
    small_scales, target_scale = cache.scales[:-1], cache.scales[-1]
    names, target_name = cache.model_names, cache.model_names[-1]
    with torch_threads(threads):
        models = {}
        for name in names:
            models[name] = load_model_spec(name)
        runs: dict = {}
        for name, model in models.items():
            for b in COST_BATCHES:
                runs[("model", name, str(b))] = decode_step(model, vocab, b)
        runs[("catch_up",)] = decode_step(models[target_name], vocab, 1, CATCH_UP_TOKENS)
        used_by = {}
        for draft, strategy in drafts.items():
            used_by[draft], combined = draft_inputs(strategy, cache.num_models - 1)
            scales = [small_scales[i] for i in used_by[draft]]
            for b in COST_BATCHES:
                runs[("combine", draft, str(b))] = combine_step(
                    combined, len(scales), vocab, scales, target_scale, b
                )
        seconds = interleaved_medians(runs)
        del models
    steps = {
        name: {str(b): seconds[("model", name, str(b))] for b in COST_BATCHES} for name in names
    }
    for name, by_batch in steps.items():
        log(f"timed {name}: {', '.join(f'{1e3 * s:.2f} ms' for s in by_batch.values())}")
    target = steps[target_name]
    more_tokens = seconds[("catch_up",)]
    catch_up = max(0.0, (more_tokens - target["1"]) / (CATCH_UP_TOKENS - 1)) / target["1"]
    out_drafts = {}
    for draft, used in used_by.items():
        combine = {str(b): seconds[("combine", draft, str(b))] for b in COST_BATCHES}
        cost = {
            b: (sum(steps[names[i]][b] for i in used) + combine[b]) / target[b] for b in combine
        }
        out_drafts[draft] = {"combine": combine, "cost": cost, "models": used}
    return {
        "threads": threads,
        "context_tokens": CONTEXT_TOKENS,
        "batches": list(COST_BATCHES),
        "models": steps,
        "catch_up_token": catch_up,
        "drafts": out_drafts,
    }


def parameter_cost(strategy: Strategy, cache: FeatureCache) -> float:
    """A draft step's cost estimated from parameters: those of the models it runs over the
    target's (above 1 where they outweigh the target)."""
    counts = cache.param_counts[:-1]
    used = models_used(strategy, len(counts))
    return float(sum(counts[i] for i in used)) / cache.param_counts[-1]


COST_KINDS = ("given", "measured, batch 1", "measured, batch 16", "parameters")
"""The costs a speed-up is reported at, the headline first among those there are."""


def headline_cost(costs: dict[str, float]) -> tuple[str, float]:
    """The cost the report leads with: the one given, else measured at batch 1, else the
    parameter ratio."""
    for kind in COST_KINDS:
        if kind in costs:
            return kind, costs[kind]
    raise ValueError("a draft without any cost")
