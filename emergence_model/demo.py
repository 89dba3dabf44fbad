"""The offline demo suite: a ladder of small GPT-NeoX models trained here, on CPU, from real text.

    python -m emergence_model.demo build                    # ~5 min on 2 cores, reused afterwards
    python -m emergence_model.demo build --corpus wiki.txt --tokenizer tokenizer.json --suite-dir D
    python -m emergence_model.demo caches                   # + the demo-wiki and demo-rte caches

Seven models (six small ones and the target), shaped like Pythia's (untied embeddings, rotary
embeddings on 25% of each head, parallel residual), from 0.14M to 2.6M parameters. As in Pythia,
every model reads the same tokens in the same order: the batches are a function of the step and the
seed alone. The text is the English docstrings of the installed standard library
(`demo_corpus.py`), or a file of the user's with their own tokenizer.

Each model is saved with `save_pretrained` (tokenizer included) in its own directory under the
suite directory and is loaded back only through `from_pretrained`, exactly like a hub model, so the
suite goes through the same caching code as Pythia. Building is resumable: finished models are
skipped, and an interrupted one continues from its last training checkpoint.

    suite.json            configuration, corpus and tokenizer facts, each model's size, loss, time
    corpus.json           the training and held-out documents (prefixes come from both)
    tokenizer/            the tokenizer, as `save_pretrained` writes it
    models/demo-140k/     one `save_pretrained` directory per model (+ training.json)
    models/X.partial/     an unfinished model's training checkpoint
    caches/demo-wiki/     feature caches written by `prepare_demo_caches`
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from emergence_model.cli import field_docs
from emergence_model.demo_corpus import (
    Corpus,
    load_tokenizer_file,
    rte_style_prefixes,
    stdlib_corpus,
    text_file_corpus,
    train_bpe_tokenizer,
    wiki_style_prefixes,
)
from emergence_model.files import atomic_file, write_json_atomic

SUITE_FILE = "suite.json"
CORPUS_FILE = "corpus.json"
TOKENIZER_DIR = "tokenizer"
MODELS_DIR = "models"
CACHES_DIR = "caches"
TRAINING_FILE = "training.json"
STATE_FILE = "train_state.pt"
VALID_LOSSES_FILE = "valid_window_losses.npy"
SUITE_FORMAT_VERSION = 1
PREFIX_KINDS = ("wiki", "rte")
# Logit rows are rounded up to a multiple of this, as Pythia's are (50277 tokens -> 50304 rows).
LOGIT_ROW_MULTIPLE = 128


@dataclass(frozen=True)
class Rung:
    """One model of the ladder."""

    hidden_size: int
    num_layers: int
    num_heads: int
    peak_lr: float
    """Peak learning rate: smaller models take larger steps, as in Pythia."""

    def __post_init__(self) -> None:
        if min(self.hidden_size, self.num_layers, self.num_heads) < 1 or self.peak_lr <= 0:
            raise ValueError(f"rung {self} needs positive sizes and learning rate")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise ValueError(
                f"rung {self}: hidden_size must split into heads whose size is a multiple of 4 "
                "(rotary embeddings cover a quarter of each head, in pairs)"
            )


# Measured on 2 CPU cores: every rung improves on the one below at this budget, and the whole ladder
# trains in about five minutes. Learning rates fall geometrically from 8e-3 to 2.8e-3.
DEFAULT_LADDER = (
    Rung(32, 1, 2, 8.0e-3),
    Rung(48, 1, 2, 6.7e-3),
    Rung(64, 2, 2, 5.6e-3),
    Rung(96, 2, 4, 4.7e-3),
    Rung(128, 3, 4, 4.0e-3),
    Rung(160, 4, 4, 3.3e-3),
    Rung(192, 4, 6, 2.8e-3),
)


@dataclass(frozen=True)
class DemoConfig:
    """How the demo suite is built. Every field is recorded in suite.json."""

    ladder: tuple[Rung, ...] = DEFAULT_LADDER
    """The models, smallest first, the target last."""
    steps: int = 560
    """Optimizer steps per model (the same for every model)."""
    batch_size: int = 8
    """Sequences per step."""
    seq_len: int = 128
    """Tokens per training sequence."""
    warmup_steps: int = 56
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on biases and norms)."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    seed: int = 0
    """Seed of the initial weights and of the batch order."""
    vocab_size: int = 2048
    """Size of the byte-level BPE trained on the corpus (unused with --tokenizer)."""
    valid_percent: int = 35
    """Share of modules (or documents) held out from training: the validation loss uses them."""
    valid_tokens: int = 65536
    """At most this many held-out tokens score each model's validation loss."""
    checkpoint_every: int = 50
    """Steps between training checkpoints of the model being trained."""
    corpus: str | None = None
    """Plain-text corpus file (documents separated by blank lines); default: stdlib docstrings."""
    tokenizer: str | None = None
    """A tokenizers JSON file (e.g. GPT-NeoX-20B's); default: a BPE trained on the corpus."""

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "seq_len", "vocab_size", "valid_tokens")
        for name in (*positive, "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError("--warmup-steps must be at least 0 and below --steps")
        if not 0 < self.valid_percent < 100:
            raise ValueError("--valid-percent must be between 1 and 99")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("--min-lr-ratio must be between 0 and 1")
        if len(self.ladder) < 2:
            raise ValueError("the ladder needs at least two models (small ones and a target)")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> DemoConfig:
        data = dict(data)
        data["ladder"] = tuple(Rung(**r) for r in data["ladder"])
        return cls(**data)


def default_suite_dir() -> Path:
    """$XDG_CACHE_HOME/emergence-model/demo, else ~/.cache/emergence-model/demo."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "emergence-model" / "demo"


def _log(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"[demo] {message}", file=sys.stderr)


@contextlib.contextmanager
def _no_transformers_bars() -> Iterator[None]:
    """Hide transformers' per-file save/load bars, which would bury the training progress."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------
# Corpus, tokenizer and token streams


def resolve_config(
    suite_dir: Path, config: DemoConfig | None = None, *, corpus=None, tokenizer=None
) -> DemoConfig:
    """The suite's configuration: the recorded one for an existing suite, else `config`.

    Asking an existing suite for a different configuration is refused rather than mixing models.
    """
    files = {"corpus": corpus, "tokenizer": tokenizer}
    files = {k: str(Path(v).resolve()) for k, v in files.items() if v is not None}
    if files:
        config = dataclasses.replace(config or DemoConfig(), **files)
    suite_file = suite_dir / SUITE_FILE
    if not suite_file.exists():
        return config or DemoConfig()
    stored = DemoConfig.from_json(json.loads(suite_file.read_text())["config"])
    if config is not None and config != stored:
        changed = [
            f"{f.name} {getattr(stored, f.name)!r} -> {getattr(config, f.name)!r}"
            for f in dataclasses.fields(DemoConfig)
            if getattr(stored, f.name) != getattr(config, f.name)
        ]
        raise ValueError(
            f"suite dir {suite_dir} was built with another configuration ({'; '.join(changed)}); "
            "pass a new --suite-dir or delete that directory"
        )
    return stored


def prepare_corpus(suite_dir: Path, config: DemoConfig) -> Corpus:
    """The suite's corpus: read from suite_dir if there, else made and saved there."""
    path = suite_dir / CORPUS_FILE
    if path.exists():
        return Corpus.load(path)
    if config.corpus is None:
        _log("reading the standard library's docstrings with ast")
        corpus = stdlib_corpus(config.valid_percent)
    else:
        corpus = text_file_corpus(Path(config.corpus), config.valid_percent)
    suite_dir.mkdir(parents=True, exist_ok=True)
    corpus.save(path)
    return corpus


def prepare_tokenizer(suite_dir: Path, config: DemoConfig, corpus: Corpus):
    """The suite's tokenizer: loaded from suite_dir/tokenizer, else trained (or read) and saved."""
    from transformers import AutoTokenizer

    path = suite_dir / TOKENIZER_DIR
    if not path.exists():
        if config.tokenizer is None:
            _log(f"training a {config.vocab_size}-token byte-level BPE on the training documents")
            tokenizer = train_bpe_tokenizer(corpus.train, config.vocab_size)
        else:
            tokenizer = load_tokenizer_file(Path(config.tokenizer))
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, path)
    return AutoTokenizer.from_pretrained(path)


def token_stream(tokenizer, documents: Sequence[str]) -> np.ndarray:
    """All documents' token ids, each document followed by end-of-text, as one int64 array."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
    return np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=np.int64)


def windows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Consecutive, non-overlapping training windows [W, seq_len + 1] (a view, no copy).

    Each window's last token is the next window's first: inputs are [:-1], targets [1:].
    """
    count = (len(stream) - 1) // seq_len
    if count < 1:
        raise ValueError(
            f"the corpus has {len(stream)} tokens, fewer than one sequence of {seq_len + 1}; "
            "give a longer corpus"
        )
    return np.lib.stride_tricks.as_strided(
        stream, shape=(count, seq_len + 1), strides=(seq_len * stream.strides[0], stream.strides[0])
    )


@functools.lru_cache(maxsize=4)
def _epoch_order(num_windows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_windows)


def batch_windows(step: int, num_windows: int, batch_size: int, seed: int) -> np.ndarray:
    """Window indices [batch_size] of training step `step`: a function of step and seed only, so
    every model of the ladder (and a resumed run) reads the same tokens in the same order.

    Each epoch is a fresh permutation of the windows; a batch may straddle two epochs.
    """
    flat = step * batch_size + np.arange(batch_size)
    return np.array(
        [_epoch_order(num_windows, seed, int(k // num_windows))[k % num_windows] for k in flat]
    )


def learning_rate(step: int, peak_lr: float, config: DemoConfig) -> float:
    """Linear warm-up to `peak_lr`, then cosine decay to `min_lr_ratio * peak_lr`."""
    if step < config.warmup_steps:
        return peak_lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - 1 - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return peak_lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


# ---------------------------------------------------------------------------------------------
# Models


def neox_config(rung: Rung, tokenizer, seq_len: int):
    """A Pythia-shaped GPTNeoXConfig for `rung` (4x MLP, rotary on 25%, untied embeddings)."""
    from transformers import GPTNeoXConfig

    vocab = len(tokenizer)
    return GPTNeoXConfig(
        vocab_size=-(-vocab // LOGIT_ROW_MULTIPLE) * LOGIT_ROW_MULTIPLE,
        hidden_size=rung.hidden_size,
        num_hidden_layers=rung.num_layers,
        num_attention_heads=rung.num_heads,
        intermediate_size=4 * rung.hidden_size,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
        },
        max_position_embeddings=max(2048, seq_len),
        tie_word_embeddings=False,
        use_parallel_residual=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _short_count(count: int) -> str:
    return f"{count / 1e6:.1f}m" if count >= 1_000_000 else f"{round(count / 1e3)}k"


@dataclass
class RungPlan:
    """A rung with the facts fixed before training: its name, directory and size."""

    index: int
    rung: Rung
    name: str
    directory: Path
    param_count: int
    non_embedding_params: int


def plan_ladder(suite_dir: Path, config: DemoConfig, tokenizer) -> list[RungPlan]:
    from transformers import GPTNeoXForCausalLM

    plans = []
    for index, rung in enumerate(config.ladder):
        with torch.device("meta"):
            model = GPTNeoXForCausalLM(neox_config(rung, tokenizer, config.seq_len))
        total = _count(model)
        embeddings = (
            model.get_input_embeddings().weight.numel()
            + model.get_output_embeddings().weight.numel()
        )
        name = f"demo-{_short_count(total)}"
        if any(p.name == name for p in plans):  # two sizes that round alike
            name = f"{name}-{index}"
        plans.append(
            RungPlan(index, rung, name, suite_dir / MODELS_DIR / name, total, total - embeddings)
        )
    sizes = [p.param_count for p in plans]
    if sizes != sorted(set(sizes)):
        raise ValueError(f"the ladder's models must grow strictly in size, got {sizes}")
    return plans


def make_optimizer(model: torch.nn.Module, peak_lr: float, config: DemoConfig):
    """AdamW (0.9, 0.95); weight decay on matrices only."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": matrices, "weight_decay": config.weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=peak_lr, betas=(0.9, 0.95), eps=1e-8)


@torch.inference_mode()
def window_losses(model: torch.nn.Module, valid: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Mean next-token cross-entropy (nats) of each held-out window [W]."""
    model.eval()
    losses = []
    for start in range(0, len(valid), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(valid[start : start + batch_size]))
        logits = model(input_ids=batch[:, :-1]).logits  # (b, T, V)
        loss = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # (b, T)
        losses.append(loss.mean(dim=1).numpy())
    return np.concatenate(losses)


def _chain_digest(digest: str, batch: np.ndarray) -> str:
    return hashlib.sha256(digest.encode() + batch.tobytes()).hexdigest()


def train_model(
    model: torch.nn.Module,
    train: np.ndarray,
    peak_lr: float,
    config: DemoConfig,
    state_path: Path,
    desc: str = "train",
    progress: bool = True,
) -> dict:
    """Train `model` on `config.steps` batches of the windows `train` [W, T+1], resuming from
    `state_path` if an earlier run left one, and checkpointing there every `checkpoint_every` steps.

    Returns the training record: steps, tokens, the SHA-256 chain of every batch read (equal for
    all models of a suite), seconds spent (summed over resumed runs) and the last losses.
    """
    from tqdm.auto import tqdm

    optimizer = make_optimizer(model, peak_lr, config)
    step, digest, seconds, recent = 0, "", 0.0, []
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, digest, seconds = state["step"], state["data_sha256"], state["seconds"]
        _log(f"{desc}: resuming at step {step} of {config.steps}")
    model.train()
    started = time.perf_counter() - seconds
    with tqdm(
        total=config.steps, initial=step, desc=desc, unit="step", disable=not progress, leave=True
    ) as bar:
        while step < config.steps:
            rows = batch_windows(step, len(train), config.batch_size, config.seed)
            batch = np.ascontiguousarray(train[rows])  # (B, T+1)
            digest = _chain_digest(digest, batch)
            lr = learning_rate(step, peak_lr, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            tokens = torch.from_numpy(batch)
            logits = model(input_ids=tokens[:, :-1]).logits  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            recent = (recent + [loss.item()])[-20:]
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(recent):.3f}", lr=f"{lr:.1e}", refresh=False)
            if step % config.checkpoint_every == 0 and step < config.steps:
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "data_sha256": digest,
                    "seconds": time.perf_counter() - started,
                }
                with atomic_file(state_path) as f:
                    torch.save(state, f)
    return {
        "steps": config.steps,
        "tokens_seen": config.steps * config.batch_size * config.seq_len,
        "data_sha256": digest,
        "train_seconds": round(time.perf_counter() - started, 2),
        "final_train_loss": float(np.mean(recent)) if recent else None,
    }


def build_rung(
    plan: RungPlan,
    config: DemoConfig,
    tokenizer,
    train: np.ndarray,
    valid: np.ndarray,
    progress: bool = True,
) -> dict:
    """Train one model, save it (with the tokenizer) with `save_pretrained`, load it back with
    `from_pretrained`, and score the reloaded model on the held-out windows. A finished model is
    read, not retrained; an unfinished one resumes from its checkpoint in `<name>.partial/`.
    """
    from transformers import AutoModelForCausalLM, GPTNeoXForCausalLM

    record_path = plan.directory / TRAINING_FILE
    partial = plan.directory.with_name(plan.name + ".partial")
    if record_path.exists():
        shutil.rmtree(partial, ignore_errors=True)  # left by a crash just after the rename
        return json.loads(record_path.read_text())
    partial.mkdir(parents=True, exist_ok=True)
    # The same initial-weight seed for every rung: the models differ only by their shapes.
    torch.manual_seed(config.seed)
    model = GPTNeoXForCausalLM(neox_config(plan.rung, tokenizer, config.seq_len))
    desc = f"{plan.name} ({plan.index + 1}/{len(config.ladder)})"
    record = train_model(
        model, train, plan.rung.peak_lr, config, partial / STATE_FILE, desc, progress
    )
    tmp = plan.directory.with_name(plan.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with _no_transformers_bars():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        # Scored as every user of the suite will load it: through from_pretrained.
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    losses = window_losses(reloaded, valid)
    np.save(tmp / VALID_LOSSES_FILE, losses)
    record = {
        "name": plan.name,
        "directory": str(plan.directory.relative_to(plan.directory.parent.parent)),
        "hidden_size": plan.rung.hidden_size,
        "num_layers": plan.rung.num_layers,
        "num_heads": plan.rung.num_heads,
        "peak_lr": plan.rung.peak_lr,
        "param_count": _count(reloaded),
        "non_embedding_params": plan.non_embedding_params,
        **record,
        "valid_loss": float(losses.mean()),
        "valid_tokens": int(valid.shape[0] * (valid.shape[1] - 1)),
    }
    write_json_atomic(tmp / TRAINING_FILE, record)
    os.replace(tmp, plan.directory)
    shutil.rmtree(partial)
    _log(f"{plan.name}: {record['param_count']:,} parameters, validation loss {losses.mean():.4f}")
    return record


def _paired_gap(suite_dir: Path, records: Sequence[dict]) -> dict:
    """Second largest model's validation loss minus the target's, with a 95% interval."""
    second, target = (np.load(suite_dir / r["directory"] / VALID_LOSSES_FILE) for r in records[-2:])
    gap = second - target
    half = 1.96 * gap.std(ddof=1) / math.sqrt(len(gap)) if len(gap) > 1 else float("nan")
    return {
        "loss_gap": float(gap.mean()),
        "ci95": [float(gap.mean() - half), float(gap.mean() + half)],
        "windows": len(gap),
    }


def _read_suite_json(suite_dir: Path) -> dict:
    path = suite_dir / SUITE_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); delete {suite_dir} and rebuild the suite"
        ) from e
    if data.get("format_version") != SUITE_FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {data.get('format_version')!r}, this package writes "
            f"{SUITE_FORMAT_VERSION}; delete {suite_dir} and rebuild the suite"
        )
    return data


def build_suite(
    suite_dir: str | os.PathLike | None = None,
    config: DemoConfig | None = None,
    *,
    corpus: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Build (or finish, or just read) the demo suite in `suite_dir`; returns suite.json's content.

    `corpus`/`tokenizer` are files of the user's (plain text; a tokenizers JSON); by default the
    corpus is the standard library's docstrings and the tokenizer a BPE trained on them.
    """
    suite_dir = Path(suite_dir) if suite_dir is not None else default_suite_dir()
    suite = _read_suite_json(suite_dir)
    config = resolve_config(suite_dir, config, corpus=corpus, tokenizer=tokenizer)
    models = suite.get("models", [])
    if suite.get("status") == "complete" and all(
        (suite_dir / m["directory"] / TRAINING_FILE).exists() for m in models
    ):
        return suite
    started = time.perf_counter()
    spent = suite.get("build_seconds", 0.0)
    corpus_data = prepare_corpus(suite_dir, config)
    tok = prepare_tokenizer(suite_dir, config, corpus_data)
    plans = plan_ladder(suite_dir, config, tok)
    import transformers

    suite = {
        "format_version": SUITE_FORMAT_VERSION,
        "name": "demo",
        "status": "building",
        "config": config.to_json(),
        "python_version": sys.version.split()[0],
        "corpus": corpus_data.meta,
        "tokenizer": {
            "source": config.tokenizer or "byte-level BPE trained on the corpus",
            "vocab_size": len(tok),
            "logit_rows": -(-len(tok) // LOGIT_ROW_MULTIPLE) * LOGIT_ROW_MULTIPLE,
            "sha256": hashlib.sha256(
                (suite_dir / TOKENIZER_DIR / "tokenizer.json").read_bytes()
            ).hexdigest(),
        },
        "seeds": {"init": config.seed, "batch_order": config.seed, "prefixes": 0},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "models": [],
        "build_seconds": spent,
    }
    write_json_atomic(suite_dir / SUITE_FILE, suite)
    train = windows(token_stream(tok, corpus_data.train), config.seq_len)
    valid = windows(token_stream(tok, corpus_data.valid), config.seq_len)
    valid = valid[: max(1, config.valid_tokens // config.seq_len)]
    _log(
        f"{len(plans)} models in {suite_dir}: {len(train)} training windows of "
        f"{config.seq_len} tokens, {config.steps} steps of {config.batch_size} per model"
    )
    records = []
    for plan in plans:
        records.append(build_rung(plan, config, tok, train, valid, progress))
        suite["models"] = records
        suite["build_seconds"] = round(spent + time.perf_counter() - started, 2)
        write_json_atomic(suite_dir / SUITE_FILE, suite)
    suite["target_vs_second_largest"] = _paired_gap(suite_dir, records)
    suite["status"] = "complete"
    suite["completed"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    suite["build_seconds"] = round(spent + time.perf_counter() - started, 2)
    write_json_atomic(suite_dir / SUITE_FILE, suite)
    gap = suite["target_vs_second_largest"]
    if gap["ci95"][0] <= 0:
        _log(
            f"warning: the target is not measurably better than the second largest model "
            f"(loss gap {gap['loss_gap']:.4f}, 95% interval {gap['ci95']}); train longer"
        )
    _log(f"suite complete in {suite['build_seconds']:.0f} s of building: {suite_dir}")
    return suite


# ---------------------------------------------------------------------------------------------
# The package's entry points


def demo_suite(suite_dir: str | os.PathLike | None = None):
    """The demo suite as a `Suite` of local `save_pretrained` directories, built if missing."""
    from emergence_model.suites import Suite

    suite_dir = Path(suite_dir) if suite_dir is not None else default_suite_dir()
    info = build_suite(suite_dir)
    models = info["models"]
    return Suite(
        name="demo",
        model_ids=tuple(str(suite_dir / m["directory"]) for m in models),
        param_counts=tuple(m["param_count"] for m in models),
        revision=None,
        description=(
            f"{len(models)} GPT-NeoX models ({_short_count(models[0]['param_count'])} to "
            f"{_short_count(models[-1]['param_count'])}) trained on "
            f"{info['corpus']['source']} in {suite_dir}"
        ),
    )


def demo_prefixes(
    kind: str, suite_dir: str | os.PathLike | None = None, *, seed: int = 0
) -> list[str]:
    """The suite's prefixes, from every document of its corpus, training and held-out: "wiki"
    (the first 10-20 words of document, paragraph and sentence openings) or "rte" (premise,
    hypothesis and `True or False?\\nAnswer:`).

    Pythia's were trained on text of the same kind: its Wikipedia prefixes open articles that the
    Pile holds, and RTE's sentences come from news and Wikipedia. Held-out documents alone give
    too few prefixes for the intervals to separate strategies that differ by a point.

    Needs only the suite's corpus and tokenizer (made if missing), not its models.
    """
    if kind not in PREFIX_KINDS:
        raise ValueError(
            f"unknown demo prefix kind {kind!r}; pick one of {', '.join(PREFIX_KINDS)}"
        )
    suite_dir = Path(suite_dir) if suite_dir is not None else default_suite_dir()
    _read_suite_json(suite_dir)
    config = resolve_config(suite_dir)
    corpus = prepare_corpus(suite_dir, config)
    if kind == "wiki":
        return wiki_style_prefixes(corpus.train + corpus.valid, seed)[0]
    tokenizer = prepare_tokenizer(suite_dir, config, corpus)
    prefixes = rte_style_prefixes(corpus.train + corpus.valid, seed)[0]
    # The models never saw a sequence longer than seq_len; keep the prompts inside it.
    lengths = map(len, tokenizer(prefixes, add_special_tokens=False)["input_ids"])
    return [p for p, n in zip(prefixes, lengths, strict=True) if n <= config.seq_len]


def _stale_demo_cache(
    out: Path, dataset: str, model_ids: Sequence[str], prefixes: Sequence[str]
) -> bool:
    """Whether `out` is a (complete or partial) `dataset` cache of other models or prefixes, as
    left by an earlier version of the suite or of the prefix sets; a cache of anything else is
    never touched."""
    from emergence_model.cache import CacheError, read_cache_header

    try:
        meta, old_prefixes = read_cache_header(out)
    except CacheError:
        return False
    if (meta.get("source") or {}).get("dataset") != dataset:
        return False
    return meta["model_names"] != list(model_ids) or old_prefixes != list(prefixes)


def prepare_demo_caches(
    suite_dir: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    batch_size: int = 32,
    cache_dtype: str = "float16",
    progress: bool = True,
) -> tuple[Path, Path]:
    """Build (or reuse) the demo suite and its demo-wiki and demo-rte caches; returns their paths.

    The caches go through the same code as `cache_features.py --suite demo --dataset demo-wiki`:
    the suite registry, the prefix-source registry and `extract_suite`. `cache_root` defaults to
    the suite's caches/ directory.
    """
    from emergence_model.cache import CacheError, open_cache
    from emergence_model.extract import extract_suite
    from emergence_model.prefixes import load_prefixes
    from emergence_model.suites import get_suite

    suite_dir = Path(suite_dir) if suite_dir is not None else default_suite_dir()
    cache_root = Path(cache_root) if cache_root is not None else suite_dir / CACHES_DIR
    suite = get_suite("demo", suite_dir=suite_dir)
    paths = []
    for dataset in ("demo-wiki", "demo-rte"):
        out = cache_root / dataset
        prefixes, source = load_prefixes(dataset, suite_dir=suite_dir, seed=seed)
        try:
            cache = open_cache(out)
            reusable = cache.model_names == list(suite.model_ids) and cache.prefixes == prefixes
        except (CacheError, FileNotFoundError):
            reusable = False
        if reusable:
            _log(f"reusing the {dataset} cache in {out}")
        else:
            if _stale_demo_cache(out, dataset, suite.model_ids, prefixes):
                _log(f"the {dataset} cache in {out} holds other prefixes or models: rebuilding it")
                shutil.rmtree(out)
            _log(f"caching {len(suite.model_ids)} models x {len(prefixes)} {dataset} prefixes")
            extract_suite(
                suite,
                prefixes,
                out,
                device="cpu",
                batch_size=batch_size,
                cache_dtype=cache_dtype,
                source=source,
                seed=seed,
                progress=progress,
            )
        paths.append(out)
    return paths[0], paths[1]


# ---------------------------------------------------------------------------------------------
# Command line


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    docs = field_docs(DemoConfig)
    for f in dataclasses.fields(DemoConfig):
        if f.name == "ladder":
            continue
        default = f.default
        kind = type(default) if default is not None else str
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=kind,
            default=None,
            metavar="FILE" if f.name in ("corpus", "tokenizer") else kind.__name__.upper(),
            help=f"{docs.get(f.name, '')} (default: {default})",
        )


def _config_from_args(args: argparse.Namespace) -> DemoConfig | None:
    names = [f.name for f in dataclasses.fields(DemoConfig) if f.name != "ladder"]
    given = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if not given:
        return None
    for name in ("corpus", "tokenizer"):
        if name in given:
            given[name] = str(Path(given[name]).resolve())
    return DemoConfig(**given)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emergence_model.demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="train the suite (resumes; a finished one is kept)")
    caches = commands.add_parser("caches", help="build the suite, then its demo-wiki/rte caches")
    for sub in (build, caches):
        sub.add_argument(
            "--suite-dir", type=Path, default=None, help=f"default: {default_suite_dir()}"
        )
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        _config_arguments(sub)
    caches.add_argument("--cache-root", type=Path, default=None, help="default: SUITE_DIR/caches")
    args = parser.parse_args(argv)
    suite_dir = args.suite_dir or default_suite_dir()
    try:
        info = build_suite(suite_dir, _config_from_args(args), progress=not args.quiet)
        if args.command == "caches":
            for path in prepare_demo_caches(suite_dir, args.cache_root, progress=not args.quiet):
                print(path)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"error: {e}\n")
    if args.command == "build":
        print(summary_table(info))
    return 0


def summary_table(info: dict) -> str:
    lines = [f"{'model':<14}{'params':>12}{'non-emb':>11}{'valid loss':>12}{'train s':>9}"]
    for m in info["models"]:
        lines.append(
            f"{m['name']:<14}{m['param_count']:>12,}{m['non_embedding_params']:>11,}"
            f"{m['valid_loss']:>12.4f}{m['train_seconds']:>9.0f}"
        )
    gap = info.get("target_vs_second_largest")
    if gap:
        lo, hi = gap["ci95"]
        lines.append(
            f"target vs second largest: loss gap {gap['loss_gap']:.4f} [{lo:.4f}, {hi:.4f}]"
        )
    lines.append(f"built in {info['build_seconds']:.0f} s; Python {info['python_version']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
