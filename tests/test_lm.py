import pytest
import torch

from emergence_model.lm import (
    LOGIT_ROW_MULTIPLE,
    count_parameters,
    count_parameters_from_config,
    gpt_neox_config,
    input_device,
    logit_rows,
)


def test_logit_rows_round_up_as_pythias_or_take_extra_rows():
    assert LOGIT_ROW_MULTIPLE == 128
    assert logit_rows(50277) == 50304  # Pythia's vocabulary and logit rows
    assert logit_rows(300) == 384 and logit_rows(384) == 384 and logit_rows(1) == 128
    assert logit_rows(320, 29) == 349 and logit_rows(320, 0) == 320
    with pytest.raises(ValueError, match="at least 0"):
        logit_rows(320, -1)


def test_config_is_pythia_shaped():
    config = gpt_neox_config(
        hidden_size=16, num_layers=2, num_heads=2, vocab_size=300, eos_token_id=0, pad_token_id=1
    )
    assert config.vocab_size == 384 and config.intermediate_size == 64
    assert config.rope_parameters["partial_rotary_factor"] == 0.25
    assert not config.tie_word_embeddings and config.use_parallel_residual
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 0, 1)
    assert config.max_position_embeddings == 2048 and config.initializer_range == 0.02
    small = gpt_neox_config(
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        vocab_size=300,
        extra_logit_rows=5,
        context_length=128,
        initializer_range=0.3,
    )
    assert small.vocab_size == 305 and small.max_position_embeddings == 128
    assert small.initializer_range == 0.3


def test_parameter_count_of_a_tiny_model_by_hand():
    from transformers import GPTNeoXForCausalLM

    h, layers, rows = 16, 2, 384
    config = gpt_neox_config(hidden_size=h, num_layers=layers, num_heads=2, vocab_size=300)
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(config)
    per_layer = (
        2 * 2 * h  # two layer norms, weight and bias
        + (h * 3 * h + 3 * h)  # query, key and value
        + (h * h + h)  # attention output
        + (h * 4 * h + 4 * h)  # MLP in
        + (4 * h * h + h)  # MLP out
    )
    # Input and output embeddings (untied), the layers, the final layer norm.
    expected = rows * h + rows * h + layers * per_layer + 2 * h
    assert count_parameters(model) == expected == 18_880


def test_param_counts_from_config_match_the_loaded_model(tiny_suite):
    assert count_parameters_from_config(tiny_suite.model_ids[0]) == tiny_suite.param_counts[0]


def test_a_model_s_inputs_go_to_the_first_device_of_its_map():
    model = torch.nn.Linear(2, 2)
    assert input_device(model, "cpu") == "cpu"
    model.hf_device_map = {"embed_in": "disk", "layers.0": 1, "embed_out": "cpu"}
    assert input_device(model, "cpu") == "cuda:1"
    model.hf_device_map = {"": "cpu"}
    assert input_device(model, "cuda") == "cpu"
