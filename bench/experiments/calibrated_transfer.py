"""Transfer with a few target-labelled prompts: the network calibrated on each transfer set.

    python -m bench.experiments.calibrated_transfer          # every ladder trained already
    python -m bench.experiments.calibrated_transfer --ladders real real-2x --sizes 16 32 128

Reads each ladder's default network (RUNS/<ladder>/default/network.ckpt, trained by
`python -m bench.experiments.predictor_ladders`) and its transfer caches. On each transfer set
(at most --max-rows prompts, evenly spaced) and for each calibration size N, N prompts drawn at
random calibrate the network (`emergence_model.calibrate`, as `evaluate.py --calibrate N` does:
the pools fitted on them, the guide it guesses with chosen by cross-validation within them) and
every strategy is scored on the other prompts; the draw is repeated --draws times (seeds 0, 1,
...). The table gives, per set and N, the calibrated network minus the best baseline on top-1
(points), the guide each draw chose, KL and sum min(p, q), each with the 95% paired bootstrap
interval of the first draw and the range of the point estimate over the draws; and two references
on the same prompts, as top-1 differences to the calibrated network: the guess pool without the
network (its weight held at zero: what the network adds), and the one token the target most often
ranks first on the calibration prompts (what memorising the answer's token alone would give).
The table goes to docs/results/calibrated_transfer.md and .json.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.common import start_run
from bench.experiments.ladders import LADDER_NAMES, TRANSFER_SETS, LadderRoot
from emergence_model.cache import open_cache
from emergence_model.calibrate import calibrate, calibration_rows
from emergence_model.checkpoint import load_checkpoint, load_strategy
from emergence_model.cli import exit_on_user_error
from emergence_model.evaluate import make_baselines, score_rows
from emergence_model.report import format_number, format_stat
from emergence_model.results import Section
from emergence_model.selection import GUIDE_BASELINES
from emergence_model.stats import mean_with_ci

# The table's measures: (key, percent) in the order of its columns after N.
MEASURES = (("top1", True), ("kl", False), ("accept", False), ("alone", True), ("tok", True))


@dataclass
class CalibratedTransferConfig:
    """Which ladders, how many calibration prompts, how many draws."""

    ladders: list[str] = field(
        default_factory=lambda: list(LADDER_NAMES), metadata={"choices": LADDER_NAMES}
    )
    """The ladders whose default network (trained by predictor_ladders) is calibrated."""
    sizes: list[int] = field(default_factory=lambda: [16, 32, 128])
    """Calibration sizes N: the target-labelled prompts each calibration reads."""
    draws: int = 3
    """Random draws of the N calibration prompts (seeds 0, 1, ...)."""
    max_rows: int = 3000
    """Prompts of a transfer set at most, evenly spaced."""


def cell(diffs: list[np.ndarray], percent: bool) -> tuple[str, dict]:
    """The first draw's mean difference with its interval, and the range of the draws' means."""
    stat = mean_with_ci(diffs[0])
    means = [float(d.mean()) for d in diffs]
    spread = " to ".join(format_number(x, percent, signed=True) for x in (min(means), max(means)))
    return f"{format_stat(stat, percent, signed=True)} ({spread})", {**stat, "draws": means}


def calibrated_rows(ladder: str, name: str, cache, network, baselines, config) -> list:
    """The table's rows of one transfer set: one per calibration size."""
    rows = np.arange(len(cache))
    if len(rows) > config.max_rows:
        rows = np.linspace(0, len(rows) - 1, config.max_rows).round().astype(np.int64)
    zero_shot = score_rows(cache, {**baselines, "network": network}, rows)["strategies"]
    target_top = cache.target_argmax[rows]
    out = []
    guides = {name: baselines[name] for name in GUIDE_BASELINES}
    for n in config.sizes:
        results: dict[str, list] = {k: [] for k, _ in MEASURES}
        chosen = []
        for draw in range(config.draws):
            at = calibration_rows(len(rows), n, draw)
            rest = np.setdiff1d(np.arange(len(rows)), at)
            calibrated = calibrate(network, cache, rows[at], baselines=guides)
            alone = calibrate(network, cache, rows[at], exclude=("network",), choose=False)
            chosen.append(calibrated.pool.guide_choice.guide)
            scored = score_rows(cache, {"cal": calibrated, "alone": alone}, rows[rest])
            cal = scored["strategies"]["cal"]
            for metric, pick in (("top1", max), ("kl", min), ("accept", max)):
                have = [b for b in baselines if metric in zero_shot[b]]
                best = pick(have, key=lambda b: zero_shot[b][metric][rest].mean())
                results[metric].append(cal[metric] - zero_shot[best][metric][rest])
            results["alone"].append(scored["strategies"]["alone"]["top1"] - cal["top1"])
            token = Counter(target_top[at].tolist()).most_common(1)[0][0]
            results["tok"].append((target_top[rest] == token) - cal["top1"])
        cells = [cell(results[k], percent) for k, percent in MEASURES]
        print(f"{ladder} {name} N={n}: {'; '.join(c for c, _ in cells)}; {chosen}", flush=True)
        numbers = {
            "ladder": ladder,
            "set": name,
            "n": n,
            **{k: c[1] for (k, _), c in zip(MEASURES, cells, strict=True)},
            "guides": chosen,
        }
        row = [ladder, name, str(n), cells[0][0], ", ".join(chosen), *[c for c, _ in cells[1:]]]
        out.append((row, numbers))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    (config, where), run = start_run(__file__, __doc__, argv, CalibratedTransferConfig, LadderRoot)
    table = []
    for ladder in config.ladders:
        checkpoint_path = where.runs_dir / ladder / "default" / "network.ckpt"
        if not checkpoint_path.is_file():
            print(f"{ladder}: no trained network at {checkpoint_path}: skipped", file=sys.stderr)
            continue
        network = load_strategy(checkpoint_path)
        baselines = make_baselines(params=load_checkpoint(checkpoint_path)["baselines"])
        for name in TRANSFER_SETS:
            path = where.cache(ladder, name)
            if path.is_dir():
                table += calibrated_rows(ladder, name, open_cache(path), network, baselines, config)
    head = [
        "ladder",
        "set",
        "N",
        "top-1, calibrated minus best baseline",
        "guessed with (each draw)",
        "KL",
        "sum min(p, q)",
        "without the network, top-1",
        "the calibration's top token, top-1",
    ]
    notes = (
        "Each cell: the first draw's difference with its 95% paired bootstrap interval, then the "
        "range of the point estimate over the draws; top-1 in points."
    )
    rows, numbers = [r for r, _ in table], [n for _, n in table]
    run.write("Calibrated transfer", [Section("Calibrated transfer", head, rows, notes, numbers)])


if __name__ == "__main__":
    exit_on_user_error(main)
