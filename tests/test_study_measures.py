"""The study's measures on hand-computed cases."""

import math

import numpy as np
import pytest

from emergence_model.study import measures


def test_scaling_trend_is_the_least_squares_line_at_the_target():
    # log-probs -3, -2, -1 at scales e, e^2, e^3: the line is y = x - 4 in log scale, so at e^5
    # the trend is 1; with one more bent point the fit is what numpy's polyfit says
    small = np.array([[-3.0, -2.0, -1.0], [-3.0, -2.0, -2.0]])
    scales = [math.e, math.e**2, math.e**3]
    trend = measures.scaling_trend(small, scales, math.e**5)
    slope, intercept = np.polyfit([1.0, 2.0, 3.0], small[1], 1)
    assert trend == pytest.approx([1.0, slope * 5 + intercept])
    assert measures.jump(np.array([0.5, -1.0]), trend) == pytest.approx([-0.5, -1 - trend[1]])
    # one small model: its value is the trend
    assert measures.scaling_trend(np.array([[-2.0]]), [10.0], 100.0) == pytest.approx([-2.0])


def test_the_best_candidate_is_chosen_on_the_other_folds():
    # fold 0 favours "a", fold 1 favours "b": each fold gets the other fold's favourite
    values = {"a": np.array([0.1, 0.1, 0.9, 0.9]), "b": np.array([0.5, 0.5, 0.2, 0.2])}
    folds = np.array([0, 0, 1, 1])
    chosen = measures.choose_by_folds(values, folds)
    assert chosen == ["b", "a"]
    assert measures.per_row_choice(values, folds, chosen) == pytest.approx([0.5, 0.5, 0.9, 0.9])
    with pytest.raises(ValueError, match="two folds"):
        measures.choose_by_folds(values, np.zeros(4, dtype=int))


def test_fold_ids_partition_the_rows():
    assert measures.fold_ids(4, [np.array([2, 0]), np.array([1, 3])]).tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="1 rows are in no fold"):
        measures.fold_ids(3, [np.array([0, 1])])


def test_cascade_curve_by_hand():
    # confidences 0.9 (right), 0.8 (wrong), 0.8 (right), 0.3 (wrong)
    confidence = np.array([0.9, 0.8, 0.8, 0.3])
    correct = np.array([1.0, 0.0, 1.0, 0.0])
    curve = measures.cascade_curve(confidence, correct)
    assert curve["threshold"].tolist() == [math.inf, 0.9, 0.8, 0.3]
    assert curve["saved"].tolist() == [0.0, 0.25, 0.75, 1.0]
    assert curve["agreement"].tolist() == [1.0, 1.0, 0.75, 0.5]
    assert measures.threshold_for(confidence, correct, 0.95) == 0.9
    assert measures.threshold_for(confidence, correct, 0.75) == 0.8
    assert measures.threshold_for(confidence, correct, 0.5) == 0.3
    outcome = measures.cascade_outcome(confidence, correct, 0.8)
    assert outcome["saved"].tolist() == [1, 1, 1, 0] and outcome["agree"].tolist() == [1, 0, 1, 1]


def test_cascade_thresholds_are_chosen_on_other_folds():
    confidence = np.array([0.9, 0.2, 0.9, 0.2])
    correct = np.array([1.0, 0.0, 0.0, 0.0])
    folds = np.array([0, 0, 1, 1])
    # on fold 1's rows the confident answer is wrong: fold 0 must call the target always;
    # on fold 0's rows it is right: fold 1 may answer at 0.9
    assert measures.thresholds_by_folds(confidence, correct, folds, 0.99) == [math.inf, 0.9]
