from emergence_model.prompts import RTE_TEMPLATE, WIKIPEDIA_WORDS, rte_prefixes, wikipedia_prefixes

ARTICLE = " ".join(f"w{i}" for i in range(40))


def test_wikipedia_prefixes_take_10_to_20_words_reproducibly():
    articles = [{"text": ARTICLE} for _ in range(200)]
    first = wikipedia_prefixes(articles, 100, seed=0)
    assert first == wikipedia_prefixes(articles, 100, seed=0)
    assert first != wikipedia_prefixes(articles, 100, seed=1)
    lengths = [len(p.split()) for p in first]
    assert set(lengths) <= set(range(WIKIPEDIA_WORDS[0], WIKIPEDIA_WORDS[1] + 1))
    assert min(lengths) == 10 and max(lengths) == 20  # the whole range is drawn
    assert all(ARTICLE.startswith(p) for p in first)


def test_wikipedia_prefixes_skip_short_articles_and_flatten_whitespace():
    articles = iter(["too short", "A  title\n\nfirst  paragraph " + ARTICLE, ARTICLE, ARTICLE])
    got = wikipedia_prefixes(articles, 2, seed=3)
    assert len(got) == 2
    assert got[0].startswith("A title first paragraph w0")
    assert "\n" not in got[0] and "  " not in got[0]


def test_rte_prefixes_use_the_challenge_template():
    rows = [{"sentence1": "It rained.", "sentence2": "The road is wet.", "label": 0}]
    assert rte_prefixes(rows) == ["It rained.\nQuestion: The road is wet. True or False?\nAnswer:"]
    assert RTE_TEMPLATE.endswith("Answer:")
