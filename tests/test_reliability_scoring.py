"""Strategies, checkpoints, evaluation and train.py under a hostile but fair user: bad probability
rows, broken checkpoints, caches that share prefixes with a network's training data, flags that
can only fail late, and output paths that collide."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_cache import synthetic_logprobs, write_synthetic_cache

from emergence_model.cache import create_cache
from emergence_model.checkpoint import (
    CheckpointError,
    build_predictor,
    load_checkpoint,
    load_strategy,
    save_checkpoint,
)
from emergence_model.commands.evaluate import main as evaluate
from emergence_model.evaluate import cross_fit_parts, make_baselines
from emergence_model.folds import NOT_TRAINED, SEEN_BY_ALL, fold_splits, held_out_by, training_folds
from emergence_model.model import PerTokenPredictor, PredictorConfig
from emergence_model.strategies import baseline_names, make_strategy

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["pythia-70m", "pythia-160m", "pythia-410m"]
TARGET = "pythia-12b"
SCALES = [70_426_624, 162_322_944, 405_334_016]


def probs(n=3, m=3, v=11, seed=0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(v), size=(n, m)).astype(dtype)


def network(num_heads=1, vocab=11, seed=0, scales=SCALES, target_scale=11_846_072_320):
    config = PredictorConfig(
        hidden_size=8,
        num_candidates=5,
        vocab_size=vocab,
        scales=scales,
        target_scale=target_scale,
        num_heads=num_heads,
    )
    torch.manual_seed(seed)
    predictor = PerTokenPredictor(config)
    for p in predictor.parameters():
        torch.nn.init.normal_(p, std=0.5)  # heads that differ, and differ from mean-prob
    return predictor


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --- strategies -----------------------------------------------------------------------------


def bad(value, row=1, model=2) -> np.ndarray:
    x = probs()
    x[row, model] = 0.0 if value == "zeros" else x[row, model]
    if value != "zeros":
        x[row, model, 4] = value
    return x


BAD_ROWS = [
    (np.nan, "NaN or infinite"),
    (np.inf, "NaN or infinite"),
    (-0.1, "negative"),
    (1.5, "above 1"),
    ("zeros", "all zero"),
]


@pytest.fixture
def network_strategy(tmp_path):
    path = tmp_path / "net.ckpt"
    save_checkpoint(path, network(), model_names=NAMES, target_name=TARGET)
    return load_strategy(path)


@pytest.mark.parametrize("value, message", BAD_ROWS)
def test_every_strategy_refuses_bad_probability_rows_in_one_line(network_strategy, value, message):
    x = bad(value)
    for strategy in [*map(make_strategy, baseline_names()), network_strategy]:
        for given in (x, torch.from_numpy(x), x.astype(np.float16)):
            with pytest.raises(ValueError, match=r"probs\[1, 2\] \(sentence 1, model 2\)"):
                strategy(["s"] * 3, NAMES, TARGET, given)
        with pytest.raises(ValueError, match=message) as error:
            strategy(["s"] * 3, NAMES, TARGET, x)
        one_line(error)


def test_strategies_refuse_probabilities_of_the_wrong_shape(network_strategy):
    for strategy in [make_strategy("mean-prob"), network_strategy]:
        with pytest.raises(ValueError, match="shape"):
            strategy(["s"], NAMES, TARGET, probs()[0])
        with pytest.raises(ValueError, match="2 models per row but the call names 3"):
            strategy(["s"] * 3, NAMES, TARGET, probs(m=2))


def test_the_network_strategy_never_changes_the_callers_array(network_strategy):
    x = probs()
    x[0, 0, :3] = 0.0  # zeros that a floor would raise in place
    x[0, 0] /= x[0, 0].sum()  # still a distribution
    for given in (x, torch.from_numpy(x)):
        before = np.array(x, copy=True)
        network_strategy(["s"] * 3, NAMES, TARGET, given)
        assert np.array_equal(x, before)


def test_forward_probs_leaves_its_input_alone():
    x = torch.from_numpy(probs())
    x[0, 0, :3] = 0.0
    before = x.clone()
    network().forward_probs(x)
    assert torch.equal(x, before)


# --- checkpoints ----------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "net.ckpt"
    save_checkpoint(path, network(), model_names=NAMES, target_name=TARGET)
    return path, torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(config="hidden_size=8"), "config is str, not dict"),
        (lambda c: c["config"].update(hidden_size=-1), "config does not make a network"),
        (  # a network of an earlier version with a feature group since removed
            lambda c: c["config"].update(features="trajectory,context"),
            "config does not make a network.*trajectory: measured, did not earn its place",
        ),
        (lambda c: c["config"].update(num_models=2, scales=SCALES[:2]), "has 2 small models"),
        (
            lambda c: c["state_dict"].update(
                {k: torch.zeros(3, 3) for k in list(c["state_dict"])[:1]}
            ),
            "weights do not fit its config",
        ),
        (lambda c: c["state_dict"].pop(next(iter(c["state_dict"]))), "weights do not fit"),
        (lambda c: c.update(model_names="pythia-70m"), "model_names is not"),
        (lambda c: c.update(vocab_size="11"), "vocab_size is '11'"),
        (lambda c: c.update(data=[1]), "data is list, not dict"),
        (lambda c: c.update(baselines={"contrastive": 0.5}), "baselines holds"),
        (lambda c: c.update(data={"prefix_folds": [1]}), "prefix_folds"),
    ],
)
def test_a_damaged_checkpoint_is_refused_in_one_line(saved, tmp_path, edit, message):
    path, checkpoint = saved
    edit(checkpoint)
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(path)
    assert str(path) in one_line(error)


def test_baseline_parameters_this_version_does_not_take_are_one_line(tmp_path):
    cache = write_synthetic_cache(tmp_path / "c", num_prefixes=20, vocab_size=11)
    path = tmp_path / "net.ckpt"
    predictor = network(vocab=11, scales=cache.scales[:-1], target_scale=cache.scales[-1])
    save_checkpoint(
        path,
        predictor,
        model_names=cache.model_names[:-1],
        target_name=cache.target_name,
        baselines={"contrastive": {"gamma": 2.0}},
    )
    with pytest.raises(CheckpointError, match="baseline parameters") as error:
        evaluate(["--cache", str(cache.path), "--checkpoint", str(path), "--bootstrap", "10"])
    one_line(error)


# --- evaluation of caches that share prefixes with the training data ------------------------

PARAMS = (1_000_000, 2_000_000, 4_000_000, 8_000_000, 64_000_000)
SPLIT = {"folds": 3, "val_fraction": 0.1, "test_fraction": 0.2, "seed": 1}


def cache_of(path, prefixes, seed=0):
    """A synthetic float32 cache of `prefixes` (its own rows for each, from `seed`)."""
    logprobs = synthetic_logprobs(len(prefixes), 16, seed=seed)
    writer = create_cache(
        path,
        model_names=[f"synthetic-{i}" for i in range(5)],
        param_counts=list(PARAMS),
        prefixes=prefixes,
        vocab_size=16,
        tokenizer="synthetic",
        dtype="float32",
    )
    for m in range(5):
        writer.write(m, np.arange(len(prefixes)), logprobs[:, m])
    return writer.finalize()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A training cache of 60 prefixes and a 3-fold checkpoint that records them, as train.py
    writes it (heads with random weights, so that each scores differently)."""
    root = tmp_path_factory.mktemp("overlap")
    train = cache_of(root / "train", [f"train {i}" for i in range(60)])
    split = SPLIT
    splits = fold_splits(train.prefixes, 3, split["val_fraction"], split["test_fraction"], 1)
    predictor = network(3, 16, scales=train.scales[:-1], target_scale=train.scales[-1])
    path = root / "net.ckpt"
    data = {"fingerprint": train.fingerprint, "split": split}
    save_checkpoint(
        path,
        predictor,
        model_names=train.model_names[:-1],
        target_name=train.target_name,
        data={**data, "prefix_folds": held_out_by(train.prefixes, splits)},
    )
    legacy = root / "legacy.ckpt"  # from before prefix_folds: knows only its own cache
    save_checkpoint(
        legacy,
        predictor,
        model_names=train.model_names[:-1],
        target_name=train.target_name,
        data=data,
    )
    return {"root": root, "train": train, "splits": splits, "ckpt": path, "legacy": legacy}


def fold_of(trained) -> dict[str, int]:
    return {
        trained["train"].prefixes[i]: k
        for k, (_, _, test) in enumerate(trained["splits"])
        for i in test
    }


@pytest.mark.parametrize("kind", ["superset", "another dataset"])
def test_prefixes_shared_with_the_training_data_are_scored_by_the_fold_that_never_saw_them(
    trained, kind
):
    train = trained["train"]
    if kind == "superset":
        prefixes = [*train.prefixes, *(f"new {i}" for i in range(20))]
    else:  # some of the training prefixes, in another order, among others
        prefixes = [f"other {i}" for i in range(15)] + train.prefixes[::-4]
    cache = cache_of(trained["root"] / kind.replace(" ", "-"), prefixes, seed=3)
    checkpoint = load_checkpoint(trained["ckpt"])
    folds = training_folds(cache.prefixes, checkpoint)
    expected = [fold_of(trained).get(p, NOT_TRAINED) for p in cache.prefixes]
    assert folds.tolist() == expected
    parts = cross_fit_parts(cache, checkpoint, make_baselines(["mean-prob"]), folds)
    state = build_predictor(checkpoint).state_dict()
    for rows, strategies in parts:
        heads = strategies["network"].predictor.heads
        codes = set(folds[rows].tolist())
        assert len(codes) == 1
        (code,) = codes
        if code == NOT_TRAINED:
            assert len(heads) == 3  # never seen: the whole ensemble
        else:
            assert len(heads) == 1
            own = {k: v for k, v in state.items() if k.startswith(f"heads.{code}.")}
            for key, value in own.items():
                assert torch.equal(heads[0].state_dict()[key.split(".", 2)[2]], value)
    summary = evaluate(
        ["--cache", str(cache.path), "--checkpoint", str(trained["ckpt"]), "--bootstrap", "20"]
    )
    shared = sum(c != NOT_TRAINED for c in expected)
    assert summary["num_prefixes"] == len(prefixes)
    assert f"{len(prefixes) - shared} prefixes outside" in summary["rows"]
    assert f"and {shared} shared with it" in summary["rows"]
    assert any(f"{shared} of these prefixes are also in" in n for n in summary["notes"])
    everything = evaluate(
        ["--cache", str(cache.path), "--checkpoint", str(trained["ckpt"]), "--bootstrap", "20",
         "--all-rows"]
    )  # fmt: skip
    assert everything["rows"] == "all prefixes, --all-rows"
    assert any(f"{shared} prefixes are in net.ckpt's training" in n for n in everything["notes"])


def test_the_training_cache_itself_is_scored_as_before(trained):
    args = ["--cache", str(trained["train"].path), "--bootstrap", "20", "--checkpoint"]
    new = evaluate([*args, str(trained["ckpt"])])
    old = evaluate([*args, str(trained["legacy"])])
    assert "held-out" in new["rows"] and "held-out" in old["rows"]
    assert new["strategies"]["network"]["top1"] == old["strategies"]["network"]["top1"]
    assert new["num_prefixes"] == 60 and new["notes"] == []


def test_a_checkpoint_that_does_not_record_its_prefixes_says_so(trained):
    cache = cache_of(trained["root"] / "legacy-superset", [*trained["train"].prefixes, "x"])
    summary = evaluate(
        ["--cache", str(cache.path), "--checkpoint", str(trained["legacy"]), "--bootstrap", "20"]
    )
    assert summary["rows"] == "all prefixes"
    assert any("does not record its training prefixes" in n for n in summary["notes"])


def test_prefixes_every_network_saw_are_left_out_and_said_so(trained, tmp_path):
    train = trained["train"]
    splits = fold_splits(train.prefixes, 1, 0.1, 0.2, 1)
    path = tmp_path / "one.ckpt"
    predictor = network(1, 16, scales=train.scales[:-1], target_scale=train.scales[-1])
    save_checkpoint(
        path,
        predictor,
        model_names=train.model_names[:-1],
        target_name=train.target_name,
        data={"prefix_folds": held_out_by(train.prefixes, splits)},
    )
    cache = cache_of(tmp_path / "c", [*train.prefixes, "new 0"])
    summary = evaluate(["--cache", str(cache.path), "--checkpoint", str(path), "--bootstrap", "9"])
    held_out = len(splits[0][2])
    assert summary["num_prefixes"] == held_out + 1
    assert any(
        f"{60 - held_out} prefixes of this cache were seen by every" in n for n in summary["notes"]
    )
    seen = [train.prefixes[i] for i in splits[0][0]]
    only_seen = cache_of(tmp_path / "seen", seen)
    assert (training_folds(only_seen.prefixes, load_checkpoint(path)) == SEEN_BY_ALL).all()
    with pytest.raises(ValueError, match="nothing is left to score fairly; pass --all-rows") as e:
        evaluate(["--cache", str(only_seen.path), "--checkpoint", str(path)])
    one_line(e)


@pytest.mark.parametrize(
    "flag, value", [("--bootstrap", "0"), ("--chunk-rows", "0"), ("--chunk-rows", "-3")]
)
def test_evaluate_refuses_bad_numbers_before_reading_anything(flag, value, tmp_path):
    with pytest.raises(ValueError, match=flag):
        evaluate(["--cache", str(tmp_path / "missing"), flag, value])


def test_evaluate_refuses_reports_inside_a_cache(trained):
    train = trained["train"]
    with pytest.raises(ValueError, match="inside the feature cache"):
        evaluate(["--cache", str(train.path), "--out", str(train.path / "report")])


# --- train.py -------------------------------------------------------------------------------


def train_script():
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Stop(Exception):
    """Raised where training would begin: everything before it was checked."""


@pytest.fixture
def script(monkeypatch):
    module = train_script()
    runs = []

    def record(cache, predictor_config, train_config, run_dir, folds=None):
        runs.append(Path(run_dir))
        raise Stop

    def no_demo(**kwargs):
        raise AssertionError("the demo was built before the flags were checked")

    monkeypatch.setattr("emergence_model.pipeline.fit_cross_fitted", record)
    monkeypatch.setattr("emergence_model.commands.train.prepare_demo_caches", no_demo)
    module.runs = runs
    return module


def test_checkpoints_of_one_name_in_two_directories_never_share_a_run(script, trained, tmp_path):
    cache = str(trained["train"].path)
    for out in ("ck/tiny.ckpt", "ck/other/tiny.ckpt"):
        with pytest.raises(Stop):
            script.main(["--train-cache", cache, "--out", str(tmp_path / out)])
    assert script.runs == [tmp_path / "ck/runs/tiny", tmp_path / "ck/other/runs/tiny"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bootstrap", "0"], "--bootstrap"),
        (["--chunk-rows", "-1"], "--chunk-rows"),
        (["--devices", "0"], "--devices 0"),
        (["--precision", "bogus"], "--precision 'bogus'"),
        (["--accelerator", "quantum"], "--accelerator 'quantum'"),
    ],
)
def test_train_refuses_bad_flags_before_building_anything(script, argv, message):
    with pytest.raises(ValueError, match=message):
        script.main(argv)  # the demo: refused before its suite is built
    assert script.runs == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_train_refuses_a_gpu_this_machine_lacks(script, trained):
    with pytest.raises(ValueError, match="--accelerator gpu: torch sees no GPU") as error:
        script.main(["--train-cache", str(trained["train"].path), "--accelerator", "gpu"])
    one_line(error)
    assert script.runs == []


def test_train_refuses_outputs_it_cannot_write_before_training(script, trained, tmp_path):
    cache = trained["train"].path
    (tmp_path / "dir.ckpt").mkdir()
    for extra, message in [
        (["--out", str(cache / "net.ckpt")], "--out .* is inside the feature cache"),
        (["--out", str(tmp_path / "dir.ckpt")], "--out .* is a directory, not a file"),
        (["--run-dir", str(cache / "run")], "--run-dir .* is inside the feature cache"),
    ]:
        with pytest.raises(ValueError, match=message):
            script.main(["--train-cache", str(cache), *extra])
    assert script.runs == []
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        ["argmax.npy", "done.npy", "logprobs.npy", "meta.json", "prefixes.json"]
    )


def test_a_transfer_cache_sharing_prefixes_is_scored_by_fold_and_evaluate_agrees(tmp_path):
    train = write_synthetic_cache(tmp_path / "wiki", num_prefixes=90, vocab_size=16, seed=0)
    transfer = cache_of(tmp_path / "rte", [*train.prefixes[:30], *(f"rte {i}" for i in range(30))])
    out = tmp_path / "ck" / "net.ckpt"
    panels = train_script().main(
        ["--train-cache", str(train.path), "--transfer-cache", str(transfer.path),
         "--out", str(out), "--folds", "2", "--max-epochs", "2", "--batch-size", "16",
         "--hidden-size", "8", "--no-progress", "--bootstrap", "30"]
    )  # fmt: skip
    on_transfer = panels["transfer (rte)"]
    assert "30 prefixes outside" in on_transfer["rows"] and "30 shared" in on_transfer["rows"]
    assert (tmp_path / "ck" / "runs" / "net" / "report" / "results.json").is_file()
    checkpoint = load_checkpoint(out)
    assert len(checkpoint["data"]["prefix_folds"]) == 90
    assert checkpoint["data"]["split"]["folds"] == 2
    again = evaluate(["--cache", str(transfer.path), "--checkpoint", str(out), "--bootstrap", "30"])
    assert again["rows"] == on_transfer["rows"]
    assert again["strategies"]["network"]["top1"] == on_transfer["strategies"]["network"]["top1"]
