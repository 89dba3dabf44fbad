"""Fold identity: which rows of a cache each network trains, validates and is scored on, and which
network never saw each prefix, wherever that prefix turns up again.

Splits are made by prefix text, from a seed: rows of one prefix text always stay on one side, so a
repeated prefix cannot leak from training into held-out rows. Cross-fitting cuts the prefixes into
folds whose held-out parts partition them. `Folds` holds a training cache's folds, computed once
and passed on; a checkpoint records, per digest of each training prefix, the fold whose network
never saw it (`Folds.record`), so that evaluation knows its training prefixes in any cache
(`training_folds`), and checkpoints from before that record are rebuilt from the seed and
fractions they store. Nothing here needs torch or Lightning.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Split = tuple[np.ndarray, np.ndarray, np.ndarray]

# training_folds's codes for a row that no network saw, and for one that every network saw
NOT_TRAINED, SEEN_BY_ALL = -2, -1


def prefix_digest(prefix: str) -> str:
    """A short digest of one prefix's text: how a checkpoint records its training prefixes, so
    that evaluation can tell them when it meets them again in another cache."""
    return hashlib.sha256(prefix.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def rows_fingerprint(model_names: Sequence[str], prefixes: Sequence[str]) -> str:
    """Identifies a cache's rows (its models and prefixes), so that evaluation can tell a
    checkpoint's training cache when it sees it again."""
    digest = hashlib.sha256(json.dumps([list(model_names), list(prefixes)]).encode())
    return digest.hexdigest()[:16]


def split_indices(
    prefixes: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> Split:
    """Deterministic (train, val, test) row indices of one split."""
    return fold_splits(prefixes, 1, val_fraction, test_fraction, seed)[0]


def fold_splits(
    prefixes: Sequence[str], folds: int, val_fraction: float, test_fraction: float, seed: int
) -> list[Split]:
    """(train, val, test) row indices per fold, by prefix text (repeats stay together).

    `folds` > 1: the tests of the folds partition the prefixes; 1: one split, `test_fraction`
    of the prefixes held out. Validation takes `val_fraction` of the prefixes from the rest."""
    texts = sorted(set(prefixes))
    order = np.random.default_rng(seed).permutation(len(texts))  # texts in a random order
    n_val = max(1, int(round(val_fraction * len(texts))))
    if folds == 1:
        n_test = int(round(test_fraction * len(texts)))
        test_parts = [order[:n_test]]
    else:
        test_parts = [order[k::folds] for k in range(folds)]
    text_row = {text: i for i, text in enumerate(texts)}
    row_text = np.array([text_row[p] for p in prefixes])
    splits = []
    for test in test_parts:
        rest = order[~np.isin(order, test)]
        if len(rest) <= n_val:
            raise ValueError(
                f"{len(texts)} distinct prefixes are too few for {folds} folds, val "
                f"{val_fraction} and test {test_fraction}: cache more prefixes or lower them"
            )
        part = np.zeros(len(texts), dtype=np.int8)  # 0 train, 1 val, 2 test
        part[rest[:n_val]] = 1
        part[test] = 2
        rows = part[row_text]
        splits.append(tuple(np.flatnonzero(rows == k) for k in (0, 1, 2)))
    return splits


def limit_rows(
    rows: np.ndarray, prefixes: Sequence[str], max_prefixes: int, seed: int
) -> np.ndarray:
    """At most `max_prefixes` distinct prefix texts of `rows` (indices into `prefixes`), drawn at
    random from `seed`, with every row of each text drawn; 0: all of them. Sorted."""
    rows = np.asarray(rows, dtype=np.int64)
    texts = sorted({prefixes[i] for i in rows})
    if not max_prefixes or len(texts) <= max_prefixes:
        return rows
    order = np.random.default_rng(seed).permutation(len(texts))
    kept = {texts[i] for i in order[:max_prefixes]}
    return np.sort(rows[[prefixes[i] in kept for i in rows]])


def held_out_by(prefixes: Sequence[str], splits: Sequence[Split]) -> dict[str, int]:
    """Each training prefix's digest -> the fold whose network never saw it (its test part), or
    SEEN_BY_ALL (--folds 1: the prefixes the one network trained or validated on). A checkpoint
    keeps this as data["prefix_folds"], so that evaluation knows its training prefixes in any
    cache."""
    folds = {prefix_digest(text): SEEN_BY_ALL for text in prefixes}
    for k, (_, _, test) in enumerate(splits):
        for i in test:
            folds[prefix_digest(prefixes[i])] = k
    return folds


def fold_codes(prefix_folds: dict[str, int], prefixes: Sequence[str]) -> np.ndarray:
    """Per prefix of any cache: its fold in `prefix_folds` (from `held_out_by`), SEEN_BY_ALL, or
    NOT_TRAINED where no network trained on it."""
    return np.array([prefix_folds.get(prefix_digest(p), NOT_TRAINED) for p in prefixes], np.int64)


def training_folds(prefixes: Sequence[str], checkpoint: dict) -> np.ndarray | None:
    """Per prefix: the fold whose network never saw it (0..K-1), SEEN_BY_ALL, or NOT_TRAINED if
    the checkpoint never trained on it; None if the checkpoint does not record its training
    prefixes (checkpoints from before data["prefix_folds"], on any cache but their own)."""
    data = checkpoint.get("data") or {}
    recorded = data.get("prefix_folds")
    if (
        recorded is None
        and "split" in data
        and data.get("fingerprint")
        == rows_fingerprint(checkpoint["model_names"] + [checkpoint["target_name"]], prefixes)
    ):
        split = data["split"]
        recorded = Folds.of(
            prefixes,
            split.get("folds", 1),
            split["val_fraction"],
            split["test_fraction"],
            split["seed"],
            split.get("max_prefixes", 0),
        ).prefix_folds
    if recorded is None:
        return None
    return fold_codes(recorded, prefixes)


def _local(split: Split, rows: np.ndarray) -> Split:
    """A split of cache rows as positions in `rows` (sorted, and holding them all)."""
    return tuple(np.searchsorted(rows, part) for part in split)


@dataclass(frozen=True, eq=False)
class Folds:
    """A training cache's folds, computed once (`of`) and passed on to whatever trains, scores or
    records them."""

    splits: list[Split]
    """(train, val, test) rows of the training cache, per fold."""
    prefix_folds: dict[str, int]
    """Each training prefix's digest -> the fold whose network never saw it (`held_out_by`)."""
    settings: dict
    """What made them: folds, val_fraction, test_fraction and seed."""

    @classmethod
    def of(
        cls,
        prefixes: Sequence[str],
        folds: int,
        val_fraction: float,
        test_fraction: float,
        seed: int,
        max_prefixes: int = 0,
    ) -> Folds:
        """The folds of a cache's `prefixes` (`fold_splits`), and which never saw each prefix.
        With `max_prefixes`, the folds cut that many prefix texts of the cache, drawn at random
        (`limit_rows`); the other rows are in no fold, and no network sees them."""
        rows = limit_rows(np.arange(len(prefixes)), prefixes, max_prefixes, seed)
        chosen = [prefixes[i] for i in rows]
        splits = [
            tuple(rows[part] for part in split)
            for split in fold_splits(chosen, folds, val_fraction, test_fraction, seed)
        ]
        settings = {
            "folds": folds,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "seed": seed,
        }
        if max_prefixes:
            settings["max_prefixes"] = max_prefixes
        return cls(splits, held_out_by(chosen, [_local(s, rows) for s in splits]), settings)

    def unseen_rows(self, num_rows: int) -> np.ndarray:
        """Rows of the training cache in no fold (`max_prefixes`): no network saw them."""
        in_folds = np.concatenate([part for split in self.splits for part in split])
        return np.setdiff1d(np.arange(num_rows), in_folds)

    def __len__(self) -> int:
        return len(self.splits)

    def codes(self, prefixes: Sequence[str]) -> np.ndarray:
        """`fold_codes` of any cache's `prefixes`: which network never saw each one."""
        return fold_codes(self.prefix_folds, prefixes)

    def record(self) -> dict:
        """What a checkpoint's data keeps of them, and `training_folds` reads back: which network
        never saw each training prefix, so that evaluation finds them in any cache, and the
        settings, so that the splits can be made again."""
        return {"prefix_folds": self.prefix_folds, "split": dict(self.settings)}
