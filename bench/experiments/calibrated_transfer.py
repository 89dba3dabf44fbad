"""Transfer with a few target-labelled prompts: the network calibrated on each transfer set.

    python bench/calibrated_transfer.py                          # every ladder trained already
    python bench/calibrated_transfer.py --ladders real real-2x --sizes 16 32 128 --draws 3

Reads each ladder's default network (ROOT/runs/<ladder>/default/network.ckpt, trained by
`bench/predictor_ladders.py`) and its transfer caches. On each transfer set (at most --max-rows
prompts, evenly spaced) and for each calibration size N, N prompts drawn at random calibrate the
network (`emergence_model.calibrate`, as `evaluate.py --calibrate N` does) and every strategy is
scored on the other prompts; the draw is repeated --draws times (seeds 0, 1, ...). The table
gives, per set and N, the calibrated network minus the best baseline on top-1 (points), KL and
sum min(p, q), each with the 95% paired bootstrap interval of the first draw and the range of the
point estimate over the draws; and two references on the same prompts, as top-1 differences to
the calibrated network: the pools without the network (its weight held at zero: what the network
adds), and the one token the target most often ranks first on the calibration prompts (what
memorising the answer's token alone would give).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from predictor_ladders import LADDERS, ROOT  # noqa: E402  (bench/, beside this script)

from emergence_model.cache import open_cache  # noqa: E402
from emergence_model.calibrate import calibrate, calibration_rows  # noqa: E402
from emergence_model.checkpoint import load_checkpoint, load_strategy  # noqa: E402
from emergence_model.evaluate import make_baselines, score_rows  # noqa: E402
from emergence_model.stats import bootstrap_ci  # noqa: E402

TRANSFER_SETS = ("demo-rte", "glue-rte")


def cell(diff: np.ndarray, points: list[float], scale: float, digits: int) -> str:
    lo, hi = bootstrap_ci(diff)
    spread = f"{min(points) * scale:+.{digits}f} to {max(points) * scale:+.{digits}f}"
    return (
        f"{diff.mean() * scale:+.{digits}f} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]"
        f" ({spread})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ladders", nargs="+", default=list(LADDERS))
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 128])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--max-rows", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        "| ladder | set | N | top-1, calibrated minus best baseline | KL | sum min(p, q) | "
        "without the network, top-1 | the calibration's top token, top-1 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for ladder in args.ladders:
        checkpoint_path = args.root / "runs" / ladder / "default" / "network.ckpt"
        if not checkpoint_path.is_file():
            print(f"{ladder}: no trained network at {checkpoint_path}: skipped", file=sys.stderr)
            continue
        network = load_strategy(checkpoint_path)
        baselines = make_baselines(params=load_checkpoint(checkpoint_path)["baselines"])
        for name in TRANSFER_SETS:
            path = args.root / ladder / "caches" / name
            if not path.is_dir():
                continue
            cache = open_cache(path)
            rows = np.arange(len(cache))
            if len(rows) > args.max_rows:
                rows = np.linspace(0, len(rows) - 1, args.max_rows).round().astype(np.int64)
            zero_shot = score_rows(cache, {**baselines, "network": network}, rows)["strategies"]
            target_top = cache.target_argmax[rows]
            for n in args.sizes:
                results: dict[str, list] = {k: [] for k in ("top1", "kl", "accept", "alone", "tok")}
                for draw in range(args.draws):
                    at = calibration_rows(len(rows), n, draw)
                    rest = np.setdiff1d(np.arange(len(rows)), at)
                    calibrated = calibrate(network, cache, rows[at])
                    alone = calibrate(network, cache, rows[at], exclude=("network",))
                    scored = score_rows(cache, {"cal": calibrated, "alone": alone}, rows[rest])
                    cal = scored["strategies"]["cal"]
                    for metric, pick in (("top1", max), ("kl", min), ("accept", max)):
                        have = [b for b in baselines if metric in zero_shot[b]]
                        best = pick(have, key=lambda b: zero_shot[b][metric][rest].mean())
                        results[metric].append(cal[metric] - zero_shot[best][metric][rest])
                    results["alone"].append(scored["strategies"]["alone"]["top1"] - cal["top1"])
                    token = Counter(target_top[at].tolist()).most_common(1)[0][0]
                    results["tok"].append((target_top[rest] == token) - cal["top1"])
                cells = [
                    cell(results[k][0], [v.mean() for v in results[k]], scale, digits)
                    for k, scale, digits in (
                        ("top1", 100, 1),
                        ("kl", 1, 3),
                        ("accept", 1, 3),
                        ("alone", 100, 1),
                        ("tok", 100, 1),
                    )
                ]
                print(f"| {ladder} | {name} | {n} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
