"""How prefixes are formed from raw text, shared by the hub sources and the demo's own sets.

The original challenge cut Wikipedia articles after 10 to 20 words and put GLUE RTE pairs in a
True-or-False template. The sets of "emergent" tasks are cut here too: in-context copying (a
passage, then its first words again), few-shot RTE (solved pairs before the query) and chain of
thought (a GSM8K question, "Let's think step by step." and the first sentences of the reference
solution). `prefixes.py` applies these to hub datasets, `demo/prefix_sets.py` to the demo suite's
corpus, so that both kinds of prefixes are made the same way. Each task set also says which
continuation is right (`expected_token_ids` turns it into a token).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence

RTE_TEMPLATE = "{sentence1}\nQuestion: {sentence2} True or False?\nAnswer:"
# The original challenge cut articles after 10 to 20 words.
WIKIPEDIA_WORDS = (10, 20)


def wikipedia_prefixes(
    articles: Iterable[dict | str], num_prefixes: int, seed: int = 0
) -> list[str]:
    """The first k words of each article, k uniform in WIKIPEDIA_WORDS (drawn from `seed`).

    Articles shorter than their k are skipped. Whitespace (newlines included) becomes one space,
    since the prefix is a run of words, not a layout.
    """
    return wikipedia_prefix_sources(articles, num_prefixes, seed)[0]


def wikipedia_prefix_sources(
    articles: Iterable[dict | str], num_prefixes: int, seed: int = 0
) -> tuple[list[str], list[int]]:
    """`wikipedia_prefixes`, and the index of the article each prefix was cut from (prefixes of
    one document are not independent: the study resamples them together)."""
    rng = random.Random(seed)
    low, high = WIKIPEDIA_WORDS
    prefixes, sources = [], []
    for index, article in enumerate(articles):
        if len(prefixes) >= num_prefixes:
            break
        text = article["text"] if isinstance(article, dict) else article
        num_words = rng.randint(low, high)
        words = text.split()
        if len(words) >= num_words:
            prefixes.append(" ".join(words[:num_words]))
            sources.append(index)
    return prefixes, sources


def rte_prefixes(rows: Iterable[dict]) -> list[str]:
    """Each row's `sentence1` (premise) and `sentence2` (hypothesis) in RTE_TEMPLATE."""
    return [RTE_TEMPLATE.format(sentence1=r["sentence1"], sentence2=r["sentence2"]) for r in rows]


# In-context copying (Olsson et al. 2022): a passage, then its first words again.
INDUCTION_WORDS = (12, 40)
INDUCTION_REPEAT = (2, 6)
# GLUE RTE's labels: 0 is entailment, so the solved answer is " True"; 1 (not entailment) " False".
RTE_ANSWERS = (" True", " False")
FEWSHOT_SEPARATOR = "\n\n"
DEFAULT_SHOTS = 2
"""Solved examples before each rte-fewshot query unless --shots says otherwise."""
# Zero-shot chain of thought (Kojima et al. 2022) after a GSM8K question.
COT_TEMPLATE = "Q: {question}\nA: Let's think step by step."
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def induction_prompt(words: Sequence[str], repeat: int) -> tuple[str, str] | None:
    """`words` (the passage), then its first `repeat` words again; and the continuation that
    copying expects, " " + the word that followed them the first time.

    None when those words occur again inside the passage followed by another word: then the
    passage does not say which word comes next.
    """
    head = list(words[:repeat])
    following = {
        words[i + repeat] for i in range(len(words) - repeat) if list(words[i : i + repeat]) == head
    }
    if len(following) != 1:
        return None
    return " ".join(words) + " " + " ".join(head), " " + words[repeat]


def induction_prefixes(
    texts: Iterable[dict | str],
    num_prefixes: int | None = None,
    seed: int = 0,
    words: tuple[int, int] = INDUCTION_WORDS,
    repeat: tuple[int, int] = INDUCTION_REPEAT,
) -> tuple[list[str], list[str]]:
    """One induction prompt per text, and each prompt's expected continuation.

    The passage is a run of n words (n uniform in `words`, at most the text's length) at a
    uniform start in the text; its first k words (k uniform in `repeat`) follow it again. Texts
    shorter than `words[0]` words, and passages whose first words are ambiguous
    (`induction_prompt`), are skipped. Whitespace becomes one space. Draws come from `seed`.
    """
    prefixes, expected, _ = induction_prompt_sources(texts, num_prefixes, seed, words, repeat)
    return prefixes, expected


def induction_prompt_sources(
    texts: Iterable[dict | str],
    num_prefixes: int | None = None,
    seed: int = 0,
    words: tuple[int, int] = INDUCTION_WORDS,
    repeat: tuple[int, int] = INDUCTION_REPEAT,
) -> tuple[list[str], list[str], list[int]]:
    """`induction_prefixes`, and the index of the text each prompt was cut from."""
    rng = random.Random(seed)
    prefixes, expected, sources = [], [], []
    for index, text in enumerate(texts):
        if num_prefixes is not None and len(prefixes) >= num_prefixes:
            break
        all_words = (text["text"] if isinstance(text, dict) else text).split()
        if len(all_words) < words[0]:
            continue
        length = rng.randint(words[0], min(words[1], len(all_words)))
        start = rng.randint(0, len(all_words) - length)
        prompt = induction_prompt(all_words[start : start + length], rng.randint(*repeat))
        if prompt is not None:
            prefixes.append(prompt[0])
            expected.append(prompt[1])
            sources.append(index)
    return prefixes, expected, sources


def rte_fewshot_prefixes(
    rows: Sequence[dict], shots: int, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Each row as a query after `shots` solved rows (RTE_TEMPLATE + " True"/" False" from the
    label), drawn from the other labelled rows with `seed`; and each query's right answer.

    With `shots` 0 the prompts are `rte_prefixes(rows)`. Rows labelled -1 (GLUE's unlabelled test
    split) can be queries, with answer "", but never demonstrations.
    """
    if shots < 0:
        raise ValueError(f"--shots must be at least 0, got {shots}")
    labelled = [i for i, row in enumerate(rows) if row["label"] in (0, 1)]
    if shots and shots > len(labelled) - 1:
        raise ValueError(
            f"--shots {shots} needs {shots + 1} labelled rows (the query and its demonstrations "
            f"drawn from the others), but there are {len(labelled)}; lower --shots"
        )
    rng = random.Random(seed)
    queries = rte_prefixes(rows)
    prefixes = []
    for i, query in enumerate(queries):
        chosen = []
        while len(chosen) < shots:
            j = labelled[rng.randrange(len(labelled))]
            if j != i and j not in chosen:
                chosen.append(j)
        solved = [queries[j] + RTE_ANSWERS[rows[j]["label"]] for j in chosen]
        prefixes.append(FEWSHOT_SEPARATOR.join([*solved, query]))
    answers = [RTE_ANSWERS[r["label"]] if r["label"] in (0, 1) else "" for r in rows]
    return prefixes, answers


def solution_sentences(answer: str) -> list[str]:
    """A GSM8K reference solution's reasoning as sentences: the lines before "#### <number>",
    without the calculator annotations (<<48/2=24>>), each line cut at sentence ends."""
    reasoning = answer.split("####")[0]
    reasoning = _CALCULATOR.sub("", reasoning)
    return [
        sentence.strip()
        for line in reasoning.splitlines()
        for sentence in _SENTENCE_END.split(line)
        if sentence.strip()
    ]


def cot_prefixes(rows: Iterable[dict]) -> tuple[list[str], list[str], list[dict]]:
    """Chain-of-thought prefixes of GSM8K rows ({"question", "answer"}): the question in
    COT_TEMPLATE, then the first j sentences of the reference solution, for every j from 0 to the
    last but one; each prefix's expected continuation (" " + sentence j+1); and where each came
    from ({"row", "step", "steps"})."""
    prefixes, expected, origin = [], [], []
    for index, row in enumerate(rows):
        sentences = solution_sentences(row["answer"])
        prompt = COT_TEMPLATE.format(question=" ".join(row["question"].split()))
        for step, sentence in enumerate(sentences):
            prefixes.append(prompt)
            expected.append(" " + sentence)
            origin.append({"row": index, "step": step, "steps": len(sentences)})
            prompt += " " + sentence
    return prefixes, expected, origin


def expected_token_ids(tokenizer, prefixes: Sequence[str], expected: Sequence[str]) -> list[int]:
    """The token id that starts each prefix's expected continuation, as the tokenizer splits the
    whole text (prefix + continuation): a byte-level BPE keeps the continuation's leading space in
    its first token (" Paris" -> "ĠParis"). -1 where the whole text's tokens do not begin with the
    prefix's own (the continuation would merge with the prefix's last token), or where there is
    no continuation ("").

    Tokenized with the tokenizer's own special-token rule, as the caches' prefixes are.
    """
    if len(prefixes) != len(expected):
        raise ValueError(f"{len(prefixes)} prefixes but {len(expected)} expected continuations")
    ids = tokenizer(list(prefixes), add_special_tokens=True)["input_ids"]
    full = tokenizer([p + e for p, e in zip(prefixes, expected, strict=True)])["input_ids"]
    return [
        whole[len(own)] if len(whole) > len(own) and whole[: len(own)] == own else -1
        for own, whole in zip(ids, full, strict=True)
    ]
