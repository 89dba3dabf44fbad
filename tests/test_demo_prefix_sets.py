import re
from pathlib import Path

import pytest
from tiny_demo import SUBTREE_ROOT

from emergence_model.demo.config import CORPUS_FILE, MODELS_DIR, TOKENIZER_DIR, DemoConfig
from emergence_model.demo.corpus import Corpus, prepare_corpus
from emergence_model.demo.prefix_sets import (
    demo_prefixes,
    opening_candidates,
    rte_style_prefixes,
    split_sentences,
)

pytestmark = pytest.mark.usefixtures("stdlib_subtree")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """A suite directory with only its corpus (the email package's docstrings): no models."""
    suite_dir = tmp_path_factory.mktemp("prefix_sets") / "suite"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("emergence_model.demo.corpus.stdlib_root", lambda: SUBTREE_ROOT)
        prepare_corpus(suite_dir, DemoConfig())
    return suite_dir


def _flat_train_and_valid(suite_dir: Path) -> tuple[str, str]:
    """The suite's training and held-out documents, each side one string with single spaces."""
    corpus = Corpus.load(suite_dir / CORPUS_FILE)
    return tuple(
        " ".join(" ".join(d.split()) for d in docs) for docs in (corpus.train, corpus.valid)
    )


def test_openings_are_documents_then_paragraphs_then_sentences():
    docs = ["First one. Second one here.\nA new paragraph starts right here. Its end comes last"]
    candidates, counts = opening_candidates(docs)
    assert counts == {"documents": 1, "paragraphs": 1, "sentences": 2}
    assert candidates[0].startswith("First one.") and candidates[1].startswith("A new")
    # Each runs to the end less the last word, so a prefix always has a real next word.
    assert all(c.endswith("comes") for c in candidates)
    # Sentences that end with a period and have 5-35 words.
    assert split_sentences(docs[0]) == ["A new paragraph starts right here."]


def test_wiki_prefixes(corpus_dir):
    prefixes = demo_prefixes("wiki", corpus_dir)
    assert prefixes == demo_prefixes("wiki", corpus_dir)
    assert len(prefixes) == len(set(prefixes)) > 20
    assert all(10 <= len(p.split()) <= 20 and "\n" not in p for p in prefixes)
    train, valid = _flat_train_and_valid(corpus_dir)
    assert all(p in train or p in valid for p in prefixes)
    assert any(p in train for p in prefixes) and any(p in valid for p in prefixes)
    other_seed = demo_prefixes("wiki", corpus_dir, seed=1)
    assert other_seed != prefixes


def test_rte_prefixes(corpus_dir):
    prefixes = demo_prefixes("rte", corpus_dir)
    assert len(prefixes) > 20
    pattern = re.compile(r"(.+)\nQuestion: (.+) True or False\?\nAnswer:", re.DOTALL)
    pairs = [pattern.fullmatch(p).groups() for p in prefixes]
    assert any(h in premise for premise, h in pairs) and any(
        h not in premise for premise, h in pairs
    )
    train, valid = _flat_train_and_valid(corpus_dir)
    premises = [premise.split(". ")[0] for premise, _ in pairs]
    assert all(p in train or p in valid for p in premises)
    assert any(p in train for p in premises) and any(p in valid for p in premises)
    _, meta = rte_style_prefixes(Corpus.load(corpus_dir / CORPUS_FILE).valid, seed=0)
    assert all(meta["hypotheses"][k] > 0 for k in ("in_premise", "other_document"))
    with pytest.raises(ValueError, match="unknown demo prefix kind"):
        demo_prefixes("glue", corpus_dir)


def test_prefixes_need_only_corpus_and_tokenizer(tmp_path):
    prefixes = demo_prefixes("rte", tmp_path / "fresh")
    assert prefixes and (tmp_path / "fresh" / TOKENIZER_DIR).is_dir()
    assert not (tmp_path / "fresh" / MODELS_DIR).exists()
