"""The per-token predictor: small models' next-token distributions in, the target's out.

Three steps, each one small module, the same weights for every token of the vocabulary:

1. A base log-distribution over the whole vocabulary: a per-prefix weighting of the guides, each
   small model's log-probabilities and the log of their mean probability (`base="gated"`). The
   weights come from a small MLP of per-prefix context (each model's top log-probability,
   entropy, top-2 margin and collision entropy, and the same of the mean), so the network learns
   which guide to trust on which prefix: the largest model where it leads the ladder, the mean
   where one model's quirk would carry it away, an extrapolation along the ladder (a weighting
   that grows with size) where the trend holds. It starts as the mean-probability baseline.
2. A correction of `num_candidates` tokens, each small model's top token and then the most
   probable under the mean (`candidate_ids`; 0: every token): an MLP reads each candidate's value
   under the mean and under the base (log-prob, gap to the top, rank among the candidates), the
   per-prefix context, optionally each small model's log-prob and gap (`features="models"`) and
   a learned embedding of the token's identity (the target's habits are token-specific). Two more
   feature groups were measured and removed, as neither earned its place on the training folds:
   the trajectory (the candidate's log-prob, gap and rank under each small model) and the trend
   (its log-linear extrapolation to the target's size and the slope). Every other token keeps
   its base plus one per-prefix offset. The default 16 candidates hold the target's top token on
   nearly every in-domain prefix (the evaluation reports the share), more candidates score no
   better on the training folds (`python -m bench.experiments.predictor_cv`, whose table is
   docs/results/predictor_cv.md), and scoring a [100, 6, 50277] batch stays a few passes over
   the input on a CPU.
3. The MLP's output makes the `logits`, trained on the target's top token (KL to its
   distribution sharpened at temperature 0.25: `TrainConfig`), which rank the tokens (the
   guess). The predicted distribution of the target is a mixture of each small model's
   distribution and their mean, by weights fitted on held-out prefixes (`fit_mixture`), with
   the guess made its mode so that its top-1 is the guess's. The output starts at zero and the
   mixture at the mean alone, so an untrained network is the mean-probability baseline. (A
   second output, a distribution trained on KL to the target's and mixed in with the small
   models, was measured and removed: the mixture without it is as close to the target.)

The features do not depend on learned weights, so several trained networks (`heads`, e.g. the
members of a cross-fitted ensemble) share them and cost little more than one. Any number of
small models works: with one, or with equal scales, the extrapolation is their mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from emergence_model.logprobs import PROB_FLOOR, check_rows, floor_logprobs, probs_to_logprobs

# Log-probs and gaps are divided by this so that features are O(1).
_LOGPROB_SCALE = 8.0
# The guess is made the distribution's mode by this margin (nats) over the next token.
_MODE_MARGIN = 1e-3

# What a trained network computes from its weights, as a number: bump it with any change to this
# module that makes the same weights predict something else (e.g. which tokens are candidates), so
# that train.py and the study train such networks again rather than reuse them. The checkpoint's
# file format (checkpoint.CHECKPOINT_FORMAT) is another matter: it says whether a file loads.
# 1: the mean's top tokens as the candidates; 2: each small model's top token among them;
# 3: one output (the logits), the distribution a mixture of the small models alone; 4: ranks among
# the candidates by sorting (ties by position), so that every token can be a candidate.
PREDICTOR_DESIGN = 4

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}
BASES = ("gated", "mean", "largest", "extrapolate")
FEATURE_GROUPS = ("context", "models")
# Feature groups of earlier versions, measured and removed (README: "What each part contributes").
REMOVED_FEATURE_GROUPS = ("trajectory", "trend")


@dataclass
class PredictorConfig:
    """Shape and hyperparameters of `PerTokenPredictor`."""

    hidden_size: int = 32
    """Width of the shared per-token MLP (and of the per-prefix guide weighting)."""
    num_layers: int = 1
    """Hidden layers of the per-token MLP."""
    activation: str = "silu"
    """Activation of the MLPs: relu, silu or gelu."""
    base: str = "gated"
    """What the per-token correction is added to: gated (per-prefix learned weights of each small
    model's log-prob and the log mean-prob), mean, largest or extrapolate."""
    num_candidates: int = 16
    """Tokens per prefix corrected by the MLP: each small model's top token, then the most
    probable under the mean of the small models (0: every token, slow on a 50k vocabulary)."""
    max_correction: float = 0.0
    """Bound on the MLP's change to a token's base log-prob, in nats (c * tanh(raw / c)); 0:
    unbounded."""
    features: str = "context"
    """Feature groups the MLP reads, comma-separated: context (per-prefix top log-prob, top-2
    margin, collision entropy of each model and of the mean; also what the gated base and the
    tail offset read), models (each small model's log-prob of the candidate and its gap to that
    model's top token), or none (""). The base's and the mean's log-prob, gap and rank are
    always read."""
    token_embedding: int = 16
    """Size of a learned embedding of each candidate token's identity (0: none)."""
    embedding_min_prefixes: int = 3000
    """A network that learns from fewer prefixes than this has no token embedding: each token's
    row is seen too seldom and fits noise (on the real-text ladders' training folds, leaving it
    out is ahead learning from 1,500 prefixes and level learning from all: docs/results/
    predictor_cv.md). 0: the embedding however few the prefixes."""
    dropout: float = 0.0
    """Dropout on the MLP's hidden units during training."""
    num_models: int | None = field(default=None, metadata={"cli": False})
    """Number of small (input) models; set from the cache."""
    vocab_size: int | None = field(default=None, metadata={"cli": False})
    """Vocabulary size; set from the cache."""
    scales: list[float] | None = field(default=None, metadata={"cli": False})
    """Scale of each small model along its ladder (parameters, or training tokens), in the
    cache's order; set from the cache."""
    target_scale: float | None = field(default=None, metadata={"cli": False})
    """Scale of the target model; set from the cache."""
    num_heads: int = field(default=1, metadata={"cli": False})
    """Trained networks whose predictions are averaged (the members of a cross-fitted ensemble)."""

    def __post_init__(self) -> None:
        if self.hidden_size < 1:
            raise ValueError(f"--hidden-size must be at least 1, got {self.hidden_size}")
        if self.num_layers < 1:
            raise ValueError(f"--num-layers must be at least 1, got {self.num_layers}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"--activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.base not in BASES:
            raise ValueError(f"--base must be one of {', '.join(BASES)}, got {self.base!r}")
        if self.num_candidates < 0:
            raise ValueError(f"--num-candidates must be 0 (all) or more, got {self.num_candidates}")
        if self.max_correction < 0:
            raise ValueError(f"--max-correction must be 0 or more, got {self.max_correction}")
        unknown = sorted(set(self.feature_groups) - set(FEATURE_GROUPS))
        if unknown:
            removed = ", ".join(g for g in unknown if g in REMOVED_FEATURE_GROUPS)
            why = f" ({removed}: measured, did not earn its place, removed)" if removed else ""
            raise ValueError(
                f"--features takes {','.join(FEATURE_GROUPS)} or nothing, got "
                f"{', '.join(unknown)}{why}"
            )
        if self.token_embedding < 0:
            raise ValueError(f"--token-embedding must be 0 or more, got {self.token_embedding}")
        if self.embedding_min_prefixes < 0:
            raise ValueError(
                f"--embedding-min-prefixes must be 0 or more, got {self.embedding_min_prefixes}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be at least 1, got {self.num_heads}")
        if self.scales is not None:
            self.scales = [float(p) for p in self.scales]
            if self.num_models is None:
                self.num_models = len(self.scales)
            if len(self.scales) != self.num_models:
                raise ValueError(f"{len(self.scales)} scales for {self.num_models} models")
            if not self.scales or min(self.scales) <= 0:
                raise ValueError(
                    f"need at least one small model with a positive scale, got {self.scales}"
                )

    def require_data_fields(self) -> None:
        names = ("num_models", "vocab_size", "scales", "target_scale")
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"PredictorConfig needs {', '.join(missing)}: take them from the cache"
            )

    def for_training(self, train_prefixes: int) -> PredictorConfig:
        """These settings for a network that learns from `train_prefixes` prefixes: without the
        token embedding below `embedding_min_prefixes`."""
        if self.token_embedding and train_prefixes < self.embedding_min_prefixes:
            return replace(self, token_embedding=0)
        return self

    def computes(self) -> dict:
        """The settings that make what a trained network computes (`embedding_min_prefixes` has
        done its work once `for_training` has applied it): for the keys of finished runs."""
        settings = dict(self.__dict__)
        del settings["embedding_min_prefixes"]
        return settings

    def candidates_for(self, vocab_size: int) -> int:
        k = self.num_candidates
        return vocab_size if k == 0 else min(k, vocab_size)

    @property
    def feature_groups(self) -> tuple[str, ...]:
        return tuple(g for g in (s.strip() for s in self.features.split(",")) if g)

    def uses(self, group: str) -> bool:
        return group in self.feature_groups

    @property
    def num_guides(self) -> int:
        """Log-distributions the base weighs: each small model's, then the mean's."""
        return self.num_models + 1

    @property
    def num_context_features(self) -> int:
        # top log-prob, top-2 margin, collision entropy: per model and of the mean
        return 3 * self.num_guides if self.uses("context") else 0

    @property
    def num_token_features(self) -> int:
        """Per-candidate features the MLP reads, the per-head base and identity included."""
        n = 3 + 3  # the mean's log-prob, gap and rank; the base's
        if self.uses("models"):
            n += 2 * self.num_models  # each model's log-prob and gap
        return n + self.num_context_features + self.token_embedding


def extrapolation_weights(
    scales: list[float], target_scale: float
) -> tuple[list[float], list[float]]:
    """Per-model weights (slope, extrap): for a token's log-probs x over the small models,
    sum(slope * x) is the least-squares slope of x against log scale and sum(extrap * x) is that
    line evaluated at the target's log scale. One model, or models of one scale, have no slope:
    the mean of their values is the line.
    """
    logn = [math.log(p) for p in scales]
    mean = sum(logn) / len(logn)
    centered = [v - mean for v in logn]
    denom = sum(c * c for c in centered)
    if denom == 0:
        return [0.0] * len(logn), [1.0 / len(logn)] * len(logn)
    slope = [c / denom for c in centered]
    offset = math.log(target_scale) - mean
    extrap = [1.0 / len(logn) + s * offset for s in slope]
    return slope, extrap


def base_weights(config: PredictorConfig) -> list[float]:
    """Fixed weights of the guides (each small model's log-prob, then the log mean-prob) that make
    `config.base`; the gated base starts at the mean's and learns per-prefix changes."""
    m = config.num_models
    if config.base == "largest":
        largest = max(range(m), key=lambda i: config.scales[i])
        return [1.0 if i == largest else 0.0 for i in range(m)] + [0.0]
    if config.base == "extrapolate":
        return [*extrapolation_weights(config.scales, config.target_scale)[1], 0.0]
    return [0.0] * m + [1.0]


def candidate_ids(log_mean: torch.Tensor, model_tops: torch.Tensor, k: int) -> torch.Tensor:
    """The k tokens (B, k) the MLP corrects: every small model's top token (B, M), so that the
    guess can follow any one model, then the most probable under the mean (B, V); ordered by the
    mean, most probable first. With k below the number of distinct tops, the mean's favourites
    among them."""
    key = log_mean.scatter(1, model_tops, math.inf)  # a copy: the tops outrank every other token
    ids = key.topk(k, dim=1).indices
    order = log_mean.gather(1, ids).argsort(dim=1, descending=True, stable=True)
    return ids.gather(1, order)


def distribution_stats(logp: torch.Tensor) -> torch.Tensor:
    """Log-probs (..., K) of a distribution's most probable tokens -> (..., 3): top log-prob,
    top-2 margin and collision entropy (of those tokens: the rest adds little to sum p**2),
    scaled to O(1)."""
    top2 = logp.topk(min(2, logp.shape[-1]), dim=-1).values
    collision = -torch.logsumexp(2 * logp, dim=-1)  # -log sum p**2
    return torch.stack(
        [-top2[..., 0] / _LOGPROB_SCALE, (top2[..., 0] - top2[..., -1]) / 4, collision / 4], dim=-1
    )


class Features(NamedTuple):
    """What every head reads: nothing here depends on learned weights."""

    log_mean: torch.Tensor  # (B, V) log of their mean probability, floored
    candidates: torch.Tensor  # (B, K) token ids (`candidate_ids`), by the mean, most probable first
    candidate_guides: torch.Tensor  # (B, G, K) the guides (models, then the mean) at candidates
    tokens: torch.Tensor  # (B, K, F) per-candidate features (context appended)
    context: torch.Tensor  # (B, C) per-prefix context (C = 0 without the context group)


class HeadOutputs(NamedTuple):
    """What one head adds to the shared features; `PerTokenPredictor.combine` spreads it over
    the vocabulary."""

    guide_weights: torch.Tensor  # (B, G) weights of the guides in the base
    tails: torch.Tensor  # (B, 1) offset of every non-candidate token's logit
    candidates: torch.Tensor  # (B, K) the candidates' logits


def _mlp(width: int, hidden: int, layers: int, activation: str, dropout: float) -> nn.Sequential:
    act = _ACTIVATIONS[activation]
    modules: list[nn.Module] = []
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), act(), nn.Dropout(dropout)]
        width = hidden
    return nn.Sequential(*modules)


class ZeroLinear(nn.Module):
    """A linear map that starts at zero (so a new head adds nothing); with no inputs, a learned
    constant."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class TokenHead(nn.Module):
    """One trained network: the guide weighting, the per-token MLP and the tail offsets."""

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        self.max_correction = config.max_correction
        context = config.num_context_features
        g = config.num_guides
        self.register_buffer("base_weights", torch.tensor(base_weights(config)), persistent=False)
        self.gate = None
        if config.base == "gated":
            # per-prefix changes to the mean's weights; a constant change without context
            hidden = _mlp(context, config.hidden_size, 1, config.activation, 0.0) if context else []
            self.gate = nn.Sequential(*hidden, ZeroLinear(config.hidden_size if context else 0, g))
        self.embedding = (
            nn.Embedding(config.vocab_size, config.token_embedding)
            if config.token_embedding
            else None
        )
        self.mlp = _mlp(
            config.num_token_features,
            config.hidden_size,
            config.num_layers,
            config.activation,
            config.dropout,
        )
        self.token_out = ZeroLinear(config.hidden_size, 1)  # the logit's correction
        # Weights of the predicted distribution's mixture: each small model's distribution,
        # their mean; fitted after training (`fit_mixture`).
        self.register_buffer("mixture", default_mixture(config.num_models))
        self.tail_out = ZeroLinear(context, 1)  # per-prefix offset of every other token
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, std=0.01)

    def guide_weights(self, context: torch.Tensor) -> torch.Tensor:
        """Per-prefix context (B, C) -> weights of the guides (B, G)."""
        weights = self.base_weights.expand(context.shape[0], -1)
        if self.gate is None:
            return weights
        return weights + self.gate(context)

    def forward(self, features: Features) -> HeadOutputs:
        """Shared features -> this head's guide weights, tail offsets and candidate scores."""
        cand = features.candidates
        weights = self.guide_weights(features.context)  # (B, G)
        cand_base = torch.einsum("bg,bgk->bk", weights, features.candidate_guides)  # (B, K)
        per_token = [features.tokens, logprob_features(cand_base.unsqueeze(1))]
        if self.embedding is not None:
            per_token.append(self.embedding(cand))  # (B, K, E)
        correction = self.token_out(self.mlp(torch.cat(per_token, dim=2))).squeeze(2)  # (B, K)
        c = self.max_correction
        if c > 0:
            correction = c * torch.tanh(correction / c)
        return HeadOutputs(weights, self.tail_out(features.context), cand_base + correction)


def default_mixture(num_models: int) -> torch.Tensor:
    """Mixture weights (each small model, their mean) of the mean alone."""
    weights = torch.zeros(num_models + 1)
    weights[-1] = 1.0
    return weights


def renormalised(p: torch.Tensor) -> torch.Tensor:
    """Floored probabilities (B, M, V) -> each model's distribution again (the floor adds a
    little mass)."""
    return p / p.sum(dim=2, keepdim=True)


def mixture_components(logprobs: torch.Tensor) -> torch.Tensor:
    """The small models' floored log-probs (B, M, V) -> the mixture's components as
    probabilities (B, M + 1, V): each model (`renormalised`), their mean."""
    p = renormalised(logprobs.exp())
    return torch.cat([p, p.mean(dim=1, keepdim=True)], dim=1)


def fit_mixture(
    components: torch.Tensor, target: torch.Tensor, iterations: int = 100
) -> torch.Tensor:
    """Mixture weights w (J,) on the simplex minimising the mean KL(target || sum_j w_j c_j) over
    the rows of `components` (N, J, V) and the target's probabilities (N, V): EM from uniform
    weights, whose updates never increase the KL (the problem is convex in w)."""
    n, j, _ = components.shape
    weights = torch.full((j,), 1.0 / j, dtype=components.dtype)
    for _ in range(iterations):
        mix = torch.einsum("j,njv->nv", weights, components).clamp_min(1e-30)
        # each component's expected share of the target's mass
        share = torch.einsum("nv,njv->j", target / mix, components) * weights / n
        weights = share / share.sum()
    return weights


def make_mode(distribution: torch.Tensor, guess: torch.Tensor) -> torch.Tensor:
    """Normalised log-distribution (B, V) whose mode is `guess` (B,): where another token's logit
    is as large, the guess's is raised to just above it; elsewhere nothing changes."""
    top2 = distribution.topk(min(2, distribution.shape[1]), dim=1).values  # (B, 2)
    at_guess = distribution.gather(1, guess[:, None])  # (B, 1)
    is_top = distribution.argmax(dim=1, keepdim=True) == guess[:, None]
    best_other = torch.where(is_top, top2[:, -1:], top2[:, :1])
    raised = torch.maximum(at_guess, best_other + _MODE_MARGIN)
    raised = torch.where(is_top & (at_guess > best_other), at_guess, raised)
    return F.log_softmax(distribution.scatter(1, guess[:, None], raised), dim=1)


def descending_rank(values: torch.Tensor) -> torch.Tensor:
    """Each value's rank along the last dimension, 0 for the largest (ties by position)."""
    order = values.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(values.shape[-1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ranks)


def logprob_features(logp: torch.Tensor, rank: bool = True) -> torch.Tensor:
    """Log-scores of the candidates under some guides (B, G, K) -> each candidate's value, gap to
    the guide's top candidate and (`rank`) rank among the candidates, per guide (B, K, 3G; 2G
    without the rank)."""
    parts = [logp / _LOGPROB_SCALE, (logp - logp.amax(dim=2, keepdim=True)) / _LOGPROB_SCALE]
    if rank:
        parts.append(torch.log1p(descending_rank(logp).to(logp.dtype)) / 4)
    return torch.stack(parts, dim=3).transpose(1, 2).flatten(2)  # (B, G, K, F) -> (B, K, F * G)


def mean_features(log_mean: torch.Tensor) -> torch.Tensor:
    """The candidates' log mean-prob (B, K), most probable first -> its value, gap to the top
    candidate's and rank among the candidates (B, K, 3)."""
    rank = torch.arange(log_mean.shape[1], device=log_mean.device, dtype=log_mean.dtype)
    return torch.stack(
        [
            log_mean / _LOGPROB_SCALE,
            (log_mean - log_mean[:, :1]) / _LOGPROB_SCALE,
            torch.log1p(rank).expand_as(log_mean) / 4,
        ],
        dim=2,
    )


class PerTokenPredictor(nn.Module):
    """forward(logprobs (B, M, V)) -> logits (B, V) that rank the tokens; `log_probs` gives the
    predicted log-distribution of the target. The same MLP scores every candidate token.

    With several heads (an ensemble), the logits are the mean of the heads' log-probabilities and
    the mixture's weights the mean of theirs."""

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        config.require_data_fields()
        self.config = config
        self.heads = nn.ModuleList(TokenHead(config) for _ in range(config.num_heads))

    @classmethod
    def ensemble(cls, members: list[PerTokenPredictor]) -> PerTokenPredictor:
        """One predictor whose heads are those of `members` (trained with one config)."""
        config = members[0].config
        merged = cls(
            PredictorConfig(**{**config.__dict__, "num_heads": sum(len(m.heads) for m in members)})
        )
        heads = [h for m in members for h in m.heads]
        for target, source in zip(merged.heads, heads, strict=True):
            target.load_state_dict(source.state_dict())
        return merged

    def member(self, index: int) -> PerTokenPredictor:
        """A one-head predictor sharing head `index`'s weights (e.g. a fold's network)."""
        single = PerTokenPredictor(PredictorConfig(**{**self.config.__dict__, "num_heads": 1}))
        single.heads[0] = self.heads[index]
        return single.to(self.device).train(self.training)

    @property
    def device(self) -> torch.device:
        """Where the weights are (every head's are on one device)."""
        return self.heads[0].token_out.weight.device

    def check_inputs(self, inputs: torch.Tensor) -> None:
        m, v = self.config.num_models, self.config.vocab_size
        if inputs.ndim != 3 or inputs.shape[1] != m or inputs.shape[2] != v:
            raise ValueError(
                f"predictor was trained on {m} small models and a vocabulary of {v}, got inputs of "
                f"shape {tuple(inputs.shape)}: use a checkpoint trained on this suite"
            )

    def forward(self, logprobs: torch.Tensor) -> torch.Tensor:
        """(B, M, V) log-probs (floored at log(2**-24) here) -> (B, V) logits that rank the
        tokens (argmax: the guess)."""
        self.check_inputs(logprobs)
        x = floor_logprobs(logprobs)
        return self.combine(self.features(x.exp(), lambda idx: x.gather(2, idx)))

    def forward_probs(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, M, V) probabilities, e.g. the challenge's float16 -> (B, V) logits, as
        `forward(log(probs))` but with logs of the candidates only; `probs` is left as it was."""
        self.check_inputs(probs)
        p = probs.to(torch.float32, copy=True).clamp_min_(PROB_FLOOR)  # the copy is floored
        return self.combine(
            self.features(p, lambda idx: floor_logprobs(torch.log(p.gather(2, idx))))
        )

    def combine(self, features: Features) -> torch.Tensor:
        """Every head on the shared features, spread over the vocabulary: logits (B, V). An
        ensemble's are the mean of its heads' (a normalised geometric mean of their
        distributions); only the candidates differ by head, every other token is the log
        mean-prob plus the mean of the heads' offsets."""
        heads = [head(features) for head in self.heads]
        tails = torch.stack([h.tails for h in heads]).mean(dim=0)  # (B, 1)
        scores = torch.stack([h.candidates for h in heads]).mean(dim=0)  # (B, K)
        return (features.log_mean + tails).scatter_(1, features.candidates, scores)

    def features(self, p: torch.Tensor, candidate_logprobs) -> Features:
        """Floored probabilities p (B, M, V) and a gather of their log-probs at (B, M, K) ids ->
        Features. Only the mean, its top-K and each model's top token read the whole vocabulary;
        everything else reads the candidates."""
        b, m, v = p.shape
        k = self.config.candidates_for(v)
        log_mean = floor_logprobs(torch.log(p.mean(dim=1)))  # (B, M, V) -> (B, V)
        cand = candidate_ids(log_mean, p.argmax(dim=2), k)  # (B, K), most probable first
        cand_log_mean = log_mean.gather(1, cand)
        xc = candidate_logprobs(cand.unsqueeze(1).expand(b, m, k))  # (B, M, K)
        context = p.new_zeros(b, 0)
        if self.config.uses("context"):
            stats = distribution_stats(torch.cat([xc, cand_log_mean.unsqueeze(1)], dim=1))
            context = stats.flatten(1)  # (B, G, 3) -> (B, C)
        tokens = [mean_features(cand_log_mean), context.unsqueeze(1).expand(b, k, -1)]
        if self.config.uses("models"):
            tokens.append(logprob_features(xc, rank=False))  # (B, K, 2M)
        tokens = torch.cat(tokens, dim=2)
        guides = torch.cat([xc, cand_log_mean.unsqueeze(1)], dim=1)  # (B, G, K)
        return Features(log_mean, cand, guides, tokens, context)

    @property
    def mixture(self) -> torch.Tensor:
        """Weights of the predicted distribution's mixture (each small model, their mean): the
        mean of the heads'."""
        return torch.stack([head.mixture for head in self.heads]).mean(dim=0)

    def mixture_log_probs(self, p: torch.Tensor) -> torch.Tensor:
        """Floored probabilities (B, M, V) -> the log of the mixture of the small models'
        distributions and their mean (B, V), before any guess is made its mode."""
        # the mean's weight spread over the models it averages: no (B, M + 1, V) components
        w = self.mixture
        mixed = torch.einsum("m,bmv->bv", w[:-1] + w[-1] / (len(w) - 1), renormalised(p))
        return torch.log(mixed.clamp_min(1e-30))

    def predicted_log_probs(
        self, logprobs: torch.Tensor, guess: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, M, V) log-probs -> the predicted log-distribution of the target (B, V): the mixture
        of the small models' distributions and their mean, with `guess` (B,) made its mode;
        default: the network's guess (argmax of the logits)."""
        self.check_inputs(logprobs)
        x = floor_logprobs(logprobs)
        p = x.exp()  # one pass for the logits' features and the mixture
        if guess is None:
            guess = self.combine(self.features(p, lambda idx: x.gather(2, idx))).argmax(dim=1)
        return make_mode(self.mixture_log_probs(p), guess.to(p.device))

    @torch.no_grad()
    def log_probs(
        self, logprobs: torch.Tensor, chunk_rows: int = 16, guess: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`predicted_log_probs` of log-probs (N, M, V), a few rows at a time; the input is
        checked first (`logprobs.check_rows`); `guess` (N,) replaces the network's own as the
        distribution's mode."""
        check_rows(logprobs, log=True, name="logprobs")
        if guess is None:
            return self._chunked(self.predicted_log_probs, logprobs, chunk_rows)
        return self._chunked(
            self.predicted_log_probs, logprobs, chunk_rows, lambda rows: guess[rows]
        )

    @torch.no_grad()
    def log_probs_from_probs(self, probs: torch.Tensor, chunk_rows: int = 16) -> torch.Tensor:
        """`log_probs` from probabilities (N, M, V), e.g. the challenge's float16; the input is
        checked first (`logprobs.check_rows`)."""
        check_rows(probs, log=False, name="probs")
        return self._chunked(
            lambda p: self.predicted_log_probs(probs_to_logprobs(p)), probs, chunk_rows
        )

    def _chunked(self, fn, inputs: torch.Tensor, chunk_rows: int, extra=None) -> torch.Tensor:
        """fn over (rows of) `inputs`, `chunk_rows` at a time on the network's device; with
        `extra`, fn(rows, extra(slice of those rows))."""
        self.check_inputs(inputs)
        device = self.device
        out = torch.empty(inputs.shape[0], inputs.shape[2], dtype=torch.float32)
        for start in range(0, inputs.shape[0], chunk_rows):
            at = slice(start, start + chunk_rows)
            rows = inputs[at].to(device)
            out[at] = (fn(rows) if extra is None else fn(rows, extra(at))).cpu()
        return out
