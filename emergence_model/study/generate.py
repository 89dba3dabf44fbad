"""A real speculative decoding run beside the offline estimate: what the formula promises, measured.

The suite's own models decode held-out prefixes of the reference set: the target verifies, and
the draft is a strategy over the small models (the largest alone, the mean, the network head that
never saw those prefixes). Greedy decoding must give the target's own output; sampled decoding
follows the target's distribution exactly. The measured acceptance and target passes per token
are reported next to the offline estimate from the cached first-token distributions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from emergence_model.cache import FeatureCache
from emergence_model.lm import load_model
from emergence_model.speculative import (
    HFCausalLM,
    StrategyDraft,
    expected_tokens_per_pass,
    measure_speculative,
)
from emergence_model.strategies import Strategy

GENERATION_DRAFTS = ("largest", "mean-prob", "network")
"""The drafts run for real: the standard one (the largest small model) and two combinations."""


def models_on_disk(cache: FeatureCache) -> bool:
    """Whether every model of the cache is a local `save_pretrained` directory."""
    return all(Path(name).is_dir() for name in cache.model_names)


def run_generation(
    cache: FeatureCache,
    prompts: list[str],
    drafts: dict[str, tuple[Strategy, int, float]],
    tokenizer,
    *,
    max_new_tokens: int,
    seed: int,
) -> dict:
    """Decode `prompts` with the cache's target and each draft, greedy and sampled.

    `drafts`: name -> (strategy over the small models, draft length, offline acceptance
    {"greedy": a, "sampled": a} at the prefixes' first token). Returns per draft and mode the
    measured stats beside the offline estimate of target passes per token."""
    vocab = cache.vocab_size
    models = [HFCausalLM(load_model(name), vocab_size=vocab) for name in cache.model_names]
    small, target = models[:-1], models[-1]
    scales, target_scale = cache.scales[:-1], cache.scales[-1]
    token_ids = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    eos = tokenizer.eos_token_id
    out = {}
    for name, (strategy, length, offline) in drafts.items():

        def combine(x: torch.Tensor, strategy=strategy) -> torch.Tensor:
            return torch.from_numpy(strategy.scores(x, scales, target_scale))

        draft = StrategyDraft(small, combine)
        out[name] = {}
        for mode in ("greedy", "sampled"):
            measured = measure_speculative(
                target,
                draft,
                token_ids,
                max_new_tokens,
                length,
                greedy=mode == "greedy",
                seed=seed,
                eos_token_id=eos,
            )
            measured.pop("per_prompt")
            a = float(offline[mode])
            measured["offline_acceptance"] = a
            measured["offline_passes_per_token"] = 1.0 / expected_tokens_per_pass(
                min(a, 1 - 1e-12), length
            )
            out[name][mode] = measured
    return out


def held_out_prompts(rows: np.ndarray, prefixes: list[str], count: int, seed: int) -> list[int]:
    """`count` of `rows` drawn with `seed` (rows of one fold: its network never saw them)."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(rows, size=min(count, len(rows)), replace=False).tolist())
