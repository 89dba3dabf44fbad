"""The demo suite's two prefix sets, drawn from every document of its corpus.

`demo-wiki`: the first 10-20 words of document, paragraph and sentence openings, as the real
`wikipedia` source cuts article openings. `demo-rte`: a premise and a hypothesis from the documents'
sentences in GLUE RTE's True-or-False template, the transfer set. Both are cut by `prompts.py`,
the same code as the hub sources'.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence

from emergence_model.demo.config import resolve_config, suite_path
from emergence_model.demo.corpus import prepare_corpus
from emergence_model.demo.tokenizer import prepare_tokenizer
from emergence_model.prompts import RTE_TEMPLATE, wikipedia_prefixes

PREFIX_KINDS = ("wiki", "rte")
# A sentence ends at . ! or ? followed by space and a capital letter (or an opening quote).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
RTE_SENTENCE_WORDS = (5, 35)


def _word_starts(text: str) -> list[int]:
    return [m.start() for m in re.finditer(r"\S+", text)]


def opening_candidates(documents: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Texts whose openings make Wikipedia-style prefixes: each document from its start, then each
    paragraph after the first, then each sentence that is not a paragraph's first.

    Each candidate runs to the end of its document less its last word, so a prefix drawn from it
    always has a real next word.
    """
    docs, paragraphs, sentences = [], [], []
    for doc in documents:
        body_end = _word_starts(doc)[-1] if doc.strip() else 0
        offset = 0
        for p_index, paragraph in enumerate(doc.split("\n")):
            starts = [offset]
            starts += [offset + m.end() for m in _SENTENCE_END.finditer(paragraph)]
            for s_index, start in enumerate(starts):
                if start < body_end:
                    text = doc[start:body_end].strip()
                    if s_index:
                        sentences.append(text)
                    elif p_index:
                        paragraphs.append(text)
                    else:
                        docs.append(text)
            offset += len(paragraph) + 1
    counts = {"documents": len(docs), "paragraphs": len(paragraphs), "sentences": len(sentences)}
    return docs + paragraphs + sentences, counts


def wiki_style_prefixes(documents: Sequence[str], seed: int = 0) -> tuple[list[str], dict]:
    """The first 10-20 words (uniform, from `seed`) of document, paragraph and sentence openings.

    The same draw as the real `wikipedia` source (`prefixes.wikipedia_prefixes`); documents alone
    are too few for several thousand prefixes, so paragraph and sentence openings follow the
    document openings. Duplicates are dropped.
    """
    candidates, counts = opening_candidates(documents)
    prefixes = list(dict.fromkeys(wikipedia_prefixes(candidates, len(candidates), seed)))
    return prefixes, {"candidates": counts, "num_prefixes": len(prefixes)}


def split_sentences(document: str) -> list[str]:
    """Sentences of a document that end with a period and have 5-35 words."""
    low, high = RTE_SENTENCE_WORDS
    sentences = []
    for paragraph in document.split("\n"):
        for sentence in _SENTENCE_END.split(paragraph):
            sentence = sentence.strip()
            if sentence.endswith(".") and low <= len(sentence.split()) <= high:
                sentences.append(sentence)
    return sentences


def rte_style_prefixes(
    documents: Sequence[str], seed: int = 0, max_premise_words: int = 45
) -> tuple[list[str], dict]:
    """RTE-template prompts from documents' sentences: a premise of one or two sentences of a
    document, and a hypothesis that is one of its sentences, another sentence of the same document,
    or a sentence of another document, so that both true and false pairs occur.
    """
    rng = random.Random(seed)
    per_doc = [s for s in (split_sentences(d) for d in documents) if s]
    pool = [(d, i) for d, sents in enumerate(per_doc) for i in range(len(sents))]
    if len(per_doc) < 2:
        return [], {"num_prefixes": 0, "hypotheses": {}}
    prefixes, kinds = [], {"in_premise": 0, "same_document": 0, "other_document": 0}
    for d, sents in enumerate(per_doc):
        for i in range(0, len(sents), 2):
            premise = sents[i : i + 2]
            if len(" ".join(premise).split()) > max_premise_words:
                premise = premise[:1]
            others = [s for j, s in enumerate(sents) if s not in premise and j != i]
            draw = rng.random()
            if draw < 0.25:
                kind, hypothesis = "in_premise", rng.choice(premise)
            elif draw < 0.5 and others:
                kind, hypothesis = "same_document", rng.choice(others)
            else:
                other_d, j = rng.choice(pool)
                while other_d == d:
                    other_d, j = rng.choice(pool)
                kind, hypothesis = "other_document", per_doc[other_d][j]
            kinds[kind] += 1
            prefixes.append(RTE_TEMPLATE.format(sentence1=" ".join(premise), sentence2=hypothesis))
    return prefixes, {"num_prefixes": len(prefixes), "hypotheses": kinds}


def demo_prefixes(
    kind: str, suite_dir: str | os.PathLike | None = None, *, seed: int = 0
) -> list[str]:
    """The suite's prefixes, from every document of its corpus, training and held-out: "wiki"
    (the first 10-20 words of document, paragraph and sentence openings) or "rte" (premise,
    hypothesis and `True or False?\\nAnswer:`).

    Pythia's were trained on text of the same kind: its Wikipedia prefixes open articles that the
    Pile holds, and RTE's sentences come from news and Wikipedia. Held-out documents alone give
    too few prefixes for the intervals to separate strategies that differ by a point.

    Needs only the suite's corpus and tokenizer (made if missing), not its models.
    """
    if kind not in PREFIX_KINDS:
        raise ValueError(
            f"unknown demo prefix kind {kind!r}; pick one of {', '.join(PREFIX_KINDS)}"
        )
    suite_dir = suite_path(suite_dir)
    config = resolve_config(suite_dir)
    corpus = prepare_corpus(suite_dir, config)
    if kind == "wiki":
        return wiki_style_prefixes(corpus.train + corpus.valid, seed)[0]
    tokenizer = prepare_tokenizer(suite_dir, config, corpus)
    prefixes = rte_style_prefixes(corpus.train + corpus.valid, seed)[0]
    # The models never saw a sequence longer than seq_len; keep the prompts inside it.
    lengths = map(len, tokenizer(prefixes, add_special_tokens=False)["input_ids"])
    return [p for p, n in zip(prefixes, lengths, strict=True) if n <= config.seq_len]
