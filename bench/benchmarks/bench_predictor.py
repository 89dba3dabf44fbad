"""Speed of the per-token predictor against the mean-probability baseline, in one run.

    python bench/bench_predictor.py          # [100, 6, 50277] float16, as in the challenge
    python bench/bench_predictor.py --rows 100 --vocab 50277 --repeats 5 --threads 2

Both strategies get the challenge's input (float16 probabilities of the six small models) through
their challenge signature and return token ids, so the ratio is what a challenge run would see.
The network is untrained but full size: the default PredictorConfig with one head per fold of
train.py's default cross-fitting (--heads); speed does not depend on its weights.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from emergence_model.model import PerTokenPredictor, PredictorConfig
from emergence_model.strategies import MeanProbability, NetworkStrategy
from emergence_model.suites import PYTHIA_LADDER, PYTHIA_PARAM_COUNTS

NAMES = [f"pythia-{size}" for size in PYTHIA_LADDER]


def challenge_probs(rows: int, models: int, vocab: int, seed: int = 0) -> np.ndarray:
    """Peaked, Zipf-like float16 distributions, so that many tail probabilities flush to zero."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((rows, models, vocab), dtype=np.float32) * 3.0
    logits -= logits.max(axis=2, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=2, keepdims=True)
    return probs.astype(np.float16)


def timed(fn, repeats: int) -> tuple[float, list[int]]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--vocab", type=int, default=50277)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 cores target)")
    parser.add_argument("--heads", type=int, default=5, help="networks in the checkpoint (folds)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    small, target = NAMES[:-1], NAMES[-1]
    config = PredictorConfig(
        vocab_size=args.vocab,
        scales=[PYTHIA_PARAM_COUNTS[n] for n in small],
        target_scale=PYTHIA_PARAM_COUNTS[target],
        num_heads=args.heads,
    )
    network = NetworkStrategy(PerTokenPredictor(config), small, target)
    mean = MeanProbability()
    probs = challenge_probs(args.rows, len(small), args.vocab)
    sentences = [""] * args.rows

    mean_s, _ = timed(lambda: mean(sentences, small, target, probs), args.repeats)
    net_s, _ = timed(lambda: network(sentences, small, target, probs), args.repeats)
    print(f"input: probs float16 {list(probs.shape)}, torch threads {torch.get_num_threads()}")
    print(
        f"network: {config.num_heads} heads of {config.hidden_size} hidden x {config.num_layers} "
        f"layers, {config.base} base, {config.num_candidates} candidates, "
        f"{sum(p.numel() for p in network.predictor.parameters())} parameters"
    )
    print(f"mean-prob baseline: {1000 * mean_s:8.1f} ms (median of {args.repeats})")
    print(f"network:            {1000 * net_s:8.1f} ms")
    print(f"ratio network / mean-prob: {net_s / mean_s:.2f}x")


if __name__ == "__main__":
    main()
