"""A real speculative decoding run beside the offline estimate: what the formula promises, measured.

The suite's own models decode held-out prefixes of the reference set with a KV cache: the target
alone, then the target verifying each draft (the largest small model alone, the mean, the network
head that never saw those prefixes), greedy and sampled, in one run with one CPU thread count, so
that their wall-clock tokens per second compare. Greedy decoding gives the target's own output;
sampled decoding follows the target's distribution exactly. Each draft's offline estimate is the
formula's at the acceptance it has on the positions it actually decoded (the target and the draft
teacher-forced along the decoded text), beside the measured target passes per token. Along the
target's greedy continuations, the network's cascade (answer where it is confident, else call the
target) is scored as a whole: a continuation agrees only if every one of its tokens does.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from emergence_model.cache import FeatureCache
from emergence_model.lm import load_model_spec
from emergence_model.speculative import (
    HFCausalLM,
    StrategyDraft,
    expected_tokens_per_pass,
    greedy_acceptance,
    sampled_acceptance,
    speculative_generate,
)
from emergence_model.stats import ClusterBootstrap, estimate
from emergence_model.strategies import Strategy
from emergence_model.study.costs import draft_inputs, torch_threads
from emergence_model.suites import parse_model_spec

MODES = ("greedy", "sampled")


def models_on_disk(cache: FeatureCache) -> bool:
    """Whether every model of the cache is a local `save_pretrained` directory."""
    return all(Path(parse_model_spec(name)[0]).is_dir() for name in cache.model_names)


def held_out_prompts(rows: np.ndarray, prefixes: list[str], count: int, seed: int) -> list[int]:
    """`count` of `rows` drawn with `seed` (rows of one fold: its network never saw them)."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(rows, size=min(count, len(rows)), replace=False).tolist())


def run_generation(
    cache: FeatureCache,
    prompts: list[str],
    drafts: dict[str, tuple[Strategy, dict[str, int]]],
    tokenizer,
    *,
    max_new_tokens: int,
    seed: int,
    threads: int,
    cascade: tuple[str, dict[str, float]] | None = None,
) -> dict:
    """Decode `prompts` with the cache's target alone and with each draft, greedy and sampled.

    `drafts`: name -> (strategy over the small models, draft length per mode). `cascade`: the
    draft whose confidence decides a cascade, and its thresholds per agreement level. Returns per
    mode the target's tokens per second, per draft and mode the measured counts, tokens per
    second and speed-up, and the offline estimate on the decoded positions; and the cascade
    along the target's greedy continuations."""
    vocab = cache.vocab_size
    scales, target_scale = cache.scales[:-1], cache.scales[-1]
    with torch_threads(threads):
        models = []
        for name in cache.model_names:
            models.append(HFCausalLM(load_model_spec(name), vocab_size=vocab))
        small, target = models[:-1], models[-1]
        token_ids = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        eos = tokenizer.eos_token_id
        sampler = ClusterBootstrap(None, len(prompts), seed=seed)
        out: dict = {"threads": threads, "target": {}, "drafts": {}}

        def decode(draft, length: int, mode: str) -> list:
            """Every prompt decoded and timed: (new tokens, stats, seconds) each."""
            generator = torch.Generator().manual_seed(seed)
            runs = []
            for ids in token_ids:
                start = time.perf_counter()
                new, stats = speculative_generate(
                    target, draft, ids, max_new_tokens, length, greedy=mode == "greedy",
                    generator=generator, eos_token_id=eos,
                )  # fmt: skip
                runs.append((new, stats, time.perf_counter() - start))
            return runs

        greedy_text: list[list[int]] = []
        for mode in MODES:  # the target alone: draft length 0, one pass per token
            runs = decode(target, 0, mode)
            out["target"][mode] = _rates(runs, sampler)
            if mode == "greedy":
                greedy_text = [new for new, _, _ in runs]
        for name, (strategy, lengths) in drafts.items():
            draft = strategy_draft(strategy, small, scales, target_scale)
            out["drafts"][name] = {}
            for mode in MODES:
                length = max(1, lengths[mode])
                runs = decode(draft, length, mode)
                accepted = [
                    _acceptance_along(target, draft, ids, new, mode)
                    for ids, (new, _, _) in zip(token_ids, runs, strict=True)
                ]
                entry = _rates(runs, sampler)
                a = float(np.concatenate(accepted).mean())
                entry.update(
                    draft_length=length,
                    offline_draft_length=lengths[mode],
                    offline_acceptance=a,
                    offline_passes_per_token=1.0
                    / expected_tokens_per_pass(min(a, 1 - 1e-12), length),
                    speedup=_speedup(entry, out["target"][mode], sampler),
                )
                out["drafts"][name][mode] = entry
        if cascade is not None:
            name, thresholds = cascade
            draft = strategy_draft(drafts[name][0], small, scales, target_scale)
            out["cascade"] = _cascade_along(
                target, draft, token_ids, greedy_text, thresholds, sampler
            )
            out["cascade"]["predictor"] = name
    for entry in [
        *out["target"].values(),
        *(e for d in out["drafts"].values() for e in d.values()),
    ]:
        entry.pop("_sums")  # per-prompt sums, only for the speed-ups
    return out


def strategy_draft(
    strategy: Strategy, small: list[HFCausalLM], scales, target_scale
) -> StrategyDraft:
    """A draft that runs only the small models `strategy` reads (one model alone runs one) and
    combines their distributions as it does."""
    used, combined = draft_inputs(strategy, len(small))
    used_scales = [scales[i] for i in used]

    def combine(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(combined.scores(x, used_scales, target_scale))

    return StrategyDraft([small[i] for i in used], combine)


def _acceptance_along(target, draft, prompt: list[int], new: list[int], mode: str) -> np.ndarray:
    """Per decoded position: the acceptance the formulas read (greedy: the argmaxes agree;
    sampled: sum min(p, q)), the target and the draft teacher-forced along the decoded text."""
    if not new:
        return np.zeros(0)
    tokens = [*prompt, *new[:-1]]
    p = target.last_logprobs(tokens, len(new))
    q = draft.last_logprobs(tokens, len(new))
    if mode == "greedy":
        return greedy_acceptance(p, q).numpy()
    return sampled_acceptance(p, q, normalized=True).double().numpy()


def _rates(runs: list, sampler: ClusterBootstrap) -> dict:
    """Totals of a set of decodings, target passes per token and tokens per second (ratios of
    sums over prompts, intervals from resampling prompts)."""
    emitted = np.array([s.emitted for _, s, _ in runs], dtype=np.float64)
    passes = np.array([s.target_passes for _, s, _ in runs], dtype=np.float64)
    seconds = np.array([t for _, _, t in runs])
    accepted = np.array([s.accepted for _, s, _ in runs], dtype=np.float64)
    verified = np.array([s.verified for _, s, _ in runs], dtype=np.float64)
    out = {
        "prompts": len(runs),
        "tokens": int(emitted.sum()),
        "seconds": float(seconds.sum()),
        "tokens_per_second": sampler.ratio(emitted, seconds),
        "passes_per_token": sampler.ratio(passes, emitted),
        "_sums": (emitted, seconds),
    }
    if verified.sum():
        out["verified_acceptance"] = sampler.ratio(accepted, verified)
    return out


def _speedup(draft: dict, target: dict, sampler: ClusterBootstrap) -> dict:
    """Tokens per second with the draft over the target's alone, on the same prompts (the two
    resampled together)."""
    emitted, seconds = draft["_sums"]
    t_emitted, t_seconds = target["_sums"]
    sums = sampler.draws(np.stack([emitted, seconds, t_emitted, t_seconds], axis=1))
    value = (emitted.sum() / seconds.sum()) / (t_emitted.sum() / t_seconds.sum())
    return estimate(float(value), (sums[:, 0] / sums[:, 1]) / (sums[:, 2] / sums[:, 3]))


def _cascade_along(
    target, draft, prompts, continuations, thresholds: dict[str, float], sampler
) -> dict:
    """The cascade along each greedy continuation of the target: per level, the share of tokens
    it answers itself, per-token agreement, and the share of continuations it reproduces whole."""
    confidence, correct = [], []
    for ids, new in zip(prompts, continuations, strict=True):
        if not new:
            confidence.append(np.zeros(0))
            correct.append(np.zeros(0, dtype=bool))
            continue
        tokens = [*ids, *new[:-1]]
        q = draft.last_logprobs(tokens, len(new))
        confidence.append(q.amax(dim=-1).exp().numpy())
        correct.append(q.argmax(dim=-1).numpy() == np.asarray(new))
    lengths = np.array([len(c) for c in confidence], dtype=np.float64)
    out = {"tokens_per_continuation": float(lengths.mean()), "levels": {}}
    for level, threshold in thresholds.items():
        answered = [c >= threshold for c in confidence]
        wrong = [a & ~ok for a, ok in zip(answered, correct, strict=True)]
        saved = np.array([a.sum() for a in answered], dtype=np.float64)
        errors = np.array([w.sum() for w in wrong], dtype=np.float64)
        out["levels"][level] = {
            "threshold": threshold,
            "saved": sampler.ratio(saved, lengths),
            "token_agreement": sampler.ratio(lengths - errors, lengths),
            "continuation_agreement": sampler.mean((errors == 0).astype(np.float64)),
        }
    return out
