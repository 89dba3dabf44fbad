"""Peak memory of each strategy's challenge call against the size of its input, each in its own
process.

    python -m bench.benchmarks.bench_strategy_memory --threads 1    # [2000, 6, 50277] float16
    python -m bench.benchmarks.bench_strategy_memory --rows 200 --strategies mean-prob network

Every strategy gets the challenge's input, float16 probabilities of the six small models, through
its challenge signature, as bench_predictor's do (64 distinct rows, repeated); the network is
untrained but full size (one head per fold of train.py's cross-fitting).

How it is measured: each strategy runs in a fresh Python process that builds the input, makes one
call on two rows (torch's kernels and thread pools start there), returns freed heap to the system
(`malloc_trim`), resets the kernel's high-water mark of its resident memory
(`/proc/self/clear_refs`, Linux 4.0 and later) and makes the call. The call's peak is the
high-water mark (VmHWM) less the resident memory just before it (VmRSS), both counting every
allocator (numpy's, torch's, Python's); the table gives (input + that peak) over the input's own
size, so that 1.0 is "the input alone" and 1.5 is the target. `--unchunked` also measures
strategies scoring the whole array at once (`score_probs` on every row: the call as it was before
it went by chunks of rows), as a baseline in the same run. The table goes to
docs/results/bench_strategy_memory.md and .json.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.benchmarks.bench_predictor import NAMES, challenge_probs
from bench.common import REPO, start_run
from emergence_model.cli import exit_on_user_error
from emergence_model.results import Section
from emergence_model.strategies import STRATEGIES
from emergence_model.training import TrainConfig

# The target of the issue that asked for chunked baselines: a call's peak within 1.5x its input.
TARGET_RATIO = 1.5
# Distinct rows of the input, repeated to fill it: memory does not depend on the values, and
# drawing 600M of them would take minutes.
POOL_ROWS = 64
# The strategy scored whole, for the unchunked baseline.
UNCHUNKED = "whole array"


@dataclass
class StrategyMemoryConfig:
    """The input's shape, the strategies measured and the network's heads."""

    rows: int = 2000
    """Prefixes in the call."""
    vocab: int = 50277
    """Vocabulary size."""
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    """Strategies measured, each in its own process (registered names; default: every one)."""
    unchunked: list[str] = field(default_factory=lambda: ["mean-prob"])
    """Baselines also measured scoring the whole array at once, as before (each costs about
    4x the input for mean-prob, 6.5x for extrapolate)."""
    heads: int = TrainConfig.folds
    """Networks in the checkpoint: one per fold of train.py's cross-fitting."""


def _status_kib(key: str) -> int:
    """A line of /proc/self/status in KiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}: this benchmark needs Linux")


def _make_strategy(name: str, vocab: int, heads: int):
    from emergence_model.model import PerTokenPredictor, PredictorConfig
    from emergence_model.strategies import NetworkStrategy, make_strategy
    from emergence_model.suites import PYTHIA_PARAM_COUNTS

    if name != "network":
        return make_strategy(name)
    small, target = NAMES[:-1], NAMES[-1]
    config = PredictorConfig(
        vocab_size=vocab,
        scales=[PYTHIA_PARAM_COUNTS[n] for n in small],
        target_scale=PYTHIA_PARAM_COUNTS[target],
        num_heads=heads,
    )
    return NetworkStrategy(PerTokenPredictor(config), small, target)


def measure(name: str, rows: int, vocab: int, heads: int, whole: bool) -> dict:
    """In this process: the peak memory of `name`'s challenge call (or, `whole`, of its scores of
    every row at once) on [rows, 6, vocab] float16 probabilities, over the input's size."""
    import numpy as np
    import torch

    from emergence_model.strategies import challenge_param_counts

    small, target = NAMES[:-1], NAMES[-1]
    strategy = _make_strategy(name, vocab, heads)
    pool = challenge_probs(min(rows, POOL_ROWS), len(small), vocab)
    probs = np.empty((rows, len(small), vocab), dtype=np.float16)
    for start in range(0, rows, len(pool)):
        probs[start : start + len(pool)] = pool[: rows - start]
    del pool
    scales, target_scale = challenge_param_counts(small, target)

    def call(x):
        if whole:
            tensor = torch.from_numpy(x)
            return strategy.score_probs(tensor, scales, target_scale).argmax(dim=1).tolist()
        return strategy([""] * len(x), small, target, x)

    call(probs[:2])  # torch's kernels and thread pools start here, not in the measured call
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system: a lean baseline
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the resident memory now
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    guesses = call(probs)
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    assert len(guesses) == rows
    return {
        "strategy": name,
        "whole": whole,
        "input_bytes": probs.nbytes,
        "rss_before_bytes": before * 1024,
        "peak_bytes": peak * 1024,
        "call_bytes": (peak - before) * 1024,
        "seconds": seconds,
    }


def measure_in_child(name: str, config: StrategyMemoryConfig, threads: int | None, whole: bool):
    """`measure` in a fresh process (its allocator and high-water mark its own)."""
    code = (
        "import json, sys, torch\n"
        f"torch.set_num_threads({threads or 0} or torch.get_num_threads())\n"
        "from bench.benchmarks.bench_strategy_memory import measure\n"
        f"print(json.dumps(measure({name!r}, {config.rows}, {config.vocab}, {config.heads}, "
        f"{whole})))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring {name} failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> None:
    (config,), run = start_run(__file__, __doc__, argv, StrategyMemoryConfig)
    threads = run.options.threads
    results = []
    for name in config.strategies:
        results.append(measure_in_child(name, config, threads, whole=False))
        print(f"{name}: {results[-1]['peak_bytes'] / 2**20:.0f} MiB peak", flush=True)
    for name in config.unchunked:
        results.append(measure_in_child(name, config, threads, whole=True))
        print(f"{name}, {UNCHUNKED}: {results[-1]['call_bytes'] / 2**20:.0f} MiB", flush=True)
    table = []
    for r in results:
        r["ratio"] = (r["input_bytes"] + r["call_bytes"]) / r["input_bytes"]
        label = f"{r['strategy']} ({UNCHUNKED}, before)" if r["whole"] else r["strategy"]
        table.append(
            [
                label,
                f"{r['call_bytes'] / 2**20:.0f}",
                f"{r['ratio']:.2f}",
                f"{r['seconds']:.1f}",
            ]
        )
    input_mib = results[0]["input_bytes"] / 2**20
    notes = (
        f"Input: probs float16 [{config.rows}, {len(NAMES) - 1}, {config.vocab}], "
        f"{input_mib:.0f} MiB, resident before the call. Peak / input: (input + the call's peak "
        f"growth) / input, target at most {TARGET_RATIO}. Network: {config.heads} heads of "
        "the default PredictorConfig."
    )
    head = ["strategy", "call's peak growth, MiB", "peak / input", "seconds"]
    numbers = {"input_bytes": results[0]["input_bytes"], "results": results}
    section = Section("Peak memory of one challenge call", head, table, notes, numbers)
    run.write("Each strategy's peak memory against its input", [section])


if __name__ == "__main__":
    exit_on_user_error(main)
