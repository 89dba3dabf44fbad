"""The challenge's harness: participants' functions scored by `evaluate --strategy`, in this
process (--cache) and each in its own process (--test), on caches and challenge pickles."""

import json
import os
import pickle
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_cache import write_synthetic_cache

from emergence_model.challenge import load_challenge_pickle
from emergence_model.checkpoint import save_checkpoint
from emergence_model.commands.evaluate import main, run
from emergence_model.harness.entries import EntryError, check_guesses, parse_spec
from emergence_model.model import PerTokenPredictor, PredictorConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "strategy.py"
FAST = ["--bootstrap", "50", "--threads", "1"]

# Entries that fail, each its own way; the reason each must be reported with.
BROKEN = {
    "raises": ("raise ValueError('no idea')", "raised ValueError: no idea (batch 1 of"),
    "short": ("return [0] * (len(sentences) - 1)", "returned 49 guesses for 50 prefixes"),
    "outside": ("return [probs.shape[2]] * len(sentences)", "outside the vocabulary [0, 64)"),
    "floats": ("return probs[:, 0].argmax(1).astype(float)", "returned floats"),
    "bools": ("return [True] * len(sentences)", "returned bools"),
}
CRASHES = {
    "aborts": ("os.abort()", "crashed: killed by SIGABRT (batch 1 of"),
    "exits": ("os._exit(3)", "exited with status 3 before answering (batch 1 of"),
    "hangs": ("time.sleep(120)", "timed out: still running after 2 s (batch 1 of"),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(
        tmp_path_factory.mktemp("harness") / "cache", num_prefixes=130, vocab_size=64
    )


def entries_file(path: Path, bodies: dict) -> Path:
    """A participant's file with one function per (name, body)."""
    code = ["import os", "import subprocess", "import sys", "import time", ""]
    for name, (body, _) in bodies.items():
        code += [
            f"def {name}(sentences, model_names, target_model_name, probs):",
            f"    {body}",
            "",
        ]
    path.write_text("\n".join(code))
    return path


def recorder_file(path: Path) -> Path:
    """A function that saves everything it was given beside its file, call by call."""
    path.write_text(
        textwrap.dedent(
            """
            import json
            from pathlib import Path

            import numpy as np

            SEEN = Path(__file__).parent / "seen"
            TMP = Path(__file__).parent / "tmp"  # where the tests point tempfile

            def record(sentences, model_names, target_model_name, probs):
                SEEN.mkdir(exist_ok=True)
                k = len(list(SEEN.glob("*.npy")))
                np.save(SEEN / f"{k}.npy", probs)
                files = sorted(str(p) for p in TMP.rglob("*") if p.is_file())
                given = [sentences, model_names, target_model_name, type(probs).__name__, files]
                (SEEN / f"{k}.json").write_text(json.dumps(given))
                probs[:] = 0  # a function may change its own copy, and nobody else's
                return np.zeros(len(sentences), dtype=np.int32)
            """
        )
    )
    return path


def seen_calls(directory: Path) -> list:
    calls = []
    for k in range(len(list(directory.glob("*.npy")))):
        probs = np.load(directory / f"{k}.npy")
        calls.append((*json.loads((directory / f"{k}.json").read_text()), probs))
    return calls


def example_guesses(probs: np.ndarray) -> np.ndarray:
    """The example's rule, computed here: argmax of the rank-weighted mean probability."""
    weights = np.arange(1, probs.shape[1] + 1, dtype=np.float32)
    weights /= weights.sum()
    return np.einsum("m,nmv->nv", weights, probs.astype(np.float32)).argmax(1)


def small_probs(cache) -> np.ndarray:
    """What a function is given of a cache: the small models' probabilities, float16."""
    return np.exp(cache.rows(range(len(cache)))[:, :-1]).astype(np.float16)


@pytest.mark.parametrize("flag", ["--cache", "--test"])
def test_a_function_gets_the_challenges_inputs_and_never_the_targets(cache, tmp_path, flag):
    entry = recorder_file(tmp_path / "recorder.py")
    summary = main([flag, str(cache.path), "--strategy", f"{entry}:record", "--batch", "50", *FAST])
    calls = seen_calls(tmp_path / "seen")
    assert [len(c[0]) for c in calls] == [50, 50, 30]  # --batch prefixes a call, in order
    expected = small_probs(cache)
    for k, (sentences, names, target, kind, _, probs) in enumerate(calls):
        rows = slice(50 * k, 50 * k + len(sentences))
        assert sentences == cache.prefixes[rows]
        assert names == cache.model_names[:-1] and target == cache.target_name
        assert kind == "ndarray" and probs.dtype == np.float16
        assert probs.shape == (len(sentences), cache.num_models - 1, cache.vocab_size)
        assert np.array_equal(probs, expected[rows])
    entry_summary = summary["strategies"][f"{entry}:record"]
    top1 = float(np.mean(cache.target_argmax == 0))  # it always guesses token 0
    assert entry_summary["top1"]["value"] == pytest.approx(top1)
    # its changes to its own copy reached nobody: token-0 is scored on the cache's own rows
    assert summary["strategies"]["token-0"]["top1"]["value"] == pytest.approx(top1)


def test_the_example_is_scored_against_every_baseline_and_a_network(cache, tmp_path):
    # a cross-fitted network trained on this cache: its rows come in three parts, and the
    # function's guesses must be scored on every part
    config = PredictorConfig(
        hidden_size=8,
        vocab_size=cache.vocab_size,
        scales=cache.scales[:-1],
        target_scale=cache.scales[-1],
        num_heads=3,
    )
    ckpt = save_ckpt(cache, tmp_path / "net.ckpt", config)
    out = tmp_path / "report"
    name = f"{EXAMPLE}:guess"
    argv = ["--cache", str(cache.path), "--checkpoint", str(ckpt), "--strategy", name]
    summary = main([*argv, "--out", str(out), *FAST])
    guesses = example_guesses(small_probs(cache))
    entry = summary["strategies"][name]
    assert entry["top1"]["value"] == pytest.approx(np.mean(guesses == cache.target_argmax))
    easy = cache.argmax[:, -2] == cache.target_argmax
    hard = np.mean((guesses == cache.target_argmax)[~easy])
    assert entry["hard_top1"]["value"] == pytest.approx(hard)
    assert entry["kind"] == "function" and entry["params"] == {"function": name}
    assert not {"top5", "loglik", "kl", "accept"} & set(entry)  # guesses only: top-1
    assert entry["cost"]["calls"] == 2 and entry["cost"]["rows"] == 130
    comparison = summary["comparisons"][name]
    assert comparison["baseline"] == summary["best_baseline"] != name
    assert {"network", name} <= set(summary["comparisons"])
    for strategy in summary["strategies"].values():  # every strategy's calls are measured
        assert strategy["cost"]["ms_per_100"] >= 0 and strategy["cost"]["rows"] == 130
    markdown = (out / "results.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))
    assert row.split(" | ")[2] == "-"  # top-5: a guess is no ranking
    assert summary["failed"] == {}
    assert json.loads((out / "results.json").read_text())[cache.path.name]["failed"] == {}


def save_ckpt(cache, path, config):
    split = {"folds": config.num_heads, "val_fraction": 0.1, "test_fraction": 0.3, "seed": 2}
    save_checkpoint(
        path,
        PerTokenPredictor(config),
        model_names=cache.model_names[:-1],
        target_name=cache.target_name,
        data={"fingerprint": cache.fingerprint, "split": split},
    )
    return path


def test_failures_are_named_with_their_reason_and_the_others_still_scored(cache, tmp_path, capsys):
    broken = entries_file(tmp_path / "broken.py", BROKEN)
    (tmp_path / "syntax.py").write_text("def guess(:\n")
    good = f"{EXAMPLE}:guess"
    names = [
        good,
        *[f"{broken}:{n}" for n in BROKEN],
        f"{broken}:absent",
        f"{tmp_path}/syntax.py:guess",
    ]
    argv = ["--cache", str(cache.path), "--batch", "50", "--out", str(tmp_path / "out"), *FAST]
    argv += [a for n in names for a in ("--strategy", n)]
    summary = run(argv)
    failed = summary["failed"]
    for name, (_, reason) in BROKEN.items():
        assert reason in failed[f"{broken}:{name}"], failed
    assert failed[f"{broken}:absent"] == f"{broken} has no function absent"
    assert failed[f"{tmp_path}/syntax.py:guess"].startswith(
        f"cannot load {tmp_path}/syntax.py: SyntaxError"
    )
    assert list(summary["strategies"])[-1] == good and good not in failed
    guesses = example_guesses(small_probs(cache))
    assert summary["strategies"][good]["top1"]["value"] == pytest.approx(
        np.mean(guesses == cache.target_argmax)
    )
    markdown = (tmp_path / "out" / "results.md").read_text()
    for name, reason in failed.items():
        assert f"| {name} | failed |" in markdown and f"- {name} failed: {reason}" in markdown
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"{broken}:raises: failed: raised ValueError: no idea" in err
    assert f"{len(failed)} failed: " in err.splitlines()[-1]


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")
def test_the_host_runs_each_function_alone_and_loses_only_what_fails(cache, tmp_path, capsys):
    crashes = dict(CRASHES)
    # a hang that leaves a process of its own behind: the timeout kills its whole group
    pid_file = tmp_path / "grandchild.pid"
    spawn = (
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)"
    )
    crashes["spawns"] = (spawn, "timed out: still running after 2 s (batch 1 of")
    entries = entries_file(tmp_path / "entries.py", {**crashes, "raises": BROKEN["raises"]})
    good = f"{EXAMPLE}:guess"
    names = [good, *[f"{entries}:{n}" for n in [*crashes, "raises"]]]
    argv = ["--test", str(cache.path), "--timeout", "2", "--out", str(tmp_path / "out"), *FAST]
    argv += ["--batch", "50", *[a for n in names for a in ("--strategy", n)]]
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    assert time.monotonic() - started < 60  # two 2-s timeouts, not two 120-s sleeps
    summary = json.loads((tmp_path / "out" / "results.json").read_text())[cache.path.name]
    for name, (_, reason) in [*crashes.items(), ("raises", BROKEN["raises"])]:
        assert reason in summary["failed"][f"{entries}:{name}"]
    guesses = example_guesses(small_probs(cache))
    assert summary["strategies"][good]["top1"]["value"] == pytest.approx(
        np.mean(guesses == cache.target_argmax)
    )
    assert "each in its own process" in " ".join(summary["notes"])
    grandchild = int(pid_file.read_text())
    assert wait_until_gone(grandchild), "the timed-out function's own process outlived it"


def wait_until_gone(pid: int, seconds: float = 10) -> bool:
    """Whether process `pid` is dead (gone, or a zombie nobody reaps) within `seconds`."""
    status = Path(f"/proc/{pid}/status")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if "\nState:\tZ" in status.read_text():
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)
    return path


@pytest.mark.parametrize("flag", ["--cache", "--test"])
def test_on_a_challenge_pickle_a_function_gets_its_own_float16_numbers(tmp_path, monkeypatch, flag):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    rng = np.random.default_rng(3)
    names = ["EleutherAI/pythia-70m", "EleutherAI/pythia-160m", "EleutherAI/pythia-12b"]
    logits = rng.normal(size=(30, 3, 40)) * 6
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float16)
    assert (probs == 0).any()  # float16's tail flushed to zero, as in the challenge's data
    sentences = [f"prefix {i}" for i in range(30)]
    pkl = write_pickle(tmp_path / "test.pkl", (names, sentences, probs))
    entry = recorder_file(tmp_path / "recorder.py")
    name = f"{entry}:record"
    example = f"{EXAMPLE}:guess"
    argv = [flag, str(pkl), "--strategy", name, "--strategy", example, "--batch", "16", *FAST]
    summary = main(argv)
    calls = seen_calls(tmp_path / "seen")
    assert [c[0] for c in calls] == [sentences[:16], sentences[16:]]
    assert list(calls[0][1:3]) == [names[:2], names[2]]
    seen = np.concatenate([c[-1] for c in calls])
    assert np.array_equal(seen, probs[:, :2])  # the pickle's own numbers, zeros and all
    # the pickle is imported for scoring only once the functions are done, and removed after
    assert [c[4] for c in calls] == [[], []]
    assert not [p for p in (tmp_path / "tmp").rglob("*")]
    target = probs[:, -1].argmax(-1)  # the challenge scores against the target's argmax
    top1 = np.mean(example_guesses(probs[:, :2]) == target)
    assert summary["strategies"][example]["top1"]["value"] == pytest.approx(top1)
    assert summary["cache"] == str(pkl)
    assert load_challenge_pickle(pkl)[2].shape == probs.shape  # read, never changed


def test_a_pickle_of_unknown_models_needs_their_counts(cache, tmp_path, capsys):
    from emergence_model.challenge import export_challenge_pickle

    pkl = export_challenge_pickle(cache, tmp_path / "synthetic.pkl")
    with pytest.raises(ValueError, match="--param-counts"):
        main(["--cache", str(pkl), *FAST])
    counts = ",".join(str(c) for c in cache.param_counts)
    summary = main(["--cache", str(pkl), "--param-counts", counts, *FAST])
    assert summary["num_prefixes"] == len(cache)
    # a checkpoint of the same models knows them too
    config = PredictorConfig(
        hidden_size=8,
        vocab_size=cache.vocab_size,
        scales=cache.scales[:-1],
        target_scale=cache.scales[-1],
    )
    ckpt = save_ckpt(cache, tmp_path / "net.ckpt", config)
    summary = main(["--cache", str(pkl), "--checkpoint", str(ckpt), "--all-rows", *FAST])
    assert "network" in summary["strategies"]


def test_a_module_entry_runs_in_both_modes(cache, tmp_path, monkeypatch):
    package = tmp_path / "entrants" / "alice"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "guesser.py").write_text(
        "def guess(sentences, model_names, target_model_name, probs):\n"
        "    return probs.argmax(-1)[:, -1]  # the largest small model's top token\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    name = "entrants.alice.guesser:guess"
    for flag in ("--cache", "--test"):
        summary = main(
            [flag, str(cache.path), "--strategy", name, "--strategies", "largest", *FAST]
        )
        entry, largest = summary["strategies"][name], summary["strategies"]["largest"]
        assert entry["top1"]["value"] == pytest.approx(largest["top1"]["value"])


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "give one of --cache"),
        (["--cache", "x", "--test", "y"], "give one of --cache"),
        (["--cache", "x", "--timeout", "5"], "--timeout applies to --test"),
        (["--test", "x", "--timeout", "0"], "--timeout must be a positive"),
        (["--cache", "x", "--batch", "0"], "--batch must be at least 1"),
        (["--cache", "x", "--strategy", "guess.py"], "--strategy takes PATH.py:FUNCTION"),
        (["--cache", "x", "--strategy", "nowhere/guess.py:guess"], "no file nowhere/guess.py"),
        (["--cache", "x", "--strategy", "a-b:guess"], "neither a .py file nor a module"),
        (["--cache", "x", "--strategy", "m:f", "--strategy", "m:f"], "m:f is given twice"),
        (["--cache", "x", "--strategy", "network:a", "--checkpoint", "a.ckpt"], "network's name"),
        (["--cache", "nowhere"], "no cache directory or challenge pickle at nowhere"),
    ],
)
def test_command_line_mistakes_are_one_line_before_anything_runs(argv, message):
    with pytest.raises(ValueError, match=message):
        main([*argv, *FAST])


def test_guesses_are_checked_whatever_their_type():
    for answer in ([3, 0, 7], (3, 0, 7), np.array([3, 0, 7], np.uint8), torch.tensor([3, 0, 7])):
        assert check_guesses(answer, 3, 8).tolist() == [3, 0, 7]
    refused = {
        "returned a scalar": 3,
        "an array of shape (3, 1)": [[3], [0], [7]],
        "returned 2 guesses for 3 prefixes": [3, 0],
        "returned bools": [True, False, True],
        "returned floats": [3.0, 0.0, 7.0],
        "returned strings": ["3", "0", "7"],
        "token id -1 for prefix 1": [3, -1, 7],
        "token id 8 for prefix 2": [3, 0, 8],
        "outside the vocabulary of 8": [3, 0, 2**70],
        "returned values of type object": [3, None, 7],
    }
    for message, answer in refused.items():
        with pytest.raises(EntryError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_guesses(answer, 3, 8)


def test_specs_name_a_file_or_a_module():
    spec = parse_spec(f"{EXAMPLE}:guess")
    assert spec.is_file and spec.target == str(EXAMPLE) and spec.function == "guess"
    spec = parse_spec("package.module:guess")
    assert not spec.is_file and spec.target == "package.module"
