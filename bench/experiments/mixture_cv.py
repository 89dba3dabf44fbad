"""The predicted distribution's mixture weighed on validation prefixes only: no scored prefix read.

    python bench/mixture_cv.py --ladder seed0          # ROOT/seed0/caches/demo-wiki

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
The table gives each variant's mean KL(target || q) and sum_x min(p, q), and their paired
differences to the global mixture (95% bootstrap over the validation prefixes of all folds).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from predictor_ladders import ROOT  # noqa: E402  (bench/, beside this script)

from emergence_model.cache import open_cache  # noqa: E402
from emergence_model.data import predictor_config_for  # noqa: E402
from emergence_model.folds import fold_splits  # noqa: E402
from emergence_model.model import (  # noqa: E402
    PredictorConfig,
    distribution_stats,
    extrapolation_weights,
    fit_mixture,
    floor_logprobs,
    mixture_components,
)
from emergence_model.speculative import sampled_acceptance  # noqa: E402
from emergence_model.stats import bootstrap_ci  # noqa: E402
from emergence_model.training import TrainConfig  # noqa: E402

# A fit maps (components (N, J, V), context (N, C), target (N, V)) of the fitting half to a
# function of (components, context) of the other half -> mixture probabilities (N, V).
Fit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Callable]


def kl_rows(target: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    """KL(target || mixed) of each row (N,), nats."""
    return (torch.xlogy(target, target) - target * torch.log(mixed.clamp_min(1e-30))).sum(dim=1)


def fixed(weights: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    return torch.einsum("j,njv->nv", weights, components)


def global_fit(components, _context, target):
    weights = fit_mixture(components, target)
    return lambda c, _: fixed(weights, c)


def mean_alone(_components, _context, _target):
    return lambda c, _: c[:, -1]


def tempered(mixed: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    """The mixture's probabilities (N, V) raised to 1 / exp(log_t) and renormalised."""
    return torch.softmax(torch.log(mixed.clamp_min(1e-30)) / log_t.exp(), dim=1)


def global_tempered(components, _context, target):
    weights = fit_mixture(components, target)
    mixed = fixed(weights, components)
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], max_iter=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = kl_rows(target, tempered(mixed, log_t)).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    print(f"  temperature {log_t.exp().item():.3f}", flush=True)
    return lambda c, _: tempered(fixed(weights, c), log_t.detach())


def with_extrapolation(components, context, target):
    """The global fit with the extrapolation (the last component of `extended`) as one more."""
    weights = fit_mixture(components, target)
    print(f"  weights with the extrapolation {[round(w, 3) for w in weights.tolist()]}", flush=True)
    return lambda c, _: fixed(weights, c)


def per_prefix(penalty: float) -> Fit:
    def fit(components, context, target):
        mu, sd = context.mean(dim=0), context.std(dim=0) + 1e-6
        a = torch.zeros(components.shape[1], context.shape[1], requires_grad=True)
        b = fit_mixture(components, target).clamp_min(1e-6).log().requires_grad_(True)
        optimizer = torch.optim.LBFGS([a, b], max_iter=200, line_search_fn="strong_wolfe")

        def weights(ctx: torch.Tensor) -> torch.Tensor:
            return torch.softmax(b + ((ctx - mu) / sd) @ a.T, dim=1)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            mixed = torch.einsum("nj,njv->nv", weights(context), components)
            loss = kl_rows(target, mixed).mean() + penalty * (a**2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return lambda c, ctx: torch.einsum("nj,njv->nv", weights(ctx).detach(), c)

    return fit


@torch.no_grad()
def fold_inputs(cache, rows: np.ndarray, max_rows: int, extrap: torch.Tensor):
    """A fold's validation rows -> mixture components (N, J, V), per-component context (N, 3J),
    the target's probabilities (N, V) and the per-token log-linear extrapolation's (N, V)."""
    if len(rows) > max_rows:
        rows = rows[np.linspace(0, len(rows) - 1, max_rows).round().astype(np.int64)]
    data = torch.from_numpy(cache.rows(rows))
    x = floor_logprobs(data[:, :-1])
    components = mixture_components(x)
    extrapolated = F.softmax(torch.einsum("m,nmv->nv", extrap, x), dim=-1)
    target = F.softmax(data[:, -1], dim=-1)
    top = torch.log(components.clamp_min(1e-30)).topk(16, dim=2).values  # (N, J, 16)
    return components, distribution_stats(top).flatten(1), target, extrapolated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ladder", default="seed0")
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--penalty", type=float, default=1e-2, help="per prefix: L2 on A")
    parser.add_argument("--max-rows", type=int, default=1024, help="validation rows per fold")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cache = open_cache(args.root / args.ladder / "caches" / "demo-wiki")
    c = TrainConfig()
    config = predictor_config_for(cache, PredictorConfig())
    extrap = torch.tensor(extrapolation_weights(config.scales, config.target_scale)[1])
    splits = fold_splits(cache.prefixes, c.folds, c.val_fraction, c.test_fraction, c.seed)
    variants: dict[str, Fit] = {
        "global (train.py's)": global_fit,
        "the mean alone": mean_alone,
        "global, then a temperature": global_tempered,
        "global, the extrapolation one more component": with_extrapolation,
        f"per prefix (penalty {args.penalty:g})": per_prefix(args.penalty),
    }
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in variants}
    overlaps: dict[str, list[torch.Tensor]] = {name: [] for name in variants}
    for k, (_, val, _) in enumerate(splits):
        components, context, target, extrapolated = fold_inputs(cache, val, args.max_rows, extrap)
        extended = torch.cat([components, extrapolated[:, None]], dim=1)
        halves = torch.arange(len(target)) % 2 == 0
        for fit_on in (halves, ~halves):
            score_on = ~fit_on
            for name, fit in variants.items():
                # one variant mixes one more component: the extrapolation, last in `extended`
                inputs = extended if fit is with_extrapolation else components
                mix = fit(inputs[fit_on], context[fit_on], target[fit_on])
                mixed = mix(inputs[score_on], context[score_on])
                scores[name].append(kl_rows(target[score_on], mixed))
                log_q = torch.log(mixed.clamp_min(1e-30))
                overlaps[name].append(sampled_acceptance(torch.log(target[score_on]), log_q))
        print(f"fold {k + 1}/{len(splits)}: {len(target)} validation prefixes", flush=True)
    n = len(torch.cat(scores["global (train.py's)"]))
    print(f"\n{args.ladder}: KL(target || q), nats, and sum min(p, q) on {n} validation prefixes\n")
    print("| mixture | KL | minus global | sum min(p, q) | minus global |")
    print("| --- | --- | --- | --- | --- |")
    for name in variants:
        cells = []
        for measure in (scores, overlaps):
            value = torch.cat(measure[name]).numpy()
            diff = value - torch.cat(measure["global (train.py's)"]).numpy()
            low, high = bootstrap_ci(diff)
            cells += [f"{value.mean():.4f}", f"{diff.mean():+.4f} [{low:+.4f}, {high:+.4f}]"]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
