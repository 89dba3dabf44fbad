"""Checkpoints: a plain dict that rebuilds the predictor from the file alone.

    {"format_version", "package_version",
     "config" (PredictorConfig as a dict: network shape, base, features, scales, vocabulary,
        num_heads),
     "model_names", "scale_axis", "scales" (small models), "target_name", "target_scale",
     "vocab_size", "state_dict" (one head per cross-fitting fold),
     "baselines" (tuned baseline parameters, e.g. the contrastive beta), "metrics",
     "selection" (the guide each network guesses with, chosen on its training folds, and the
        evidence: `selection.Selection`),
     "data" (training cache, its fingerprint, the split: folds, fractions, seed), "train_config"}

Only plain Python values and tensors, so it loads with `torch.load(path, weights_only=True)`.
`load_strategy(path)` turns one into a callable with the challenge's signature, guessing with the
guide chosen for it (a checkpoint without "selection" guesses with the network's own guess).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from emergence_model.files import atomic_file
from emergence_model.model import PREDICTOR_DESIGN, PerTokenPredictor, PredictorConfig
from emergence_model.selection import Selection, guided
from emergence_model.strategies import NetworkStrategy, check_same_models

# 2: scales along a declared axis (parameters or training tokens) instead of parameter counts.
# 3: the gated base, token embeddings and the distribution output (two outputs per head).
# 4: one output per head; the distribution's mixture weighs the small models and their mean.
CHECKPOINT_FORMAT = 4
REQUIRED_KEYS = (
    "format_version",
    "config",
    "model_names",
    "scale_axis",
    "scales",
    "target_name",
    "target_scale",
    "vocab_size",
    "state_dict",
)


class CheckpointError(ValueError):
    """A missing, unreadable or incompatible checkpoint; the message says how to fix it."""


def plain(value):
    """numpy scalars and arrays, tuples and Paths -> plain Python values (weights_only-safe)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def save_checkpoint(
    path: str | os.PathLike,
    predictor: PerTokenPredictor,
    *,
    model_names: Sequence[str],
    target_name: str,
    scale_axis: str = "parameters",
    baselines: dict | None = None,
    metrics: dict | None = None,
    data: dict | None = None,
    train_config: dict | None = None,
    selection: Selection | None = None,
) -> dict:
    """Write the checkpoint dict for `predictor` (its config carries scales and vocabulary)."""
    from emergence_model import __version__

    cfg = predictor.config
    if len(model_names) != cfg.num_models:
        raise ValueError(f"{len(model_names)} model names for {cfg.num_models} small models")
    checkpoint = {
        "format_version": CHECKPOINT_FORMAT,
        "package_version": __version__,
        "design": PREDICTOR_DESIGN,  # what the weights compute (model.py); not checked on load
        "config": plain(dataclasses.asdict(cfg)),
        "model_names": [str(n) for n in model_names],
        "scale_axis": str(scale_axis),
        "scales": list(cfg.scales),
        "target_name": str(target_name),
        "target_scale": float(cfg.target_scale),
        "vocab_size": int(cfg.vocab_size),
        "state_dict": {k: v.detach().cpu().clone() for k, v in predictor.state_dict().items()},
        "baselines": plain(baselines or {}),
        "metrics": plain(metrics or {}),
        "data": plain(data or {}),
        "train_config": plain(train_config or {}),
    }
    if selection is not None:
        checkpoint["selection"] = plain(selection.record())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        torch.save(checkpoint, f)
    return checkpoint


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and check a checkpoint written by `save_checkpoint` (weights_only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train one with train.py --out {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad file
        # Not torch's own text: it suggests weights_only=False, which would run the file's code.
        raise CheckpointError(
            f"{path} is not a readable emergence-model checkpoint ({type(e).__name__}; only "
            "tensors and plain values are loaded); train one with train.py"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not an emergence-model checkpoint (not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}: not an emergence-model checkpoint; train one "
            "with train.py"
        )
    if checkpoint["format_version"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {checkpoint['format_version']!r}, this package reads "
            f"{CHECKPOINT_FORMAT}: retrain it with this version"
        )
    problem = _checkpoint_problem(checkpoint)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}; the file is damaged or not from train.py")
    build_predictor(checkpoint, where=str(path))  # a config and weights that do not fit: now
    checkpoint_selection(checkpoint, where=str(path))  # a damaged choice of guides: now too
    return checkpoint


def _checkpoint_problem(checkpoint: dict) -> str | None:
    """What is wrong with the types of a checkpoint's entries, or None."""
    names = checkpoint["model_names"]
    expected = [
        ("config", dict),
        ("state_dict", dict),
        ("target_name", str),
        ("scale_axis", str),
        ("data", dict),
        ("baselines", dict),
        ("metrics", dict),
    ]
    for key, kind in expected:
        if key in checkpoint and not isinstance(checkpoint[key], kind):
            return f"{key} is {type(checkpoint[key]).__name__}, not {kind.__name__}"
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "model_names is not a non-empty list of names"
    vocab = checkpoint["vocab_size"]
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
        return f"vocab_size is {vocab!r}, not a positive integer"
    if not all(isinstance(v, torch.Tensor) for v in checkpoint["state_dict"].values()):
        return "state_dict holds something other than tensors"
    if not all(isinstance(v, dict) for v in checkpoint.get("baselines", {}).values()):
        return "baselines holds something other than parameter dicts"
    folds = checkpoint.get("data", {}).get("prefix_folds", {})
    if not isinstance(folds, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in folds.items()
    ):
        return "data.prefix_folds is not a map of prefix digests to folds"
    return None


def build_predictor(checkpoint: dict, where: str = "the checkpoint") -> PerTokenPredictor:
    """The network of a loaded checkpoint, in eval mode on the CPU; CheckpointError in one line
    (naming `where`) if its config does not make a network or its weights do not fit it."""
    fields = {f.name for f in dataclasses.fields(PredictorConfig)}
    if not isinstance(checkpoint.get("config"), dict):
        raise CheckpointError(f"{where}: its config is not a dict; retrain it with train.py")
    try:
        config = PredictorConfig(**{k: v for k, v in checkpoint["config"].items() if k in fields})
        predictor = PerTokenPredictor(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{where}: its config does not make a network ({' '.join(str(e).split())}); "
            "retrain it with train.py"
        ) from None
    if config.num_models != len(checkpoint["model_names"]):
        raise CheckpointError(
            f"{where}: its config has {config.num_models} small models but it names "
            f"{len(checkpoint['model_names'])}; retrain it with train.py"
        )
    try:
        predictor.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{where}: its weights do not fit its config ({first}); retrain it with train.py"
        ) from None
    return predictor.eval()


def check_compatible(
    checkpoint: dict,
    model_names: Sequence[str],
    vocab_size: int,
    where: str = "the cache",
    target_name: str | None = None,
) -> None:
    """Refuse small models, a vocabulary or (if given) a target other than those `checkpoint`
    was trained on (org prefixes and directories of the names are ignored)."""
    check_same_models(
        checkpoint["model_names"],
        model_names,
        expected_target=checkpoint["target_name"],
        given_target=target_name,
        expected_vocab=checkpoint["vocab_size"],
        given_vocab=vocab_size,
        what="the checkpoint",
        where=where,
    )


def checkpoint_selection(checkpoint: dict, where: str = "the checkpoint") -> Selection | None:
    """The guides a checkpoint's networks guess with (`selection.Selection`), or None where it
    records none (its networks guess alone); CheckpointError in one line if the record is damaged.
    """
    record = checkpoint.get("selection")
    if record is None:
        return None
    try:
        selection = Selection.from_record(record)
        heads = checkpoint["config"].get("num_heads", 1)
        if len(selection.folds) not in (0, heads):
            raise ValueError(f"{len(selection.folds)} fold choices for {heads} networks")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(
            f"{where}: its choice of guides is not readable ({' '.join(str(e).split())}); "
            "retrain it with train.py"
        ) from None
    return selection


def network_strategy(checkpoint: dict, where: str = "the checkpoint") -> NetworkStrategy:
    """A loaded checkpoint's ensemble as a strategy, guessing with the guide chosen for it."""
    network = NetworkStrategy(
        build_predictor(checkpoint, where), checkpoint["model_names"], checkpoint["target_name"]
    )
    selection = checkpoint_selection(checkpoint, where)
    return guided(network, None if selection is None else selection.ensemble)


def load_strategy(path: str | os.PathLike) -> NetworkStrategy:
    """A checkpoint as a challenge strategy: strategy(sentences, model_names, target_model_name,
    probs (N, M, V) probabilities, float16 fine) -> list of N token ids, guessed with the guide
    chosen on its training folds (`selection`)."""
    return network_strategy(load_checkpoint(path), str(path))
