"""Calibrate a trained network on a few prompts of a new kind, labelled by the target.

Transfer from the training prefixes alone cannot tell which guide to trust on a prompt format the
training prefixes never showed (`python -m bench.experiments.guide_proxy`). The target's outputs
on a few prompts of the new kind are cheap where the target can be run (`cache_features.py` runs
every model of a suite, the target included, on any prefixes), and a few suffice: `fit_guide_pool`
fits two log-linear pools of the guides on them. The guides are each small model's
log-distribution, the log of their mean probability, the network's (its logits, log-normalised)
and the target's own habit on the new kind of prompt: the log of its mean distribution over the
calibration prompts (the prior; while fitting, each prompt's prior leaves that prompt out, so its
weight is fitted as it will be used, on prompts it did not see):

- the guess pool ranks the tokens: weights that start at the network alone and minimise the
  cross-entropy to the target's distribution sharpened at `temperature` (the network's own
  objective, `TrainConfig.target_temperature`);
- the distribution pool is the predicted distribution: weights that start at the mean and
  minimise KL(target || pool), with the guess made its mode (`make_mode`).

A pool's weights are free (a guide may count against, as in the contrastive baseline, or count
more than once, which sharpens), with an L2 penalty pulling them to their start, so that with
few prompts the calibrated network stays near the uncalibrated one. `CalibratedStrategy` scores
with both pools and keeps the challenge's signature; a pool saves to JSON (`GuidePool.save`,
numbers only) beside the checkpoint it was fitted for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from emergence_model.cache import FeatureCache
from emergence_model.files import write_json_atomic
from emergence_model.logprobs import floor_logprobs, probs_to_logprobs
from emergence_model.model import PerTokenPredictor, make_mode
from emergence_model.selection import (
    CALIBRATED_GUIDE,
    GUIDE_BASELINES,
    GuideChoice,
    candidate_guides,
    choose_guide,
    guided,
)
from emergence_model.strategies import (
    NETWORK_GUIDE,
    STRATEGIES,
    MeanProbability,
    NetworkStrategy,
    check_same_models,
)
from emergence_model.vocab import TokenizerId, check_same_tokenizer

# The guess pool's objective: the target sharpened as for the network's logits (TrainConfig).
DEFAULT_TEMPERATURE = 0.25
# L2 pull of each pool's weights to their start (the network alone; the mean alone).
DEFAULT_PENALTY = 1e-2
# Calibration rows, at most: each holds (models + 3) x vocabulary float32 guides while fitting.
MAX_CALIBRATION_ROWS = 1024


class CalibrationError(ValueError):
    """A calibration that cannot be fitted or loaded; the message says how to fix it."""


PRIOR = "prior"  # the target's mean distribution on the calibration prompts, as a guide


def guide_names(model_names: Sequence[str]) -> list[str]:
    """The pools' guides, in order: each small model, their mean, the network, the prior."""
    return [*model_names, "mean", "network", PRIOR]


@torch.no_grad()
def guide_log_probs(predictor: PerTokenPredictor, logprobs: torch.Tensor) -> torch.Tensor:
    """Small models' log-probs (B, M, V) -> the guides' log-distributions (B, M + 2, V): each
    model's (renormalised after the floor), the log of their mean probability, the network's
    logits log-normalised."""
    x = floor_logprobs(logprobs)
    models = x.log_softmax(dim=2)
    mean = MeanProbability().score_tensor(models, None, None)[:, None]
    network = predictor(x.to(predictor.device)).float().cpu().log_softmax(dim=1)
    return torch.cat([models, mean, network[:, None]], dim=1)


def pooled(weights: torch.Tensor, guides: torch.Tensor) -> torch.Tensor:
    """Log-linear pool: log_softmax of the weighted sum of the guides (B, G, V) -> (B, V)."""
    return torch.einsum("g,bgv->bv", weights, guides).log_softmax(dim=1)


def fit_pool(
    guides: torch.Tensor,
    target: torch.Tensor,
    start: torch.Tensor,
    penalty: float = DEFAULT_PENALTY,
    iterations: int = 100,
) -> torch.Tensor:
    """Weights (G,) minimising the mean cross-entropy from `target` probabilities (N, V) to the
    pool of `guides` (N, G, V), plus `penalty` times their squared distance to `start`
    (L-BFGS; the problem is convex in the weights)."""
    weights = start.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([weights], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -(target * pooled(weights, guides)).sum(dim=1).mean()
        loss = loss + penalty * ((weights - start) ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weights.detach()


@dataclass
class GuidePool:
    """A calibration: the two pools' weights over `guides` (`guide_names`) and how they were
    fitted."""

    guides: list[str]
    guess: list[float]
    distribution: list[float]
    prior: list[float]  # the prior guide's log-probabilities over the vocabulary
    rows: int
    temperature: float = DEFAULT_TEMPERATURE
    penalty: float = DEFAULT_PENALTY
    choice: dict | None = None
    """The guide the calibrated network guesses with and the evidence (`GuideChoice.record`):
    chosen by cross-validation within the calibration prompts; None: the guess pool."""

    def __post_init__(self) -> None:
        g = len(self.guides)
        if len(self.guess) != g or len(self.distribution) != g:
            raise CalibrationError(
                f"a calibration needs one weight per guide ({g}: {', '.join(self.guides)}), got "
                f"{len(self.guess)} and {len(self.distribution)}: fit it again with "
                "emergence_model.calibrate.fit_guide_pool"
            )
        if not np.isfinite(self.guess + self.distribution + self.prior).all():
            raise CalibrationError("a calibration's numbers must be finite: fit it again")
        if self.choice is not None:
            try:
                GuideChoice.from_record(self.choice)
            except (TypeError, ValueError) as e:
                raise CalibrationError(
                    f"a calibration's choice of guide is not readable ({e}): fit it again"
                ) from None

    @property
    def guide_choice(self) -> GuideChoice | None:
        """`choice` as a `GuideChoice`."""
        return None if self.choice is None else GuideChoice.from_record(self.choice)

    def guides_with_prior(self, guides: torch.Tensor) -> torch.Tensor:
        """The network's guides (B, G - 1, V) (`guide_log_probs`) and the prior -> (B, G, V)."""
        if guides.shape[2] != len(self.prior):
            raise CalibrationError(
                f"the calibration's prior covers a vocabulary of {len(self.prior)}, the inputs "
                f"have {guides.shape[2]}: calibrate on caches of this suite"
            )
        prior = torch.tensor(self.prior, dtype=guides.dtype)
        return torch.cat([guides, prior.expand(guides.shape[0], 1, -1)], dim=1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the pool as JSON (numbers and names only), atomically."""
        write_json_atomic(path, asdict(self))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> GuidePool:
        """A pool written by `save` (plain JSON: nothing in it is executed)."""
        try:
            record = json.loads(Path(path).read_text())
            return cls(**record)
        except FileNotFoundError:
            raise CalibrationError(
                f"no calibration at {path}: fit one with python -m emergence_model.evaluate "
                "--calibrate N --out DIR"
            ) from None
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
            raise CalibrationError(
                f"{path} is not a calibration written by GuidePool.save ({type(e).__name__}): "
                "fit it again"
            ) from None


def fit_guide_pool(
    predictor: PerTokenPredictor,
    model_names: Sequence[str],
    logprobs: torch.Tensor,
    target_logits: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    penalty: float = DEFAULT_PENALTY,
    exclude: Sequence[str] = (),
) -> GuidePool:
    """Fit both pools on calibration prompts: the small models' log-probs (N, M, V) and the
    target's logits or log-probs (N, V) on the same prompts. Guides named in `exclude` (e.g.
    "network", for what it adds) keep a weight of zero."""
    check_calibration_size(logprobs.shape[0])
    predictor.check_inputs(logprobs)
    return fit_pools(
        calibration_guides(predictor, logprobs),
        target_logits,
        guide_names(model_names),
        temperature,
        penalty,
        exclude,
    )


def check_calibration_size(n: int) -> None:
    if not 2 <= n <= MAX_CALIBRATION_ROWS:
        raise CalibrationError(
            f"calibration takes 2 to {MAX_CALIBRATION_ROWS} prompts, got {n}: pass another "
            "--calibrate"
        )


def calibration_guides(predictor: PerTokenPredictor, logprobs: torch.Tensor) -> torch.Tensor:
    """`guide_log_probs` of calibration prompts (N, M, V) -> (N, M + 2, V), 64 at a time."""
    n = logprobs.shape[0]
    return torch.cat([guide_log_probs(predictor, logprobs[i : i + 64]) for i in range(0, n, 64)])


def fit_pools(
    guides: torch.Tensor,
    target_logits: torch.Tensor,
    names: Sequence[str],
    temperature: float = DEFAULT_TEMPERATURE,
    penalty: float = DEFAULT_PENALTY,
    exclude: Sequence[str] = (),
    start: str = NETWORK_GUIDE,
) -> GuidePool:
    """Both pools fitted on the guides of calibration prompts (N, M + 2, V) (`calibration_guides`,
    the prior not yet among them) and the target's logits or log-probs (N, V); `names`: every
    guide's, the prior's last (`guide_names`). The guess pool starts at the guide `start`, or
    (BEST_START) at the one whose top token is the target's on most of the prompts, the network
    where another is only level with it."""
    n = guides.shape[0]
    check_calibration_size(n)
    if temperature <= 0:
        raise CalibrationError(f"the temperature must be positive, got {temperature}")
    unknown = sorted(set(exclude) - set(names))
    if unknown:
        raise CalibrationError(f"no guide named {unknown[0]!r}; the guides are {list(names)}")
    if "mean" in exclude:
        raise CalibrationError("the pools start at the mean: it cannot be excluded")
    target = target_logits.float().log_softmax(dim=1)
    p = target.exp()
    # each prompt's prior leaves the prompt out; the saved prior is that of all N
    leave_one_out = (p.sum(dim=0, keepdim=True) - p) / (n - 1)
    guides = torch.cat([guides, floor_logprobs(leave_one_out.log()).log_softmax(dim=1)[:, None]], 1)
    keep = [i for i, name in enumerate(names) if name not in exclude]
    if start == BEST_START:
        hits = (guides[:, keep].argmax(dim=2) == target.argmax(dim=1)[:, None]).sum(dim=0)
        first = NETWORK_GUIDE if NETWORK_GUIDE not in exclude else "mean"
        best = names[keep[int(hits.argmax())]]
        start = best if hits.max() > hits[keep.index(names.index(first))] else first
    elif start not in names:
        raise CalibrationError(f"no guide named {start!r} to start at; the guides are {names}")

    def fit(objective: torch.Tensor, start: str) -> list[float]:
        first = names.index("mean" if start in exclude else start)
        weights = torch.zeros(len(names))
        at = F.one_hot(torch.tensor(keep.index(first)), len(keep)).float()
        weights[keep] = fit_pool(guides[:, keep], objective, at, penalty)
        return weights.tolist()

    prior = floor_logprobs(p.mean(dim=0).log()).log_softmax(dim=0)
    return GuidePool(
        list(names),
        guess=fit((target / temperature).softmax(dim=1), start),
        distribution=fit(p, "mean"),
        prior=prior.tolist(),
        rows=n,
        temperature=temperature,
        penalty=penalty,
    )


# `fit_pools`'s start of the guess pool: the guide that agrees with the target most often.
BEST_START = "best"
# Parts of the calibration prompts in the cross-validation that chooses the guide, at most.
CHOICE_PARTS = 4


@torch.no_grad()
def cross_validated_choice(
    network: NetworkStrategy,
    baselines: dict,
    logprobs: torch.Tensor,
    target_logits: torch.Tensor,
    guides: torch.Tensor,
    seed: int = 0,
    **fit,
) -> GuideChoice:
    """The guide the calibrated network guesses with, chosen by cross-validation within the
    calibration prompts (`selection.choose_guide`, the calibrated pools the default): the pools
    fitted on all parts but one guess on that one; every other guide (`candidate_guides`: the
    uncalibrated network, its mixture's mode, the baselines) guesses on every prompt."""
    n = logprobs.shape[0]
    target = target_logits.argmax(dim=1)
    names = guide_names(network.model_names)
    parts = min(CHOICE_PARTS, n // 2)
    read = f"the calibration prompts, cross-validated in {parts} parts"
    if parts < 2:
        read = f"{n} calibration prompts, too few to cross-validate"
        return GuideChoice(CALIBRATED_GUIDE, CALIBRATED_GUIDE, n, read=read)
    agree = {}
    order = np.random.default_rng(seed).permutation(n)
    guess = torch.empty(n, dtype=torch.long)
    for k in range(parts):
        held = torch.from_numpy(np.sort(order[k::parts]))
        fitted = torch.from_numpy(np.sort(np.setdiff1d(order, order[k::parts])))
        pool = fit_pools(guides[fitted], target_logits[fitted], names, **fit)
        pooled_guess = pooled(torch.tensor(pool.guess), pool.guides_with_prior(guides[held]))
        guess[held] = pooled_guess.argmax(dim=1)
    agree[CALIBRATED_GUIDE] = (guess == target).numpy()
    x = floor_logprobs(logprobs)
    cfg = network.predictor.config
    for name, strategy in candidate_guides(network, baselines).items():
        scores = strategy.score_tensor(x, cfg.scales, cfg.target_scale)
        agree[name] = (scores.argmax(dim=1) == target).numpy()
    params = {name: b.params() for name, b in baselines.items()}
    return choose_guide(agree, CALIBRATED_GUIDE, params=params, read=read)


def calibration_rows(num_rows: int, n: int, seed: int = 0) -> np.ndarray:
    """`n` of `num_rows` rows drawn at random (sorted), for calibration; the rest are scored."""
    if not 2 <= n < num_rows:
        raise CalibrationError(
            f"--calibrate {n} leaves nothing to score or to calibrate on a cache of {num_rows} "
            f"prefixes: pass 2 to {num_rows - 1}"
        )
    return np.sort(np.random.default_rng(seed).choice(num_rows, size=n, replace=False))


def calibrate(
    strategy: NetworkStrategy,
    cache: FeatureCache,
    rows: np.ndarray,
    temperature: float = DEFAULT_TEMPERATURE,
    penalty: float = DEFAULT_PENALTY,
    exclude: Sequence[str] = (),
    baselines: dict | None = None,
    choose: bool = True,
    start: str = BEST_START,
) -> CalibratedStrategy:
    """The network of `strategy`, calibrated on `rows` of `cache` (their target outputs): the guess
    pool starts at the guide that agrees with the target most often on them (`start`: another
    guide's name to start there), and the calibrated network guesses with the guide chosen by
    cross-validation within them (`cross_validated_choice`, among the calibrated pools,
    `strategy` itself and `baselines`, default: untuned GUIDE_BASELINES); `choose=False`: with
    the guess pool."""
    check_same_models(
        strategy.model_names,
        cache.model_names[:-1],
        expected_target=strategy.target_name,
        given_target=cache.target_name,
        where=f"calibration cache {cache.path}",
    )
    if strategy.tokenizer is not None:
        check_same_tokenizer(
            strategy.tokenizer,
            TokenizerId.of_cache(cache.meta),
            "the network",
            f"calibration cache {cache.path}",
            "calibrate on a cache of the tokenizer the network was trained under",
        )
    data = torch.from_numpy(cache.rows(np.asarray(rows)))
    logprobs, target = data[:, :-1], data[:, -1]
    check_calibration_size(len(data))
    strategy.predictor.check_inputs(logprobs)
    guides = calibration_guides(strategy.predictor, logprobs)
    fit = dict(temperature=temperature, penalty=penalty, exclude=exclude, start=start)
    pool = fit_pools(guides, target, guide_names(strategy.model_names), **fit)
    if choose:
        if baselines is None:
            baselines = {name: STRATEGIES[name]() for name in GUIDE_BASELINES}
        choice = cross_validated_choice(strategy, baselines, logprobs, target, guides, **fit)
        pool.choice = choice.record()
    return CalibratedStrategy(strategy, pool)


class CalibratedStrategy(NetworkStrategy):
    """A network calibrated on a few prompts of a new kind (`calibrate`): its scores are the
    distribution pool's log-probs with the guess of the guide chosen for it as their mode (the
    guess pool's top token, unless the cross-validation within the calibration prompts chose
    another guide: the uncalibrated network or a baseline)."""

    ranks_candidates = False  # the pools rank every token

    def __init__(self, network: NetworkStrategy, pool: GuidePool) -> None:
        super().__init__(
            network.predictor, network.model_names, network.target_name, tokenizer=network.tokenizer
        )
        self.chunk_rows = network.chunk_rows
        if pool.guides != guide_names(self.model_names):
            raise CalibrationError(
                f"the calibration was fitted for the guides {pool.guides}, this network has "
                f"{guide_names(self.model_names)}: calibrate it again"
            )
        self.pool = pool
        self._guess = torch.tensor(pool.guess)
        self._distribution = torch.tensor(pool.distribution)
        choice = pool.guide_choice
        # None: the guess pool guesses; else the chosen guide (`guided`: the network as it is
        # where the choice is its own guess)
        self.guesser: NetworkStrategy | None = None
        if choice is not None and choice.guide != CALIBRATED_GUIDE:
            self.guesser = guided(network, choice)

    def guides(self, logprobs: torch.Tensor) -> torch.Tensor:
        """Small models' log-probs (B, M, V) -> every guide of the pools (B, G, V)."""
        return self.pool.guides_with_prior(guide_log_probs(self.predictor, logprobs))

    def score_tensor(self, x, scales, target_scale):
        self.check_scales(scales)
        out = []
        for start in range(0, x.shape[0], self.chunk_rows):
            chunk = x[start : start + self.chunk_rows]
            guides = self.guides(chunk)
            if self.guesser is None:
                guess = pooled(self._guess, guides).argmax(dim=1)
            else:
                guess = self.guesser.guess(chunk)
            out.append(make_mode(pooled(self._distribution, guides), guess))
        return torch.cat(out) if out else x.new_zeros(0, x.shape[2])

    def guesses(self, probs: torch.Tensor) -> torch.Tensor:
        if self.guesser is not None:
            return self.guesser.guesses(probs)
        return pooled(self._guess, self.guides(probs_to_logprobs(probs))).argmax(dim=1)

    def params(self) -> dict:
        choice = self.pool.guide_choice
        guide = {} if choice is None else {"guide": choice.guide}
        return {
            "heads": self.predictor.config.num_heads,
            "target": self.target_name,
            **guide,
            "calibrated_on": self.pool.rows,
        }


CALIBRATION_FILE = "calibration.json"  # the pool, beside evaluate's and train.py's reports
CALIBRATED = "network, calibrated"  # the calibrated network's name among a panel's strategies


def calibrated_panel(
    cache: FeatureCache, strategies: dict, n: int, seed: int = 0
) -> tuple[np.ndarray, dict, GuidePool]:
    """`n` random prompts of `cache` calibrate `strategies["network"]` (the guide chosen among the
    calibrated pools, that network and the baselines among `strategies`); returns the other rows
    (to score), the strategies with the calibrated network added, and its pool."""
    rows = calibration_rows(len(cache), n, seed)
    baselines = {name: strategies[name] for name in GUIDE_BASELINES if name in strategies}
    calibrated = calibrate(strategies["network"], cache, rows, baselines=baselines)
    rest = np.setdiff1d(np.arange(len(cache)), rows)
    return rest, {**strategies, CALIBRATED: calibrated}, calibrated.pool
