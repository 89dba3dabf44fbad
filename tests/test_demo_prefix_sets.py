import re
from pathlib import Path

import pytest
from tiny_demo import SUBTREE_ROOT

from emergence_model.demo.config import CORPUS_FILE, MODELS_DIR, TOKENIZER_DIR, DemoConfig
from emergence_model.demo.corpus import Corpus, prepare_corpus
from emergence_model.demo.prefix_sets import (
    demo_prefix_set,
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


def test_induction_prompts_repeat_a_passages_first_words(corpus_dir):
    prefixes, meta = demo_prefix_set("induction", corpus_dir)
    assert len(prefixes) == len(meta["expected"]) > 20
    assert (prefixes, meta) == demo_prefix_set("induction", corpus_dir)
    train, valid = _flat_train_and_valid(corpus_dir)
    for prefix, copy in zip(prefixes, meta["expected"], strict=True):
        words = prefix.split()
        # the passage (a run of a document's words), its first k words again, the next word
        assert any(
            words[-k:] == words[:k]
            and copy == " " + words[k]
            and (" ".join(words[:-k]) in train or " ".join(words[:-k]) in valid)
            for k in range(2, 7)
        )


def test_fewshot_rte_prompts_are_labelled_by_where_the_hypothesis_came_from(corpus_dir):
    zero = demo_prefixes("rte", corpus_dir)
    prefixes, meta = demo_prefix_set("rte-fewshot", corpus_dir, shots=1)
    assert len(prefixes) == len(meta["labels"]) == len(meta["expected"]) > 5
    assert meta["shots"] == 1 and set(meta["labels"]) == {0, 1}
    pattern = re.compile(r"(.+)\nQuestion: (.+) True or False\?\nAnswer:", re.DOTALL)
    for prompt, label, answer in zip(prefixes, meta["labels"], meta["expected"], strict=True):
        solved, query = prompt.split("\n\n")
        assert query in zero and solved.endswith(("Answer: True", "Answer: False"))
        premise, hypothesis = pattern.fullmatch(query).groups()
        assert answer == (" True" if label == 0 else " False")
        if label == 0:
            assert hypothesis in premise  # the premise says it: entailment
    assert demo_prefix_set("rte", corpus_dir)[1]["labels"][: len(zero)]
    with pytest.raises(ValueError, match="shots go with the rte-fewshot kind"):
        demo_prefix_set("rte", corpus_dir, shots=1)


def test_a_fewshot_set_that_no_window_holds_is_refused_in_one_line(corpus_dir):
    with pytest.raises(ValueError, match="no demo-rte-fewshot prompt with 6 solved pair"):
        demo_prefix_set("rte-fewshot", corpus_dir, shots=6)


def test_every_set_names_the_document_each_prefix_was_cut_from(corpus_dir):
    corpus = Corpus.load(corpus_dir / CORPUS_FILE)
    documents = [" ".join(d.split()) for d in corpus.train + corpus.valid]
    for kind, shots in (("wiki", None), ("rte", None), ("rte-fewshot", 1), ("induction", None)):
        prefixes, meta = demo_prefix_set(kind, corpus_dir, shots=shots)
        assert len(meta["documents"]) == len(prefixes), kind
        if kind != "induction":  # one passage a document; the others cut several from each
            # prefixes that share a document: what the study's cluster bootstrap resamples
            assert len(set(meta["documents"])) < len(prefixes), kind
        for prefix, d in list(zip(prefixes, meta["documents"], strict=True))[:50]:
            words = prefix.split("\n")[-3 if kind.startswith("rte") else 0].split()
            if kind.startswith("rte"):  # the query's premise, its first words
                words = words[:4]
            assert " ".join(words[:4]) in documents[d], (kind, prefix)


def test_random_copy_prompts_copy_a_span_and_their_controls_have_nothing_to_copy(corpus_dir):
    from emergence_model.demo.prefix_sets import RANDOM_COPY_ANSWER, RANDOM_COPY_CUE
    from emergence_model.demo.synthetic import copy_alphabet
    from emergence_model.demo.tokenizer import prepare_tokenizer
    from emergence_model.study.answers import answer_token_ids

    prompts, meta = demo_prefix_set("random-copy", corpus_dir, seed=3)
    controls, control_meta = demo_prefix_set("random-copy-control", corpus_dir, seed=3)
    assert len(prompts) == len(controls) > 100
    assert meta["expected"] == control_meta["expected"]
    assert meta["documents"] == control_meta["documents"]
    assert (meta["task"], control_meta["task"]) == ("random-copy", "random-copy-control")
    corpus = Corpus.load(corpus_dir / CORPUS_FILE)
    assert min(meta["documents"]) >= len(corpus.train)  # held-out documents only
    config = DemoConfig()
    tokenizer = prepare_tokenizer(corpus_dir, config, corpus)
    alphabet = set(copy_alphabet(tokenizer, config.copy_alphabet).tolist())
    for prompt, control, expected in zip(prompts, controls, meta["expected"], strict=True):
        words, other = prompt.split(), control.split()
        changed = [i for i, (a, b) in enumerate(zip(words, other, strict=True)) if a != b]
        # the span's first occurrence alone differs, every one of its words
        assert changed == list(range(changed[0], changed[0] + len(changed)))
        assert 6 <= len(changed) <= 10
        span = words[changed[0] : changed[-1] + 1]
        assert words[-RANDOM_COPY_CUE:] == span[:RANDOM_COPY_CUE]
        assert expected == " " + " ".join(span[RANDOM_COPY_CUE : RANDOM_COPY_CUE + 4])
        # the answer tokenizes as its words' own tokens after the prompt and after the control
        _, answers = answer_token_ids(tokenizer, [prompt, control], [expected, expected])
        assert answers[0] == answers[1] and len(answers[0]) == RANDOM_COPY_ANSWER
        assert set(answers[0]) <= alphabet
        assert len(tokenizer(prompt + expected)["input_ids"]) <= config.seq_len
    assert demo_prefix_set("random-copy", corpus_dir, seed=3)[0] == prompts
    assert demo_prefix_set("random-copy", corpus_dir, seed=4)[0] != prompts


def test_random_copy_prompts_need_enough_alphabet_words():
    from emergence_model.demo.prefix_sets import random_copy_prompts

    with pytest.raises(ValueError, match="--copy-alphabet"):
        random_copy_prompts(["a b c"], None, list(range(10)))
