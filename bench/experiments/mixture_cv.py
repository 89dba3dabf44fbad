"""The predicted distribution's mixture weighed on validation prefixes only: no scored prefix read.

    python -m bench.experiments.mixture_cv                       # ROOT/seed0/caches/demo-wiki
    python -m bench.experiments.mixture_cv --ladders seed0 onelayer real real-2x

For each fold of train.py's default cross-fitting it reads the fold's validation prefixes (held out
of the fold's training and never scored). Those are split in two halves by position; each variant
is fitted on one half and scored on the other, then the other way round, so that every validation
prefix is scored once per fold by a fit that did not see it (the folds' validation sets overlap, so
a prefix may count in several folds). Variants of the mixture of each small model's
distribution and their mean (the network only makes the mixture's mode its guess, which this leaves
out):
- global (train.py's): one weight per component on the simplex, by EM (`fit_mixture`);
- the mean alone (`--no-mixture`);
- the global weights, then one temperature (q proportional to the mixture to the power 1/t, t
  fitted by L-BFGS on the same KL);
- the global fit with one more component, the per-token log-linear extrapolation along the
  ladder to the target's size (the `extrapolate` baseline's distribution);
- per prefix: weights softmax(b + A c) with c each component's top log-prob, top-2 margin and
  collision entropy (standardised on the fitting half), b from the global fit and A from zero,
  fitted by L-BFGS on the same KL plus `--penalty` times the sum of A squared.
The table gives, per ladder, each variant's mean KL(target || q) and sum_x min(p, q), and their
paired differences to the global mixture (95% bootstrap over the validation prefixes of all
folds). The tables go to docs/results/mixture_cv.md and .json.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import start_run
from bench.experiments.ladders import LADDER_NAMES, LadderRoot
from emergence_model.cache import open_cache
from emergence_model.cli import exit_on_user_error
from emergence_model.data import predictor_config_for
from emergence_model.logprobs import floor_logprobs
from emergence_model.model import (
    PredictorConfig,
    distribution_stats,
    extrapolation_weights,
    fit_mixture,
    mixture_components,
)
from emergence_model.report import format_number, format_stat
from emergence_model.results import Section
from emergence_model.speculative import sampled_acceptance
from emergence_model.stats import kl_rows, mean_with_ci
from emergence_model.training import TrainConfig


@dataclass
class MixtureCVConfig:
    """Which ladders, and the variants' settings."""

    ladders: list[str] = field(
        default_factory=lambda: ["seed0"], metadata={"choices": LADDER_NAMES}
    )
    """The ladders whose demo-wiki cache is read, a table each."""
    penalty: float = 1e-2
    """Per prefix: the L2 penalty on A."""
    max_rows: int = 1024
    """Validation rows per fold, at most (evenly spaced)."""


# A fit maps (components (N, J, V), context (N, C), the target's log-probabilities (N, V)) of the
# fitting half to a function of (components, context) of the other half -> mixture probabilities
# (N, V).
Fit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Callable]
GLOBAL = "global (train.py's)"


def log_of(mixed: torch.Tensor) -> torch.Tensor:
    """A mixture's log-probabilities (N, V), a token of no mass at log 1e-30 rather than -inf."""
    return torch.log(mixed.clamp_min(1e-30))


def fixed(weights: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    return torch.einsum("j,njv->nv", weights, components)


def global_fit(components, _context, target):
    weights = fit_mixture(components, target.exp())
    return lambda c, _: fixed(weights, c)


def mean_alone(_components, _context, _target):
    return lambda c, _: c[:, -1]


def tempered(mixed: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    """The mixture's probabilities (N, V) raised to 1 / exp(log_t) and renormalised."""
    return torch.softmax(log_of(mixed) / log_t.exp(), dim=1)


def global_tempered(components, _context, target):
    weights = fit_mixture(components, target.exp())
    mixed = fixed(weights, components)
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], max_iter=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = kl_rows(target, log_of(tempered(mixed, log_t))).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    print(f"  temperature {log_t.exp().item():.3f}", flush=True)
    return lambda c, _: tempered(fixed(weights, c), log_t.detach())


def with_extrapolation(components, context, target):
    """The global fit with the extrapolation (the last component of `extended`) as one more."""
    weights = fit_mixture(components, target.exp())
    print(f"  weights with the extrapolation {[round(w, 3) for w in weights.tolist()]}", flush=True)
    return lambda c, _: fixed(weights, c)


def per_prefix(penalty: float) -> Fit:
    def fit(components, context, target):
        mu, sd = context.mean(dim=0), context.std(dim=0) + 1e-6
        a = torch.zeros(components.shape[1], context.shape[1], requires_grad=True)
        b = fit_mixture(components, target.exp()).clamp_min(1e-6).log().requires_grad_(True)
        optimizer = torch.optim.LBFGS([a, b], max_iter=200, line_search_fn="strong_wolfe")

        def weights(ctx: torch.Tensor) -> torch.Tensor:
            return torch.softmax(b + ((ctx - mu) / sd) @ a.T, dim=1)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            mixed = torch.einsum("nj,njv->nv", weights(context), components)
            loss = kl_rows(target, log_of(mixed)).mean() + penalty * (a**2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return lambda c, ctx: torch.einsum("nj,njv->nv", weights(ctx).detach(), c)

    return fit


@torch.no_grad()
def fold_inputs(cache, rows: np.ndarray, max_rows: int, extrap: torch.Tensor):
    """A fold's validation rows -> mixture components (N, J, V), per-component context (N, 3J),
    the target's log-probabilities (N, V) and the per-token log-linear extrapolation's
    probabilities (N, V)."""
    if len(rows) > max_rows:
        rows = rows[np.linspace(0, len(rows) - 1, max_rows).round().astype(np.int64)]
    data = torch.from_numpy(cache.rows(rows))
    x = floor_logprobs(data[:, :-1])
    components = mixture_components(x)
    extrapolated = F.softmax(torch.einsum("m,nmv->nv", extrap, x), dim=-1)
    target = F.log_softmax(data[:, -1], dim=-1)
    top = log_of(components).topk(16, dim=2).values  # (N, J, 16)
    return components, distribution_stats(top).flatten(1), target, extrapolated


def weigh_variants(cache, variants: dict[str, Fit], max_rows: int) -> dict[str, dict]:
    """Each variant's KL(target || q) and sum min(p, q) on every fold's validation prefixes,
    each half scored by the fit on the other: {variant: {"kl": (n,), "accept": (n,)}}."""
    config = predictor_config_for(cache, PredictorConfig())
    extrap = torch.tensor(extrapolation_weights(config.scales, config.target_scale)[1])
    splits = TrainConfig().folds_of(cache.prefixes).splits  # train.py's folds
    scores: dict[str, dict[str, list]] = {name: {"kl": [], "accept": []} for name in variants}
    for k, (_, val, _) in enumerate(splits):
        components, context, target, extrapolated = fold_inputs(cache, val, max_rows, extrap)
        extended = torch.cat([components, extrapolated[:, None]], dim=1)
        halves = torch.arange(len(target)) % 2 == 0
        for fit_on in (halves, ~halves):
            score_on = ~fit_on
            for name, fit in variants.items():
                # one variant mixes one more component: the extrapolation, last in `extended`
                inputs = extended if fit is with_extrapolation else components
                mix = fit(inputs[fit_on], context[fit_on], target[fit_on])
                log_q = log_of(mix(inputs[score_on], context[score_on]))
                scores[name]["kl"].append(kl_rows(target[score_on], log_q))
                scores[name]["accept"].append(sampled_acceptance(target[score_on], log_q))
        print(f"fold {k + 1}/{len(splits)}: {len(target)} validation prefixes", flush=True)
    return {
        name: {m: torch.cat(parts).detach().numpy() for m, parts in measures.items()}
        for name, measures in scores.items()
    }


def ladder_section(ladder: str, scores: dict[str, dict]) -> Section:
    """A ladder's table: each variant's mean KL and sum min(p, q), and its paired difference to
    the global mixture."""
    rows, numbers = [], {}
    for name, measures in scores.items():
        cells, numbers[name] = [name], {}
        for metric, values in measures.items():
            diff = mean_with_ci(values - scores[GLOBAL][metric])
            cells += [
                format_number(values.mean(), digits=4),
                format_stat(diff, digits=4, signed=True),
            ]
            numbers[name][metric] = {"mean": float(values.mean()), "minus_global": diff}
        rows.append(cells)
    n = len(scores[GLOBAL]["kl"])
    notes = f"KL(target || q), nats, and sum min(p, q) on {n} validation prefixes."
    head = ["mixture", "KL", "minus global", "sum min(p, q)", "minus global"]
    return Section(ladder, head, rows, notes, numbers)


def main(argv: Sequence[str] | None = None) -> None:
    (config, where), run = start_run(__file__, __doc__, argv, MixtureCVConfig, LadderRoot)
    variants: dict[str, Fit] = {
        GLOBAL: global_fit,
        "the mean alone": mean_alone,
        "global, then a temperature": global_tempered,
        "global, the extrapolation one more component": with_extrapolation,
        f"per prefix (penalty {config.penalty:g})": per_prefix(config.penalty),
    }
    sections = []
    for ladder in config.ladders:
        torch.manual_seed(0)
        scores = weigh_variants(open_cache(where.cache(ladder)), variants, config.max_rows)
        sections.append(ladder_section(ladder, scores))
    run.write("The predicted distribution's mixture on validation prefixes", sections)


if __name__ == "__main__":
    exit_on_user_error(main)
