"""The study's measures on hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from synthetic_cache import PARAM_COUNTS, synthetic_logprobs, write_synthetic_cache

from emergence_model.logprobs import floor_logprobs
from emergence_model.model import extrapolation_weights
from emergence_model.stats import ClusterBootstrap
from emergence_model.study import measures
from emergence_model.study.claims import apply_holm, holds
from emergence_model.study.config import StudyConfig
from emergence_model.study.controls import (
    control_rows,
    entropy_edges,
    jump_controls,
    kl_by_entropy,
    matched_copy_split,
    matched_difference,
)
from emergence_model.study.rungs import ModelsView, extrapolated


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


# --- controls, rungs and claims -----------------------------------------------------------


def _caches(tmp_path):
    """A synthetic ladder and its ceiling: [the target trained again, the target] on the same
    prefixes (the replica: the target's log-probs with their own noise)."""
    logprobs = synthetic_logprobs(40, 16, seed=1)
    cache = write_synthetic_cache(tmp_path / "ladder", logprobs=logprobs)
    replica = synthetic_logprobs(40, 16, seed=2)[:, -1:]
    pair = np.concatenate([replica, logprobs[:, -1:]], axis=1)
    ceiling = write_synthetic_cache(
        tmp_path / "ceiling", logprobs=pair, param_counts=PARAM_COUNTS[-1:] * 2,
        model_names=["replica", cache.target_name],
    )  # fmt: skip
    return cache, ceiling, logprobs, replica[:, 0]


def test_control_rows_by_hand(tmp_path):
    cache, ceiling, logprobs, replica = _caches(tmp_path)
    rows = np.array([3, 0, 7])
    truth = np.array([5, -1, 2])
    out = control_rows(cache, rows, ceiling, truth, chunk_rows=2)
    x = cache.rows(rows)  # float16 as stored, read as float32
    p = torch.log_softmax(torch.from_numpy(x[:, -1]), dim=-1).numpy()
    r = torch.log_softmax(torch.from_numpy(ceiling.rows(rows)[:, 0]), dim=-1).numpy()
    assert out["entropy"] == pytest.approx(-(np.exp(p) * p).sum(axis=1), rel=1e-5)
    assert out["floor_kl"] == pytest.approx((np.exp(p) * (p - r)).sum(axis=1), rel=1e-4)
    _, weights = extrapolation_weights(list(cache.scales[:-1]), cache.scales[-1])
    small = floor_logprobs(torch.from_numpy(x[:, :-1])).numpy()
    for j in range(3):
        top = int(r[j].argmax())
        trend = small[j, :, top] @ np.asarray(weights)
        assert out["replica_jump"][j] == pytest.approx(r[j, top] - trend, abs=1e-4)
    assert out["true_jump"][0] == pytest.approx(p[0, 5] - small[0, :, 5] @ weights, abs=1e-4)
    assert np.isnan(out["true_jump"][1])
    bare = control_rows(cache, rows, None, None, chunk_rows=8)
    assert np.isnan(bare["floor_kl"]).all() and np.isnan(bare["true_jump"]).all()


def test_jump_net_of_its_control_is_paired():
    jump = np.array([2.0, 3.0, 1.0, 4.0])
    controls = {"replica_jump": jump - 0.5, "true_jump": np.array([1.0, np.nan, 3.0, np.nan])}
    sampler = ClusterBootstrap(None, 4, num_bootstrap=100)
    out = jump_controls(jump, controls, sampler)
    # the same shift on every prefix: net of the control it is exactly 0.5, no spread
    assert out["net_of_replica"]["value"] == pytest.approx(0.5)
    assert out["net_of_replica"]["ci"] == pytest.approx([0.5, 0.5])
    assert out["at_true_token"]["value"] == 2.0 and out["true_token_prompts"] == 2
    assert "replica" not in jump_controls(jump, {**controls, "replica_jump": np.full(4, np.nan)},
                                          sampler)  # fmt: skip


def test_kl_at_matched_entropy():
    # KL rises with entropy alike in both sets (here: the bin's index); the set has more
    # high-entropy prefixes, so its raw mean is higher, but at matched entropy it is no different
    rng = np.random.default_rng(0)
    ref_entropy = rng.uniform(0, 4, 400)
    set_entropy = rng.uniform(2, 4, 400)
    edges = entropy_edges(ref_entropy, 4)
    assert edges == pytest.approx([1, 2, 3], abs=0.3)

    def kl(entropy):
        return np.searchsorted(edges, entropy, side="right").astype(float)

    ref = kl_by_entropy(kl(ref_entropy), ref_entropy, edges, ClusterBootstrap(None, 400, 200))
    other = kl_by_entropy(kl(set_entropy), set_entropy, edges,
                          ClusterBootstrap(None, 400, 200, seed=1))  # fmt: skip
    assert other["bins"][0]["prefixes"] == 0 and ref["bins"][0]["prefixes"] > 0
    assert kl(set_entropy).mean() - kl(ref_entropy).mean() > 0.5
    matched = matched_difference(other, ref)
    assert matched["value"] == pytest.approx(0.0) and matched["ci"] == pytest.approx([0, 0])
    shifted = kl_by_entropy(kl(set_entropy) + 1.0, set_entropy, edges,
                            ClusterBootstrap(None, 400, 200, seed=1))  # fmt: skip
    assert matched_difference(shifted, ref)["value"] == pytest.approx(1.0)


def test_the_matched_copy_split_compares_hard_prompts_only():
    copies = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    easy = np.array([1, 0, 0, 1, 0, 0], dtype=bool)
    known = np.ones(6, dtype=bool)
    rows = {"kl": np.arange(6.0), "miss": np.array([0, 1, 1, 0, 1, 0.0])}
    out = matched_copy_split(copies, known, easy, rows, ClusterBootstrap(None, 6, 50))
    assert out["hard_copies"]["prefixes"] == 2 and out["hard_other"]["prefixes"] == 2
    assert out["hard_copies"]["kl"]["value"] == 2.5  # rows 1 and 4
    assert out["difference"]["kl"]["value"] == 2.5 - 3.5  # against rows 2 and 5


def test_the_back_test_extrapolates_the_line_through_the_rungs_below():
    draws = np.zeros(50)
    line = [(1.0 + 0.5 * x, draws + 1.0 + 0.5 * x) for x in (1.0, 2.0, 3.0)]
    scales = [10.0, 100.0, 1000.0, 10_000.0]
    on_line = extrapolated(scales, [*line, (3.0, draws + 3.0)])
    assert on_line["predicted"]["value"] == pytest.approx(3.0)
    assert on_line["measured_minus_predicted"]["value"] == pytest.approx(0.0, abs=1e-12)
    above = extrapolated(scales, [*line, (4.0, draws + 4.0)])
    assert above["measured_minus_predicted"]["value"] == pytest.approx(1.0)
    assert "a line needs 2" in extrapolated(scales[2:], line[2:] + [(4.0, draws)])["skipped"]


def test_models_view_reads_the_chosen_models(tmp_path):
    cache, _, _, _ = _caches(tmp_path)
    view = ModelsView(cache, [0, 2, 3])
    assert view.rows([4, 1]).shape == (2, 3, 16)
    np.testing.assert_array_equal(view.rows([4, 1]), cache.rows([4, 1])[:, [0, 2, 3]])
    np.testing.assert_array_equal(view.target_argmax, cache.argmax[:, 3])
    assert view.scales == [cache.scales[i] for i in (0, 2, 3)] and len(view) == 40


def test_holm_over_every_claim_of_a_report():
    def stat(value, p):
        return {"value": value, "ci": [value - 1, value + 1], "p": p}

    sets = [
        {"name": "a", "jump_controls": {"net_of_replica": stat(1.0, 0.001)}},
        {
            "name": "b",
            "vs_reference": {"reference": "a", "emergence": {"kl": stat(0.5, 0.02)}},
        },  # fmt: skip
    ]
    studies = [{"sets": sets}]
    claims = apply_holm(studies)
    assert [c["claim"] for c in claims] == ["jump net of the replica's (its control)",
                                           "kl minus a's"]  # fmt: skip
    assert [c["p_holm"] for c in claims] == pytest.approx([0.002, 0.02])
    assert [c["holds"] for c in claims] == [True, True]
    assert holds(studies[0], "b", "kl minus a's") and holds(studies[0], "b", "other") is None


def test_cost_ratio_per_draft():
    drafts = ["network", "mean-prob", "model:a"]
    assert StudyConfig(cost_ratio=["network=0.3", "0.1"]).given_costs(drafts) == {
        "network": 0.3, "mean-prob": 0.1, "model:a": 0.1,
    }  # fmt: skip
    assert StudyConfig(cost_ratio=["model:a=0.2"]).given_costs(drafts) == {"model:a": 0.2}
    with pytest.raises(ValueError, match="not a draft of this study"):
        StudyConfig(cost_ratio=["nets=0.2"]).given_costs(drafts)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        StudyConfig(cost_ratio=["network=2"])
    with pytest.raises(ValueError, match="takes \\[NAME=\\]C"):
        StudyConfig(cost_ratio=["network=cheap"])
