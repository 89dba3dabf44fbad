"""The per-token predictor: small models' next-token distributions in, the target's out.

Every token is scored by the same small MLP from that token's trajectory across the small
models (its log-prob under each, with the models' sizes known through the log-linear
extrapolation of that trajectory to the target's size and its slope) and from per-prefix
context that one trajectory lacks (each model's top log-prob and collision entropy, the token's
gap to each model's top log-prob and its rank among the candidates). A softmax over the
vocabulary is the predicted distribution of the target model.

The network corrects the mean-probability baseline: a token's logit is the log of its mean
probability plus the MLP's correction, bounded to `max_correction` nats so that the network can
overturn the ensemble's close calls but not its confident ones (one small model's quirk then
cannot carry it away on text unlike its training data). The MLP's output layer starts at zero,
so an untrained network is the mean-probability baseline.

Only the `num_candidates` most probable tokens under the mean go through the MLP; every other
token keeps its log mean probability plus one per-prefix offset. The target's top token is a
candidate in practice (the evaluation reports how often), and scoring a [100, 6, 50277] batch
stays a few passes over the input on a CPU (an MLP over all 5M tokens takes seconds).

The features do not depend on learned weights, so several trained networks (`heads`, e.g. the
members of a cross-fitted ensemble) share them and cost little more than one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from emergence_model.cache import LOG_PROB_FLOOR, PROB_FLOOR

# Log-probs and gaps are divided by this so that features are O(1).
_LOGPROB_SCALE = 8.0

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


@dataclass
class PredictorConfig:
    """Shape and hyperparameters of `PerTokenPredictor`."""

    hidden_size: int = 32
    """Width of the shared per-token MLP."""
    num_layers: int = 1
    """Hidden layers of the per-token MLP."""
    activation: str = "silu"
    """Activation of the MLP: relu, silu or gelu."""
    num_candidates: int = 64
    """Tokens per prefix scored by the MLP: the most probable under the mean of the small models
    (0: every token, slow on a 50k vocabulary)."""
    max_correction: float = 1.0
    """Bound on the MLP's change to a token's log mean probability, in nats (c * tanh(raw / c));
    0: unbounded."""
    context: bool = True
    """Give the MLP per-prefix context (each model's top log-prob and collision entropy)."""
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
        if self.num_candidates < 0:
            raise ValueError(f"--num-candidates must be 0 (all) or more, got {self.num_candidates}")
        if self.max_correction < 0:
            raise ValueError(f"--max-correction must be 0 or more, got {self.max_correction}")
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
            if len(self.scales) > 1 and len(set(self.scales)) < 2:
                raise ValueError("small models all have the same scale: cannot extrapolate")

    def require_data_fields(self) -> None:
        names = ("num_models", "vocab_size", "scales", "target_scale")
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"PredictorConfig needs {', '.join(missing)}: take them from the cache"
            )

    def candidates_for(self, vocab_size: int) -> int:
        k = self.num_candidates
        return vocab_size if k == 0 else min(k, vocab_size)

    @property
    def num_token_features(self) -> int:
        # per model: log-prob, gap to its top, rank among candidates; then extrapolation, slope,
        # log mean prob, its gap to the mean's top, rank under the mean, share of models voting
        return 3 * self.num_models + 6

    @property
    def num_context_features(self) -> int:
        # per model: top log-prob, collision entropy; the same two of the mean distribution
        return 2 * self.num_models + 2 if self.context else 0


def floor_logprobs(logprobs: torch.Tensor) -> torch.Tensor:
    """Floor log-probs at log(2**-24) (-inf from log(0) lands there too), as float32: the
    challenge's float16 probabilities are zero below it, so a log-prob cache looks like them."""
    return logprobs.float().clamp_min(LOG_PROB_FLOOR)


def probs_to_logprobs(probs: torch.Tensor) -> torch.Tensor:
    """Challenge probabilities (float16 is fine) -> floored float32 log-probs."""
    return floor_logprobs(torch.log(probs.float()))


def extrapolation_weights(
    scales: list[float], target_scale: float
) -> tuple[list[float], list[float]]:
    """Per-model weights (slope, extrap): for a token's log-probs x over the small models,
    sum(slope * x) is the least-squares slope of x against log scale and sum(extrap * x) is that
    line evaluated at the target's log scale. One model has no slope: its own value is the line.
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


class Features(NamedTuple):
    """What every head reads: nothing here depends on learned weights."""

    log_mean: torch.Tensor  # (B, V) log of the small models' mean probability, floored
    candidates: torch.Tensor  # (B, K) token ids, most probable under the mean first
    tokens: torch.Tensor  # (B, K, F) per-candidate features (with the context appended)
    context: torch.Tensor | None  # (B, C) per-prefix context


class TokenHead(nn.Module):
    """One trained network: the per-token MLP and the per-prefix offset of non-candidates."""

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        act = _ACTIVATIONS[config.activation]
        layers: list[nn.Module] = []
        width = config.num_token_features + config.num_context_features
        for _ in range(config.num_layers):
            layers += [nn.Linear(width, config.hidden_size), act(), nn.Dropout(config.dropout)]
            width = config.hidden_size
        self.mlp = nn.Sequential(*layers)
        self.token_out = nn.Linear(width, 1)
        self.tail_out = nn.Linear(config.num_context_features, 1) if config.context else None
        self.max_correction = config.max_correction
        for module in (self.token_out, self.tail_out):
            if module is not None:
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: Features) -> torch.Tensor:
        """Features -> logits (B, V)."""
        correction = self.token_out(self.mlp(features.tokens)).squeeze(2)  # (B, K, F) -> (B, K)
        c = self.max_correction
        if c > 0:
            correction = c * torch.tanh(correction / c)
        logits = features.log_mean
        if self.tail_out is not None:
            logits = logits + self.tail_out(features.context)  # (B, V) + (B, 1)
        cand_log_mean = features.log_mean.gather(1, features.candidates)
        return logits.scatter(1, features.candidates, cand_log_mean + correction)


class PerTokenPredictor(nn.Module):
    """forward(logprobs (B, M, V)) -> logits (B, V); the same MLP scores every candidate token.

    With several heads (an ensemble), the logits are the mean of the heads' log-probabilities."""

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        config.require_data_fields()
        self.config = config
        slope, extrap = extrapolation_weights(config.scales, config.target_scale)
        self.register_buffer("slope_weights", torch.tensor(slope), persistent=False)
        self.register_buffer("extrap_weights", torch.tensor(extrap), persistent=False)
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
        return single.to(self.slope_weights.device).train(self.training)

    def check_inputs(self, inputs: torch.Tensor) -> None:
        m, v = self.config.num_models, self.config.vocab_size
        if inputs.ndim != 3 or inputs.shape[1] != m or inputs.shape[2] != v:
            raise ValueError(
                f"predictor was trained on {m} small models and a vocabulary of {v}, got inputs of "
                f"shape {tuple(inputs.shape)}: use a checkpoint trained on this suite"
            )

    def forward(self, logprobs: torch.Tensor) -> torch.Tensor:
        """(B, M, V) log-probs (floored at log(2**-24) here) -> (B, V) logits."""
        self.check_inputs(logprobs)
        x = floor_logprobs(logprobs)
        return self.combine(self.features(x.exp(), lambda idx: x.gather(2, idx)))

    def forward_probs(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, M, V) probabilities, e.g. the challenge's float16 -> (B, V) logits.

        Same result as `forward(log(probs))`, but takes logs of the candidates only."""
        self.check_inputs(probs)
        p = probs.float().clamp_min_(PROB_FLOOR)  # a copy, as forward's floor
        return self.combine(
            self.features(p, lambda idx: floor_logprobs(torch.log(p.gather(2, idx))))
        )

    def combine(self, features: Features) -> torch.Tensor:
        if len(self.heads) == 1:
            return self.heads[0](features)
        logprobs = [F.log_softmax(head(features), dim=-1) for head in self.heads]
        return torch.stack(logprobs).mean(dim=0)

    def features(self, p: torch.Tensor, candidate_logprobs) -> Features:
        """Probabilities p (B, M, V) and a gather of log-probs at (B, M, K) ids -> Features."""
        b, m, v = p.shape
        k = self.config.candidates_for(v)
        mean = p.mean(dim=1)  # (B, M, V) -> (B, V)
        log_mean = floor_logprobs(torch.log(mean))
        cand_log_mean, cand = log_mean.topk(k, dim=1)  # (B, K), sorted: most probable first
        x = candidate_logprobs(cand.unsqueeze(1).expand(b, m, k))  # (B, M, K)
        top = floor_logprobs(torch.log(p.amax(dim=2)))  # (B, M)
        tokens = self.token_features(x, top, cand_log_mean)  # (B, K, F)
        context = None
        if self.config.context:
            collision = -torch.log(torch.linalg.vector_norm(p, dim=2).square())  # (B, M)
            mean_collision = -torch.log(torch.linalg.vector_norm(mean, dim=1, keepdim=True) ** 2)
            context = torch.cat(
                [
                    -top / _LOGPROB_SCALE,
                    collision / 4,
                    -cand_log_mean[:, :1] / _LOGPROB_SCALE,
                    mean_collision / 4,
                ],
                dim=1,
            )  # (B, C)
            tokens = torch.cat([tokens, context.unsqueeze(1).expand(b, k, -1)], dim=2)
        return Features(log_mean, cand, tokens, context)

    def token_features(
        self, x: torch.Tensor, top: torch.Tensor, log_mean: torch.Tensor
    ) -> torch.Tensor:
        """Candidates' log-probs x (B, M, K), each model's top log-prob (B, M) and the candidates'
        log mean prob (B, K), most probable first -> features (B, K, F)."""
        k = x.shape[2]
        s = 1.0 / _LOGPROB_SCALE
        gap = (x - top.unsqueeze(2)).clamp_min(LOG_PROB_FLOOR)  # (B, M, K)
        # rank of each candidate among the candidates, under each model: (B, M, K, K) compares
        rank = (x.unsqueeze(2) > x.unsqueeze(3)).sum(dim=3).float()  # (B, M, K)
        slope = torch.einsum("m,bmk->bk", self.slope_weights, x)
        extrap = torch.einsum("m,bmk->bk", self.extrap_weights, x)
        votes = (rank == 0).float().mean(dim=1)  # (B, K)
        mean_rank = torch.arange(k, device=x.device, dtype=x.dtype).expand_as(log_mean)
        per_token = [
            extrap * s,
            slope,
            log_mean * s,
            (log_mean - log_mean[:, :1]) * s,
            torch.log1p(mean_rank) / 4,
            votes,
        ]
        return torch.cat(
            [
                (x * s).transpose(1, 2),
                (gap * s).transpose(1, 2),
                (torch.log1p(rank) / 4).transpose(1, 2),
                torch.stack(per_token, dim=2),
            ],
            dim=2,
        )

    @torch.no_grad()
    def log_probs(self, logprobs: torch.Tensor, chunk_rows: int = 16) -> torch.Tensor:
        """Predicted target log-distribution (N, V) from log-probs, a few rows at a time."""
        return self._chunked(self.forward, logprobs, chunk_rows)

    @torch.no_grad()
    def log_probs_from_probs(self, probs: torch.Tensor, chunk_rows: int = 16) -> torch.Tensor:
        """Predicted target log-distribution (N, V) from probabilities, a few rows at a time."""
        return self._chunked(self.forward_probs, probs, chunk_rows)

    def _chunked(self, fn, inputs: torch.Tensor, chunk_rows: int) -> torch.Tensor:
        self.check_inputs(inputs)
        device = self.slope_weights.device
        out = torch.empty(inputs.shape[0], inputs.shape[2], dtype=torch.float32)
        for start in range(0, inputs.shape[0], chunk_rows):
            rows = inputs[start : start + chunk_rows].to(device)
            out[start : start + chunk_rows] = F.log_softmax(fn(rows), dim=-1).cpu()
        return out
