"""The study's measured costs and its scoring of task answers, on the tiny GPT-NeoX suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from emergence_model.lm import load_model
from emergence_model.strategies import MeanProbability, ModelSubset, OneModel
from emergence_model.study.answers import (
    answer_token_ids,
    control_prompts,
    passage_and_head,
    score_answers,
)
from emergence_model.study.costs import (
    COST_BATCHES,
    decode_step,
    headline_cost,
    interleaved_medians,
    measure_costs,
    models_used,
    torch_threads,
)


def test_each_draft_costs_the_steps_of_the_models_it_runs(tiny_cache):
    drafts = {
        "mean-prob": MeanProbability(),
        "model:first": OneModel(0),
        "network:1-smallest": ModelSubset(MeanProbability(), [0]),
    }
    before = torch.get_num_threads()
    costs = measure_costs(tiny_cache, drafts, threads=1, log=lambda _: None)
    assert torch.get_num_threads() == before  # the timing's thread count is put back
    assert costs["threads"] == 1 and costs["batches"] == list(COST_BATCHES)
    steps = costs["models"]
    assert list(steps) == tiny_cache.model_names
    assert all(s > 0 for model in steps.values() for s in model.values())
    target = steps[tiny_cache.model_names[-1]]
    for name, used in (("mean-prob", [0, 1, 2]), ("model:first", [0]),
                       ("network:1-smallest", [0])):  # fmt: skip
        entry = costs["drafts"][name]
        assert entry["models"] == used
        for b in map(str, COST_BATCHES):
            runs = sum(steps[tiny_cache.model_names[i]][b] for i in used)
            assert entry["cost"][b] == pytest.approx((runs + entry["combine"][b]) / target[b])
    assert costs["drafts"]["model:first"]["cost"]["1"] < costs["drafts"]["mean-prob"]["cost"]["1"]
    assert costs["catch_up_token"] >= 0
    assert models_used(MeanProbability(), 3) == [0, 1, 2]


def test_a_timed_step_is_one_token_after_the_same_context(tiny_suite):
    model = load_model(tiny_suite.model_ids[0])
    with torch_threads(1):
        assert torch.get_num_threads() == 1
        step = decode_step(model, tiny_suite.vocab_size, batch=2, new_tokens=3)
        calls = []
        seconds = interleaved_medians({"step": step, "count": lambda: calls.append(1)}, 2, 3)
    assert 0 < seconds["step"] < 1 and len(calls) == 1 + 2 * 3  # warm-up, then 2 rounds of 3


def test_the_headline_cost_is_given_then_measured_then_parameters():
    assert headline_cost({"parameters": 0.1, "measured, batch 1": 0.3}) == (
        "measured, batch 1", 0.3,
    )  # fmt: skip
    assert headline_cost({"parameters": 0.1, "given": 0.2}) == ("given", 0.2)
    assert headline_cost({"parameters": 0.1}) == ("parameters", 0.1)


def test_answers_are_scored_token_by_token(tiny_suite):
    tokenizer = AutoTokenizer.from_pretrained(tiny_suite.tokenizer_dir)
    prefixes, expected = ["The ship sailed", "Blue"], [" north far", " road"]
    prompts, answers = answer_token_ids(tokenizer, prefixes, expected)
    whole = tokenizer(prefixes[0] + expected[0])["input_ids"]
    assert prompts[0] + answers[0] == whole and len(answers[0]) >= 2
    model = load_model(tiny_suite.model_ids[-1])
    logprob, exact = score_answers(model, prompts, answers, tiny_suite.vocab_size)
    for i in range(2):  # by hand: one forward pass over prompt + answer
        ids = torch.tensor([prompts[i] + answers[i]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :, : tiny_suite.vocab_size]
        rows = torch.log_softmax(logits[len(prompts[i]) - 1 : -1], dim=-1)
        tokens = torch.tensor(answers[i])
        assert logprob[i] == pytest.approx(float(rows.gather(1, tokens[:, None]).sum()), abs=1e-4)
        assert exact[i] == bool((rows.argmax(dim=-1) == tokens).all())
    # the model's own greedy continuation is an exact match
    greedy = int(rows.argmax(dim=-1)[0])
    _, own = score_answers(model, [prompts[1]], [[greedy]], tiny_suite.vocab_size)
    assert own.tolist() == [True]


def test_copy_controls_borrow_another_prompts_passage():
    prompts = ["a b c d e a b", "f g h i j f g", "k l m n o k l", "not an induction prompt"]
    expected = [" c", " h", " m", " x"]
    assert passage_and_head(prompts[0], expected[0]) == ("a b c d e", "a b")
    assert passage_and_head(prompts[3], expected[3]) is None
    controls = control_prompts(prompts, expected, seed=0)
    assert controls[3] is None
    for prompt, control in zip(prompts[:3], controls[:3], strict=True):
        passage, head = passage_and_head(prompt, expected[prompts.index(prompt)])
        assert control.endswith(" " + head) and not control.startswith(passage)
    assert control_prompts(prompts[:1], expected[:1], seed=0) == [None]
    assert np.all([c is None for c in control_prompts(prompts[3:], expected[3:], seed=0)])
