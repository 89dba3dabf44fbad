"""Strategies: ways to guess the target model's next token from the small models.

Every strategy gives log-scores over the vocabulary, `scores(logprobs (N, M, V), scales,
target_scale) -> (N, V)`, so that evaluation treats them all alike, and is callable with the
original challenge's signature, `strategy(sentences, model_names, target_model_name, probs)`
-> list of token ids, with `probs` the small models' probabilities (N, M, V) (float16 is fine).
Where a strategy has a predicted distribution, its scores are normalised log-probabilities
(`gives_distribution`), so the evaluation can report likelihood and KL for it.

A new strategy is one class with `@register("name")`; `STRATEGIES` maps names to classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from emergence_model import Registry
from emergence_model.logprobs import (
    PROB_FLOOR,
    as_tensor,
    check_rows,
    floor_logprobs,
    probs_to_logprobs,
    rows_per_chunk,
)
from emergence_model.model import PerTokenPredictor
from emergence_model.suites import model_basename, resolve_param_counts
from emergence_model.vocab import TokenizerId

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")

# Rows per chunk when a strategy is fitted on a cache.
FIT_CHUNK_ROWS = 128


def register(name: str):
    def add(cls: type[Strategy]) -> type[Strategy]:
        STRATEGIES.add(name, cls)
        cls.name = name
        return cls

    return add


def challenge_param_counts(model_names: Sequence[str], target_model_name: str) -> tuple[list, int]:
    """Parameter counts of the challenge's small models and target, known from their names."""
    counts = resolve_param_counts([*model_names, target_model_name])
    return counts[:-1], counts[-1]


class ModelMismatchError(ValueError):
    """Models, a target or a vocabulary other than those a network or cache was made with."""


def check_same_models(
    expected: Sequence[str],
    given: Sequence[str],
    *,
    expected_target: str | None = None,
    given_target: str | None = None,
    expected_vocab: int | None = None,
    given_vocab: int | None = None,
    what: str = "the network",
    where: str = "the input",
) -> None:
    """Refuse small models (by name, org and directory ignored), a target or a vocabulary other
    than the expected ones; the message names both sides and what to use instead."""
    trained = [model_basename(n) for n in expected]
    names = [model_basename(n) for n in given]
    if trained != names:
        raise ModelMismatchError(
            f"{what} has small models {trained}, {where} has {names}: use a checkpoint and "
            "caches of one suite"
        )
    if expected_vocab is not None and given_vocab is not None and expected_vocab != given_vocab:
        raise ModelMismatchError(
            f"{what} has a vocabulary of {expected_vocab}, {where} has {given_vocab}: use a "
            "checkpoint and caches of one tokenizer"
        )
    if (
        expected_target is not None
        and given_target is not None
        and model_basename(expected_target) != model_basename(given_target)
    ):
        raise ModelMismatchError(
            f"{what} predicts {expected_target!r}, {where} has target {given_target!r}: use a "
            "checkpoint trained for this target"
        )


def check_probs(
    probs: torch.Tensor,
    model_names: Sequence[str] | None = None,
    sentences: Sequence[str] | None = None,
) -> None:
    """Refuse, in one line, a challenge call's probabilities that a strategy cannot read: a
    shape that is not (N, models, vocab) for `model_names`, `sentences` that are not one per
    row (an empty list: none given), and rows that are not distributions (`logprobs.check_rows`:
    NaN, infinite, negative, above 1, all zero, summing to other than 1). Reads the input;
    never changes it."""
    if probs.ndim != 3 or probs.shape[2] == 0:
        raise ValueError(
            f"expected probs of shape (sentences, models, vocab), got {tuple(probs.shape)}"
        )
    if model_names is not None and probs.shape[1] != len(model_names):
        raise ValueError(
            f"probs has {probs.shape[1]} models per row but the call names {len(model_names)} "
            "small models: pass one name per model"
        )
    if sentences is not None and len(sentences) and len(sentences) != probs.shape[0]:
        raise ValueError(
            f"the call passes {len(sentences)} sentences for {probs.shape[0]} rows of probs: "
            "pass one sentence per row, in the rows' order"
        )
    check_rows(probs, log=False, name="probs")


class Strategy:
    """Base class: override `score_tensor`; strategies with tuned parameters override `fit`."""

    name: ClassVar[str] = "strategy"
    gives_distribution: ClassVar[bool] = False
    needs_scales: ClassVar[bool] = False
    rowwise: ClassVar[bool] = True
    """Whether a row's scores depend on that row alone: then the challenge call and `scores`
    take the rows a few at a time, so that memory stays near the input's own size."""

    def scores(
        self,
        logprobs: np.ndarray | torch.Tensor,
        scales: Sequence[float] | None = None,
        target_scale: float | None = None,
    ) -> np.ndarray:
        """(N, M, V) small models' log-probs -> (N, V) log-scores (float32). The input is
        checked first (`logprobs.check_rows`: no NaN, nothing above 0, no row all -inf)."""
        x = as_tensor(logprobs)
        check_rows(x, log=True, name="logprobs")
        return self.in_chunks(
            x, lambda rows: self.score_tensor(floor_logprobs(rows), scales, target_scale).float()
        ).numpy()

    def in_chunks(self, x: torch.Tensor, fn) -> torch.Tensor:
        """`fn` of the rows of `x` (N, M, V), one result row per input row: a few rows at a
        time (a few MB of float32) for a `rowwise` strategy, all at once for another."""
        n, m, v = x.shape
        step = rows_per_chunk(m, v) if self.rowwise else max(n, 1)
        if n <= step:
            return fn(x)
        out = None
        for start in range(0, n, step):
            part = fn(x[start : start + step])
            if out is None:
                out = part.new_empty((n, *part.shape[1:]))
            out[start : start + len(part)] = part
        return out

    def score_tensor(
        self, x: torch.Tensor, scales: Sequence[float] | None, target_scale: float | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def fit(self, chunks, scales: Sequence[float], target_scale: float) -> dict:
        """Tune on (small log-probs (n, M, V), target argmax (n,)) chunks; returns the params."""
        return self.params()

    def params(self) -> dict:
        """Tuned parameters, stored in a checkpoint and shown in reports."""
        return {}

    def __call__(
        self,
        sentences: Sequence[str],
        model_names: Sequence[str],
        target_model_name: str,
        probs: np.ndarray | torch.Tensor,
    ) -> list[int]:
        """The challenge's signature: probs (N, M, V) of the small models -> N token ids."""
        probs = as_tensor(probs)
        check_probs(probs, model_names, sentences)
        scales, target = (None, None)
        if self.needs_scales:
            scales, target = challenge_param_counts(model_names, target_model_name)
        # Only each row's top token is kept: no (N, V) scores are held at once.
        guesses = self.in_chunks(
            probs, lambda rows: self.score_probs(rows, scales, target).argmax(dim=1)
        )
        return guesses.tolist()

    def score_probs(
        self,
        probs: torch.Tensor,
        scales: Sequence[float] | None,
        target_scale: float | None,
    ) -> torch.Tensor:
        """Scores from probabilities (N, M, V); strategies with a cheaper path override it."""
        return self.score_tensor(probs_to_logprobs(probs), scales, target_scale)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{type(self).__name__}({params})"


@register("token-0")
class TokenZero(Strategy):
    """Always token 0 (the original challenge's floor); later ids rank below it."""

    def score_tensor(self, x, scales, target_scale):
        n, _, v = x.shape
        return -torch.arange(v, dtype=torch.float32).expand(n, v).clone()


@register("random")
class RandomToken(Strategy):
    """A uniformly random token, from a fixed seed."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    # One draw for all the rows of a call from the seed, not one per chunk of rows.
    rowwise = False

    def score_tensor(self, x, scales, target_scale):
        n, _, v = x.shape
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(n, v, generator=generator)

    def score_probs(self, probs, scales, target_scale):
        return self.score_tensor(probs, scales, target_scale)  # the values are never read

    def params(self) -> dict:
        return {"seed": self.seed}


@register("mean-prob")
class MeanProbability(Strategy):
    """Argmax of the small models' mean probability (the original challenge's baseline)."""

    gives_distribution = True

    def score_tensor(self, x, scales, target_scale):
        return torch.logsumexp(x, dim=1) - np.log(x.shape[1])

    def score_probs(self, probs, scales, target_scale):
        # the same as from floored log-probs, without a log of every probability
        return torch.log(probs.float().clamp_min(PROB_FLOOR).mean(dim=1))


@register("largest")
class LargestModel(Strategy):
    """The largest small model's own distribution."""

    gives_distribution = True

    def score_tensor(self, x, scales, target_scale):
        return torch.log_softmax(x[:, largest_index(scales, x.shape[1])], dim=1)


def largest_index(scales: Sequence[float] | None, num_models: int) -> int:
    return num_models - 1 if scales is None else int(np.argmax(scales))


def smallest_index(scales: Sequence[float] | None) -> int:
    return 0 if scales is None else int(np.argmin(scales))


@register("extrapolate")
class LogLinearExtrapolation(Strategy):
    """Each token's log-prob fitted by least squares against log parameter count across the
    small models, evaluated at the target's size (renormalised)."""

    gives_distribution = True
    needs_scales = True

    def score_tensor(self, x, scales, target_scale):
        if scales is None or target_scale is None:
            raise ValueError("extrapolate needs the scales (e.g. parameter counts) of the models")
        logn = torch.log(torch.tensor([float(p) for p in scales]))
        if len(set(scales)) < 2:  # one model, or one scale: nothing to extrapolate along
            return torch.log_softmax(x.mean(dim=1), dim=1)
        centered = logn - logn.mean()
        slope = torch.einsum("m,nmv->nv", centered, x - x.mean(dim=1, keepdim=True))
        slope = slope / centered.square().sum()
        at_target = x.mean(dim=1) + slope * (np.log(float(target_scale)) - logn.mean())
        return torch.log_softmax(at_target, dim=1)


@register("contrastive")
class ContrastiveExtrapolation(Strategy):
    """largest + beta * (largest - smallest): contrastive decoding read as extrapolation toward a
    larger model; beta is tuned on the training split by a grid (renormalised)."""

    gives_distribution = True
    BETAS: ClassVar[tuple[float, ...]] = (*[round(0.1 * i, 2) for i in range(21)], 2.5, 3.0, 4.0)

    def __init__(self, beta: float = 0.5) -> None:
        self.beta = float(beta)

    def score_tensor(self, x, scales, target_scale):
        return contrastive_logits(x, scales, self.beta).log_softmax(dim=1)

    def fit(self, chunks, scales, target_scale) -> dict:
        correct = np.zeros(len(self.BETAS))
        for logprobs, target in chunks:
            x = floor_logprobs(as_tensor(logprobs))
            target = as_tensor(target).long()
            for j, beta in enumerate(self.BETAS):
                guess = contrastive_logits(x, scales, beta).argmax(dim=1)
                correct[j] += (guess == target).sum().item()
        self.beta = float(self.BETAS[int(np.argmax(correct))])  # ties: the smallest beta
        return self.params()

    def params(self) -> dict:
        return {"beta": self.beta}


def contrastive_logits(x: torch.Tensor, scales, beta: float) -> torch.Tensor:
    largest = x[:, largest_index(scales, x.shape[1])]
    smallest = x[:, smallest_index(scales)]
    return largest + beta * (largest - smallest)


@register("network")
class NetworkStrategy(Strategy):
    """The learned per-token network, from a checkpoint (see `load_strategy`). Its guess is the
    network's own, or that of the `guide` chosen for it on its training folds
    (`emergence_model.selection`); its distribution is the network's, with the guess its mode."""

    gives_distribution = True
    # whether the top token comes from the MLP's candidates (`candidate_ids`), whose recall the
    # evaluation reports
    ranks_candidates: ClassVar[bool] = True

    def __init__(
        self,
        predictor: PerTokenPredictor,
        model_names: Sequence[str],
        target_name: str,
        chunk_rows: int = 16,
        guide: Strategy | None = None,
        tokenizer: TokenizerId | None = None,
    ) -> None:
        self.predictor = predictor.eval()
        self.model_names = list(model_names)
        self.target_name = target_name
        self.chunk_rows = chunk_rows
        self.tokenizer = tokenizer
        """The tokenizer it was trained under, where known (a checkpoint's: `load_strategy`),
        which a cache it is calibrated on must share."""
        self.guide = guide

    @property
    def guide_name(self) -> str:
        """What makes the guess: "network", or the guide's name."""
        return NETWORK_GUIDE if self.guide is None else self.guide.name

    def check_scales(self, scales: Sequence[float] | None) -> None:
        cfg = self.predictor.config
        if scales is not None and list(scales) != list(cfg.scales):
            raise ValueError(
                f"the network was trained on small models of scales {cfg.scales}, got "
                f"{list(scales)}: use a checkpoint trained on this suite"
            )

    def guide_guess(self, inputs: torch.Tensor, from_probs: bool = False) -> torch.Tensor:
        """The guide's guesses (N,) on log-probs (N, M, V) (or probabilities, `from_probs`),
        with the scales the network was trained on."""
        cfg = self.predictor.config
        score = self.guide.score_probs if from_probs else self.guide.score_tensor
        return score(inputs, cfg.scales, cfg.target_scale).argmax(dim=1)

    def score_tensor(self, x, scales, target_scale):
        self.check_scales(scales)
        guess = None if self.guide is None else self.guide_guess(x)
        return self.predictor.log_probs(x, chunk_rows=self.chunk_rows, guess=guess)

    def __call__(self, sentences, model_names, target_model_name, probs) -> list[int]:
        check_same_models(
            self.model_names,
            model_names,
            expected_target=self.target_name,
            given_target=target_model_name,
            where="the call",
        )
        probs = as_tensor(probs)
        check_probs(probs, model_names, sentences)
        self.predictor.check_inputs(probs)
        guesses = []
        for start in range(0, probs.shape[0], self.chunk_rows):
            # A float32 copy of each chunk: the caller's array is never the network's to change.
            chunk = probs[start : start + self.chunk_rows].to(torch.float32, copy=True)
            with torch.no_grad():
                guesses += self.guesses(chunk).tolist()
        return guesses

    @torch.no_grad()
    def guess(self, x: torch.Tensor) -> torch.Tensor:
        """Floored log-probs (B, M, V) -> the guessed token ids (B,), without the distribution."""
        if self.guide is not None:
            return self.guide_guess(x)
        return self.predictor(x.to(self.predictor.device)).argmax(dim=1).cpu()

    def guesses(self, probs: torch.Tensor) -> torch.Tensor:
        """A float32 copy of a chunk of probabilities (B, M, V) -> the guessed token ids (B,)."""
        if self.guide is not None:
            return self.guide_guess(probs, from_probs=True)
        return self.predictor.forward_probs(probs).argmax(dim=1)

    def params(self) -> dict:
        guide = {} if self.guide is None else {"guide": self.guide_name, **self.guide.params()}
        return {"heads": self.predictor.config.num_heads, "target": self.target_name, **guide}


NETWORK_GUIDE = "network"  # the guide name of the network's own guess


class MixtureGuide(Strategy):
    """The mode of the network's predicted distribution before its guess is made the mode: the
    mixture of the small models' distributions and their mean fitted on validation prefixes."""

    name = "mixture"
    gives_distribution = True

    def __init__(self, predictor: PerTokenPredictor, chunk_rows: int = 16) -> None:
        self.predictor = predictor
        self.chunk_rows = chunk_rows

    def score_tensor(self, x, scales, target_scale):
        out = []
        for start in range(0, x.shape[0], self.chunk_rows):
            rows = x[start : start + self.chunk_rows].to(self.predictor.device)
            out.append(self.predictor.mixture_log_probs(rows.exp()).cpu())
        return torch.cat(out) if out else x.new_zeros(0, x.shape[2])

    def score_probs(self, probs, scales, target_scale):
        p = probs.to(self.predictor.device, torch.float32).clamp_min(PROB_FLOOR)
        return self.predictor.mixture_log_probs(p).cpu()


def make_strategy(name: str, **kwargs) -> Strategy:
    """A registered baseline by name (the network comes from a checkpoint: `load_strategy`)."""
    if name == "network":
        raise ValueError(
            "the network strategy comes from a checkpoint: use load_strategy(CKPT) or --checkpoint"
        )
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; pick one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](**kwargs)


def baseline_names() -> list[str]:
    return [name for name in STRATEGIES if name != "network"]


class OneModel(Strategy):
    """One small model's own distribution (a draft that runs that model alone); not registered,
    since the leaderboard has "largest" for the one that matters most."""

    gives_distribution = True

    def __init__(self, index: int) -> None:
        self.index = int(index)

    def score_tensor(self, x, scales, target_scale):
        return torch.log_softmax(x[:, self.index], dim=1)

    def params(self) -> dict:
        return {"model": self.index}


class ModelSubset(Strategy):
    """`inner` reading only the small models `indices` (e.g. a network trained on the k smallest,
    a cheaper draft than one that runs them all)."""

    def __init__(self, inner: Strategy, indices: Sequence[int]) -> None:
        self.inner = inner
        self.indices = [int(i) for i in indices]
        self.gives_distribution = inner.gives_distribution

    def score_tensor(self, x, scales, target_scale):
        chosen = None if scales is None else [scales[i] for i in self.indices]
        return self.inner.score_tensor(x[:, self.indices], chosen, target_scale)

    def params(self) -> dict:
        return {"models": self.indices, **self.inner.params()}
