"""Train / validation / test splits of a cache's prefixes, by prefix text, from a seed.

Rows of one prefix text always stay on one side, so a repeated prefix cannot leak from training
into held-out rows. Cross-fitting cuts the prefixes into folds whose held-out parts partition
them. Nothing here needs torch or Lightning: evaluation rebuilds a checkpoint's splits from the
seed and fractions it stores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Split = tuple[np.ndarray, np.ndarray, np.ndarray]


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
