"""Speed of the per-token predictor against the mean-probability baseline, in one run.

    python -m bench.benchmarks.bench_predictor       # [100, 6, 50277] float16, as in the challenge
    python -m bench.benchmarks.bench_predictor --rows 100 --vocab 50277 --repeats 5 --threads 2

Both strategies get the challenge's input (float16 probabilities of the six small models) through
their challenge signature and return token ids, so the ratio is what a challenge run would see.
The network is untrained but full size: the default PredictorConfig with one head per fold of
train.py's default cross-fitting (--heads); speed does not depend on its weights. The timings go
to docs/results/bench_predictor.md and .json.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.common import start_run
from emergence_model.cli import exit_on_user_error
from emergence_model.model import PerTokenPredictor, PredictorConfig
from emergence_model.results import Section
from emergence_model.strategies import MeanProbability, NetworkStrategy
from emergence_model.suites import PYTHIA_LADDER, PYTHIA_PARAM_COUNTS
from emergence_model.training import TrainConfig

NAMES = [f"pythia-{size}" for size in PYTHIA_LADDER]


@dataclass
class PredictorBenchConfig:
    """The input's shape and the network's heads."""

    rows: int = 100
    """Prefixes scored per call."""
    vocab: int = 50277
    """Vocabulary size."""
    repeats: int = 5
    """Timed calls of each strategy (the median is reported), after one warm-up call."""
    heads: int = TrainConfig.folds
    """Networks in the checkpoint: one per fold of train.py's cross-fitting."""


def challenge_probs(rows: int, models: int, vocab: int, seed: int = 0) -> np.ndarray:
    """Peaked, Zipf-like float16 distributions, so that many tail probabilities flush to zero."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((rows, models, vocab), dtype=np.float32) * 3.0
    logits -= logits.max(axis=2, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=2, keepdims=True)
    return probs.astype(np.float16)


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls of `fn`, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start_time = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start_time)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> None:
    (config,), run = start_run(__file__, __doc__, argv, PredictorBenchConfig)
    small, target = NAMES[:-1], NAMES[-1]
    network_config = PredictorConfig(
        vocab_size=config.vocab,
        scales=[PYTHIA_PARAM_COUNTS[n] for n in small],
        target_scale=PYTHIA_PARAM_COUNTS[target],
        num_heads=config.heads,
    )
    network = NetworkStrategy(PerTokenPredictor(network_config), small, target)
    mean = MeanProbability()
    probs = challenge_probs(config.rows, len(small), config.vocab)
    sentences = [""] * config.rows

    seconds = {
        "mean-prob baseline": timed(lambda: mean(sentences, small, target, probs), config.repeats),
        "network": timed(lambda: network(sentences, small, target, probs), config.repeats),
    }
    ratio = seconds["network"] / seconds["mean-prob baseline"]
    parameters = sum(p.numel() for p in network.predictor.parameters())
    c = network_config
    notes = (
        f"Input: probs float16 {list(probs.shape)}. Network: {c.num_heads} heads of "
        f"{c.hidden_size} hidden x {c.num_layers} layers, {c.base} base, {c.num_candidates} "
        f"candidates, {parameters} parameters. Median of {config.repeats} calls."
    )
    rows = [[name, f"{1000 * s:.1f}"] for name, s in seconds.items()]
    rows.append(["ratio network / mean-prob", f"{ratio:.2f}x"])
    numbers = {"seconds": seconds, "ratio": ratio, "shape": list(probs.shape)}
    section = Section("Scoring one challenge batch", ["strategy", "ms"], rows, notes, numbers)
    run.write("The predictor against the mean probability", [section])


if __name__ == "__main__":
    exit_on_user_error(main)
