"""The study at Pythia's scale: a 20,000 x 7 x 50,277 float16 cache (~14 GB) streamed from disk.

    python -m bench.benchmarks.bench_study                  # full size (writes ~14 GB under --dir)
    python -m bench.benchmarks.bench_study --prefixes 2000  # a tenth, to check the setup quickly

The cache is synthetic (log-probabilities drawn so that each token's logit grows with log size,
as in the tests' synthetic caches), named with Pythia's model names and parameter counts and the
real GPT-NeoX tokenizer from ../shared/data (a benchmark, never a test), and an untrained network
of the default shape stands in for a checkpoint (its cost is the trained one's). The study runs
with its defaults but the rung curve (which trains networks: bench_predictor times training). Its
models are not on disk, so no decode step is timed and no answer is scored. Reported, in the
same process: the study's wall time against one plain pass over the memory map (the floor for
anything that reads the cache), and the peak of the process's own (anonymous) memory against the
cache's size, which must stay far below it: the study streams rows, it never loads the cache.
Resident pages of the memory-mapped cache are the kernel's page cache, counted in the process's
resident set but dropped under pressure, so the peak resident set is reported beside it but is
not the measure (Linux: sampled from /proc/self/status). The measures go to
docs/results/bench_study.md and .json.
"""

from __future__ import annotations

import re
import resource
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.common import gpt_neox_tokenizer, start_run
from emergence_model.cache import create_cache
from emergence_model.checkpoint import save_checkpoint
from emergence_model.cli import exit_on_user_error
from emergence_model.model import PerTokenPredictor, PredictorConfig
from emergence_model.results import Section
from emergence_model.study.config import StudyConfig
from emergence_model.study.ladder import study_ladder
from emergence_model.study.report import write_study_report
from emergence_model.suites import PYTHIA_LADDER, PYTHIA_PARAM_COUNTS

NAMES = [f"EleutherAI/pythia-{size}" for size in PYTHIA_LADDER]
COUNTS = [PYTHIA_PARAM_COUNTS[f"pythia-{size}"] for size in PYTHIA_LADDER]


@dataclass
class StudyBenchConfig:
    """The synthetic cache's size and where it is written."""

    prefixes: int = 20_000
    """Prefixes in the synthetic cache."""
    vocab: int = 50_277
    """Vocabulary size."""
    dir: Path = Path("runs/bench-study")
    """Where the cache, the untrained network and the study's report are written."""
    keep: bool = False
    """Keep the cache for another run."""


def save_tokenizer(out: Path) -> Path:
    gpt_neox_tokenizer().save_pretrained(out)
    return out


def write_cache(path: Path, num_prefixes: int, vocab: int, tokenizer: Path, seed: int = 0):
    """Rows written a block at a time through the real cache writer (float16 log-probs)."""
    writer = create_cache(
        path,
        model_names=NAMES,
        param_counts=COUNTS,
        prefixes=[f"synthetic prefix {i}" for i in range(num_prefixes)],
        vocab_size=vocab,
        tokenizer=str(tokenizer),
        source={"dataset": "synthetic", "seed": seed},
        seed=seed,
        dtype="float16",
    )
    generator = torch.Generator().manual_seed(seed)
    size = torch.log2(torch.tensor(COUNTS, dtype=torch.float32) / COUNTS[0])  # (M,)
    block = 64
    for start in range(0, num_prefixes, block):
        rows = np.arange(start, min(start + block, num_prefixes))
        base = torch.randn(len(rows), 1, vocab, generator=generator) * 2.0
        growth = torch.randn(len(rows), 1, vocab, generator=generator) * 0.3
        logits = base + growth * size[None, :, None]  # (b, M, V)
        logprobs = torch.log_softmax(logits, dim=-1).numpy()
        for m in range(len(NAMES)):
            writer.write(m, rows, logprobs[:, m])
    return writer.finalize(verify=False)


def plain_pass(cache) -> float:
    """Seconds to read every row of the memory map once (the floor of any full pass)."""
    start = time.perf_counter()
    step = 64
    total = 0.0
    for i in range(0, cache.num_prefixes, step):
        total += float(np.asarray(cache.logprobs[i : i + step], dtype=np.float32)[:, :, 0].sum())
    return time.perf_counter() - start


class AnonymousPeak:
    """Samples the process's anonymous resident memory (heap, tensors; not file-backed pages)
    every 50 ms on a background thread and keeps the peak, in GiB."""

    def __init__(self) -> None:
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> float:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"RssAnon:\s+(\d+) kB", status).group(1)) / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.now())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def main(argv: Sequence[str] | None = None) -> None:
    (config,), run = start_run(__file__, __doc__, argv, StudyBenchConfig)
    config.dir.mkdir(parents=True, exist_ok=True)
    tokenizer = save_tokenizer(config.dir / "tokenizer")
    cache_path = config.dir / f"cache-{config.prefixes}"
    started = time.perf_counter()
    cache = write_cache(cache_path, config.prefixes, config.vocab, tokenizer)
    written = time.perf_counter() - started
    network = PredictorConfig(
        vocab_size=config.vocab, scales=COUNTS[:-1], target_scale=COUNTS[-1], num_heads=1
    )
    checkpoint = config.dir / "untrained.ckpt"
    torch.manual_seed(0)
    save_checkpoint(checkpoint, PerTokenPredictor(network), model_names=NAMES[:-1],
                    target_name=NAMES[-1])  # fmt: skip

    floor = plain_pass(cache)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (Linux: KiB)
    anonymous_before = AnonymousPeak.now()
    anonymous = AnonymousPeak()
    started = time.perf_counter()
    # The rung curve trains a network per rung (the training's own benchmark is bench_predictor);
    # everything else the study does on a cache, it does here.
    study_config = StudyConfig(rung_curve=False)
    result = study_ladder(
        checkpoint, [cache_path], config.dir / "work", study_config, title="bench"
    )
    paths = write_study_report(config.dir / "report", [result])
    study_s = time.perf_counter() - started
    anonymous_peak = anonymous.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    size = cache.logprobs.nbytes / 2**30
    rows = [
        ["one plain pass over the memory map", f"{floor:.1f} s", "1"],
        [
            "the study (every strategy, every measure, the report)",
            f"{study_s:.1f} s",
            f"{study_s / floor:.1f}x the plain pass",
        ],
        [
            "peak anonymous memory during the study",
            f"{anonymous_peak:.2f} GiB",
            f"{anonymous_peak / size:.3f}x the cache's size",
        ],
        ["peak resident set, with the page cache of the memory map", f"{peak:.2f} GiB", ""],
    ]
    notes = (
        f"Cache: {config.prefixes} x {len(NAMES)} x {config.vocab} float16 = {size:.2f} GiB "
        f"(written in {written:.0f} s). Before the study: anonymous memory "
        f"{anonymous_before:.2f} GiB, peak resident set {before:.2f} GiB. Report: {paths[-1]}."
    )
    numbers = {
        "cache_gib": size,
        "plain_pass_seconds": floor,
        "study_seconds": study_s,
        "anonymous_peak_gib": anonymous_peak,
        "resident_peak_gib": peak,
    }
    head = ["measure", "value", "ratio"]
    section = Section("The study on a Pythia-sized cache", head, rows, notes, numbers)
    run.write("The study at Pythia's scale", [section])
    if not config.keep:
        shutil.rmtree(cache_path)


if __name__ == "__main__":
    exit_on_user_error(main)
