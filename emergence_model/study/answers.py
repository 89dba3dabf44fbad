"""Task sets with a known answer, scored along the ladder by each model itself.

Schaeffer et al. (2023, "Are emergent abilities of large language models a mirage?") showed that
an ability can look emergent under a discontinuous metric and grow smoothly under a continuous
one. For every set whose source records the right continuation, each model of the ladder is scored
on it both ways: exact match of the whole expected answer (greedy decoding would produce every one
of its tokens: its argmax at each answer position, the answer's earlier tokens given) and the
answer's log-probability per token. Where the suite's models are not on disk, the cache's
next-token distributions give both for the answer's first token only, and the set says so.

In-context copying has a control of its own: the same repeated words after another prompt's
passage (a seeded derangement), where a model can name the copy only from the words themselves.
Copying in context is each model's copy rate minus its rate on the control.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from emergence_model.cache import FeatureCache
from emergence_model.extract import next_token_logprobs
from emergence_model.lm import load_model_spec
from emergence_model.prompts import INDUCTION_REPEAT, expected_token_ids
from emergence_model.stats import ClusterBootstrap, estimate
from emergence_model.strategies import model_basename

# Logit entries held at once when the models score answers (float32: 256 MiB).
LOGIT_BUDGET = 2**26
MAX_BATCH = 64


def answer_token_ids(
    tokenizer, prefixes: Sequence[str], expected: Sequence[str]
) -> tuple[list[list[int]], list[list[int]]]:
    """Each prefix's tokens and its expected answer's, as the tokenizer splits prefix + answer
    (the answer empty where it would merge with the prefix's last token, or there is none)."""
    own = tokenizer(list(prefixes), add_special_tokens=True)["input_ids"]
    whole = tokenizer([p + e for p, e in zip(prefixes, expected, strict=True)])["input_ids"]
    answers = [
        w[len(o) :] if len(w) > len(o) and w[: len(o)] == o else []
        for o, w in zip(own, whole, strict=True)
    ]
    return own, answers


@torch.inference_mode()
def score_answers(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    vocab_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced: per prompt the answer's summed log-probability and whether the model's
    argmax is the answer's token at every one of its positions. (n,) each."""
    n = len(prompts)
    logprob, exact = np.zeros(n), np.zeros(n, dtype=bool)
    lengths = [len(p) + len(a) for p, a in zip(prompts, answers, strict=True)]
    order = np.argsort(lengths, kind="stable")
    start = 0
    while start < n:
        longest = lengths[order[min(n - 1, start + MAX_BATCH - 1)]]
        size = int(max(1, min(MAX_BATCH, LOGIT_BUDGET // max(1, longest * vocab_size))))
        batch = order[start : start + size]
        width = max(lengths[i] for i in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for j, i in enumerate(batch):  # right padded: the padding never reaches a real position
            sequence = [*prompts[i], *answers[i]]
            ids[j, : len(sequence)] = torch.tensor(sequence)
            mask[j, : len(sequence)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[..., :vocab_size].float()
        for j, i in enumerate(batch):
            first = len(prompts[i]) - 1  # the position that predicts the answer's first token
            rows = torch.log_softmax(logits[j, first : first + len(answers[i])], dim=-1)
            tokens = torch.tensor(answers[i])
            logprob[i] = float(rows.gather(1, tokens[:, None]).sum())
            exact[i] = bool((rows.argmax(dim=-1) == tokens).all())
        start += len(batch)
    return logprob, exact


def first_token_logprobs(cache: FeatureCache, rows: np.ndarray, first: np.ndarray) -> np.ndarray:
    """From the cache: every model's log-probability of each prompt's answer's first token,
    (n, models)."""
    logprob = np.stack([cache.logprobs[r, :, t] for r, t in zip(rows, first, strict=True)])
    return logprob.astype(np.float64)


def passage_and_head(prompt: str, expected: str) -> tuple[str, str] | None:
    """Split an induction prompt into its passage and the repeated words: the k whose repeat
    ends the prompt and whose first occurrence is followed by the expected word (None if no k
    does: not an induction prompt of INDUCTION_REPEAT repeated words)."""
    words = prompt.split()
    for k in range(INDUCTION_REPEAT[0], INDUCTION_REPEAT[1] + 1):
        passage, head = words[:-k], words[-k:]
        if passage[:k] == head and len(passage) > k and passage[k] == expected.strip():
            return " ".join(passage), " ".join(head)
    return None


def control_prompts(prompts: list[str], expected: list[str], seed: int) -> list[str | None]:
    """Each prompt's repeated words after another prompt's passage (a seeded derangement of the
    prompts that split into passage and repeat; None for the others)."""
    split = [passage_and_head(p, e) for p, e in zip(prompts, expected, strict=True)]
    usable = [i for i, parts in enumerate(split) if parts is not None]
    if len(usable) < 2:  # no other prompt's passage to borrow
        return [None] * len(prompts)
    order = list(range(len(usable)))
    random.Random(seed).shuffle(order)
    others = [order[j] if order[j] != j else (j + 1) % len(usable) for j in range(len(usable))]
    controls: list[str | None] = [None] * len(prompts)
    for j, i in enumerate(usable):
        controls[i] = f"{split[usable[others[j]]][0]} {split[i][1]}"
    return controls


def model_scores(
    cache: FeatureCache,
    rows: np.ndarray,
    expected: Sequence[str],
    tokenizer,
    *,
    on_disk: bool,
    copy_control: bool,
    seed: int,
) -> dict:
    """Per model of `cache` (small models, then the target), on the prompts of `rows` whose
    answer tokenizes apart from the prefix: the answer's log-probability per token and exact
    match ("models": the whole answer, each model run; else the first token, from the cache);
    for an induction set with `copy_control`, the copy (first token) on the control prompts.

    Returns {"kept": rows kept (n,), "source", "tokens" (n,), "logprob" (n, models) per token,
    "exact" (n, models), "first_hit" (n, models): the model's top token is the answer's first,
    and "control_hit" (n, models) where scored (NaN: not comparable)}."""
    prefixes = [cache.prefixes[r] for r in rows]
    prompts, answers = answer_token_ids(tokenizer, prefixes, expected)
    keep = np.flatnonzero([len(a) > 0 for a in answers])
    kept_prompts = [prompts[i] for i in keep]
    kept_answers = [answers[i] for i in keep]
    tokens = np.array([len(a) for a in kept_answers], dtype=np.float64)
    first = np.array([a[0] for a in kept_answers], dtype=np.int64)
    # each model's own top token is the answer's first: the copy, on an induction set
    first_hit = cache.argmax[rows[keep]] == first[:, None]  # (n, models)
    out = {"kept": rows[keep], "tokens": tokens, "first_hit": first_hit}
    if not on_disk:
        logprob = first_token_logprobs(cache, rows[keep], first)
        return {**out, "source": "cache (first token only)", "logprob": logprob, "exact": first_hit}
    models = len(cache.model_names)
    logprob = np.zeros((len(keep), models))
    exact = np.zeros((len(keep), models), dtype=bool)
    control_hit = None
    if copy_control:
        kept_expected = [expected[i] for i in keep]
        controls = control_prompts([prefixes[i] for i in keep], kept_expected, seed)
        scored = [i for i, c in enumerate(controls) if c is not None]
        controls = [controls[i] for i in scored]
        # comparable: the continuation starts with the same token after the control
        comparable = np.zeros(len(keep), dtype=bool)
        comparable[scored] = (
            np.array(expected_token_ids(tokenizer, controls, [kept_expected[i] for i in scored]))
            == first[scored]
        )
        control_hit = np.full((len(keep), models), np.nan)
    for m, name in enumerate(cache.model_names):
        model = load_model_spec(name)
        total, exact[:, m] = score_answers(model, kept_prompts, kept_answers, cache.vocab_size)
        logprob[:, m] = total / tokens
        if control_hit is not None:
            scores = next_token_logprobs(model, tokenizer, controls, vocab_size=cache.vocab_size)
            hit = np.zeros(len(keep))
            hit[scored] = scores.argmax(axis=1) == first[scored]
            control_hit[:, m] = np.where(comparable, hit, np.nan)
        del model
    return {
        **out,
        "source": "models (the whole answer)",
        "logprob": logprob,
        "exact": exact,
        "control_hit": control_hit,
    }


def answer_summary(cache: FeatureCache, scores: dict, sampler: ClusterBootstrap) -> dict:
    """Each model's exact match and log-probability per token with intervals, against scale, and
    for each metric the target against the small models' line extrapolated to its scale; the
    set's emergence survives the continuous metric if the target is above the line on both."""
    from emergence_model.study.rungs import extrapolated

    models = []
    points: dict[str, list] = {"exact": [], "logprob": []}
    for m, name in enumerate(cache.model_names):
        entry = {"model": model_basename(name), "scale": cache.scales[m]}
        for metric in points:
            value, draws = sampler.mean_draws(scores[metric][:, m].astype(np.float64))
            entry[metric] = estimate(value, draws)
            points[metric].append((value, draws))
        models.append(entry)
    emergence = {metric: extrapolated(cache.scales, points[metric]) for metric in points}
    return {
        "source": scores["source"],
        "prompts": int(len(scores["kept"])),
        "answer_tokens": float(scores["tokens"].mean()) if len(scores["tokens"]) else 0.0,
        "axis": cache.scale_axis,
        "models": models,
        "above_trend": emergence,
    }


def copy_control_summary(
    cache: FeatureCache, scores: dict, sampler: ClusterBootstrap
) -> dict | None:
    """Per model: its copy rate, its rate on the control prompts, and the difference (paired,
    on the prompts whose continuation starts with the same token after the control)."""
    control = scores.get("control_hit")
    if control is None:
        return None
    comparable = np.isfinite(control[:, 0])
    out = []
    for m, name in enumerate(cache.model_names):
        hit = scores["first_hit"][:, m].astype(np.float64)
        on_control = np.nan_to_num(control[:, m])
        out.append(
            {
                "model": model_basename(name),
                "scale": cache.scales[m],
                "copy": sampler.mean(hit, mask=comparable),
                "control": sampler.mean(on_control, mask=comparable),
                "copy_minus_control": sampler.mean(hit - on_control, mask=comparable),
            }
        )
    return {"prompts": int(comparable.sum()), "axis": cache.scale_axis, "models": out}
