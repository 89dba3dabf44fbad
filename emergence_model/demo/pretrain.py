"""Pretraining: the loop that every model of the ladder goes through, and what it reads.

As in Pythia, every model reads the same tokens in the same order: the corpus is one token stream
cut into windows, and the batch of a step is a function of the step and the seed alone. The loop
checkpoints every few steps and resumes from its checkpoint, so an interrupted model continues
where it stopped and ends with the same weights.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from emergence_model.demo.config import DemoConfig, log
from emergence_model.demo.synthetic import alternation_batch, copying_batch
from emergence_model.files import atomic_file


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


# Repeated spans: the length of a span and the text between its copies, in tokens.
REPEAT_SPAN = (12, 40)
REPEAT_GAP = (0, 24)


def with_repeats(train: np.ndarray, share: float, seed: int) -> np.ndarray:
    """The training windows [W, T+1] followed by a copy of a seeded `share` of them in which one
    span of the window's own tokens (12-40 long) is written again and again through the window,
    with 0-24 tokens of the window's text between copies: text that rewards copying what came
    earlier in the context, as web text's repeated passages do for Pythia. Window w's copy is a
    function of (seed, w) alone, so it does not depend on the share of the others."""
    if share <= 0:
        return train
    length = train.shape[1]
    extra = []
    for w in range(len(train)):
        rng = np.random.default_rng([seed, w])
        if rng.random() >= share:
            continue
        x = np.array(train[w], copy=True)
        span = min(int(rng.integers(REPEAT_SPAN[0], REPEAT_SPAN[1] + 1)), length)
        gap = int(rng.integers(REPEAT_GAP[0], REPEAT_GAP[1] + 1))
        start = int(rng.integers(0, length - span + 1))
        source = train[w, start : start + span].copy()
        pos = int(rng.integers(0, 16))
        while pos < length:
            end = min(length, pos + span)
            x[pos:end] = source[: end - pos]
            pos = end + gap
        extra.append(x)
    if not extra:
        return train
    return np.concatenate([train, np.stack(extra)])


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


@dataclass(frozen=True)
class StepBatches:
    """What each training step reads: `config.real_windows_per_step()` windows of `real` [W, T+1]
    in the demo's batch order, then the synthetic share (`synthetic.py`) made of `alphabet`'s
    words. A function of (step, seed) alone."""

    real: np.ndarray
    config: DemoConfig
    alphabet: np.ndarray | None = None
    """The synthetic windows' words; needed only with a synthetic share."""

    def __post_init__(self) -> None:
        if any(self.config.synthetic_windows_per_step()) and self.alphabet is None:
            raise ValueError("a synthetic share needs the alphabet of its words")

    def __call__(self, step: int, seed: int) -> np.ndarray:
        """The batch [B, T+1] of step `step` for the batch-order seed `seed`."""
        config = self.config
        rows = batch_windows(step, len(self.real), config.real_windows_per_step(), seed)
        parts = [self.real[rows]]
        copying, alternation = config.synthetic_windows_per_step()
        span = (config.copy_span_min, config.copy_span_max)
        if copying:
            parts.append(
                copying_batch(
                    seed, step, copying, self.real, self.alphabet, span, config.copy_gap_max
                )
            )
        if alternation:
            parts.append(
                alternation_batch(seed, step, alternation, self.real.shape[1], self.alphabet)
            )
        return np.ascontiguousarray(np.concatenate(parts))


def learning_rate(step: int, peak_lr: float, config: DemoConfig) -> float:
    """Linear warm-up to `peak_lr`, then cosine decay to `min_lr_ratio * peak_lr`."""
    if step < config.warmup_steps:
        return peak_lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - 1 - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return peak_lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


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
    train: np.ndarray | StepBatches,
    peak_lr: float,
    config: DemoConfig,
    state_path: Path,
    desc: str = "train",
    progress: bool = True,
    after_step: Callable[[int, torch.nn.Module], None] | None = None,
) -> dict:
    """Train `model` on `config.steps` batches of the windows `train` [W, T+1] (or of the
    `StepBatches` `train`, which may add a synthetic share), resuming from
    `state_path` if an earlier run left one, and checkpointing there every `checkpoint_every` steps.
    `after_step(step, model)` runs after each step (the number of steps done), before that step's
    checkpoint, so a resumed run never skips it for a step it had not finished.

    Returns the training record: steps, tokens, the SHA-256 chain of every batch read (equal for
    all models of a suite), seconds spent (summed over resumed runs) and the last losses.
    """
    from tqdm.auto import tqdm

    batches = train if isinstance(train, StepBatches) else StepBatches(train, config)
    optimizer = make_optimizer(model, peak_lr, config)
    step, digest, seconds, recent = 0, "", 0.0, []
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, digest, seconds = state["step"], state["data_sha256"], state["seconds"]
        log(f"{desc}: resuming at step {step} of {config.steps}")
    model.train()
    started = time.perf_counter() - seconds
    with tqdm(
        total=config.steps, initial=step, desc=desc, unit="step", disable=not progress, leave=True
    ) as bar:
        while step < config.steps:
            batch = batches(step, config.seed)  # (B, T+1)
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
            if after_step is not None:
                after_step(step, model)
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
