"""The task sets (induction, rte-fewshot, cot) through `cache_features.py` on the tiny suite, read
from local files in their hub datasets' formats: each cache keeps what is right per prefix, and a
cache combined from shards keeps it too."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from emergence_model.cache import open_cache
from emergence_model.cli import exit_on_user_error
from emergence_model.lm import load_tokenizer
from emergence_model.prefixes import source_field
from emergence_model.prompts import expected_token_ids

ROOT = Path(__file__).resolve().parents[1]


def cache_features(*argv) -> int:
    spec = importlib.util.spec_from_file_location("cache_features", ROOT / "cache_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        exit_on_user_error(lambda: module.main([str(a) for a in argv]))
    except SystemExit as e:
        return e.code
    return 0


@pytest.fixture(scope="module")
def data_files(tmp_path_factory, tiny_suite) -> dict[str, Path]:
    """Wikipedia, GLUE RTE and GSM8K rows (their hub fields) made of the tiny suite's words."""
    root = tmp_path_factory.mktemp("task_data")
    words = [s.split() for s in tiny_suite.prefixes]
    files = {
        "induction": [{"id": str(i), "text": " ".join(words[i] + words[i + 1])} for i in range(20)],
        "rte-fewshot": [
            {
                "sentence1": " ".join(words[i][:3]),
                "sentence2": " ".join(words[i + 1][:2]),
                "label": i % 2,
            }
            for i in range(8)
        ],
        "cot": [
            {"question": " ".join(words[i][:4]) + "?", "answer": "One ran. So two.\n#### 2"}
            for i in range(5)
        ],
    }
    paths = {}
    for name, rows in files.items():
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


@pytest.mark.parametrize("dataset", ["induction", "rte-fewshot", "cot"])
def test_each_task_set_caches_its_right_continuations(dataset, data_files, tiny_suite, tmp_path):
    models = ",".join(tiny_suite.model_ids)
    out = tmp_path / dataset
    args = ["--models", models, "--dataset", dataset, "--data-file", data_files[dataset]]
    args += ["--shots", 1] if dataset == "rte-fewshot" else []
    assert cache_features(*args, "--out", out, "--no-progress") == 0
    cache = open_cache(out)
    source = cache.meta["source"]
    expected = source_field(source, "expected")
    assert source["dataset"] != dataset and len(expected) == cache.num_prefixes > 0
    assert source["task"] in ("induction", "rte", "cot")
    tokenizer = load_tokenizer(cache.meta["tokenizer"])
    ids = np.asarray(expected_token_ids(tokenizer, cache.prefixes, expected))
    assert (ids >= 0).mean() > 0.5 and (ids < cache.vocab_size).all()

    parts = [tmp_path / f"part{k}" for k in range(2)]
    for k, part in enumerate(parts):
        assert cache_features(*args, "--shard", f"{k}/2", "--out", part, "--no-progress") == 0
    assert cache_features("--combine", *parts, "--out", tmp_path / "all") == 0
    combined = open_cache(tmp_path / "all")
    assert combined.prefixes == cache.prefixes
    assert source_field(combined.meta["source"], "expected") == expected


def test_too_many_shots_and_a_file_without_fields_exit_2_in_one_line(
    data_files, tiny_suite, tmp_path, capsys
):
    models = ",".join(tiny_suite.model_ids)
    shots = ["--dataset", "rte-fewshot", "--data-file", data_files["rte-fewshot"], "--shots", 9]
    assert cache_features("--models", models, *shots, "--out", tmp_path / "a") == 2
    bad = tmp_path / "gsm8k.jsonl"
    bad.write_text(json.dumps({"question": "q", "solution": "s"}) + "\n")
    cot = ["--dataset", "cot", "--data-file", bad]
    assert cache_features("--models", models, *cot, "--out", tmp_path / "b") == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[0].startswith("error: --shots 9 needs 10 labelled rows")
    assert errors[1].startswith("error: --data-file") and "has no answer" in errors[1]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
