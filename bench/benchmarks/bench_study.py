"""The study at Pythia's scale: a 20,000 x 7 x 50,277 float16 cache (~14 GB) streamed from disk.

    python bench/bench_study.py                      # the full size (writes ~14 GB under --dir)
    python bench/bench_study.py --prefixes 2000      # a tenth, to check the setup quickly

The cache is synthetic (log-probabilities drawn so that each token's logit grows with log size,
as in the tests' synthetic caches), named with Pythia's model names and parameter counts and the
real GPT-NeoX tokenizer from ../shared/data (a benchmark, never a test), and an untrained network
of the default shape stands in for a checkpoint (its cost is the trained one's). Reported, in the
same process: the study's wall time against one plain pass over the memory map (the floor for
anything that reads the cache), and the peak of the process's own (anonymous) memory against the
cache's size, which must stay far below it: the study streams rows, it never loads the cache.
Resident pages of the memory-mapped cache are the kernel's page cache, counted in the process's
resident set but dropped under pressure, so the peak resident set is reported beside it but is
not the measure (Linux: sampled from /proc/self/status).
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import torch

from emergence_model.cache import create_cache
from emergence_model.checkpoint import save_checkpoint
from emergence_model.model import PerTokenPredictor, PredictorConfig
from emergence_model.study.config import StudyConfig
from emergence_model.study.ladder import study_ladder
from emergence_model.study.report import write_study_report
from emergence_model.suites import PYTHIA_LADDER, PYTHIA_PARAM_COUNTS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NAMES = [f"EleutherAI/pythia-{size}" for size in PYTHIA_LADDER]
COUNTS = [PYTHIA_PARAM_COUNTS[f"pythia-{size}"] for size in PYTHIA_LADDER]


def save_tokenizer(out: Path) -> Path:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(DATA / "gpt-neox-20b-tokenizer.json"),
        eos_token="<|endoftext|>",
        pad_token="<|padding|>",
    )
    tokenizer.save_pretrained(out)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefixes", type=int, default=20_000)
    parser.add_argument("--vocab", type=int, default=50_277)
    parser.add_argument("--dir", type=Path, default=Path("runs/bench-study"))
    parser.add_argument("--keep", action="store_true", help="keep the cache for another run")
    args = parser.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    tokenizer = save_tokenizer(args.dir / "tokenizer")
    cache_path = args.dir / f"cache-{args.prefixes}"
    started = time.perf_counter()
    cache = write_cache(cache_path, args.prefixes, args.vocab, tokenizer)
    written = time.perf_counter() - started
    config = PredictorConfig(
        vocab_size=args.vocab, scales=COUNTS[:-1], target_scale=COUNTS[-1], num_heads=1
    )
    checkpoint = args.dir / "untrained.ckpt"
    torch.manual_seed(0)
    save_checkpoint(checkpoint, PerTokenPredictor(config), model_names=NAMES[:-1],
                    target_name=NAMES[-1])  # fmt: skip

    floor = plain_pass(cache)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (Linux: KiB)
    anonymous_before = AnonymousPeak.now()
    anonymous = AnonymousPeak()
    started = time.perf_counter()
    result = study_ladder(checkpoint, [cache_path], args.dir / "work", StudyConfig(), title="bench")
    paths = write_study_report(args.dir / "report", [result])
    study_s = time.perf_counter() - started
    anonymous_peak = anonymous.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    size = cache.logprobs.nbytes / 2**30
    print(f"cache: {args.prefixes} x {len(NAMES)} x {args.vocab} float16 = {size:.2f} GiB "
          f"(written in {written:.0f} s)")  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"one plain pass over the memory map: {floor:.1f} s")
    print(f"the study (every strategy, every measure, the report): {study_s:.1f} s = "
          f"{study_s / floor:.1f}x the plain pass")  # fmt: skip
    share = anonymous_peak / size
    print(f"peak anonymous memory during the study: {anonymous_peak:.2f} GiB "
          f"({anonymous_before:.2f} before it) = {share:.3f}x the cache's size")  # fmt: skip
    print(f"peak resident set, with the page cache of the memory map: {peak:.2f} GiB "
          f"({before:.2f} before the study)")  # fmt: skip
    print(f"report: {paths[-1]}")
    if not args.keep:
        shutil.rmtree(cache_path)


if __name__ == "__main__":
    main()
