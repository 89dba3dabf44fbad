"""The demo suite, built by its own code shrunken to seconds: three tiny rungs, a few steps, the
docstrings of one standard-library package (email) as the corpus."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emergence_model import demo, demo_corpus
from emergence_model.demo import DemoConfig, Rung
from emergence_model.demo_corpus import Corpus

TINY = DemoConfig(
    ladder=(Rung(16, 1, 2, 1e-2), Rung(24, 1, 2, 8e-3), Rung(32, 2, 2, 6e-3)),
    steps=6,
    batch_size=2,
    seq_len=128,
    warmup_steps=1,
    vocab_size=300,
    valid_tokens=256,
    checkpoint_every=2,
)
SUBTREE = "email"


@pytest.fixture(autouse=True)
def stdlib_subtree(monkeypatch):
    """The stdlib corpus, cut to one package so that reading it takes a fraction of a second."""
    root = demo_corpus.stdlib_root() / SUBTREE
    monkeypatch.setattr(demo_corpus, "stdlib_root", lambda: root)
    return root


@pytest.fixture(scope="module")
def tiny_suite_dir(tmp_path_factory) -> Path:
    """A finished tiny suite (module-shared: copy it before changing anything)."""
    with pytest.MonkeyPatch.context() as mp:
        root = demo_corpus.stdlib_root() / SUBTREE
        mp.setattr(demo_corpus, "stdlib_root", lambda: root)
        suite_dir = tmp_path_factory.mktemp("demo") / "suite"
        demo.build_suite(suite_dir, TINY, progress=False)
    return suite_dir


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def _model_dirs(suite_dir: Path) -> list[Path]:
    info = json.loads((suite_dir / demo.SUITE_FILE).read_text())
    return [suite_dir / m["directory"] for m in info["models"]]


# -- corpus ------------------------------------------------------------------------------------


def test_clean_docstring_keeps_prose_and_drops_code():
    doc = (
        "split(sep=None, maxsplit=-1)\n\n"
        "Return a list of the words in the string,\nusing sep as the delimiter string.\n\n"
        "    if x:\n        return y\n\n"
        "For example:\n>>> 'a b'.split()\n['a', 'b']\n\n"
        ".. versionadded:: 3.2"
    )
    # The signature line, the code block, the doctest and the directive go; the prose is reflowed.
    assert demo_corpus.clean_docstring(doc) == (
        "Return a list of the words in the string, using sep as the delimiter string."
    )
    assert demo_corpus.clean_docstring("x = f(a, b)[0]") == ""


def test_stdlib_corpus_is_deterministic_and_split_by_module(stdlib_subtree):
    first = demo_corpus.stdlib_corpus(35)
    again = demo_corpus.stdlib_corpus(35)
    assert (first.train, first.valid, first.meta) == (again.train, again.valid, again.meta)
    assert first.train and first.valid
    assert first.meta["python_version"] and first.meta["num_files"] > 1
    # Every document of a module lies on the side its path's hash chose.
    for path in demo_corpus.stdlib_source_files(stdlib_subtree)[:5]:
        module = path.relative_to(stdlib_subtree).as_posix()
        side = first.valid if demo_corpus.stable_percent(module) < 35 else first.train
        other = first.train if side is first.valid else first.valid
        for doc in demo_corpus.module_docstrings(path.read_bytes()):
            text = demo_corpus.clean_docstring(doc)
            assert not text or text not in other or text in side


def test_stable_percent_is_fixed():
    # sha256-based, so the same on every machine; a change would move modules between splits.
    assert [demo_corpus.stable_percent(k) for k in ("os.py", "json/decoder.py")] == [92, 93]


def test_text_file_corpus_and_its_errors(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"Document number {i} says a thing." for i in range(60)))
    corpus = demo_corpus.text_file_corpus(path, 35)
    assert len(corpus.train) + len(corpus.valid) == 60 and corpus.valid
    assert corpus.meta["file_sha256"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        demo_corpus.text_file_corpus(tmp_path / "missing.txt")
    (tmp_path / "one.txt").write_text("only one document")
    with pytest.raises(ValueError, match="blank lines"):
        demo_corpus.text_file_corpus(tmp_path / "one.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(ValueError, match="not UTF-8"):
        demo_corpus.text_file_corpus(tmp_path / "bin.txt")


def test_bpe_tokenizer_is_deterministic():
    docs = demo_corpus.stdlib_corpus(35).train
    a = demo_corpus.train_bpe_tokenizer(docs, 300)
    b = demo_corpus.train_bpe_tokenizer(docs, 300)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert (len(a), a.eos_token_id, a.pad_token_id) == (300, 0, 1)


def test_tokenizer_file_needs_special_tokens(tmp_path):
    docs = demo_corpus.stdlib_corpus(35).train
    tokenizer = demo_corpus.train_bpe_tokenizer(docs, 300)
    good = tmp_path / "tokenizer.json"
    good.write_text(tokenizer.backend_tokenizer.to_str())
    assert len(demo_corpus.load_tokenizer_file(good)) == 300
    data = json.loads(good.read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|padding|>"]
    del data["model"]["vocab"]["<|padding|>"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no <\\|padding\\|> token"):
        demo_corpus.load_tokenizer_file(bad)
    with pytest.raises(FileNotFoundError):
        demo_corpus.load_tokenizer_file(tmp_path / "missing.json")


# -- training order and schedule ------------------------------------------------------------


def test_batch_order_depends_on_step_and_seed_only():
    num_windows, batch = 10, 4
    steps = [demo.batch_windows(s, num_windows, batch, seed=3) for s in range(5)]
    flat = np.concatenate(steps)
    assert sorted(flat[:10]) == list(range(10))  # each epoch is a permutation
    assert sorted(flat[10:20]) == list(range(10))
    assert not np.array_equal(flat[:10], flat[10:20])
    assert np.array_equal(demo.batch_windows(3, num_windows, batch, seed=3), steps[3])
    assert not np.array_equal(demo.batch_windows(0, num_windows, batch, seed=4), steps[0])


def test_learning_rate_warms_up_then_decays():
    config = DemoConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [demo.learning_rate(s, 1.0, config) for s in range(100)]
    assert lrs[9] == pytest.approx(1.0) and lrs[0] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


def test_windows_share_their_boundary_token():
    stream = np.arange(10)
    w = demo.windows(stream, 4)
    assert w.tolist() == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]]
    with pytest.raises(ValueError, match="longer corpus"):
        demo.windows(np.arange(3), 4)


# -- the build ---------------------------------------------------------------------------------


def test_build_records_the_suite(tiny_suite_dir):
    info = json.loads((tiny_suite_dir / demo.SUITE_FILE).read_text())
    assert info["status"] == "complete"
    assert info["python_version"] == info["corpus"]["python_version"]
    assert info["corpus"]["source"] == "python-stdlib-docstrings"
    models = info["models"]
    assert len(models) == 3
    counts = [m["param_count"] for m in models]
    assert counts == sorted(counts) and len(set(counts)) == 3
    assert all(m["tokens_seen"] == TINY.steps * TINY.batch_size * TINY.seq_len for m in models)
    # The same tokens in the same order for every model.
    assert len({m["data_sha256"] for m in models}) == 1
    assert all(np.isfinite(m["valid_loss"]) for m in models)
    assert "target_vs_second_largest" in info and info["build_seconds"] > 0
    assert DemoConfig.from_json(info["config"]) == TINY
    assert not list((tiny_suite_dir / demo.MODELS_DIR).glob("*.partial"))


def test_models_load_like_hub_models(tiny_suite_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = json.loads((tiny_suite_dir / demo.SUITE_FILE).read_text())
    for record, model_dir in zip(info["models"], _model_dirs(tiny_suite_dir), strict=True):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        config = model.config
        assert config.model_type == "gpt_neox" and not config.tie_word_embeddings
        assert config.rope_parameters["partial_rotary_factor"] == 0.25
        assert sum(p.numel() for p in model.parameters()) == record["param_count"]
        assert (len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id) == (300, 0, 1)
        ids = tokenizer("Return the message as a string.", return_tensors="pt")["input_ids"]
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_demo_suite_gives_a_suite_of_local_dirs(tiny_suite_dir):
    suite = demo.demo_suite(tiny_suite_dir)
    assert suite.name == "demo" and suite.revision is None
    assert [Path(m) for m in suite.model_ids] == _model_dirs(tiny_suite_dir)
    info = json.loads((tiny_suite_dir / demo.SUITE_FILE).read_text())
    assert list(suite.param_counts) == [m["param_count"] for m in info["models"]]


def test_finished_suite_is_not_retrained(tiny_suite_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a finished model was trained again")

    monkeypatch.setattr(demo, "train_model", fail)
    assert demo.build_suite(tiny_suite_dir)["status"] == "complete"


def test_resume_after_interruption_matches_an_uninterrupted_build(
    tiny_suite_dir, tmp_path, monkeypatch
):
    suite_dir = tmp_path / "suite"
    real_lr = demo.learning_rate
    calls = {"rungs": 0}

    def crash_in_second_rung(step, peak_lr, config):
        if peak_lr == TINY.ladder[1].peak_lr and step == 3:
            raise RuntimeError("power cut")
        return real_lr(step, peak_lr, config)

    monkeypatch.setattr(demo, "learning_rate", crash_in_second_rung)
    with pytest.raises(RuntimeError, match="power cut"):
        demo.build_suite(suite_dir, TINY, progress=False)
    info = json.loads((suite_dir / demo.SUITE_FILE).read_text())
    assert info["status"] == "building" and len(info["models"]) == 1
    partial = next((suite_dir / demo.MODELS_DIR).glob("*.partial"))
    state = torch.load(partial / demo.STATE_FILE, weights_only=True)
    assert state["step"] == 2  # the last checkpoint before the crash

    real_train = demo.train_model
    resumed_from = []

    def counting_train(model, train, peak_lr, config, state_path, *args, **kwargs):
        calls["rungs"] += 1
        if state_path.exists():
            resumed_from.append(torch.load(state_path, weights_only=True)["step"])
        return real_train(model, train, peak_lr, config, state_path, *args, **kwargs)

    monkeypatch.setattr(demo, "learning_rate", real_lr)
    monkeypatch.setattr(demo, "train_model", counting_train)
    info = demo.build_suite(suite_dir, progress=False)
    assert info["status"] == "complete"
    assert calls["rungs"] == 2 and resumed_from == [2]  # the first model was kept
    reference = json.loads((tiny_suite_dir / demo.SUITE_FILE).read_text())
    for ours, theirs in zip(info["models"], reference["models"], strict=True):
        assert ours["data_sha256"] == theirs["data_sha256"]
        assert ours["valid_loss"] == pytest.approx(theirs["valid_loss"], abs=1e-6)
    for ours, theirs in zip(_model_dirs(suite_dir), _model_dirs(tiny_suite_dir), strict=True):
        a, b = _weights(ours), _weights(theirs)
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_deleted_model_is_rebuilt_alone(tiny_suite_dir, tmp_path, monkeypatch):
    suite_dir = tmp_path / "suite"
    shutil.copytree(tiny_suite_dir, suite_dir)
    target = _model_dirs(suite_dir)[-1]
    expected = _weights(target)
    shutil.rmtree(target)
    real_train = demo.train_model
    trained = []

    def counting_train(*args, **kwargs):
        trained.append(kwargs.get("desc", args[5] if len(args) > 5 else ""))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(demo, "train_model", counting_train)
    assert demo.build_suite(suite_dir, progress=False)["status"] == "complete"
    assert len(trained) == 1
    rebuilt = _weights(target)
    assert all(torch.allclose(rebuilt[k], expected[k], atol=1e-6) for k in expected)


def test_a_different_configuration_is_refused(tiny_suite_dir):
    with pytest.raises(ValueError, match="another configuration.*seed 0 -> 1"):
        demo.build_suite(tiny_suite_dir, DemoConfig(**{**TINY.__dict__, "seed": 1}))


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="--steps"):
        DemoConfig(steps=0)
    with pytest.raises(ValueError, match="--warmup-steps"):
        DemoConfig(steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="multiple of 4"):
        Rung(30, 1, 4, 1e-3)
    with pytest.raises(ValueError, match="grow strictly"):
        config = DemoConfig(**{**TINY.__dict__, "ladder": (TINY.ladder[1], TINY.ladder[0])})
        demo.plan_ladder(Path("unused"), config, _tokenizer())


def _tokenizer():
    return demo_corpus.train_bpe_tokenizer(demo_corpus.stdlib_corpus(35).train, 300)


def test_user_corpus_and_tokenizer_files(tmp_path):
    corpus = demo_corpus.stdlib_corpus(35)
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n\n".join(corpus.train + corpus.valid))
    tokenizer_file = tmp_path / "tokenizer.json"
    tokenizer_file.write_text(_tokenizer().backend_tokenizer.to_str())
    config = DemoConfig(**{**TINY.__dict__, "ladder": TINY.ladder[:2], "steps": 2})
    suite_dir = tmp_path / "suite"
    info = demo.build_suite(
        suite_dir, config, corpus=corpus_file, tokenizer=tokenizer_file, progress=False
    )
    assert info["corpus"]["source"] == "text-file"
    assert info["tokenizer"]["source"] == str(tokenizer_file.resolve())
    # Logit rows are rounded up as Pythia's are; the extra rows are padding.
    assert info["tokenizer"]["logit_rows"] == 384
    with pytest.raises(FileNotFoundError, match="does not exist"):
        demo.build_suite(tmp_path / "other", config, corpus=tmp_path / "nope.txt")


# -- prefixes and caches -------------------------------------------------------------------------


def _flat_train_and_valid(suite_dir: Path) -> tuple[str, str]:
    """The suite's training and held-out documents, each side one string with single spaces."""
    corpus = Corpus.load(suite_dir / "corpus.json")
    return tuple(
        " ".join(" ".join(d.split()) for d in docs) for docs in (corpus.train, corpus.valid)
    )


def test_wiki_prefixes(tiny_suite_dir):
    prefixes = demo.demo_prefixes("wiki", tiny_suite_dir)
    assert prefixes == demo.demo_prefixes("wiki", tiny_suite_dir)
    assert len(prefixes) == len(set(prefixes)) > 20
    assert all(10 <= len(p.split()) <= 20 and "\n" not in p for p in prefixes)
    train, valid = _flat_train_and_valid(tiny_suite_dir)
    assert all(p in train or p in valid for p in prefixes)
    assert any(p in train for p in prefixes) and any(p in valid for p in prefixes)
    other_seed = demo.demo_prefixes("wiki", tiny_suite_dir, seed=1)
    assert other_seed != prefixes


def test_rte_prefixes(tiny_suite_dir):
    prefixes = demo.demo_prefixes("rte", tiny_suite_dir)
    assert len(prefixes) > 20
    pattern = re.compile(r"(.+)\nQuestion: (.+) True or False\?\nAnswer:", re.DOTALL)
    pairs = [pattern.fullmatch(p).groups() for p in prefixes]
    assert any(h in premise for premise, h in pairs) and any(
        h not in premise for premise, h in pairs
    )
    train, valid = _flat_train_and_valid(tiny_suite_dir)
    premises = [premise.split(". ")[0] for premise, _ in pairs]
    assert all(p in train or p in valid for p in premises)
    assert any(p in train for p in premises) and any(p in valid for p in premises)
    _, meta = demo_corpus.rte_style_prefixes(
        Corpus.load(tiny_suite_dir / "corpus.json").valid, seed=0
    )
    assert all(meta["hypotheses"][k] > 0 for k in ("in_premise", "other_document"))
    with pytest.raises(ValueError, match="unknown demo prefix kind"):
        demo.demo_prefixes("glue", tiny_suite_dir)


def test_prefixes_need_only_corpus_and_tokenizer(tmp_path):
    prefixes = demo.demo_prefixes("rte", tmp_path / "fresh")
    assert prefixes and (tmp_path / "fresh" / "tokenizer").is_dir()
    assert not (tmp_path / "fresh" / demo.MODELS_DIR).exists()


def test_prepare_demo_caches_goes_through_extraction_and_is_reused(
    tiny_suite_dir, tmp_path, monkeypatch
):
    from emergence_model import extract
    from emergence_model.cache import open_cache

    wiki, rte = demo.prepare_demo_caches(tiny_suite_dir, tmp_path, progress=False)
    assert (wiki, rte) == (tmp_path / "demo-wiki", tmp_path / "demo-rte")
    cache = open_cache(wiki, full_check=True)
    assert cache.model_names == [str(d) for d in _model_dirs(tiny_suite_dir)]
    assert cache.prefixes == demo.demo_prefixes("wiki", tiny_suite_dir)
    assert cache.vocab_size == 300 and cache.logprobs.shape[1] == 3
    assert open_cache(rte).prefixes == demo.demo_prefixes("rte", tiny_suite_dir)

    def fail(*args, **kwargs):
        raise AssertionError("a finished cache was extracted again")

    monkeypatch.setattr(extract, "extract_suite", fail)
    assert demo.prepare_demo_caches(tiny_suite_dir, tmp_path, progress=False) == (wiki, rte)


def test_a_demo_cache_of_other_prefixes_is_rebuilt_and_other_caches_are_left_alone(
    tiny_suite_dir, tmp_path
):
    from emergence_model.cache import CacheError, create_cache, open_cache

    wiki, rte = demo.prepare_demo_caches(tiny_suite_dir, tmp_path, progress=False)
    done = open_cache(wiki)

    def unfinished_cache(root: Path, dataset: str) -> None:
        create_cache(
            root / "demo-wiki",
            model_names=done.model_names,
            param_counts=done.param_counts,
            prefixes=done.prefixes[:5],
            vocab_size=done.vocab_size,
            tokenizer="t",
            source={"dataset": dataset},
        )

    unfinished_cache(tmp_path / "old", "demo-wiki")  # an earlier version's, left unfinished
    shutil.copytree(rte, tmp_path / "old" / "demo-rte")
    assert demo.prepare_demo_caches(tiny_suite_dir, tmp_path / "old", progress=False)
    assert open_cache(tmp_path / "old" / "demo-wiki").prefixes == done.prefixes
    unfinished_cache(tmp_path / "mine", "my-prefixes")  # not the demo's: never deleted
    with pytest.raises(CacheError, match="other prefixes"):
        demo.prepare_demo_caches(tiny_suite_dir, tmp_path / "mine", progress=False)
    prefixes_file = tmp_path / "mine" / "demo-wiki" / "prefixes.json"
    assert json.loads(prefixes_file.read_text()) == done.prefixes[:5]


def test_cli_build_prints_the_suite_and_refuses_a_changed_config(tiny_suite_dir, capsys):
    copy = tiny_suite_dir.parent / "cli-copy"
    shutil.copytree(tiny_suite_dir, copy)
    assert demo.main(["build", "--suite-dir", str(copy), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "demo-" in out and "valid loss" in out
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["build", "--suite-dir", str(copy), "--seed", "3"])
    assert exit_info.value.code == 2
    assert "another configuration" in capsys.readouterr().err


def test_default_suite_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert demo.default_suite_dir() == tmp_path / "emergence-model" / "demo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert demo.default_suite_dir() == Path.home() / ".cache" / "emergence-model" / "demo"
