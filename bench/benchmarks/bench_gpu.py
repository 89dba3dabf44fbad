"""GPU throughput at Pythia's real shapes: extraction by random-init Pythia-1b and -12b in bfloat16,
against the card's bf16 peak, then the predictor's training and scoring on a Pythia-shaped cache.

    python -m bench.benchmarks.bench_gpu                           # a GPU: 1b and 12b, ~10 minutes
    python -m bench.benchmarks.bench_gpu --device cpu --tiny --threads 1   # the same path, shrunk

Extraction: WikiText-2 paragraph openings (the first 10-20 words, as the wikipedia source cuts
them) tokenized by Pythia's tokenizer from ../shared/data, run through the package's own batch
loop (`extract.run_batches`: length-sorted batches, logits at each row's last token) into a cache
(`CacheWriter`), by a GPTNeoX model of each size's exact shape (`lm.pythia_config`: its parameter
count is the real one's) with random weights in bfloat16 (speed does not depend on the weights).
Reported: prefixes/s after two warm-up batches, and the share of the card's dense bf16 peak that
the useful work reaches, at 2 x (non-embedding parameters) FLOPs per real token plus one logit
row per prefix (2 x hidden x logit rows); attention's own FLOPs (< 0.1% at ~20 tokens) and
padding are not counted. The peak comes from a table of known cards (`--peak-tflops` for
another).

The predictor: a synthetic cache of Pythia's names, parameter counts and vocabulary
(bench_study's), trained by the package's own `fit_predictor` (Lightning, one device, the
default network and batch) for --train-epochs epochs, then every prefix scored by the network on
the device through the evaluation's `score_parts`. Reported: seconds per step, prefixes/s, and
each step's time per 1,000 prefixes. --tiny shrinks the models (two to three layers), the
prefixes and the cache so that the whole path runs on a CPU in a minute. The results go to
docs/results/bench_gpu.md and .json, naming the card.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.benchmarks.bench_extraction import load_text_and_tokenizer
from bench.benchmarks.bench_study import write_cache
from bench.common import start_run
from emergence_model.cache import create_cache
from emergence_model.cli import exit_on_user_error
from emergence_model.evaluate import score_parts
from emergence_model.extract import check_device, length_batches, run_batches, tokenize_prefixes
from emergence_model.lm import (
    PYTHIA_SHAPES,
    PYTHIA_VOCAB,
    count_parameters,
    gpt_neox_config,
    pythia_config,
)
from emergence_model.model import PredictorConfig
from emergence_model.prompts import wikipedia_prefixes
from emergence_model.results import Section
from emergence_model.strategies import NetworkStrategy
from emergence_model.training import TrainConfig, fit_predictor

# Dense bfloat16 tensor-core peaks, TFLOP/s, from the vendors' datasheets (without sparsity),
# matched in order against torch.cuda.get_device_name: the first name it contains.
BF16_PEAK_TFLOPS = (
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 PCIe", 756.5),
    ("H100 NVL", 835.5),
    ("H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
    ("L40S", 362.1),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L4", 121.0),
    ("RTX 4090", 165.2),
)
# --tiny: (layers, hidden size, heads) standing in for each size, its logit rows kept.
TINY_SHAPES = {"1b": (2, 64, 4), "12b": (3, 128, 8)}


@dataclass
class GpuBenchConfig:
    """What is measured, and where."""

    device: str = "cuda"
    """Where the models and the predictor run: cuda, cuda:N, or cpu (with --tiny, a check)."""
    sizes: list[str] = field(default_factory=lambda: ["1b", "12b"])
    """Pythia sizes whose shapes extract (random weights, bfloat16)."""
    num_prefixes: int = 1024
    """WikiText-2 openings extracted by each model (at most the ~1,600 it has)."""
    batch_size: int = 64
    """Prefixes per forward pass of the extraction."""
    train_prefixes: int = 2000
    """Prefixes in the synthetic Pythia-shaped cache the predictor trains on."""
    train_epochs: int = 5
    """Epochs of training (no early stopping): a few hundred steps at the default batch."""
    peak_tflops: float | None = None
    """The card's dense bf16 peak in TFLOP/s (default: from the table of known cards)."""
    tiny: bool = False
    """Shrink models, prefixes and cache so that the whole path runs in a minute on a CPU."""
    dir: Path = Path("runs/bench-gpu")
    """Where the caches and Lightning's files go (removed at the end)."""

    def __post_init__(self) -> None:
        check_device(self.device)
        unknown = sorted(set(self.sizes) - set(PYTHIA_SHAPES))
        if unknown:
            sizes = ", ".join(PYTHIA_SHAPES)
            raise ValueError(f"--sizes: no Pythia of size {unknown[0]!r}; pick from {sizes}")
        if min(self.num_prefixes, self.batch_size, self.train_prefixes, self.train_epochs) < 1:
            raise ValueError(
                "--num-prefixes, --batch-size, --train-prefixes and --train-epochs must be positive"
            )


def card(device: str, peak_tflops: float | None) -> tuple[str, float | None]:
    """The device's name and its dense bf16 peak in FLOP/s (None where unknown)."""
    if not device.startswith("cuda"):
        return "CPU", None if peak_tflops is None else peak_tflops * 1e12
    name = torch.cuda.get_device_name(torch.device(device))
    if peak_tflops is None:
        peak_tflops = next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)
    return name, None if peak_tflops is None else peak_tflops * 1e12


def model_of(size: str, tiny: bool, device: str) -> torch.nn.Module:
    """A random-init GPTNeoX of Pythia-`size`'s shape, made in bfloat16 on `device`."""
    from transformers import GPTNeoXForCausalLM

    config = pythia_config(size)
    if tiny:
        layers, hidden, heads = TINY_SHAPES.get(size, (2, 64, 4))
        rows = PYTHIA_SHAPES[size][3]
        config = gpt_neox_config(
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            vocab_size=PYTHIA_VOCAB,
            extra_logit_rows=rows - PYTHIA_VOCAB,
        )
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # made in bf16: the 12b never exists in float32
    try:
        with torch.device(device):
            model = GPTNeoXForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def measure_extraction(size: str, config: GpuBenchConfig, prefixes, token_ids, peak) -> dict:
    """One model's extraction of every prefix into a one-model cache: prefixes/s, FLOP/s."""
    model = model_of(size, config.tiny, config.device)
    params = count_parameters(model)
    hidden, rows = model.config.hidden_size, model.get_output_embeddings().weight.shape[0]
    body = params - 2 * rows * hidden  # without the input and output embeddings
    batches = length_batches([len(ids) for ids in token_ids], config.batch_size)
    tokens = sum(len(ids) for ids in token_ids)
    padded = sum(len(b) * max(len(token_ids[i]) for i in b) for b in batches)
    flops = 2 * body * tokens + 2 * hidden * rows * len(token_ids)
    out = config.dir / f"cache-{size}"
    shutil.rmtree(out, ignore_errors=True)
    writer = create_cache(
        out,
        model_names=[f"random-pythia-{size}"],
        param_counts=[params],
        prefixes=prefixes,
        vocab_size=PYTHIA_VOCAB,
        tokenizer="pythia",
    )
    run = dict(device=config.device, vocab_size=PYTHIA_VOCAB, model_name=f"pythia-{size}")
    for _ in run_batches(model, token_ids, batches[:2], **run):
        pass  # warm-up: kernels chosen, memory pools grown
    if config.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(config.device)
    backoffs = []
    synchronize(config.device)
    started = time.perf_counter()
    with writer:
        for indices, logprobs in run_batches(
            model, token_ids, batches, on_backoff=backoffs.append, **run
        ):
            writer.write(0, indices, logprobs)
        writer.commit()
    synchronize(config.device)
    seconds = time.perf_counter() - started
    memory = (
        torch.cuda.max_memory_allocated(config.device) / 2**30
        if config.device.startswith("cuda")
        else None
    )
    del model
    if config.device.startswith("cuda"):
        torch.cuda.empty_cache()
    shutil.rmtree(out)
    return {
        "size": size,
        "parameters": params,
        "non_embedding_parameters": body,
        "prefixes": len(token_ids),
        "tokens_per_prefix": tokens / len(token_ids),
        "padded_share": padded / tokens - 1,
        "seconds": seconds,
        "prefixes_per_second": len(token_ids) / seconds,
        "tflops": flops / seconds / 1e12,
        "share_of_peak": None if peak is None else flops / seconds / peak,
        "peak_memory_gib": memory,
        "backoffs": backoffs,
    }


def measure_predictor(config: GpuBenchConfig) -> dict:
    """The predictor's training (seconds per step) and scoring on a Pythia-shaped cache."""
    num, vocab = (64, 1024) if config.tiny else (config.train_prefixes, PYTHIA_VOCAB)
    path = config.dir / "train-cache"
    shutil.rmtree(path, ignore_errors=True)
    cache = write_cache(path, num, vocab, "pythia")
    gpu = config.device.startswith("cuda")
    index = torch.device(config.device).index
    train = TrainConfig(
        accelerator="gpu" if gpu else "cpu",
        devices=f"{index}," if gpu and index is not None else "1",
        max_epochs=config.train_epochs,
        patience=config.train_epochs,
        progress=False,
    )
    synchronize(config.device)
    started = time.perf_counter()
    predictor, data, _ = fit_predictor(cache, PredictorConfig(), train, config.dir / "fit")
    training = time.perf_counter() - started
    epochs = train.epochs_for(len(data.train_idx))  # the step budget may stop it sooner
    steps = epochs * train.steps_per_epoch(len(data.train_idx))
    strategy = NetworkStrategy(predictor.to(config.device), cache.model_names[:-1],
                               cache.target_name)  # fmt: skip
    synchronize(config.device)
    started = time.perf_counter()
    scored = score_parts(cache, [(None, {"network": strategy})])
    synchronize(config.device)
    scoring = time.perf_counter() - started
    top1 = float(np.mean(scored["strategies"]["network"]["top1"]))  # a check it scored
    shutil.rmtree(path)
    trained = len(data.train_idx) * epochs
    return {
        "cache": [num, len(cache.model_names), vocab],
        "train_rows": len(data.train_idx),
        "steps": steps,
        "batch_size": train.batch_size,
        "training_seconds": training,
        "seconds_per_step": training / steps,
        "training_prefixes_per_second": trained / training,
        "scoring_seconds": scoring,
        "scoring_prefixes_per_second": num / scoring,
        "scored_top1": top1,
    }


def main(argv: Sequence[str] | None = None) -> None:
    (config,), run = start_run(__file__, __doc__, argv, GpuBenchConfig)
    name, peak = card(config.device, config.peak_tflops)
    paragraphs, tokenizer, data = load_text_and_tokenizer()
    count = 48 if config.tiny else config.num_prefixes
    prefixes = wikipedia_prefixes(paragraphs, count, seed=0)
    token_ids = tokenize_prefixes(tokenizer, prefixes)
    config.dir.mkdir(parents=True, exist_ok=True)
    extraction = [measure_extraction(s, config, prefixes, token_ids, peak) for s in config.sizes]
    predictor = measure_predictor(config)
    shutil.rmtree(config.dir / "fit", ignore_errors=True)

    def share(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    rows = [
        [f"pythia-{m['size']}" + (" (tiny)" if config.tiny else ""), f"{m['parameters']:,}",
         f"{m['prefixes_per_second']:.1f}", f"{1000 / m['prefixes_per_second']:.2f}",
         f"{m['tflops']:.2f}", share(m["share_of_peak"]),
         "n/a" if m["peak_memory_gib"] is None else f"{m['peak_memory_gib']:.1f}"]
        for m in extraction
    ]  # fmt: skip
    peak_text = "unknown (pass --peak-tflops)" if peak is None else f"{peak / 1e12:.1f} TFLOP/s"
    notes = (
        f"Card: {name}; dense bf16 peak {peak_text}. Data: {data}; {len(prefixes)} prefixes, "
        f"{extraction[0]['tokens_per_prefix']:.1f} tokens each on average, batch "
        f"{config.batch_size} (padding adds {100 * extraction[0]['padded_share']:.1f}% tokens, "
        "not counted as work). FLOPs: 2 x non-embedding parameters a real token + 2 x hidden x "
        "logit rows a prefix. Out-of-memory backoffs: "
        f"{sum(len(m['backoffs']) for m in extraction)}."
    )
    head = ["model (bf16)", "parameters", "prefixes/s", "s per 1,000", "TFLOP/s", "of peak",
            "peak GiB"]  # fmt: skip
    sections = [Section("Extraction", head, rows, notes, extraction)]
    p = predictor
    trained, scored = p["training_prefixes_per_second"], p["scoring_prefixes_per_second"]
    rows = [
        ["training (fit_predictor)", f"{p['steps']} steps of {p['batch_size']}",
         f"{p['seconds_per_step'] * 1000:.1f} ms/step", f"{trained:.0f}",
         f"{1000 / trained:.2f} an epoch"],
        ["scoring (score_parts)", f"{p['cache'][0]} prefixes", f"{p['scoring_seconds']:.1f} s",
         f"{scored:.0f}", f"{1000 / scored:.2f}"],
    ]  # fmt: skip
    notes = (
        f"Synthetic cache {p['cache'][0]} x {p['cache'][1]} x {p['cache'][2]} float16; the "
        f"default network on {config.device}, {p['train_rows']} training prefixes, "
        f"{config.train_epochs} epochs with validation each epoch (Lightning's start-up included)."
    )
    head = ["step", "work", "time", "prefixes/s", "s per 1,000"]
    sections.append(Section("The predictor", head, rows, notes, predictor))
    run.write(f"Throughput on {name}", sections)


if __name__ == "__main__":
    exit_on_user_error(main)
