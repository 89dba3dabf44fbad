import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from emergence_model.cache import open_cache
from emergence_model.cli import exit_on_user_error
from emergence_model.prefixes import PREFIX_SOURCES
from emergence_model.suites import SUITES


def load_script():
    """cache_features.py sits at the repository root, outside the package: load it by path."""
    path = Path(__file__).resolve().parents[1] / "cache_features.py"
    spec = importlib.util.spec_from_file_location("cache_features", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


main = load_script().main


@pytest.fixture(scope="module")
def models(tiny_suite):
    """Three of the tiny models, the padded-vocabulary one as the target."""
    dirs = tiny_suite.model_ids
    return ",".join([dirs[0], dirs[1], dirs[3]])


def run_cli(*argv) -> int:
    """The script as a user runs it: its exit status (a user's mistake: 2, one line on stderr)."""
    try:
        exit_on_user_error(lambda: main([str(a) for a in argv]))
    except SystemExit as e:
        return e.code
    return 0


def test_help_lists_suites_and_prefix_sources(capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["--help"])
    assert exit_code.value.code == 0
    text = capsys.readouterr().out
    for name in [*SUITES, *PREFIX_SOURCES, "--from-pickle", "--combine", "--verify"]:
        assert name in text


def test_end_to_end_on_local_files(tiny_suite, models, tmp_path, capsys):
    prefixes = tiny_suite.prefixes[:6]
    txt = tmp_path / "p.txt"
    txt.write_text("\n".join(prefixes) + "\n")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps({"body": p}) + "\n" for p in prefixes))
    tsv = tmp_path / "p.tsv"
    tsv.write_text("id\tbody\n" + "".join(f"{i}\t{p}\n" for i, p in enumerate(prefixes)))
    caches = []
    body = ["--column", "body"]
    for i, (path, extra) in enumerate([(txt, []), (jsonl, body), (tsv, body)]):
        out = tmp_path / f"cache{i}"
        code = run_cli(
            "--models", models, "--dataset", path, *extra, "--out", out,
            "--batch-size", 4, "--device", "cpu", "--no-progress",
        )  # fmt: skip
        assert code == 0
        assert f"wrote {out}: 6 prefixes x 3 models" in capsys.readouterr().out
        caches.append(open_cache(out, full_check=True))
    assert all(c.prefixes == prefixes for c in caches)
    np.testing.assert_array_equal(caches[0].logprobs, caches[2].logprobs)
    assert caches[0].target_name == tiny_suite.model_ids[-1]
    assert caches[0].meta["source"]["num_prefixes"] == 6
    assert caches[1].meta["source"]["column"] == "body"

    # Shards extracted separately and combined give the one-run cache.
    shards = []
    for k in range(2):
        shards.append(tmp_path / f"shard{k}")
        args = ["--models", models, "--dataset", txt, "--shard", f"{k}/2", "--out", shards[-1]]
        assert run_cli(*args, "--no-progress") == 0
    assert run_cli("--combine", *shards, "--out", tmp_path / "joined") == 0
    joined = open_cache(tmp_path / "joined")
    assert joined.prefixes == prefixes
    np.testing.assert_allclose(joined.logprobs, caches[0].logprobs, atol=0.004)

    # Export to the challenge's pickle, import it back, verify both.
    pkl = tmp_path / "challenge.pkl"
    assert run_cli("--export-pickle", tmp_path / "cache0", "--out", pkl) == 0
    with open(pkl, "rb") as f:
        names, sentences, probs = pickle.load(f)
    assert names == models.split(",") and sentences == prefixes and probs.shape[:2] == (6, 3)
    assert run_cli("--from-pickle", pkl, "--out", tmp_path / "imported") == 2
    assert "unknown parameter counts" in capsys.readouterr().err
    counts = ",".join(str(c) for c in caches[0].param_counts)
    imported = tmp_path / "imported"
    assert run_cli("--from-pickle", pkl, "--out", imported, "--param-counts", counts) == 0
    capsys.readouterr()
    assert run_cli("--verify", tmp_path / "cache0", imported) == 0
    assert capsys.readouterr().out.count("ok ") == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "x.txt", "--out", "o"], "exactly one of --suite and --models"),
        (["--suite", "pythia", "--models", "a", "--dataset", "x", "--out", "o"], "exactly one"),
        (["--suite", "pythia", "--out", "o"], "--dataset is required"),
        (["--suite", "pythia", "--dataset", "x"], "--out is required"),
        (["--verify", "a", "--combine", "b", "c"], "pick one of"),
    ],
)
def test_usage_errors(argv, message, capsys):
    assert run_cli(*argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--suite", "gpt", "--dataset", "x", "--out", "o"], "unknown suite 'gpt'"),
        (["--suite", "pythia", "--dataset", "nope", "--out", "o"], "unknown dataset 'nope'"),
        (["--verify", "missing"], "no cache at missing"),
        (["--from-pickle", "p.pkl", "--param-counts", "1,x", "--out", "o"], "comma-separated"),
    ],
)
def test_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")


def test_bad_shard(models, tmp_path, capsys):
    txt = tmp_path / "p.txt"
    txt.write_text("a b\n")
    out = tmp_path / "out"
    for shard, message in [("1", "K/N"), ("2/2", "0 <= K < N"), ("0/2", "is empty")]:
        assert run_cli("--models", models, "--dataset", txt, "--shard", shard, "--out", out) == 2
        assert message in capsys.readouterr().err
