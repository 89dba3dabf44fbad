"""What a Pythia run costs on a GPU, estimated where none was measured: the cache's disk use, and
each step's time per 1,000 prefixes, from FLOPs and bytes under stated assumptions.

    python -m bench.experiments.gpu_estimates
    python -m bench.experiments.gpu_estimates --peak-tflops 312 --card "A100"

Nothing here runs on a GPU: these are estimates, labelled so; `python -m
bench.benchmarks.bench_gpu` measures them on a card. What is counted, not assumed: Pythia's
parameters at its real shapes (`lm.pythia_config`, built without weights), the tokens of a prefix
(WikiText-2 paragraph openings, the first 10-20 words as the wikipedia source cuts them, under
Pythia's tokenizer from ../shared/data, or a tokenizer trained offline without it), the padding
of length-sorted batches, and the bytes of a cache. What is assumed, each a flag: the card's bf16
peak, the share of it the extraction's matrix products reach (model FLOP utilisation), the host's
cost of one transformer layer per forward pass (eager PyTorch launches each layer's kernels
from Python, which at ~20 tokens a prefix costs as much as the small models' arithmetic), the disk's
bandwidth, and the training loop's cost per step. Extraction time = 2 x non-embedding parameters
x tokens / (peak x utilisation) + batches x layers x host cost per layer, summed over the models;
the predictor's steps read every prefix's row of the cache (its arithmetic is ~1e5 FLOPs a prefix,
nothing next to the bytes). Written to docs/results/gpu_estimates.md and .json.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bench.benchmarks.bench_extraction import load_text_and_tokenizer
from bench.common import start_run
from emergence_model.cli import exit_on_user_error
from emergence_model.extract import length_batches, tokenize_prefixes
from emergence_model.lm import PYTHIA_VOCAB, count_parameters, pythia_config
from emergence_model.prompts import wikipedia_prefixes
from emergence_model.results import Section
from emergence_model.suites import PYTHIA_LADDER

GB = 1e9


@dataclass
class EstimateConfig:
    """The assumptions: each is a flag, and the results file names them."""

    card: str = "H100 SXM / H200"
    """The card the estimate is for (a name for the table)."""
    peak_tflops: float = 989.4
    """Its dense bf16 peak in TFLOP/s (H100 SXM and H200: 989.4; A100: 312)."""
    mfu: list[float] = (0.25, 0.5)
    """Model FLOP utilisation of the extraction's forward passes: low and high."""
    layer_ms: list[float] = (0.1, 0.3)
    """Host time per transformer layer per forward pass in milliseconds: low and high."""
    batch_sizes: list[int] = (16, 64)
    """Extraction batch sizes to estimate (16: the default; 64: what a GPU takes easily)."""
    disk_gbps: list[float] = (1.0, 3.0)
    """Disk bandwidth in GB/s (read and write): low and high (an NVMe drive: ~3)."""
    step_ms: float = 5.0
    """The training loop's host cost per step in milliseconds (Lightning, the DataLoader)."""
    train_batch: int = 32
    """The predictor's training batch (train.py's default)."""
    num_prefixes: int = 2000
    """WikiText-2 openings whose tokens are counted (at most the ~1,600 it has)."""

    def __post_init__(self) -> None:
        for name in ("mfu", "layer_ms", "disk_gbps"):
            pair = list(getattr(self, name))
            if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
                raise ValueError(f"--{name.replace('_', '-')} takes LOW HIGH, 0 < LOW <= HIGH")
            setattr(self, name, pair)
        self.batch_sizes = list(self.batch_sizes)


def pythia_sizes() -> list[dict]:
    """Each model of the challenge's ladder: parameters, non-embedding ones, hidden, rows."""
    from transformers import GPTNeoXForCausalLM

    sizes = []
    for size in PYTHIA_LADDER:
        config = pythia_config(size)
        with torch.device("meta"):
            params = count_parameters(GPTNeoXForCausalLM(config))
        rows, hidden = config.vocab_size, config.hidden_size
        sizes.append(
            dict(size=size, params=params, body=params - 2 * rows * hidden, hidden=hidden,
                 rows=rows, layers=config.num_hidden_layers)
        )  # fmt: skip
    return sizes


def cache_bytes(num_prefixes: int, models: int = len(PYTHIA_LADDER), itemsize: int = 2) -> int:
    """A cache's arrays: log-probs [N, M, V], top tokens [N, M] int32, done [M, N] bool."""
    return num_prefixes * models * (PYTHIA_VOCAB * itemsize + 4 + 1)


def main(argv: Sequence[str] | None = None) -> None:
    (config,), run = start_run(__file__, __doc__, argv, EstimateConfig)
    paragraphs, tokenizer, data = load_text_and_tokenizer()
    prefixes = wikipedia_prefixes(paragraphs, config.num_prefixes, seed=0)
    lengths = np.array([len(ids) for ids in tokenize_prefixes(tokenizer, prefixes)])
    tokens = float(lengths.mean())
    sizes = pythia_sizes()
    peak = config.peak_tflops * 1e12

    rows = []
    for n in (1_000, 20_000, 100_000):
        rows.append([f"{n:,}", f"{cache_bytes(n) / GB:.2f} GB ({cache_bytes(n) / 2**30:.2f} GiB)",
                     f"{cache_bytes(n, itemsize=4) / GB:.2f} GB"])  # fmt: skip
    notes = (
        f"Seven models (the challenge's ladder) x {PYTHIA_VOCAB:,} tokens: "
        f"{cache_bytes(1):,} bytes a prefix in float16 (log-probs 2 bytes a token, top token 4 "
        "bytes and done flag 1 byte a model), plus the prefixes' text. Computed, not measured."
    )
    disk = Section("Disk use of a cache", ["prefixes", "float16 (default)", "float32"], rows,
                   notes, {"bytes_per_prefix": cache_bytes(1)})  # fmt: skip

    flops = sum(2 * s["body"] * tokens + 2 * s["hidden"] * s["rows"] for s in sizes)  # a prefix
    layers = sum(s["layers"] for s in sizes)
    rows, numbers = [], {"flops_per_prefix": flops, "tokens_per_prefix": tokens}
    for batch in config.batch_sizes:
        padded = sum(len(b) * lengths[b].max() for b in length_batches(lengths, batch))
        batches = 1000 / batch
        low = 1000 * flops / (peak * config.mfu[1]) + batches * layers * config.layer_ms[0] / 1e3
        high = 1000 * flops / (peak * config.mfu[0]) + batches * layers * config.layer_ms[1] / 1e3
        write = [cache_bytes(1000) / GB / bandwidth for bandwidth in config.disk_gbps[::-1]]
        rows.append(
            [
                f"--batch-size {batch}",
                f"{low:.1f}-{high:.1f} s",
                f"{write[0]:.1f}-{write[1]:.1f} s",
                f"{padded / lengths.sum() - 1:.1%}",
            ]
        )
        numbers[f"batch_{batch}"] = {"seconds": [low, high], "write_seconds": write}
    weights = sum(2 * s["params"] for s in sizes) / GB  # bfloat16
    load = (weights / config.disk_gbps[1], weights / config.disk_gbps[0])
    notes = (
        f"Estimate, not measured: no GPU was lent. {config.card} at {config.peak_tflops} TFLOP/s "
        f"dense bf16, utilisation {config.mfu[0]:.0%}-{config.mfu[1]:.0%}, "
        f"{config.layer_ms[0]}-{config.layer_ms[1]} ms of host time a layer a forward pass "
        f"({layers} layers in the seven models), disk {config.disk_gbps[0]}-"
        f"{config.disk_gbps[1]} GB/s. Counted: {tokens:.1f} tokens a prefix ({data}, "
        f"{len(prefixes)} openings), {flops / 1e12:.3f} TFLOP a prefix for the seven models "
        f"(2 x non-embedding parameters a token, one logit row). Once a run, not per prefix: "
        f"loading {weights:.1f} GB of bf16 weights, {load[0]:.0f}-{load[1]:.0f} s from a local "
        "disk (a first run downloads them from the hub). With N GPUs (torchrun), each takes "
        "1/N of the batches: the compute time divides by N."
    )
    numbers["weights_gb"] = weights
    head = ["extraction, seven models", "compute per 1,000 prefixes", "cache writes", "padding"]
    extraction = Section("Extraction per 1,000 prefixes (estimate)", head, rows, notes, numbers)

    read = cache_bytes(1000) / GB  # every model's row of a prefix, the target's for the soft loss
    steps = 1000 / config.train_batch
    train = [read / config.disk_gbps[1] + steps * config.step_ms / 1e3,
             read / config.disk_gbps[0] + steps * config.step_ms / 1e3]  # fmt: skip
    score = [read / config.disk_gbps[1], read / config.disk_gbps[0]]
    rows = [
        ["training, an epoch", f"{train[0]:.1f}-{train[1]:.1f} s"],
        ["scoring (evaluation, study)", f"{score[0]:.1f}-{score[1]:.1f} s"],
    ]
    notes = (
        f"Estimate, not measured: reading {read:.2f} GB of cache rows per 1,000 prefixes at "
        f"{config.disk_gbps[0]}-{config.disk_gbps[1]} GB/s (a cache the page cache holds reads "
        f"faster), plus {config.step_ms} ms of host time a training step of {config.train_batch}. "
        "The network's own arithmetic is ~1e5 FLOPs a prefix: any GPU does it in microseconds."
    )
    predictor = Section("The predictor per 1,000 prefixes (estimate)", ["step", "time"], rows,
                        notes, {"training_seconds": train, "scoring_seconds": score})  # fmt: skip
    run.write(f"A Pythia run on {config.card}: estimates", [disk, extraction, predictor])


if __name__ == "__main__":
    exit_on_user_error(main)
