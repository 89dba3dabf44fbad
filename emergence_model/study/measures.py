"""The study's measures, as pure functions of per-prefix arrays (no cache, no model).

Emergence, per prefix (definitions in the README):
- KL(target || q) to the best predictor q built from the small models, its surprisal of the
  target's top token (-log q(top)) and whether its top token misses the target's;
- the scaling view: each small model's log-probability of the target's top token against log
  scale, the least-squares trend through them extended to the target's scale, and the "jump":
  the target's own log-probability of its top token minus the trend's. A jump near zero is what
  scaling predicts; a large one appears only at the target's size.

Choices (the best predictor, a cascade's threshold) are made on other folds than the prefixes
they are scored on (`choose_by_folds`, `thresholds_by_folds`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emergence_model.model import extrapolation_weights


def scaling_trend(
    small_logprob: np.ndarray, scales: Sequence[float], target_scale: float
) -> np.ndarray:
    """(n, M) small models' log-probabilities of a token -> (n,) the least-squares line through
    them in log scale, evaluated at the target's log scale."""
    _, extrap = extrapolation_weights(list(scales), target_scale)
    return np.asarray(small_logprob, dtype=np.float64) @ np.asarray(extrap, dtype=np.float64)


def jump(target_logprob: np.ndarray, trend: np.ndarray) -> np.ndarray:
    """The target's log-probability of its top token minus the small models' trend's (nats)."""
    return np.asarray(target_logprob, dtype=np.float64) - np.asarray(trend, dtype=np.float64)


def fold_ids(num_rows: int, test_parts: Sequence[np.ndarray]) -> np.ndarray:
    """(num_rows,) the fold whose held-out part holds each row (the parts partition the rows)."""
    ids = np.full(num_rows, -1, dtype=np.int64)
    for k, part in enumerate(test_parts):
        ids[np.asarray(part, dtype=np.int64)] = k
    if (ids < 0).any():
        raise ValueError(f"{int((ids < 0).sum())} rows are in no fold's held-out part")
    return ids


def choose_by_folds(values: dict[str, np.ndarray], folds: np.ndarray) -> list[str]:
    """For each fold, the candidate with the lowest mean value on the OTHER folds' rows.

    `values`: candidate -> (n,) per-row value (e.g. KL); `folds`: (n,) fold of each row. With one
    fold there are no other rows to choose on: refused, since choosing on the scored rows would
    favour the chosen candidate."""
    ids = np.unique(folds)
    if len(ids) < 2:
        raise ValueError("choosing on held-out folds needs at least two folds")
    chosen = []
    for k in ids:
        others = folds != k
        chosen.append(min(values, key=lambda name: float(values[name][others].mean())))
    return chosen


def per_row_choice(
    values: dict[str, np.ndarray], folds: np.ndarray, chosen: Sequence[str]
) -> np.ndarray:
    """(n,) each row's value under the candidate chosen for its fold."""
    out = np.empty(len(folds), dtype=np.float64)
    for k, name in zip(np.unique(folds), chosen, strict=True):
        out[folds == k] = values[name][folds == k]
    return out


def cascade_curve(confidence: np.ndarray, correct: np.ndarray) -> dict:
    """The cascade "answer from the predictor where its top probability >= t, else call the
    target", at every threshold that changes the answer: arrays of t (descending), the share of
    target calls saved, and agreement with the target (answered rows right, called rows always).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    n = confidence.size
    order = np.argsort(-confidence, kind="stable")
    answered = np.arange(1, n + 1)
    wrong = np.cumsum(1.0 - correct[order])
    # ties: only the last row of a run of equal confidences is a reachable threshold
    last = np.r_[confidence[order][1:] != confidence[order][:-1], True]
    thresholds = np.r_[np.inf, confidence[order][last]]
    saved = np.r_[0.0, answered[last] / n]
    agreement = np.r_[1.0, 1.0 - wrong[last] / n]
    return {"threshold": thresholds, "saved": saved, "agreement": agreement}


def threshold_for(confidence: np.ndarray, correct: np.ndarray, level: float) -> float:
    """The lowest threshold whose cascade keeps agreement >= `level` on these rows (inf: always
    call the target)."""
    curve = cascade_curve(confidence, correct)
    ok = curve["agreement"] >= level - 1e-12
    # agreement only falls as the threshold falls (each answered row is right or wrong): the
    # thresholds that keep the level are a prefix of the curve
    first_bad = int(np.argmin(ok)) if not ok.all() else len(ok)
    return float(curve["threshold"][max(first_bad - 1, 0)])


def thresholds_by_folds(
    confidence: np.ndarray, correct: np.ndarray, folds: np.ndarray, level: float
) -> list[float]:
    """For each fold, `threshold_for` chosen on the other folds' rows."""
    return [
        threshold_for(confidence[folds != k], correct[folds != k], level) for k in np.unique(folds)
    ]


def cascade_outcome(
    confidence: np.ndarray, correct: np.ndarray, threshold: float | np.ndarray
) -> dict:
    """Per-row outcome of a cascade at `threshold` (one, or one per row): saved (answered by the
    predictor, 0/1) and agree (with the target: the predictor's answer, or 1 when called)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    saved = confidence >= threshold
    agree = np.where(saved, np.asarray(correct, dtype=np.float64), 1.0)
    return {"saved": saved.astype(np.float64), "agree": agree}
