import math

import pytest
import torch
import torch.nn.functional as F

from emergence_model.logprobs import floor_logprobs, probs_to_logprobs
from emergence_model.model import (
    PerTokenPredictor,
    PredictorConfig,
    candidate_ids,
    extrapolation_weights,
    fit_mixture,
    make_mode,
    mixture_components,
)

PARAMS = [1_000_000, 2_000_000, 4_000_000]


def make_predictor(vocab_size: int = 50, **kwargs) -> PerTokenPredictor:
    config = PredictorConfig(
        vocab_size=vocab_size, scales=PARAMS, target_scale=32_000_000, **kwargs
    )
    return PerTokenPredictor(config)


def random_logprobs(n: int = 4, m: int = 3, v: int = 50, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.log_softmax(3 * torch.randn(n, m, v, generator=generator), dim=-1)


def randomize(predictor: PerTokenPredictor) -> PerTokenPredictor:
    torch.manual_seed(0)
    for p in predictor.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return predictor.eval()


def test_extrapolation_weights_by_hand():
    # log sizes 0, 1, 2; target at 3: slope = (x2 - x0) / 2, line at 3 = mean + slope * 2
    slope, extrap = extrapolation_weights([1, math.e, math.e**2], math.e**3)
    assert slope == pytest.approx([-0.5, 0.0, 0.5])
    assert extrap == pytest.approx([1 / 3 - 1, 1 / 3, 1 / 3 + 1])


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"hidden_size": 0}, "--hidden-size"),
        ({"num_layers": 0}, "--num-layers"),
        ({"max_correction": -1}, "--max-correction"),
        ({"activation": "tanh"}, "--activation"),
        ({"num_candidates": -1}, "--num-candidates"),
        ({"dropout": 1.0}, "--dropout"),
        ({"base": "median"}, "--base"),
        ({"features": "context,colour"}, "--features"),
        ({"features": "trajectory,context"}, "--features takes context.*trajectory: measured"),
        ({"token_embedding": -1}, "--token-embedding"),
        ({"embedding_min_prefixes": -1}, "--embedding-min-prefixes"),
    ],
)
def test_config_names_the_flag_to_fix(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        PredictorConfig(**kwargs)


def test_config_checks_sizes():
    with pytest.raises(ValueError, match="3 scales for 2 models"):
        PredictorConfig(num_models=2, scales=PARAMS)
    with pytest.raises(ValueError, match="positive scale"):
        PredictorConfig(scales=[5, 0])
    with pytest.raises(ValueError, match="take them from the cache"):
        PerTokenPredictor(PredictorConfig())


def test_untrained_network_is_the_mean_probability_baseline():
    predictor = make_predictor(num_candidates=8).eval()
    x = random_logprobs()
    mean = torch.log(floor_logprobs(x).exp().mean(dim=1))
    assert torch.allclose(predictor.log_probs(x), torch.log_softmax(mean, dim=1), atol=1e-5)
    assert torch.allclose(predictor(x), mean, atol=1e-5)


@pytest.mark.parametrize("num_candidates", [0, 8, 1000])
def test_output_is_a_distribution_over_the_vocabulary(num_candidates):
    predictor = randomize(make_predictor(num_candidates=num_candidates))
    x = random_logprobs()
    logits = predictor(x)
    assert logits.shape == (4, 50) and torch.isfinite(logits).all()
    assert predictor.log_probs(x, chunk_rows=3).exp().sum(dim=1) == pytest.approx(torch.ones(4))


def test_the_distribution_s_mode_is_the_guess():
    predictor = randomize(make_predictor(num_candidates=8))
    x = random_logprobs(n=32)
    guess = predictor(x).argmax(dim=1)
    mean = torch.log(floor_logprobs(x).exp().mean(dim=1))
    assert not torch.equal(mean.argmax(dim=1), guess)  # the mixture's own mode differs...
    assert torch.equal(predictor.log_probs(x).argmax(dim=1), guess)  # ...the guess is the mode


def test_make_mode_changes_only_rows_whose_mode_is_not_the_guess():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    out = make_mode(logits, torch.tensor([1, 2]))
    assert torch.allclose(out[0], torch.log_softmax(logits[0], dim=0))
    assert out[1].argmax() == 2 and out[1, 2] > out[1, 0] and out[1, 2] - out[1, 0] < 0.01
    assert out[1, 0] - out[1, 1] == pytest.approx(3.0)  # the other tokens keep their ratios


def test_probability_inputs_match_log_probability_inputs():
    predictor = randomize(make_predictor(num_candidates=8))
    probs = random_logprobs().exp().half()
    probs[0, 0, :10] = 0  # float16 underflow: log(0) lands on the floor
    from_probs = predictor.log_probs_from_probs(probs)
    from_logprobs = predictor.log_probs(probs_to_logprobs(probs))
    assert torch.allclose(from_probs, from_logprobs, atol=1e-4)
    logits = predictor.forward_probs(probs)
    assert torch.allclose(logits, predictor(probs_to_logprobs(probs)), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_the_input_is_never_changed(dtype):
    predictor = randomize(make_predictor(num_candidates=8))
    probs = random_logprobs().exp().to(dtype)
    probs[0, 0, :10] = 0  # below the floor: a floor in place would change it
    before = probs.clone()
    predictor.forward_probs(probs)
    predictor.log_probs_from_probs(probs)
    assert torch.equal(probs, before)
    logprobs = probs_to_logprobs(probs).to(dtype)
    logprobs[0, 0, 0] = -math.inf
    before = logprobs.clone()
    predictor.log_probs(logprobs)
    predictor(logprobs)
    assert torch.equal(logprobs, before)


def test_same_weights_for_every_token_without_the_identity_embedding():
    # relabelling the vocabulary relabels the scores: no token has its own parameters
    predictor = randomize(make_predictor(num_candidates=0, token_embedding=0))
    x = random_logprobs()
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(predictor(x)[:, perm], predictor(x[:, :, perm]), atol=1e-5)


def test_gradients_reach_every_parameter():
    predictor = randomize(make_predictor(num_candidates=8)).train()
    loss = F.cross_entropy(predictor(random_logprobs()), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in predictor.parameters())


@pytest.mark.parametrize("shape", [(4, 2, 50), (4, 3, 49), (3, 50)])
def test_refuses_other_models_or_vocabulary(shape):
    predictor = make_predictor()
    with pytest.raises(ValueError, match="trained on 3 small models and a vocabulary of 50"):
        predictor(torch.zeros(shape))


@pytest.mark.parametrize(
    "scales",
    [[1_000_000], [1_000_000, 1_000_000], [3_000_000, 1_000_000, 2_000_000]],
    ids=["one model", "equal scales", "unordered"],
)
def test_any_number_of_small_models(scales):
    config = PredictorConfig(vocab_size=50, scales=scales, target_scale=8_000_000)
    predictor = randomize(PerTokenPredictor(config))
    x = random_logprobs(m=len(scales))
    assert torch.isfinite(predictor(x)).all()
    assert predictor.log_probs(x).exp().sum(dim=1) == pytest.approx(torch.ones(4))


@pytest.mark.parametrize("base", ["largest", "extrapolate"])
def test_untrained_fixed_bases_rank_candidates_as_their_baseline(base):
    predictor = make_predictor(num_candidates=0, base=base).eval()
    x = floor_logprobs(random_logprobs())
    slope, extrap = extrapolation_weights(PARAMS, 32_000_000)
    expected = x[:, 2] if base == "largest" else torch.einsum("m,bmv->bv", torch.tensor(extrap), x)
    assert torch.allclose(predictor(x), expected, atol=1e-5)


def test_the_gate_can_follow_the_largest_model():
    predictor = make_predictor(num_candidates=0).eval()
    # the gate's output is added to the mean's weights (0, 0, 0, 1): move them to the largest
    predictor.heads[0].gate[-1].bias.data = torch.tensor([0.0, 0.0, 1.0, -1.0])
    x = random_logprobs()
    assert torch.allclose(predictor(x), x[:, 2], atol=1e-5)


def test_candidates_hold_every_model_s_top_token_ordered_by_the_mean():
    log_mean = torch.log_softmax(torch.arange(10.0, 0.0, -1.0).expand(2, -1), dim=1)  # 0 first
    tops = torch.tensor([[9, 0, 7], [3, 3, 3]])
    cand = candidate_ids(log_mean, tops, 4)
    assert cand.tolist() == [[0, 1, 7, 9], [0, 1, 2, 3]]


def test_the_gate_can_follow_the_largest_model_where_the_mean_ranks_its_top_low():
    predictor = make_predictor(num_candidates=4).eval()
    predictor.heads[0].gate[-1].bias.data = torch.tensor([0.0, 0.0, 1.0, -1.0])
    x = 0.1 * random_logprobs(n=8)
    x[:, :2, :10] += 12.0  # the two smaller models spread over tokens 0-9 ...
    x[:, 2, 40] += 1.0  # ... the largest is flat but for a lead of token 40
    x = torch.log_softmax(x, dim=-1)
    assert (torch.logsumexp(x, dim=1).topk(4, dim=1).indices != 40).all()  # not the mean's top 4
    assert torch.allclose(predictor(x)[:, 40], x[:, 2, 40], atol=1e-5)  # scored as a candidate
    predictor.heads[0].tail_out.bias.data[0] = -10.0  # and every non-candidate pushed down
    assert (predictor(x).argmax(dim=1) == 40).all()


def test_corrections_are_bounded():
    predictor = randomize(make_predictor(num_candidates=0, max_correction=0.5, base="mean"))
    for p in predictor.heads[0].token_out.parameters():
        p.data.mul_(100)  # a huge raw correction
    torch.nn.init.zeros_(predictor.heads[0].tail_out.weight)
    torch.nn.init.zeros_(predictor.heads[0].tail_out.bias)
    x = random_logprobs()
    log_mean = torch.log(floor_logprobs(x).exp().mean(dim=1))
    assert (predictor(x) - log_mean).abs().max() <= 0.5 + 1e-5


@pytest.mark.parametrize("features", ["", "context"])
def test_each_feature_group_can_be_left_out(features):
    predictor = randomize(make_predictor(num_candidates=8, features=features, token_embedding=0))
    x = random_logprobs()
    assert torch.isfinite(predictor(x)).all()
    assert predictor.heads[0].mlp[0].in_features == predictor.config.num_token_features


def test_an_ensemble_averages_its_members_log_probabilities():
    members = [randomize(make_predictor(num_candidates=8)) for _ in range(3)]
    for i, member in enumerate(members):
        torch.manual_seed(i)
        for p in member.parameters():
            p.data.normal_(0, 0.3)
    ensemble = PerTokenPredictor.ensemble(members).eval()
    assert ensemble.config.num_heads == 3 and members[0].config.num_heads == 1
    x = random_logprobs()
    each = torch.stack([torch.log_softmax(m(x), dim=-1) for m in members])
    expected = torch.log_softmax(each.mean(0), dim=-1)  # a normalised geometric mean
    assert torch.allclose(torch.log_softmax(ensemble(x), -1), expected, atol=1e-5)
    assert torch.allclose(ensemble.member(1)(x), members[1](x), atol=1e-6)
    probs = x.exp().half()
    assert torch.allclose(
        ensemble.log_probs_from_probs(probs),
        ensemble.log_probs(torch.log(probs.float())),
        atol=1e-4,
    )


def mean_kl(target: torch.Tensor, q: torch.Tensor) -> float:
    return (target * (target.log() - q.log())).sum(dim=1).mean().item()


def test_fit_mixture_recovers_the_weights_of_a_mixture_and_never_does_worse():
    generator = torch.Generator().manual_seed(0)
    components = torch.softmax(2 * torch.randn(200, 4, 30, generator=generator), dim=-1)
    true = torch.tensor([0.5, 0.3, 0.2, 0.0])
    target = torch.einsum("j,njv->nv", true, components)
    weights = fit_mixture(components, target, iterations=300)
    assert weights.sum().item() == pytest.approx(1.0) and (weights >= 0).all()
    assert weights.tolist() == pytest.approx(true.tolist(), abs=0.02)
    # on a target that no mixture makes, the fit beats every component and the uniform weights
    other = torch.softmax(2 * torch.randn(200, 30, generator=generator), dim=-1)
    other = 0.5 * other + 0.5 * components[:, 1]
    fitted = fit_mixture(components, other)
    best = mean_kl(other, torch.einsum("j,njv->nv", fitted, components))
    for j in range(4):
        assert best <= mean_kl(other, components[:, j]) + 1e-6
    assert best <= mean_kl(other, components.mean(dim=1)) + 1e-6


def test_log_probs_mix_the_small_models_and_keep_the_guess():
    predictor = randomize(make_predictor())
    x = random_logprobs()
    alone = predictor.log_probs(x)  # the mean alone, its mode the guess
    p = floor_logprobs(x).exp()
    p = p / p.sum(dim=2, keepdim=True)
    guess = predictor(x).argmax(dim=1)
    torch.testing.assert_close(alone, make_mode(torch.log(p.mean(dim=1)), guess))
    weights = torch.tensor([0.1, 0.2, 0.4, 0.3])  # three models, their mean
    predictor.heads[0].mixture.copy_(weights)
    mixed = predictor.log_probs(x)
    components = mixture_components(floor_logprobs(x))
    expected = torch.einsum("j,bjv->bv", weights, components).log()
    torch.testing.assert_close(mixed, make_mode(expected, guess))
    assert torch.equal(mixed.argmax(dim=1), guess) and torch.equal(alone.argmax(dim=1), guess)
    assert mixed.exp().sum(dim=1) == pytest.approx(torch.ones(4))
    assert not torch.allclose(mixed, alone)


def test_the_token_embedding_is_left_out_below_its_number_of_prefixes():
    config = PredictorConfig(token_embedding=8, embedding_min_prefixes=100)
    assert config.for_training(99).token_embedding == 0
    assert config.for_training(100) is config
    assert PredictorConfig(token_embedding=8, embedding_min_prefixes=0).for_training(1) == (
        PredictorConfig(token_embedding=8, embedding_min_prefixes=0)
    )
    # what a trained network computes does not depend on the rule once it has been applied
    assert "embedding_min_prefixes" not in config.computes()
    assert config.computes() == PredictorConfig(token_embedding=8).computes()
