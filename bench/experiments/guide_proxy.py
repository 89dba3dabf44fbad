"""Can the ladder itself say which guide to trust on a new kind of prompt, without the target?

    python -m bench.experiments.guide_proxy                    # every ladder
    python -m bench.experiments.guide_proxy --ladders real real-2x --rows 500

A network trained on one kind of prefix learns which guide (the mean of the small models, the
largest, the extrapolation along the ladder) is right there, and on another kind of prompt the
right one can be another. The target's outputs on those prompts are what is missing; the small
models' are not. So on each set this plays the ladder one rung down: the largest small model is
the target and the smaller ones the guides. A guide that predicts the largest small model best
from the smaller ones would be the one to trust on that set, if the ladder behaves alike one
rung apart. The table gives, per set, each baseline's top-1 agreement with the target (from
every small model) and with the largest small model (from the smaller ones), and what choosing
the guide by the second costs against the target: the target's top-1 of the guide the rung below
picks minus that of the best guide. Reads the caches of ROOT/<ladder> (predictor_ladders builds
them); trains nothing. The table goes to docs/results/guide_proxy.md and .json.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.common import start_run
from bench.experiments.ladders import LADDER_NAMES, TRAINING_SET, TRANSFER_SETS, LadderRoot
from emergence_model.cache import open_cache
from emergence_model.cli import exit_on_user_error
from emergence_model.logprobs import floor_logprobs
from emergence_model.report import format_number
from emergence_model.results import Section
from emergence_model.strategies import STRATEGIES

GUIDES = ("mean-prob", "largest", "extrapolate")
SETS = (TRAINING_SET, *TRANSFER_SETS)


@dataclass
class GuideProxyConfig:
    """Which ladders, and how many prefixes of each set."""

    ladders: list[str] = field(
        default_factory=lambda: list(LADDER_NAMES), metadata={"choices": LADDER_NAMES}
    )
    """The ladders whose caches are read."""
    rows: int = 1500
    """Prefixes per set, evenly spaced."""


def agreement(x: torch.Tensor, scales: list[float], target_scale: float, top: torch.Tensor):
    """Each guide's top-1 agreement (a share) with `top` from log-probs x (N, M, V)."""
    out = {}
    for name in GUIDES:
        guide = STRATEGIES[name]()
        guesses = [
            guide.score_tensor(x[i : i + 64], scales, target_scale).argmax(1)
            for i in range(0, len(x), 64)
        ]
        out[name] = (torch.cat(guesses) == top).float().mean().item()
    return out


def main(argv: Sequence[str] | None = None) -> None:
    (config, where), run = start_run(__file__, __doc__, argv, GuideProxyConfig, LadderRoot)
    rows, numbers = [], []
    for ladder in config.ladders:
        for name in SETS:
            path = where.cache(ladder, name)
            if not path.is_dir():
                continue
            cache = open_cache(path)
            at = np.linspace(0, len(cache) - 1, min(len(cache), config.rows)).round()
            data = floor_logprobs(torch.from_numpy(cache.rows(at.astype(np.int64))))
            small, scales = data[:, :-1], cache.scales
            target = agreement(small, scales[:-1], scales[-1], data[:, -1].argmax(1))
            proxy = agreement(small[:, :-1], scales[:-2], scales[-2], small[:, -1].argmax(1))
            best, pick = max(target, key=target.get), max(proxy, key=proxy.get)
            cells = [
                ", ".join(format_number(v, percent=True) for v in d.values())
                for d in (target, proxy)
            ]
            cost = target[pick] - target[best]
            row = [ladder, name, f"{cells[0]} ({best})", f"{cells[1]} ({pick})"]
            rows.append([*row, format_number(cost, percent=True, signed=True)])
            print(" | ".join(rows[-1]), flush=True)
            numbers.append(
                {"ladder": ladder, "set": name, "target": target, "proxy": proxy, "cost": cost}
            )
    head = [
        "ladder",
        "set",
        "top-1 % with the target: " + ", ".join(GUIDES),
        "top-1 % with the largest small model, from the smaller ones",
        "cost of its pick, points",
    ]
    run.write("The guide the rung below picks", [Section("Guides", head, rows, numbers=numbers)])


if __name__ == "__main__":
    exit_on_user_error(main)
