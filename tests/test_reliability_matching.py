"""Things brought together that do not belong together, and inputs that only look right: models,
caches and checkpoints of different tokenizers of one vocabulary size, checkpoints whose weights
are not finite or do not fit their config, and probabilities that are not distributions.

Each case ends in a one-line error naming both sides (or the bad row), before anything is
computed or written."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_cache import synthetic_logprobs

from emergence_model.cache import CacheError, combine_caches, create_cache
from emergence_model.calibrate import calibrate
from emergence_model.checkpoint import (
    CheckpointError,
    build_predictor,
    load_checkpoint,
    load_strategy,
    save_checkpoint,
)
from emergence_model.cli import exit_on_user_error
from emergence_model.commands.evaluate import main as evaluate
from emergence_model.commands.train import main as train
from emergence_model.extract import ExtractConfig, extract_suite
from emergence_model.model import PREDICTOR_DESIGN, PerTokenPredictor, PredictorConfig
from emergence_model.strategies import baseline_names, make_strategy
from emergence_model.study.scoring import open_ladder
from emergence_model.vocab import (
    TokenizerId,
    TokenizerMismatchError,
    tokenizer_difference,
    tokenizer_fingerprint,
)

PARAMS = (1_000_000, 2_000_000, 4_000_000, 8_000_000, 64_000_000)
NAMES = [f"synthetic-{i}" for i in range(5)]
VOCAB = 16


def one_line(error) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def cache_of(path, fingerprint=None, tokenizer="synthetic", n=30, seed=0):
    """A synthetic float32 cache whose tokenizer has `fingerprint` (None: none recorded)."""
    logprobs = synthetic_logprobs(n, VOCAB, seed=seed)
    extraction = {} if fingerprint is None else {"tokenizer_fingerprint": fingerprint}
    with create_cache(
        path,
        model_names=NAMES,
        param_counts=list(PARAMS),
        prefixes=[f"prefix {seed}-{i}" for i in range(n)],
        vocab_size=VOCAB,
        tokenizer=tokenizer,
        dtype="float32",
        extraction=extraction,
    ) as writer:
        for m in range(5):
            writer.write(m, np.arange(n), logprobs[:, m])
        return writer.finalize()


TRAIN = ["--folds", "2", "--max-epochs", "1", "--hidden-size", "8", "--batch-size", "16",
         "--bootstrap", "10", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    """Caches of two tokenizers of one size (fingerprints "aaaa" and "bbbb") and a checkpoint
    trained by train.py on the first."""
    root = tmp_path_factory.mktemp("tokenizers")
    ours = cache_of(root / "ours", "aaaa")
    theirs = cache_of(root / "theirs", "bbbb", seed=1)
    out = root / "net.ckpt"
    train(["--train-cache", str(ours.path), "--out", str(out), *TRAIN])
    return {"root": root, "ours": ours, "theirs": theirs, "ckpt": out}


def exit_code(fn, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        exit_on_user_error(fn)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


# --- one function says whether two things share a tokenizer ----------------------------------


def test_tokenizers_are_compared_by_fingerprint_else_by_name_and_size():
    a = TokenizerId("EleutherAI/pythia-12b", 50277, "aaaa")
    assert tokenizer_difference(a, TokenizerId("/local/copy/of/pythia-12b", 50277, "aaaa")) is None
    assert "fingerprints aaaa vs bbbb" in tokenizer_difference(
        a, TokenizerId(a.name, 50277, "bbbb")
    )
    # one side records no fingerprint (a cache of an older version, a challenge pickle)
    assert tokenizer_difference(a, TokenizerId("pythia-12b", 50277)) is None
    assert "by name and vocabulary size" in tokenizer_difference(a, TokenizerId("mistral", 50277))
    assert "vocabulary sizes 50277 vs 32000" in tokenizer_difference(a, TokenizerId(None, 32000))
    assert tokenizer_difference(a, TokenizerId(None, 50277)) is None  # a checkpoint of before


def test_a_checkpoint_records_its_training_caches_tokenizer(suites):
    record = load_checkpoint(suites["ckpt"])["tokenizer"]
    assert record == {"name": "synthetic", "vocab_size": VOCAB, "tokenizer_fingerprint": "aaaa"}


def test_evaluate_refuses_a_cache_of_another_tokenizer_of_the_same_size(suites, capsys):
    argv = ["--cache", str(suites["theirs"].path), "--checkpoint", str(suites["ckpt"])]
    code, err = exit_code(lambda: evaluate(argv), capsys)
    assert code == 2
    assert f"the checkpoint has tokenizer 'synthetic', {suites['theirs'].path} has" in err
    assert "fingerprints aaaa vs bbbb" in err and len(err.strip().splitlines()) == 1
    summary = evaluate(["--cache", str(suites["ours"].path), "--checkpoint", str(suites["ckpt"]),
                        "--bootstrap", "10"])  # fmt: skip
    assert summary["num_prefixes"] == 30


def test_train_py_refuses_a_transfer_cache_of_another_tokenizer_before_training(
    suites, tmp_path, monkeypatch
):
    def never(*args, **kwargs):
        raise AssertionError("training began")

    monkeypatch.setattr("emergence_model.pipeline.fit_cross_fitted", never)
    with pytest.raises(TokenizerMismatchError, match="transfer cache .*theirs has") as error:
        train(
            ["--train-cache", str(suites["ours"].path), "--transfer-cache",
             str(suites["theirs"].path), "--out", str(tmp_path / "x.ckpt")]
        )  # fmt: skip
    one_line(error)
    assert not (tmp_path / "x.ckpt").exists()


def test_the_study_and_calibration_refuse_a_cache_of_another_tokenizer(suites):
    with pytest.raises(TokenizerMismatchError, match="the checkpoint has tokenizer") as error:
        open_ladder(suites["ckpt"], [suites["ours"].path, suites["theirs"].path])
    one_line(error)
    strategy = load_strategy(suites["ckpt"])
    with pytest.raises(TokenizerMismatchError, match="calibration cache .*theirs") as error:
        calibrate(strategy, suites["theirs"], np.arange(4))
    one_line(error)
    assert calibrate(strategy, suites["ours"], np.arange(4)).pool.rows == 4


def test_caches_and_checkpoints_without_a_fingerprint_are_compared_as_before(suites, tmp_path):
    checkpoint = load_checkpoint(suites["ckpt"])
    del checkpoint["tokenizer"]  # a checkpoint of an older version: its vocabulary size only
    older = tmp_path / "older.ckpt"
    torch.save(checkpoint, older)
    summary = evaluate(["--cache", str(suites["theirs"].path), "--checkpoint", str(older),
                        "--bootstrap", "10"])  # fmt: skip
    assert summary["num_prefixes"] == 30
    unfingerprinted = cache_of(tmp_path / "other-name", None, tokenizer="llama-2")
    with pytest.raises(TokenizerMismatchError, match="compared by name and vocabulary size"):
        evaluate(["--cache", str(unfingerprinted.path), "--checkpoint", str(suites["ckpt"])])


def test_combine_refuses_caches_of_two_tokenizers_of_one_size(tmp_path):
    a = cache_of(tmp_path / "a", "aaaa")
    b = cache_of(tmp_path / "b", "bbbb", seed=1)
    with pytest.raises(CacheError, match="only caches of one tokenizer combine") as error:
        combine_caches([a.path, b.path], tmp_path / "ab")
    assert "fingerprints bbbb vs aaaa" in one_line(error)


def swapped_tokenizer(model_dir: Path, out: Path) -> Path:
    """A copy of `model_dir` whose tokenizer gives two tokens each other's ids: the same size,
    another vocabulary (as two tokenizers of one size are)."""
    copy = shutil.copytree(model_dir, out)
    spec = json.loads((copy / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = [t for t, i in vocab.items() if i in (100, 101)]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (copy / "tokenizer.json").write_text(json.dumps(spec))
    return copy


def test_an_extraction_refuses_a_model_of_another_tokenizer_of_the_same_size(tiny_suite, tmp_path):
    from transformers import AutoTokenizer

    other = swapped_tokenizer(tiny_suite.model_dirs[0], tmp_path / "other-0")
    mine = AutoTokenizer.from_pretrained(tiny_suite.model_dirs[-1])
    theirs = AutoTokenizer.from_pretrained(other)
    assert len(mine) == len(theirs) and tokenizer_fingerprint(mine) != tokenizer_fingerprint(theirs)
    out = tmp_path / "c"
    config = ExtractConfig(device="cpu", batch_size=8, progress=False)
    with pytest.raises(TokenizerMismatchError) as error:
        extract_suite([str(other), tiny_suite.model_ids[-1]], tiny_suite.prefixes[:3], out, config)
    message = one_line(error)
    assert (
        f"{other} has tokenizer" in message and f"the target {tiny_suite.model_ids[-1]}" in message
    )
    assert "must share the target's tokenizer" in message
    assert not out.exists()


# --- checkpoints ----------------------------------------------------------------------------


def network(num_heads=1):
    config = PredictorConfig(
        hidden_size=8,
        num_candidates=5,
        vocab_size=11,
        scales=[70e6, 160e6, 410e6],
        target_scale=12e9,
        num_heads=num_heads,
    )
    return PerTokenPredictor(config)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "net.ckpt"
    names = ["pythia-70m", "pythia-160m", "pythia-410m"]
    save_checkpoint(path, network(), model_names=names, target_name="pythia-12b")
    return path, torch.load(path, weights_only=True)


def nan_weight(checkpoint):
    name = next(k for k in checkpoint["state_dict"] if "mlp" in k)
    checkpoint["state_dict"][name][0, 0] = float("nan")


@pytest.mark.parametrize(
    "edit, message",
    [
        (nan_weight, r"its weights hold NaN or infinite values \(heads\.0\.mlp"),
        (
            lambda c: c["config"].update(num_heads=10**6),  # allocating it would never end
            r"do not fit its config \(\d+ tensors, where its 1000000 heads have",
        ),
        (
            lambda c: c["config"].update(vocab_size=10**10),
            "config has a vocabulary of 10000000000 but it records 11",
        ),
        (
            lambda c: (c["config"].update(vocab_size=10**10), c.update(vocab_size=10**10)),
            r"heads\.0\.embedding\.weight is \[11, 16\], its network's \[10000000000, 16\]",
        ),
        (lambda c: c.update(design=99), "network design 99 is not one this version knows"),
        (lambda c: c.update(design="3"), "network design '3' is not one"),
        (lambda c: c.pop("design"), "network design None is not one"),
        (lambda c: c.update(tokenizer="pythia"), "tokenizer is not a record"),
    ],
)
def test_a_checkpoint_that_would_compute_nonsense_is_refused_before_it_is_built(
    saved, edit, message, monkeypatch
):
    path, checkpoint = saved
    edit(checkpoint)
    torch.save(checkpoint, path)
    built = []
    real_init = PerTokenPredictor.__init__

    def spy(self, config):
        built.append(config.num_heads)
        real_init(self, config)

    monkeypatch.setattr(PerTokenPredictor, "__init__", spy)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(path)
    assert str(path) in one_line(error)
    assert all(heads == 1 for heads in built)  # at most one head, on the meta device


def test_a_network_of_an_older_design_loads_as_a_file_but_is_never_used(saved, tmp_path, capsys):
    path, checkpoint = saved
    checkpoint["design"] -= 1  # weights fitted by an older network design
    torch.save(checkpoint, path)
    assert load_checkpoint(path)["design"] == checkpoint["design"]  # train.py retrains it
    older = f"of design {PREDICTOR_DESIGN - 1}, which this version does not compute"
    with pytest.raises(CheckpointError, match=older):
        load_strategy(path)
    with pytest.raises(CheckpointError, match="retrain it with train.py") as error:
        build_predictor(checkpoint)
    one_line(error)


def test_evaluate_refuses_a_checkpoint_of_a_huge_vocabulary_in_one_line(tmp_path, capsys):
    cache = cache_of(tmp_path / "c", n=12)
    config = PredictorConfig(
        hidden_size=8,
        token_embedding=0,  # no weight has the vocabulary's size
        vocab_size=VOCAB,
        scales=cache.scales[:-1],
        target_scale=cache.scales[-1],
    )
    path = tmp_path / "net.ckpt"
    save_checkpoint(path, PerTokenPredictor(config), model_names=NAMES[:-1], target_name=NAMES[-1])
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["vocab_size"] = checkpoint["vocab_size"] = 10**10
    torch.save(checkpoint, path)
    argv = ["--cache", str(cache.path), "--checkpoint", str(path)]
    code, err = exit_code(lambda: evaluate(argv), capsys)
    assert code == 2 and "vocabulary of 10000000000, " in err
    assert len(err.strip().splitlines()) == 1


# --- strategy inputs ------------------------------------------------------------------------

SMALL = ["pythia-70m", "pythia-160m", "pythia-410m"]


def probs(n=60, m=3, v=11, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(v) * 0.3, size=(n, m)).astype(np.float32)


@pytest.fixture
def every_strategy(saved):
    path, _ = saved
    return [*map(make_strategy, baseline_names()), load_strategy(path)]


def test_rows_that_are_not_distributions_are_refused_by_every_strategy(every_strategy):
    x = probs()
    x[7, 1] *= 0.02  # sums to 0.02: the pickle import refuses it, so do the strategies
    for strategy in every_strategy:
        for given in (x, x.astype(np.float16), torch.from_numpy(x)):
            with pytest.raises(ValueError, match=r"probs\[7, 1\] \(sentence 7, model 1\) sums to"):
                strategy(["s"] * 60, SMALL, "pythia-12b", given)
    x[7, 1] /= 0.02 * 0.97  # off by 3%: within a float16 row's tolerance
    for strategy in every_strategy:
        assert len(strategy(["s"] * 60, SMALL, "pythia-12b", x)) == 60


def test_sentences_must_be_one_per_row(every_strategy):
    for strategy in every_strategy:
        with pytest.raises(ValueError, match="passes 59 sentences for 60 rows") as error:
            strategy(["s"] * 59, SMALL, "pythia-12b", probs())
        one_line(error)
        assert len(strategy([], SMALL, "pythia-12b", probs())) == 60  # none given


def test_the_distribution_apis_check_their_input_as_the_call_does(saved):
    path, _ = saved
    strategy = load_strategy(path)
    x = np.log(probs())
    x[3, 2, 5] = np.nan
    for scores in [*(make_strategy(n).scores for n in baseline_names()), strategy.scores]:
        with pytest.raises(ValueError, match=r"logprobs\[3, 2\] \(sentence 3, model 2\) holds NaN"):
            scores(x, [70e6, 160e6, 410e6], 12e9)
    with pytest.raises(ValueError, match=r"logprobs\[3, 2\] .* holds NaN"):
        strategy.predictor.log_probs(torch.from_numpy(x))
    bad = probs()
    bad[0, 0] *= 3
    with pytest.raises(ValueError, match=r"probs\[0, 0\] .* holds probabilities above 1|sums to"):
        strategy.predictor.log_probs_from_probs(torch.from_numpy(bad))
    x = np.log(probs())
    x[1, 1] = 0.5  # log-probabilities above 0: probabilities above 1
    with pytest.raises(ValueError, match="above 0"):
        make_strategy("mean-prob").scores(x)


def test_baselines_in_chunks_guess_what_they_guessed_whole():
    """The challenge call scores a few rows at a time; the guesses are those of one pass."""
    n, m, v = 40, 3, 40_000  # a few rows per chunk, so that there are several
    x = probs(n, m, v, seed=2).astype(np.float16)
    x = x / x.astype(np.float32).sum(axis=2, keepdims=True)
    scales, target = [70_426_624, 162_322_944, 405_334_016], 11_846_072_320
    whole = torch.from_numpy(x.astype(np.float16))
    for name in baseline_names():
        strategy = make_strategy(name)
        guesses = strategy(["s"] * n, SMALL, "pythia-12b", whole)
        once = strategy.score_probs(whole, scales, target).argmax(dim=1).tolist()
        assert guesses == once, name
