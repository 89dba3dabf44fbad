"""How prefixes are formed from raw text, shared by the hub sources and the demo's own sets.

The original challenge cut Wikipedia articles after 10 to 20 words and put GLUE RTE pairs in a
True-or-False template; `prefixes.py` applies these to hub datasets, `demo/prefix_sets.py` to the
demo suite's corpus, so that both kinds of prefixes are made the same way.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

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
    rng = random.Random(seed)
    low, high = WIKIPEDIA_WORDS
    prefixes = []
    for article in articles:
        if len(prefixes) >= num_prefixes:
            break
        text = article["text"] if isinstance(article, dict) else article
        num_words = rng.randint(low, high)
        words = text.split()
        if len(words) >= num_words:
            prefixes.append(" ".join(words[:num_words]))
    return prefixes


def rte_prefixes(rows: Iterable[dict]) -> list[str]:
    """Each row's `sentence1` (premise) and `sentence2` (hypothesis) in RTE_TEMPLATE."""
    return [RTE_TEMPLATE.format(sentence1=r["sentence1"], sentence2=r["sentence2"]) for r in rows]
