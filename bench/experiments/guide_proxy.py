"""Can the ladder itself say which guide to trust on a new kind of prompt, without the target?

    python bench/guide_proxy.py                               # every ladder of predictor_ladders
    python bench/guide_proxy.py --ladders real real-2x --rows 500

A network trained on one kind of prefix learns which guide (the mean of the small models, the
largest, the extrapolation along the ladder) is right there, and on another kind of prompt the
right one can be another. The target's outputs on those prompts are what is missing; the small
models' are not. So on each set this plays the ladder one rung down: the largest small model is
the target and the smaller ones the guides. A guide that predicts the largest small model best
from the smaller ones would be the one to trust on that set, if the ladder behaves alike one
rung apart. The table gives, per set, each baseline's top-1 agreement with the target (from
every small model) and with the largest small model (from the smaller ones), and what choosing
the guide by the second costs against the target: the target's top-1 of the guide the rung below
picks minus that of the best guide. Reads the caches of ROOT/<ladder> (predictor_ladders.py
builds them); trains nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from predictor_ladders import LADDERS, ROOT  # bench/, beside this script

from emergence_model.cache import open_cache
from emergence_model.model import floor_logprobs
from emergence_model.strategies import STRATEGIES

GUIDES = ("mean-prob", "largest", "extrapolate")
SETS = ("demo-wiki", "demo-rte", "glue-rte")  # the training set, then the transfer sets


def agreement(x: torch.Tensor, scales: list[float], target_scale: float, top: torch.Tensor):
    """Each guide's top-1 agreement (%) with `top` from log-probs x (N, M, V)."""
    out = {}
    for name in GUIDES:
        guide = STRATEGIES[name]()
        guesses = [
            guide.score_tensor(x[i : i + 64], scales, target_scale).argmax(1)
            for i in range(0, len(x), 64)
        ]
        out[name] = 100 * (torch.cat(guesses) == top).float().mean().item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--ladders", nargs="+", default=list(LADDERS), choices=list(LADDERS))
    parser.add_argument("--rows", type=int, default=1500, help="prefixes per set, evenly spaced")
    args = parser.parse_args()
    print(
        "| ladder | set | top-1 with the target: "
        + ", ".join(GUIDES)
        + " | top-1 with the largest small model, from the smaller ones"
        + " | cost of its pick, points |"
    )
    print("| --- | --- | --- | --- | --- |")
    for ladder in args.ladders:
        for name in SETS:
            path = args.root / ladder / "caches" / name
            if not path.is_dir():
                continue
            cache = open_cache(path)
            rows = np.linspace(0, len(cache) - 1, min(len(cache), args.rows)).round()
            data = floor_logprobs(torch.from_numpy(cache.rows(rows.astype(np.int64))))
            small, scales = data[:, :-1], cache.scales
            target = agreement(small, scales[:-1], scales[-1], data[:, -1].argmax(1))
            proxy = agreement(small[:, :-1], scales[:-2], scales[-2], small[:, -1].argmax(1))
            best, pick = max(target, key=target.get), max(proxy, key=proxy.get)
            cells = [", ".join(f"{v:.1f}" for v in d.values()) for d in (target, proxy)]
            cost = target[pick] - target[best]
            print(
                f"| {ladder} | {name} | {cells[0]} ({best}) | {cells[1]} ({pick}) | {cost:+.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
