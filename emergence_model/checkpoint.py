"""Checkpoints: a plain dict that rebuilds the predictor from the file alone.

    {"format_version", "package_version",
     "config" (PredictorConfig as a dict: network shape, base, features, scales, vocabulary,
        num_heads),
     "model_names", "scale_axis", "scales" (small models), "target_name", "target_scale",
     "vocab_size", "tokenizer" (name, size and vocabulary fingerprint of the training cache's),
     "design" (what the weights compute: model.PREDICTOR_DESIGN),
     "state_dict" (one head per cross-fitting fold),
     "baselines" (tuned baseline parameters, e.g. the contrastive beta), "metrics",
     "selection" (the guide each network guesses with, chosen on its training folds, and the
        evidence: `selection.Selection`),
     "data" (training cache, its fingerprint, the split: folds, fractions, seed), "train_config"}

Only plain Python values and tensors, so it loads with `torch.load(path, weights_only=True)`, and
nothing is built from it before it is checked: its design, its weights (finite, and the names and
shapes its config's network has, found without allocating it), its choice of guides.
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

from emergence_model.cache.format import short_repr
from emergence_model.files import atomic_file
from emergence_model.model import PREDICTOR_DESIGN, PerTokenPredictor, PredictorConfig
from emergence_model.selection import Selection, guided
from emergence_model.strategies import NetworkStrategy, check_same_models
from emergence_model.vocab import TokenizerId, check_same_tokenizer

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
    tokenizer: TokenizerId | None = None,
    selection: Selection | None = None,
) -> dict:
    """Write the checkpoint dict for `predictor` (its config carries scales and vocabulary);
    `tokenizer`: the training cache's (`TokenizerId.of_cache`), which caches are compared with."""
    from emergence_model import __version__

    cfg = predictor.config
    if len(model_names) != cfg.num_models:
        raise ValueError(f"{len(model_names)} model names for {cfg.num_models} small models")
    checkpoint = {
        "format_version": CHECKPOINT_FORMAT,
        "package_version": __version__,
        "design": PREDICTOR_DESIGN,  # what the weights compute (model.py)
        "config": plain(dataclasses.asdict(cfg)),
        "model_names": [str(n) for n in model_names],
        "scale_axis": str(scale_axis),
        "scales": list(cfg.scales),
        "target_name": str(target_name),
        "target_scale": float(cfg.target_scale),
        "vocab_size": int(cfg.vocab_size),
        "tokenizer": (tokenizer or TokenizerId(None, int(cfg.vocab_size))).record(),
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
    _network(checkpoint, where=str(path))  # a config and weights that do not fit: now
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
    tokenizer = checkpoint.get("tokenizer", {})
    if not isinstance(tokenizer, dict) or not all(
        isinstance(tokenizer.get(k), str | None) for k in ("name", "tokenizer_fingerprint")
    ):
        return "tokenizer is not a record of a tokenizer's name and fingerprint"
    design = checkpoint.get("design")
    if (
        isinstance(design, bool)
        or not isinstance(design, int)
        or not 1 <= design <= PREDICTOR_DESIGN
    ):
        return (
            f"its network design {short_repr(design)} is not one this version knows (1 to "
            f"{PREDICTOR_DESIGN}; a newer version's?)"
        )
    folds = checkpoint.get("data", {}).get("prefix_folds", {})
    if not isinstance(folds, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in folds.items()
    ):
        return "data.prefix_folds is not a map of prefix digests to folds"
    return None


def build_predictor(checkpoint: dict, where: str = "the checkpoint") -> PerTokenPredictor:
    """The network of a loaded checkpoint, in eval mode on the CPU; CheckpointError in one line
    (naming `where`) if it is of another design than this version computes
    (`model.PREDICTOR_DESIGN`: its weights would mean something else here), its config does not
    make a network, or its weights are not finite or do not fit it."""
    if checkpoint.get("design") != PREDICTOR_DESIGN:
        raise CheckpointError(
            f"{where} holds a network of design {short_repr(checkpoint.get('design'))}, which this "
            f"version does not compute (it computes design {PREDICTOR_DESIGN}); retrain it with "
            "train.py"
        )
    return _network(checkpoint, where)


def _network(checkpoint: dict, where: str) -> PerTokenPredictor:
    """`build_predictor` but for the design. The weights are checked against the config before
    the network is allocated, so a config that asks for a huge one is refused, not run out of
    memory on."""
    fields = {f.name for f in dataclasses.fields(PredictorConfig)}
    if not isinstance(checkpoint.get("config"), dict):
        raise CheckpointError(f"{where}: its config is not a dict; retrain it with train.py")
    try:
        config = PredictorConfig(**{k: v for k, v in checkpoint["config"].items() if k in fields})
        with torch.device("meta"):  # shapes only: nothing is allocated
            one_head = PerTokenPredictor(dataclasses.replace(config, num_heads=1))
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
    if config.vocab_size != checkpoint["vocab_size"]:
        raise CheckpointError(
            f"{where}: its config has a vocabulary of {config.vocab_size} but it records "
            f"{checkpoint['vocab_size']}; retrain it with train.py"
        )
    problem = _weights_problem(checkpoint["state_dict"], one_head.state_dict(), config.num_heads)
    if problem is not None:
        raise CheckpointError(f"{where}: its weights {problem}; retrain it with train.py")
    predictor = PerTokenPredictor(config)
    try:
        predictor.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{where}: its weights do not fit its config ({first}); retrain it with train.py"
        ) from None
    return predictor.eval()


def _weights_problem(state_dict: dict, one_head: dict, num_heads: int) -> str | None:
    """What is wrong with a checkpoint's weights for a network of `num_heads` heads whose
    one-head version has the (meta) tensors `one_head`: a value that is not finite, a count,
    name or shape of tensor that network does not have; None if they fit."""
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"hold NaN or infinite values ({name})"
    head = "heads.0."
    per_head = {k.removeprefix(head): v.shape for k, v in one_head.items() if k.startswith(head)}
    shared = {k: v.shape for k, v in one_head.items() if not k.startswith(head)}
    expected = len(shared) + num_heads * len(per_head)
    if len(state_dict) != expected:  # before any loop over the heads the config claims
        return (
            f"do not fit its config ({len(state_dict)} tensors, where its {num_heads} heads "
            f"have {expected})"
        )
    for name, tensor in state_dict.items():
        index, _, rest = name.removeprefix("heads.").partition(".")
        if name in shared:
            wanted = shared[name]
        elif name.startswith("heads.") and index.isdigit() and int(index) < num_heads:
            wanted = per_head.get(rest)
        else:
            wanted = None
        if wanted is None:
            return f"do not fit its config (its network has no tensor {name})"
        if tensor.shape != wanted:
            return (
                f"do not fit its config ({name} is {list(tensor.shape)}, its network's "
                f"{list(wanted)})"
            )
    return None


def check_compatible(
    checkpoint: dict,
    model_names: Sequence[str],
    vocabulary: int | TokenizerId,
    where: str = "the cache",
    target_name: str | None = None,
) -> None:
    """Refuse small models, a vocabulary or (if given) a target other than those `checkpoint`
    was trained on (org prefixes and directories of the names are ignored). `vocabulary`: the
    cache's tokenizer (`TokenizerId.of_cache`), compared with the checkpoint's by
    `vocab.tokenizer_difference`, or only a vocabulary's size."""
    given = vocabulary if isinstance(vocabulary, TokenizerId) else TokenizerId(None, vocabulary)
    check_same_models(
        checkpoint["model_names"],
        model_names,
        expected_target=checkpoint["target_name"],
        given_target=target_name,
        expected_vocab=checkpoint["vocab_size"],
        given_vocab=given.vocab_size,
        what="the checkpoint",
        where=where,
    )
    check_same_tokenizer(
        TokenizerId.of_checkpoint(checkpoint),
        given,
        "the checkpoint",
        where,
        "evaluate a checkpoint on caches of the tokenizer it was trained on",
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
        build_predictor(checkpoint, where),
        checkpoint["model_names"],
        checkpoint["target_name"],
        tokenizer=TokenizerId.of_checkpoint(checkpoint),
    )
    selection = checkpoint_selection(checkpoint, where)
    return guided(network, None if selection is None else selection.ensemble)


def load_strategy(path: str | os.PathLike) -> NetworkStrategy:
    """A checkpoint as a challenge strategy: strategy(sentences, model_names, target_model_name,
    probs (N, M, V) probabilities, float16 fine) -> list of N token ids, guessed with the guide
    chosen on its training folds (`selection`)."""
    return network_strategy(load_checkpoint(path), str(path))
