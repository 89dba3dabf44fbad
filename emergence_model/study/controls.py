"""The controls every emergence measure is read against.

- The jump (the target's log-probability of its own top token over the small models' trend) is
  read at the target's argmax, so it is positive even without emergence: the top token of any
  model is where that model is highest. Its control is the same measure with the target trained
  again from another seed (the replica) in the target's place, read at the replica's own argmax:
  the two are exchangeable unless something about this training, and not the recipe, is
  emergent. The jump net of the control is their paired difference. Where a set says which token
  is right, the jump at that token (chosen by no model) is reported too.
- KL to the best predictor has no floor and grows with the target's entropy: the floor is
  KL(p_T || p_T'), how far the replica is from the target; KL is reported by quantile bins of
  the target's entropy (edges from the reference set), per-set differences at matched entropy
  (the set's bin shares), and KL over the floor.
- The copy split compares hard copies with hard non-copies: both where the target's top token is
  not the largest small model's.
"""

from __future__ import annotations

import numpy as np
import torch

from emergence_model.cache import FeatureCache
from emergence_model.logprobs import floor_logprobs
from emergence_model.model import extrapolation_weights
from emergence_model.stats import ClusterBootstrap, estimate


@torch.no_grad()
def control_rows(
    cache: FeatureCache,
    rows: np.ndarray,
    ceiling: FeatureCache | None,
    true_tokens: np.ndarray | None,
    chunk_rows: int,
) -> dict[str, np.ndarray]:
    """Per prefix of `rows`: the target's entropy (nats); with a `ceiling` cache ([replica,
    target] on the same prefixes) the floor KL(p_T || p_T') and the replica's jump at its own top
    token; with `true_tokens` ((n,) over `rows`, -1 for none) the target's jump at that token.
    Missing measures are NaN."""
    _, weights = extrapolation_weights(list(cache.scales[:-1]), cache.scales[-1])
    weights = torch.tensor(weights, dtype=torch.float32)  # (M,)
    n = len(rows)
    out = {k: np.full(n, np.nan) for k in ("entropy", "floor_kl", "replica_jump", "true_jump")}
    for start in range(0, n, chunk_rows):
        at = slice(start, start + chunk_rows)
        chunk = rows[at]
        x = torch.from_numpy(cache.rows(chunk))  # (b, M + 1, V)
        target = torch.log_softmax(x[:, -1], dim=-1)  # (b, V)
        small = floor_logprobs(x[:, :-1])  # (b, M, V), as the scores read them
        del x
        out["entropy"][at] = -(target.exp() * target).sum(dim=-1).numpy()

        if ceiling is not None:
            replica = torch.log_softmax(torch.from_numpy(ceiling.rows(chunk))[:, 0], dim=-1)
            out["floor_kl"][at] = (target.exp() * (target - replica)).sum(dim=-1).numpy()
            out["replica_jump"][at] = _jump(replica, small, replica.argmax(dim=-1), weights).numpy()
        if true_tokens is not None:
            tokens = torch.from_numpy(np.asarray(true_tokens[at], dtype=np.int64))
            known = tokens >= 0
            values = _jump(target, small, tokens.clamp_min(0), weights).numpy()
            out["true_jump"][at] = np.where(known.numpy(), values, np.nan)
    return out


def _jump(
    logp: torch.Tensor, small: torch.Tensor, tokens: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """A model's (b, V) log-probs at (b,) tokens over the small models' (b, M, V) trend there."""
    at_token = small.gather(2, tokens[:, None, None].expand(-1, small.shape[1], 1))
    trend = at_token[:, :, 0] @ weights  # (b, M) -> (b,)
    return logp.gather(1, tokens[:, None])[:, 0] - trend


def jump_controls(jump: np.ndarray, controls: dict, sampler: ClusterBootstrap) -> dict:
    """The jump beside its controls: the replica's jump, the jump net of it (paired), and the
    jump at the right token where the set has one; absent controls are left out."""
    out = {}
    if np.isfinite(controls["replica_jump"]).all():
        out["replica"] = sampler.mean(controls["replica_jump"])
        out["net_of_replica"] = sampler.mean(jump - controls["replica_jump"])
    known = np.isfinite(controls["true_jump"])
    if known.any():
        out["at_true_token"] = sampler.mean(np.nan_to_num(controls["true_jump"]), mask=known)
        out["true_token_prompts"] = int(known.sum())
    return out


def entropy_edges(entropy: np.ndarray, bins: int) -> np.ndarray:
    """Inner edges of `bins` quantile bins of the reference set's target entropy."""
    return np.quantile(entropy, np.linspace(0, 1, bins + 1)[1:-1])


def kl_by_entropy(
    kl: np.ndarray, entropy: np.ndarray, edges: np.ndarray, sampler: ClusterBootstrap
) -> dict:
    """KL per entropy bin: each bin's range, prefixes, mean entropy and mean KL with its
    interval; and the resampled bin means and counts, for matched differences."""
    bins = np.searchsorted(edges, entropy, side="right")
    num_bins = len(edges) + 1
    means, draws, counts = sampler.binned_draws(kl, bins, num_bins)
    bounds = [-np.inf, *edges.tolist(), np.inf]
    table = []
    for b in range(num_bins):
        inside = bins == b
        table.append(
            {
                "entropy_range": [bounds[b], bounds[b + 1]],
                "prefixes": int(inside.sum()),
                "entropy": float(entropy[inside].mean()) if inside.any() else np.nan,
                "kl": estimate(float(means[b]), draws[:, b]),
            }
        )
    shares = np.bincount(bins, minlength=num_bins) / max(len(bins), 1)
    return {"bins": table, "_draws": (means, draws, counts, shares)}


def matched_difference(set_bins: dict, reference_bins: dict) -> dict:
    """This set's KL minus the reference set's at matched entropy: per bin the difference of
    means, weighted by this set's share of prefixes in the bin (bins the reference leaves empty
    are dropped); the two sets resampled independently."""
    means, draws, counts, shares = set_bins["_draws"]
    ref_means, ref_draws, _, _ = reference_bins["_draws"]
    usable = np.isfinite(ref_means) & (shares > 0)
    w = shares[usable] / shares[usable].sum()
    value = float(np.sum(w * (means[usable] - ref_means[usable])))
    resampled_w = counts[:, usable] / counts[:, usable].sum(axis=1, keepdims=True)
    gaps = draws[:, usable] - ref_draws[:, usable]  # NaN where a resample left a bin empty
    # a bin this resample of the set left empty weighs nothing; one the reference's left empty
    # makes the resample unusable (dropped by `estimate`)
    terms = np.where(resampled_w > 0, resampled_w * gaps, 0.0)
    return estimate(value, terms.sum(axis=1))


def normalised_kl(kl: np.ndarray, floor_kl: np.ndarray, sampler: ClusterBootstrap) -> dict:
    """Mean KL to the best predictor over the mean floor KL(p_T || p_T') (1: as far from the
    target as another training of it)."""
    return sampler.ratio(kl, floor_kl)


def matched_copy_split(
    copies: np.ndarray, known: np.ndarray, easy: np.ndarray, rows: dict, sampler: ClusterBootstrap
) -> dict:
    """Hard copies against hard non-copies: prompts with a known copy where the target's top
    token is not the largest small model's, split by whether the target copies; each group's KL
    and miss of the best predictor and their difference (clusters resampled once for both)."""
    hard_copies = copies & known & ~easy
    hard_other = known & ~copies & ~easy
    out = {
        "hard_copies": {"prefixes": int(hard_copies.sum())},
        "hard_other": {"prefixes": int(hard_other.sum())},
        "difference": {},
    }
    for metric in ("kl", "miss"):
        out["hard_copies"][metric] = sampler.mean(rows[metric], mask=hard_copies)
        out["hard_other"][metric] = sampler.mean(rows[metric], mask=hard_other)
        out["difference"][metric] = sampler.group_difference(rows[metric], hard_copies, hard_other)
    return out
