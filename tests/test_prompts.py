import pytest

from emergence_model.prompts import (
    COT_TEMPLATE,
    FEWSHOT_SEPARATOR,
    INDUCTION_REPEAT,
    INDUCTION_WORDS,
    RTE_TEMPLATE,
    WIKIPEDIA_WORDS,
    cot_prefixes,
    expected_token_ids,
    induction_prefixes,
    induction_prompt,
    rte_fewshot_prefixes,
    rte_prefixes,
    solution_sentences,
    wikipedia_prefixes,
)

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


def test_induction_prompt_repeats_the_first_words_and_expects_the_next_one():
    words = "the river ran north past the old mill".split()
    assert induction_prompt(words, 2) == (
        "the river ran north past the old mill the river",
        " ran",
    )
    # "the" is followed by "river" and by "old": the passage does not say which comes next
    assert induction_prompt(words, 1) is None


def test_induction_prefixes_draw_passages_and_repeats_in_their_ranges():
    texts = [" ".join(f"w{d}x{i}" for i in range(80)) for d in range(300)] + ["too short"]
    prefixes, expected = induction_prefixes(texts, seed=0)
    assert len(prefixes) == len(expected) == 300
    assert (prefixes, expected) == induction_prefixes(texts, seed=0)
    passages, repeats = set(), set()
    for prefix, copy in zip(prefixes, expected, strict=True):
        words = prefix.split()
        k = next(k for k in range(2, 7) if words[-k:] == words[:k])
        passages.add(len(words) - k)
        repeats.add(k)
        assert copy == " " + words[k]
    assert passages == set(range(INDUCTION_WORDS[0], INDUCTION_WORDS[1] + 1))
    assert repeats == set(range(INDUCTION_REPEAT[0], INDUCTION_REPEAT[1] + 1))
    assert len(induction_prefixes(texts, num_prefixes=7)[0]) == 7


def test_rte_fewshot_never_shows_a_query_or_an_unlabelled_row_as_a_demonstration():
    rows = [{"sentence1": f"P{i}.", "sentence2": f"H{i}.", "label": i % 2} for i in range(4)]
    rows.append({"sentence1": "P4.", "sentence2": "H4.", "label": -1})  # GLUE's test split
    prefixes, answers = rte_fewshot_prefixes(rows, 3, seed=0)
    assert answers == [" True", " False", " True", " False", ""]
    for i, prompt in enumerate(prefixes):
        *solved, query = prompt.split(FEWSHOT_SEPARATOR)
        assert query == rte_prefixes(rows)[i] and len(solved) == 3
        assert "P4." not in "".join(solved) and f"P{i}." not in "".join(solved)
    assert rte_fewshot_prefixes(rows, 0)[0] == rte_prefixes(rows)
    with pytest.raises(ValueError, match="--shots 4 needs 5 labelled rows"):
        rte_fewshot_prefixes(rows, 4)


def test_solution_sentences_drop_calculator_notes_and_the_final_answer():
    answer = "She has 3 * 4 = <<3*4=12>>12 eggs. Half go bad.\nSo 6 are left.\n#### 6"
    assert solution_sentences(answer) == [
        "She has 3 * 4 = 12 eggs.",
        "Half go bad.",
        "So 6 are left.",
    ]
    prefixes, expected, origin = cot_prefixes([{"question": "How  many?", "answer": answer}])
    assert prefixes[0] == COT_TEMPLATE.format(question="How many?")
    assert prefixes[2] == prefixes[0] + " She has 3 * 4 = 12 eggs. Half go bad."
    assert expected == [" She has 3 * 4 = 12 eggs.", " Half go bad.", " So 6 are left."]
    assert [o["step"] for o in origin] == [0, 1, 2] and origin[0]["steps"] == 3


def test_expected_token_ids_keep_the_byte_level_leading_space(tiny_suite):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_suite.tokenizer_dir)
    prefixes = ["the river", "the riv", "the river", "the"]
    expected = [" ran", "er", "", " river"]
    ids = expected_token_ids(tokenizer, prefixes, expected)
    ran = tokenizer("the river ran")["input_ids"][len(tokenizer("the river")["input_ids"])]
    assert tokenizer.convert_ids_to_tokens(ran).startswith("Ġ")  # " ran" starts with its space
    assert ids[0] == ran
    assert ids[1] == -1  # "er" merges with "riv": no token starts where the prefix ends
    assert ids[2] == -1  # nothing expected
    assert ids[3] == tokenizer(" river")["input_ids"][0]
    with pytest.raises(ValueError, match="2 prefixes but 1 expected"):
        expected_token_ids(tokenizer, ["a", "b"], ["c"])
