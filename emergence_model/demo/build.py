"""Building the ladder: plan each model's size, pretrain it, save it like a hub model, score it.

`build_suite` writes suite.json as it goes, so an interrupted build resumes: finished models are
read, not retrained, and the model being trained continues from its last training checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from emergence_model.demo.config import (
    MODELS_DIR,
    STATE_FILE,
    SUITE_FILE,
    SUITE_FORMAT_VERSION,
    TOKENIZER_DIR,
    TRAINING_FILE,
    VALID_LOSSES_FILE,
    DemoConfig,
    Rung,
    log,
    read_suite_record,
    resolve_config,
    short_count,
    suite_path,
)
from emergence_model.demo.corpus import Corpus, prepare_corpus
from emergence_model.demo.pretrain import (
    StepBatches,
    token_stream,
    train_model,
    window_losses,
    windows,
    with_repeats,
)
from emergence_model.demo.synthetic import copy_alphabet
from emergence_model.demo.tokenizer import prepare_tokenizer
from emergence_model.files import write_json_atomic
from emergence_model.lm import count_parameters, gpt_neox_config, logit_rows


def neox_config(rung: Rung, tokenizer, seq_len: int):
    """The Pythia-shaped config of `rung`, for the suite's tokenizer and training length."""
    return gpt_neox_config(
        hidden_size=rung.hidden_size,
        num_layers=rung.num_layers,
        num_heads=rung.num_heads,
        vocab_size=len(tokenizer),
        context_length=max(2048, seq_len),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


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
        total = count_parameters(model)
        embeddings = (
            model.get_input_embeddings().weight.numel()
            + model.get_output_embeddings().weight.numel()
        )
        name = f"demo-{short_count(total)}"
        if any(p.name == name for p in plans):  # two sizes that round alike
            name = f"{name}-{index}"
        plans.append(
            RungPlan(index, rung, name, suite_dir / MODELS_DIR / name, total, total - embeddings)
        )
    sizes = [p.param_count for p in plans]
    if sizes != sorted(set(sizes)):
        raise ValueError(f"the ladder's models must grow strictly in size, got {sizes}")
    return plans


def build_rung(
    plan: RungPlan,
    config: DemoConfig,
    tokenizer,
    train: np.ndarray | StepBatches,
    valid: np.ndarray,
    progress: bool = True,
    checkpoint_steps: Sequence[int] = (),
) -> dict:
    """Train one model, save it (with the tokenizer) with `save_pretrained`, load it back with
    `from_pretrained`, and score the reloaded model on the held-out windows. A finished model is
    read, not retrained; an unfinished one resumes from its checkpoint in `<name>.partial/`.

    The model is also kept, saved and scored the same way, after each of `checkpoint_steps`
    (in `<name>-steps/step<N>/`, listed in the record's "checkpoints"): its training checkpoints,
    as Pythia's hub revisions are.
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
    kept = {step: checkpoint_dir(plan, step) for step in checkpoint_steps}

    def keep_checkpoint(step: int, model: torch.nn.Module) -> None:
        if step in kept and not kept[step].is_dir():
            save_model(model, tokenizer, kept[step])

    record = train_model(
        model,
        train,
        plan.rung.peak_lr,
        config,
        partial / STATE_FILE,
        desc,
        progress,
        keep_checkpoint,
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
        "param_count": count_parameters(reloaded),
        "non_embedding_params": plan.non_embedding_params,
        **record,
        "valid_loss": float(losses.mean()),
        "valid_tokens": int(valid.shape[0] * (valid.shape[1] - 1)),
    }
    if kept:
        record["checkpoints"] = [
            score_checkpoint(kept[step], step, config, valid) for step in sorted(kept)
        ]
    write_json_atomic(tmp / TRAINING_FILE, record)
    os.replace(tmp, plan.directory)
    shutil.rmtree(partial)
    log(f"{plan.name}: {record['param_count']:,} parameters, validation loss {losses.mean():.4f}")
    return record


def checkpoint_dir(plan: RungPlan, step: int) -> Path:
    """Where `plan`'s model is kept after `step` steps of its training."""
    return plan.directory.with_name(f"{plan.name}-steps") / f"step{step}"


def save_model(model: torch.nn.Module, tokenizer, directory: Path) -> None:
    """`save_pretrained` of the model and its tokenizer into `directory`, atomically."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with _no_transformers_bars():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    os.replace(tmp, directory)


def score_checkpoint(directory: Path, step: int, config: DemoConfig, valid: np.ndarray) -> dict:
    """A kept training checkpoint's record: where it is, how far it trained, its held-out loss
    (loaded through `from_pretrained`, as the caches load it)."""
    from transformers import AutoModelForCausalLM

    with _no_transformers_bars():
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return {
        "step": step,
        "directory": str(directory.relative_to(directory.parents[2])),
        "tokens_seen": step * config.batch_size * config.seq_len,
        "valid_loss": float(window_losses(model, valid).mean()),
    }


def paired_loss_gap(suite_dir: Path, records: Sequence[dict]) -> dict:
    """The next to last record's model's validation loss minus the last's (the second largest
    model's minus the target's), with a 95% interval."""
    second, target = (np.load(suite_dir / r["directory"] / VALID_LOSSES_FILE) for r in records[-2:])
    gap = second - target
    half = 1.96 * gap.std(ddof=1) / math.sqrt(len(gap)) if len(gap) > 1 else float("nan")
    return {
        "loss_gap": float(gap.mean()),
        "ci95": [float(gap.mean() - half), float(gap.mean() + half)],
        "windows": len(gap),
    }


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
    suite_dir = suite_path(suite_dir)
    suite = read_suite_record(suite_dir)
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
            "logit_rows": logit_rows(len(tok)),
            "sha256": hashlib.sha256(
                (suite_dir / TOKENIZER_DIR / "tokenizer.json").read_bytes()
            ).hexdigest(),
        },
        "seeds": {"init": config.seed, "batch_order": config.seed},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "models": [],
        "build_seconds": spent,
    }
    write_json_atomic(suite_dir / SUITE_FILE, suite)
    train, valid = training_windows(tok, corpus_data, config)
    log(
        f"{len(plans)} models in {suite_dir}: {len(train)} training windows of "
        f"{config.seq_len} tokens, {config.steps} steps of {config.batch_size} per model"
        + synthetic_note(config)
    )
    batches = training_batches(tok, train, config)
    records = []
    for plan in plans:
        if plan is plans[-1]:  # the target alone is kept along its training: demo-steps
            steps, rung_config = config.target_checkpoint_steps(), config.target_config()
        else:
            steps, rung_config = (), config
        records.append(build_rung(plan, rung_config, tok, batches, valid, progress, steps))
        suite["models"] = records
        suite["build_seconds"] = round(spent + time.perf_counter() - started, 2)
        write_json_atomic(suite_dir / SUITE_FILE, suite)
    suite["target_vs_second_largest"] = paired_loss_gap(suite_dir, records)
    suite["status"] = "complete"
    suite["completed"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    suite["build_seconds"] = round(spent + time.perf_counter() - started, 2)
    write_json_atomic(suite_dir / SUITE_FILE, suite)
    gap = suite["target_vs_second_largest"]
    if gap["ci95"][0] <= 0:
        log(
            f"warning: the target is not measurably better than the second largest model "
            f"(loss gap {gap['loss_gap']:.4f}, 95% interval {gap['ci95']}); train longer"
        )
    log(f"suite complete in {suite['build_seconds']:.0f} s of building: {suite_dir}")
    return suite


def training_windows(
    tokenizer, corpus: Corpus, config: DemoConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The training windows [W, T+1] and the held-out windows that score every model."""
    train = windows(token_stream(tokenizer, corpus.train), config.seq_len)
    train = with_repeats(train, config.repeat_share, config.seed)
    valid = windows(token_stream(tokenizer, corpus.valid), config.seq_len)
    return train, valid[: max(1, config.valid_tokens // config.seq_len)]


def training_batches(tokenizer, train: np.ndarray, config: DemoConfig) -> StepBatches:
    """Each step's batch: real windows of `train`, plus the synthetic share if there is one."""
    shares = any(config.synthetic_windows_per_step())
    alphabet = copy_alphabet(tokenizer, config.copy_alphabet) if shares else None
    return StepBatches(train, config, alphabet)


def synthetic_note(config: DemoConfig) -> str:
    """What the synthetic share and the target's longer training add to the build's log line."""
    copying, alternation = config.synthetic_windows_per_step()
    note = ""
    if copying or alternation:
        note += (
            f" ({copying} copying and {alternation} alternation windows of "
            f"{config.copy_alphabet} words in each)"
        )
    if config.resolved_target_steps() != config.steps:
        note += f"; the target {config.resolved_target_steps()} steps"
    return note


def build_replica(suite_dir: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Train the finished suite's target a second time, from `config.resolved_replica_seed()`
    (another initialisation and batch order, the same data and recipe), as
    `models/<target>-seed<S>`; returns its record, kept in suite.json's "replica". Its agreement
    with the target is the noise ceiling: no predictor can be expected to agree with the target
    more often. Resumable and reused like every model of the ladder.
    """
    suite_dir = suite_path(suite_dir)
    suite = read_suite_record(suite_dir)
    if suite.get("status") != "complete":
        raise ValueError(f"the demo suite in {suite_dir} is not built; build it before its replica")
    replica = suite.get("replica")
    if replica and (suite_dir / replica["directory"] / TRAINING_FILE).exists():
        return replica
    config = resolve_config(suite_dir)
    seed = config.resolved_replica_seed()
    corpus_data = prepare_corpus(suite_dir, config)
    tok = prepare_tokenizer(suite_dir, config, corpus_data)
    train, valid = training_windows(tok, corpus_data, config)
    target = plan_ladder(suite_dir, config, tok)[-1]
    name = f"{target.name}-seed{seed}"
    plan = dataclasses.replace(target, name=name, directory=target.directory.with_name(name))
    log(f"training the target again from seed {seed}, for the noise ceiling")
    started = time.perf_counter()
    replica_config = dataclasses.replace(config.target_config(), seed=seed, replica_seed=None)
    batches = training_batches(tok, train, config)
    replica = {**build_rung(plan, replica_config, tok, batches, valid, progress), "seed": seed}
    suite["replica"] = replica
    suite["target_vs_replica"] = paired_loss_gap(suite_dir, [replica, suite["models"][-1]])
    suite["build_seconds"] = round(suite["build_seconds"] + time.perf_counter() - started, 2)
    write_json_atomic(suite_dir / SUITE_FILE, suite)
    return replica


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
