"""Variants of the predictor compared on training folds only: quick, paired, no scored prefix read.

    python bench/predictor_cv.py --ladder seed0                       # every variant
    python bench/predictor_cv.py --ladder real --variants default "no token embedding"

The first fold of train.py's default cross-fitting (5 folds, seed 0) holds out a fifth of the
prefixes for scoring; this reads only the rest (its training and validation prefixes), splits them
into 4 inner folds and trains each variant once per inner fold with a plain PyTorch loop (AdamW, 8
epochs unless the variant says otherwise, one-cycle cosine schedule, train.py's loss: the logits'
KL to the target sharpened at temperature 0.25; a variant may change the loss's TrainConfig fields,
train on a share of each inner training set or join networks from several seeds). Every prefix is
guessed once by the network that did not see it; the table gives each variant's top-1 and its
paired difference to the first variant (95% bootstrap). A variant takes 15-45 s on 2 cores on the
demo's ladders. Ladders are ROOT/<name>/caches/demo-wiki (see predictor_ladders.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from predictor_ladders import ROOT  # noqa: E402  (bench/, beside this script)

from emergence_model.cache import open_cache  # noqa: E402
from emergence_model.data import predictor_config_for  # noqa: E402
from emergence_model.folds import fold_splits  # noqa: E402
from emergence_model.model import PerTokenPredictor, PredictorConfig  # noqa: E402
from emergence_model.stats import bootstrap_ci  # noqa: E402
from emergence_model.training import PredictorModule, TrainConfig  # noqa: E402


class IssueMLP(nn.Module):
    """The issue's per-token MLP: the largest model's log-prob plus an MLP of each model's
    log-prob, its gap to that model's top and that model's entropy, on the 64 most probable
    tokens under the mean (0: every token)."""

    def __init__(self, num_models: int, hidden: int = 32, candidates: int = 64) -> None:
        super().__init__()
        self.candidates = candidates
        self.mlp = nn.Sequential(
            nn.Linear(3 * num_models, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp_min(math.log(2**-24))
        log_mean = torch.log(x.exp().mean(dim=1))
        entropy = -(x.exp() * x).sum(dim=2, keepdim=True)
        top = x.amax(dim=2, keepdim=True)
        ids = torch.arange(x.shape[2]).expand(x.shape[0], -1)
        if self.candidates:
            ids = log_mean.topk(self.candidates, dim=1).indices
        xc = x.gather(2, ids.unsqueeze(1).expand(-1, x.shape[1], -1))
        features = torch.cat([xc / 8, (xc - top) / 8, entropy.expand_as(xc) / 4], dim=1)
        correction = self.mlp(features.transpose(1, 2)).squeeze(-1)
        return x[:, -1].scatter_add(1, ids, correction)


@dataclasses.dataclass(frozen=True)
class Variant:
    make: Callable[[PredictorConfig, int], nn.Module]
    epochs: int = 8
    lr: float = 1e-3
    loss: dict = dataclasses.field(default_factory=dict)  # TrainConfig fields of the loss
    share: float = 1.0  # of each inner training set, what it is trained on
    seeds: int = 1  # networks trained from different seeds, joined as train.py joins heads


def network(**changes) -> Callable[[PredictorConfig, int], nn.Module]:
    return lambda config, _: PerTokenPredictor(dataclasses.replace(config, **changes))


VARIANTS = {
    "default": Variant(network()),
    "64 candidates": Variant(network(num_candidates=64)),
    "8 candidates": Variant(network(num_candidates=8)),
    "12 epochs": Variant(network(), epochs=12),
    "MLP width 64": Variant(network(hidden_size=64)),
    "two hidden layers": Variant(network(num_layers=2)),
    "learning rate 3e-3": Variant(network(), lr=3e-3),
    "learning rate 3e-2": Variant(network(), lr=3e-2),
    "no token embedding": Variant(network(token_embedding=0)),
    "base: largest": Variant(network(base="largest")),
    "base: mean": Variant(network(base="mean")),
    "base: extrapolate": Variant(network(base="extrapolate")),
    "hard targets (cross-entropy)": Variant(network(), loss={"soft_weight": 0.0}),
    "soft targets at temperature 1": Variant(network(), loss={"target_temperature": 1.0}),
    "half the training prefixes": Variant(network(), share=0.5),
    "three seeds per fold": Variant(network(), seeds=3),
    "the issue's per-token MLP": Variant(
        lambda _, m: IssueMLP(m), lr=3e-3, loss={"soft_weight": 0.0}
    ),
    "the issue's per-token MLP, every token, 30 epochs": Variant(
        lambda _, m: IssueMLP(m, candidates=0), epochs=30, lr=3e-3, loss={"soft_weight": 0.0}
    ),
}


def train_and_guess(
    variant: Variant,
    config: PredictorConfig,
    rows: torch.Tensor,
    train: np.ndarray,
    test: np.ndarray,
) -> torch.Tensor:
    """Train `variant` on rows[train] and return its guesses on rows[test]: with several seeds,
    those of the networks joined into one ensemble (`PerTokenPredictor.ensemble`)."""
    models = [train_one(variant, config, rows, train, seed) for seed in range(variant.seeds)]
    model = models[0] if len(models) == 1 else PerTokenPredictor.ensemble(models)
    with torch.no_grad():
        return torch.cat(
            [model(rows[test[i : i + 64], :-1]).argmax(dim=1) for i in range(0, len(test), 64)]
        )


def train_one(
    variant: Variant,
    config: PredictorConfig,
    rows: torch.Tensor,
    train: np.ndarray,
    seed: int,
    batch_size: int = 32,
) -> nn.Module:
    """One network of `variant` trained on rows[train] from `seed`."""
    if variant.share < 1:
        keep = np.random.default_rng(seed).permutation(len(train))
        train = np.sort(train[keep[: round(variant.share * len(train))]])
    objective = PredictorModule(
        dataclasses.asdict(config), dataclasses.asdict(TrainConfig(**variant.loss))
    )
    torch.manual_seed(seed)
    model = variant.make(config, config.num_models)
    optimizer = torch.optim.AdamW(model.parameters(), lr=variant.lr, weight_decay=0.01)
    steps = variant.epochs * math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, variant.lr, total_steps=steps, pct_start=0.02
    )
    order = torch.Generator().manual_seed(seed)
    for _ in range(variant.epochs):
        model.train()
        shuffled = train[torch.randperm(len(train), generator=order).numpy()]
        for start in range(0, len(shuffled), batch_size):
            batch = rows[shuffled[start : start + batch_size]]
            target = batch[:, -1]
            loss = objective.loss(
                model(batch[:, :-1]), {"target": target.argmax(dim=1), "target_logprobs": target}
            )
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ladder", default="seed0")
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--inner-folds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = open_cache(args.root / args.ladder / "caches" / "demo-wiki")
    train, val, _scored = fold_splits(cache.prefixes, 5, 0.05, 0.2, 0)[0]
    seen = np.sort(np.concatenate([train, val]))  # the scored fifth is never read
    order = np.random.default_rng(1).permutation(seen)
    parts = [np.sort(order[k :: args.inner_folds]) for k in range(args.inner_folds)]
    rows = torch.zeros(len(cache), cache.num_models, cache.vocab_size)
    rows[seen] = torch.from_numpy(cache.rows(seen))
    target = rows[seen, -1].argmax(dim=1)
    mean_ok = rows[seen, :-1].exp().mean(dim=1).argmax(dim=1) == target
    position = {int(r): i for i, r in enumerate(seen)}
    config = predictor_config_for(cache, PredictorConfig())
    print(
        f"{args.ladder}: {len(seen)} training-fold prefixes, mean-prob top-1 "
        f"{100 * mean_ok.float().mean():.2f}%"
    )
    first = None
    for name in args.variants:
        started = time.perf_counter()
        guesses = torch.empty(len(seen), dtype=torch.long)
        for k, test in enumerate(parts):
            fit_rows = np.sort(np.concatenate([p for j, p in enumerate(parts) if j != k]))
            guesses[[position[int(r)] for r in test]] = train_and_guess(
                VARIANTS[name], config, rows, fit_rows, test
            )
        ok = (guesses == target).float().numpy() * 100
        base = 100 * mean_ok.float().mean().item()
        first = ok if first is None else first
        diff = ok - first
        low, high = bootstrap_ci(diff)  # paired: resampling the prefixes' differences
        print(
            f"{name}: top-1 {ok.mean():.2f}%, minus mean-prob {ok.mean() - base:+.2f}, "
            f"minus {args.variants[0]} {diff.mean():+.2f} [{low:+.2f}, {high:+.2f}] "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
