"""The demo suite's prefix sets, drawn from every document of its corpus.

`demo-wiki`: the first 10-20 words of document, paragraph and sentence openings, as the real
`wikipedia` source cuts article openings. `demo-rte`: a premise and a hypothesis from the documents'
sentences in GLUE RTE's True-or-False template, the transfer set; `demo-rte-fewshot`: the same
after solved pairs, labelled by whether the hypothesis came from the premise. `demo-induction`: a
passage of a document, then its first words again. All are cut by `prompts.py`, the same code as
the hub sources'. There is no demo chain of thought: the demo's models cannot reason.
`demo-random-copy`: a span of random words inserted in a held-out passage, the passage going on,
then the span's first words again, the next words to copy (the ability the emergent ladder's
target learns); `demo-random-copy-control`: the same prompts with the span's first occurrence
replaced by other random words, so that there is nothing to copy.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence

from emergence_model.demo.config import resolve_config, suite_path
from emergence_model.demo.corpus import prepare_corpus
from emergence_model.demo.synthetic import copy_alphabet
from emergence_model.demo.tokenizer import prepare_tokenizer
from emergence_model.prompts import (
    induction_prompt_sources,
    rte_fewshot_prefixes,
    rte_prefixes,
    wikipedia_prefix_sources,
)

PREFIX_KINDS = ("wiki", "rte", "rte-fewshot", "induction", "random-copy", "random-copy-control")
DEMO_SHOTS = 1
"""Solved pairs before each demo-rte-fewshot query unless told otherwise: the demo's models train
on 128-token windows, which hold one solved pair and the query for a third of the pairs, and two
for almost none (the median pair is 68 tokens)."""
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
    candidates, _, counts = _openings(documents)
    return candidates, counts


def _openings(documents: Sequence[str]) -> tuple[list[str], list[int], dict[str, int]]:
    """`opening_candidates`, with the index of the document each candidate opens in."""
    docs, paragraphs, sentences = [], [], []
    for d, doc in enumerate(documents):
        body_end = _word_starts(doc)[-1] if doc.strip() else 0
        offset = 0
        for p_index, paragraph in enumerate(doc.split("\n")):
            starts = [offset]
            starts += [offset + m.end() for m in _SENTENCE_END.finditer(paragraph)]
            for s_index, start in enumerate(starts):
                if start < body_end:
                    text = (doc[start:body_end].strip(), d)
                    if s_index:
                        sentences.append(text)
                    elif p_index:
                        paragraphs.append(text)
                    else:
                        docs.append(text)
            offset += len(paragraph) + 1
    counts = {"documents": len(docs), "paragraphs": len(paragraphs), "sentences": len(sentences)}
    both = docs + paragraphs + sentences
    return [text for text, _ in both], [d for _, d in both], counts


def wiki_style_prefixes(documents: Sequence[str], seed: int = 0) -> tuple[list[str], dict]:
    """The first 10-20 words (uniform, from `seed`) of document, paragraph and sentence openings.

    The same draw as the real `wikipedia` source (`prefixes.wikipedia_prefixes`); documents alone
    are too few for several thousand prefixes, so paragraph and sentence openings follow the
    document openings. Duplicates are dropped (the first kept). The metadata's `documents` names
    each prefix's document.
    """
    candidates, owners, counts = _openings(documents)
    drawn, sources = wikipedia_prefix_sources(candidates, len(candidates), seed)
    first = {}
    for prefix, source in zip(drawn, sources, strict=True):
        first.setdefault(prefix, owners[source])
    prefixes = list(first)
    meta = {"candidates": counts, "num_prefixes": len(prefixes)}
    return prefixes, {**meta, "documents": list(first.values())}


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


def rte_style_pairs(
    documents: Sequence[str], seed: int = 0, max_premise_words: int = 45
) -> tuple[list[dict], dict]:
    """RTE pairs from documents' sentences, as GLUE RTE's rows ({"sentence1", "sentence2",
    "label"}, and "document": the premise's document's index): a premise of one or two sentences
    of a document, and a hypothesis that is one of its sentences (label 0, entailment: the
    premise says it), another sentence of the same document or a sentence of another document
    (label 1), so that both true and false pairs occur.
    """
    rng = random.Random(seed)
    split = [(d, s) for d, s in enumerate(split_sentences(d) for d in documents) if s]
    per_doc = [sents for _, sents in split]
    pool = [(d, i) for d, sents in enumerate(per_doc) for i in range(len(sents))]
    if len(per_doc) < 2:
        return [], {"num_prefixes": 0, "hypotheses": {}}
    rows, kinds = [], {"in_premise": 0, "same_document": 0, "other_document": 0}
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
            label = 0 if kind == "in_premise" else 1
            rows.append(
                {
                    "sentence1": " ".join(premise),
                    "sentence2": hypothesis,
                    "label": label,
                    "document": split[d][0],
                }
            )
    return rows, {"num_prefixes": len(rows), "hypotheses": kinds}


def rte_style_prefixes(
    documents: Sequence[str], seed: int = 0, max_premise_words: int = 45
) -> tuple[list[str], dict]:
    """`rte_style_pairs` in the challenge's True-or-False template (`prompts.rte_prefixes`)."""
    rows, meta = rte_style_pairs(documents, seed, max_premise_words)
    return rte_prefixes(rows), meta


# The random-copy task: a span of 6-10 random alphabet words, its first 2 words repeated as the
# cue, the next 4 the answer; in a passage of 30-70 words of a held-out document; 1000 prompts.
RANDOM_COPY_SPAN = (6, 10)
RANDOM_COPY_CUE = 2
RANDOM_COPY_ANSWER = 4
RANDOM_COPY_PASSAGE = (30, 70)
RANDOM_COPY_PROMPTS = 1000


def random_copy_prompts(
    documents: Sequence[str],
    tokenizer,
    alphabet: Sequence[int],
    *,
    num_prompts: int = RANDOM_COPY_PROMPTS,
    seed: int = 0,
    seq_len: int = 128,
) -> dict[str, list]:
    """Copying prompts of random words and their controls, drawn with `seed`.

    Each prompt is a passage of a document (30-70 words) into which a span of L distinct words of
    `alphabet` (token ids of single-token words; L in RANDOM_COPY_SPAN) is inserted after a
    random word; the passage goes on for a random number of its words, then the span's first
    RANDOM_COPY_CUE words come again. `expected` is " " + the span's next RANDOM_COPY_ANSWER
    words: only a model that finds the cue earlier in its context and copies what followed can
    give them. The control is the same prompt with the span's first occurrence replaced by L other
    alphabet words: the words before the answer are the same, the thing to copy is gone.

    Kept only where both prompt + answer tokenize as the words they were built from (the answer
    as its words' own tokens) and fit `seq_len` tokens. Returns {"prompts", "controls",
    "expected", "documents" (each prompt's document's index)}; fewer than `num_prompts` when the
    documents run out of tries.
    """
    low, high = RANDOM_COPY_SPAN
    if len(alphabet) < 2 * high:
        raise ValueError(
            f"random-copy prompts need {2 * high} alphabet words (a span and its control's), "
            f"got {len(alphabet)}; give the suite a larger --copy-alphabet"
        )
    rng = random.Random(seed)
    words = [tokenizer.decode([int(i)]).strip() for i in alphabet]
    split = [(d, doc.split()) for d, doc in enumerate(documents)]
    split = [(d, doc) for d, doc in split if len(doc) >= RANDOM_COPY_PASSAGE[0]]
    out: dict[str, list] = {"prompts": [], "controls": [], "expected": [], "documents": []}
    cue, answer = RANDOM_COPY_CUE, RANDOM_COPY_ANSWER
    for _ in range(10 * num_prompts if split else 0):
        if len(out["prompts"]) >= num_prompts:
            break
        d, doc = split[rng.randrange(len(split))]
        length = rng.randint(RANDOM_COPY_PASSAGE[0], min(RANDOM_COPY_PASSAGE[1], len(doc)))
        start = rng.randint(0, len(doc) - length)
        passage = doc[start : start + length]
        size = rng.randint(low, high)
        picked = rng.sample(range(len(words)), 2 * size)
        span = [words[i] for i in picked[:size]]
        other = [words[i] for i in picked[size:]]
        first = rng.randint(0, length - 1)  # the span's first occurrence follows this word
        gap = rng.randint(0, length - first)
        before, between = passage[:first], passage[first : first + gap]
        prompt = " ".join(before + span + between + span[:cue])
        control = " ".join(before + other + between + span[:cue])
        expected = " " + " ".join(span[cue : cue + answer])
        answer_ids = [int(alphabet[i]) for i in picked[cue : cue + answer]]
        fits = all(
            _tokenizes_apart(tokenizer, text, expected, answer_ids, seq_len)
            for text in (prompt, control)
        )
        if fits:
            for key, value in zip(out, (prompt, control, expected, d), strict=True):
                out[key].append(value)
    return out


def _tokenizes_apart(tokenizer, prefix: str, answer: str, answer_ids: list[int], seq_len: int):
    """Whether prefix + answer tokenizes as the prefix's own tokens then `answer_ids`, within
    `seq_len` tokens."""
    own = tokenizer(prefix, add_special_tokens=True)["input_ids"]
    whole = tokenizer(prefix + answer, add_special_tokens=True)["input_ids"]
    return whole == own + answer_ids and len(whole) <= seq_len


def _within(tokenizer, seq_len: int, prefixes: list[str], fields: dict) -> tuple[list[str], dict]:
    """The prefixes of at most `seq_len` tokens, with their per-prefix `fields`: the models never
    saw a longer sequence in training."""
    lengths = map(len, tokenizer(prefixes, add_special_tokens=False)["input_ids"])
    keep = [i for i, n in enumerate(lengths) if n <= seq_len]
    return [prefixes[i] for i in keep], {k: [v[i] for i in keep] for k, v in fields.items()}


def demo_prefix_set(
    kind: str,
    suite_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    shots: int | None = None,
) -> tuple[list[str], dict]:
    """The suite's prefixes of one kind, from every document of its corpus, training and
    held-out, and their metadata: `task` ("induction", "rte") and per prefix `expected`, the
    continuation that is right, `labels` for the RTE kinds, and `documents`, the index of the
    document each prefix was cut from (its premise's, for the RTE kinds):

    - "wiki": the first 10-20 words of document, paragraph and sentence openings;
    - "rte": a premise, a hypothesis and `True or False?\\nAnswer:`;
    - "rte-fewshot": the same after `shots` solved pairs drawn from the other pairs;
    - "induction": a passage of 12-40 words of a document, then its first 2-6 words again;
    - "random-copy": a held-out passage with a span of random words in it, then the span's first
      words again (`random_copy_prompts`), from the held-out documents only, the words the
      suite's synthetic share is made of (`--copy-alphabet`);
    - "random-copy-control": the same prompts with the span's first occurrence replaced.

    Pythia's were trained on text of the same kind: its Wikipedia prefixes open articles that the
    Pile holds, and RTE's sentences come from news and Wikipedia. Held-out documents alone give
    too few prefixes for the intervals to separate strategies that differ by a point. Prompts
    longer than the models' training windows are left out.

    Needs only the suite's corpus and tokenizer (made if missing), not its models.
    """
    if kind not in PREFIX_KINDS:
        raise ValueError(
            f"unknown demo prefix kind {kind!r}; pick one of {', '.join(PREFIX_KINDS)}"
        )
    if (shots is not None) != (kind == "rte-fewshot"):
        raise ValueError("shots go with the rte-fewshot kind, and it needs them")
    suite_dir = suite_path(suite_dir)
    config = resolve_config(suite_dir)
    corpus = prepare_corpus(suite_dir, config)
    documents = corpus.train + corpus.valid
    if kind == "wiki":
        prefixes, meta = wiki_style_prefixes(documents, seed)
        return prefixes, {"documents": meta["documents"]}
    tokenizer = prepare_tokenizer(suite_dir, config, corpus)
    if kind.startswith("random-copy"):
        alphabet = copy_alphabet(tokenizer, config.copy_alphabet)
        drawn = random_copy_prompts(
            corpus.valid, tokenizer, alphabet, seed=seed, seq_len=config.seq_len
        )
        # held-out documents are numbered after the training ones, as in the other sets
        sources = [len(corpus.train) + d for d in drawn["documents"]]
        prefixes = drawn["controls" if kind.endswith("control") else "prompts"]
        return prefixes, {"task": kind, "expected": drawn["expected"], "documents": sources}
    if kind == "induction":
        prefixes, expected, sources = induction_prompt_sources(documents, seed=seed)
        fields = {"expected": expected, "documents": sources}
        prefixes, fields = _within(tokenizer, config.seq_len, prefixes, fields)
        return prefixes, {"task": "induction", **fields}
    rows, _ = rte_style_pairs(documents, seed)
    prefixes, expected = rte_fewshot_prefixes(rows, shots or 0, seed)
    fields = {
        "labels": [r["label"] for r in rows],
        "expected": expected,
        "documents": [r["document"] for r in rows],
    }
    prefixes, fields = _within(tokenizer, config.seq_len, prefixes, fields)
    if rows and not prefixes:
        raise ValueError(
            f"no demo-rte-fewshot prompt with {shots} solved pair(s) fits the models' "
            f"{config.seq_len}-token training windows; lower --shots, or build a suite with a "
            "longer --seq-len"
        )
    return prefixes, {"task": "rte", "shots": shots or 0, **fields}


def demo_prefixes(
    kind: str, suite_dir: str | os.PathLike | None = None, *, seed: int = 0
) -> list[str]:
    """The prefixes of `demo_prefix_set` (the few-shot kind with DEMO_SHOTS)."""
    shots = DEMO_SHOTS if kind == "rte-fewshot" else None
    return demo_prefix_set(kind, suite_dir, seed=seed, shots=shots)[0]
