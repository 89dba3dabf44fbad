"""Hub revisions (Pythia's training checkpoints, e.g. EleutherAI/pythia-1b@step1000) load through
the real hub code path: `from_pretrained(id, revision=...)` resolves the revision in a hub cache
laid out as the hub writes it (models--ORG--NAME/refs/<revision> -> snapshots/<commit>/), offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emergence_model.extract import ExtractConfig, extract_suite, next_token_logprobs
from emergence_model.lm import gpt_neox_config, load_model, load_tokenizer
from emergence_model.suites import SuiteConfig

REVISIONS = ("step1", "step2")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch, tiny_suite) -> Path:
    """A hub cache holding "org/tiny" at revisions step1 and step2 (two trainings of one shape,
    one tokenizer), and the hub client told to stay offline and read it."""
    import huggingface_hub.constants
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_suite.tokenizer_dir)
    repo = tmp_path / "hub" / "models--org--tiny"
    for i, revision in enumerate(REVISIONS):
        commit = f"{i + 1:040x}"  # a snapshot is named by its commit hash
        torch.manual_seed(i)
        config = gpt_neox_config(
            hidden_size=16, num_layers=1, num_heads=2, vocab_size=len(tokenizer), context_length=64
        )
        GPTNeoXForCausalLM(config).save_pretrained(repo / "snapshots" / commit)
        tokenizer.save_pretrained(repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return repo


def test_a_revision_loads_its_own_snapshot_through_from_pretrained(offline_hub):
    from safetensors.torch import load_file

    for i, revision in enumerate(REVISIONS):
        model = load_model("org/tiny", revision=revision)
        saved = load_file(offline_hub / "snapshots" / f"{i + 1:040x}" / "model.safetensors")
        assert torch.equal(model.get_output_embeddings().weight, saved["embed_out.weight"])
    assert len(load_tokenizer("org/tiny", revision="step1")) > 256


def test_a_time_ladder_of_revisions_caches_each_checkpoint(offline_hub, tmp_path, tiny_suite):
    suite = SuiteConfig(models="org/tiny@step1,org/tiny@step2", scales="1000,2000").resolve()
    assert suite.scale_axis == "tokens" and suite.revisions == REVISIONS
    prefixes = tiny_suite.prefixes[:6]
    config = ExtractConfig(device="cpu", batch_size=4, cache_dtype="float32", progress=False)
    cache = extract_suite(suite, prefixes, tmp_path / "cache", config)
    assert cache.model_names == ["org/tiny@step1", "org/tiny@step2"]
    assert cache.scale_axis == "tokens" and cache.scales == [1000.0, 2000.0]
    assert cache.meta["tokenizer"] == "org/tiny@step2"
    tokenizer = load_tokenizer("org/tiny", revision="step2")
    for m, revision in enumerate(REVISIONS):
        direct = next_token_logprobs(load_model("org/tiny", revision=revision), tokenizer, prefixes)
        np.testing.assert_allclose(cache.logprobs[:, m], direct[:, : cache.vocab_size], atol=1e-5)


def test_a_revision_the_model_does_not_have_is_refused_in_one_line(offline_hub, tmp_path):
    with pytest.raises(ValueError, match="org/tiny@step9") as error:
        load_model("org/tiny", revision="step9")
    assert "\n" not in str(error.value)
    suite = SuiteConfig(models="org/tiny@step1,org/tiny@step9", scales="1,2").resolve()
    with pytest.raises(ValueError, match="org/tiny@step9") as error:
        extract_suite(suite, ["a prefix"], tmp_path / "cache", ExtractConfig(progress=False))
    assert "\n" not in str(error.value)
