import json
from pathlib import Path

import pytest

from emergence_model.demo.prefix_sets import DEMO_SHOTS
from emergence_model.prefixes import (
    PREFIX_SOURCES,
    PrefixConfig,
    describe_sources,
    load_prefixes,
    source_field,
    source_task,
)
from emergence_model.prompts import COT_TEMPLATE, RTE_TEMPLATE

ARTICLE = " ".join(f"w{i}" for i in range(40))


class FakeStream(list):
    def shuffle(self, seed, buffer_size):
        self.shuffled = (seed, buffer_size)
        return self


def fake_load_dataset(rows, calls):
    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return FakeStream(rows)

    return load_dataset


def test_wikipedia_source_streams_the_real_hub_dataset(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset([{"text": ARTICLE}] * 9, calls))
    got, meta = load_prefixes(PrefixConfig("wikipedia", num_prefixes=5, seed=0))
    assert len(got) == 5
    hub_args = (("wikimedia/wikipedia", "20231101.en"), {"split": "train", "streaming": True})
    assert calls == [hub_args]
    assert meta["dataset"] == "wikimedia/wikipedia" and meta["seed"] == 0


def test_glue_rte_source_uses_the_challenge_template(monkeypatch):
    import datasets

    calls = []
    rows = [{"sentence1": "It rained.", "sentence2": "The road is wet.", "label": 0}]
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset(rows * 3, calls))
    got, meta = load_prefixes(PrefixConfig("glue-rte", split="validation", num_prefixes=2))
    assert got == ["It rained.\nQuestion: The road is wet. True or False?\nAnswer:"] * 2
    assert calls[0][0] == ("nyu-mll/glue", "rte") and calls[0][1]["split"] == "validation"
    assert meta["template"] == RTE_TEMPLATE


def test_hub_source_needs_a_column(monkeypatch):
    import datasets

    calls = []
    rows = [{"q": "a"}, {"q": "b"}]
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset(rows, calls))
    assert load_prefixes(PrefixConfig("hub:org/name:cfg", column="q", num_prefixes=1))[0] == ["a"]
    assert calls[0] == (("org/name", "cfg"), {"split": "train", "streaming": True})
    with pytest.raises(ValueError, match="--column"):
        load_prefixes(PrefixConfig("hub:org/name"))


def test_demo_sources_call_the_demo_prefix_sets(monkeypatch, tmp_path):
    calls = []

    def fake(kind, suite_dir, seed, shots):
        calls.append((kind, shots))
        prefixes = [f"{kind} {i} {suite_dir} {seed}" for i in range(5)]
        return prefixes, {"expected": [f" e{i}" for i in range(5)]}

    monkeypatch.setattr("emergence_model.demo.registry.demo_prefix_set", fake)
    got, meta = load_prefixes(PrefixConfig("demo-rte", num_prefixes=2, seed=3), tmp_path)
    assert got == [f"rte 0 {tmp_path} 3", f"rte 1 {tmp_path} 3"]
    assert meta["dataset"] == "demo-rte" and meta["seed"] == 3
    assert meta["expected"] == [" e0", " e1"]  # per-prefix metadata is cut with the prefixes
    assert load_prefixes(PrefixConfig("demo-wiki"))[0][0].startswith("wiki 0")
    load_prefixes(PrefixConfig("demo-rte-fewshot"))
    load_prefixes(PrefixConfig("demo-rte-fewshot", shots=0))
    load_prefixes(PrefixConfig("demo-induction"))
    assert calls[-3:] == [("rte-fewshot", DEMO_SHOTS), ("rte-fewshot", 0), ("induction", None)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


RTE_ROWS = [
    {"sentence1": f"Premise {i}.", "sentence2": f"Hypothesis {i}.", "label": i % 2, "idx": i}
    for i in range(6)
]
GSM8K_ROWS = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
        "many clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
        "<<48+24=72>>72 clips altogether in April and May.\n#### 72",
    },
    {"question": "What is 2 + 3?", "answer": "Two and three make 5. So it is 5.\n#### 5"},
]


def test_induction_reads_wikipedia_rows_from_a_local_file_and_records_the_copy(tmp_path):
    text = " ".join(f"word{i}" for i in range(60))
    path = write_jsonl(tmp_path / "wiki.jsonl", [{"id": str(i), "text": text} for i in range(8)])
    got, meta = load_prefixes(PrefixConfig("induction", data_file=path, seed=1))
    assert got == load_prefixes(PrefixConfig("induction", data_file=path, seed=1))[0]
    assert got != load_prefixes(PrefixConfig("induction", data_file=path, seed=2))[0]
    assert len(got) == len(meta["expected"]) == 8
    assert meta["task"] == "induction" and meta["data_file"] == str(Path(path).resolve())
    for prefix, expected in zip(got, meta["expected"], strict=True):
        words = prefix.split()
        k = next(k for k in range(2, 7) if words[-k:] == words[:k] and k < len(words) - k)
        assert expected == " " + words[k]  # the word that followed the repeated ones
    assert source_field(meta, "expected") == meta["expected"]


def test_induction_streams_the_hub_wikipedia_through_a_shuffle(monkeypatch):
    import datasets

    calls = []
    stream = FakeStream([{"text": ARTICLE}] * 9)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or stream)
    got, meta = load_prefixes(PrefixConfig("induction", num_prefixes=4, seed=5))
    assert len(got) == len(meta["expected"]) == 4
    assert calls == [
        (("wikimedia/wikipedia", "20231101.en"), {"split": "train", "streaming": True})
    ]
    assert stream.shuffled == (5, 10_000)


def test_rte_fewshot_puts_solved_pairs_from_other_rows_before_each_query(tmp_path):
    path = write_jsonl(tmp_path / "rte.jsonl", RTE_ROWS)
    zero, meta0 = load_prefixes(PrefixConfig("rte-fewshot", shots=0, data_file=path))
    assert zero == load_prefixes(PrefixConfig("glue-rte", data_file=path))[0]
    got, meta = load_prefixes(PrefixConfig("rte-fewshot", data_file=path, seed=4))
    assert meta["shots"] == 2 and meta["labels"] == [i % 2 for i in range(6)]
    assert meta["expected"] == [" True", " False"] * 3
    for i, prompt in enumerate(got):
        *solved, query = prompt.split("\n\n")
        assert query == zero[i] and len(solved) == 2
        assert f"Premise {i}." not in "".join(solved)
        for block in solved:
            j = int(block.split()[1].rstrip("."))
            assert block == zero[j] + (" True" if j % 2 == 0 else " False")
    assert got == load_prefixes(PrefixConfig("rte-fewshot", data_file=path, seed=4))[0]
    five = load_prefixes(PrefixConfig("rte-fewshot", shots=5, data_file=path))[0]
    assert all(p.count("Answer:") == 6 for p in five)


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(dataset="rte-fewshot", shots=6), "--shots 6 needs 7 labelled rows.*there are 6"),
        (dict(dataset="glue-rte", shots=1), "--shots goes with --dataset rte-fewshot"),
        (dict(dataset="rte-fewshot", shots=-1), "--shots must be at least 0"),
        (dict(dataset="demo-wiki"), "--data-file stands in for a hub source"),
    ],
)
def test_bad_shots_and_data_files_are_refused_in_one_line(tmp_path, config, message):
    path = write_jsonl(tmp_path / "rte.jsonl", RTE_ROWS)
    with pytest.raises(ValueError, match=message) as error:
        load_prefixes(PrefixConfig(data_file=path, **config))
    assert "\n" not in str(error.value)


def test_cot_cuts_gsm8k_solutions_into_mid_chain_prefixes(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    got, meta = load_prefixes(PrefixConfig("cot", data_file=path))
    assert len(got) == 4 and meta["template"] == COT_TEMPLATE and meta["task"] == "cot"
    natalia = [i for i, row in enumerate(meta["rows"]) if row == 0]
    first, second = (got[i] for i in natalia)
    assert first.startswith("Q: Natalia sold clips") and first.endswith("Let's think step by step.")
    assert second == first + " Natalia sold 48/2 = 24 clips in May."  # no calculator notes
    assert (
        meta["expected"][natalia[1]]
        == " Natalia sold 48+24 = 72 clips altogether in April and May."
    )
    assert [meta["steps"][i] for i in natalia] == [0, 1]
    assert got == load_prefixes(PrefixConfig("cot", data_file=path))[0]  # seeded question order


def test_cot_streams_nothing_and_loads_openai_gsm8k_main(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset(GSM8K_ROWS, calls))
    got, meta = load_prefixes(PrefixConfig("cot", split="test", num_prefixes=3))
    assert calls == [(("openai/gsm8k", "main"), {"split": "test"})]
    assert len(got) == len(meta["expected"]) == len(meta["steps"]) == 3


@pytest.mark.parametrize(
    "dataset, rows, message",
    [
        (
            "cot",
            [{"question": "q"}],
            "row 0 has no answer .*openai/gsm8k rows have question, answer",
        ),
        ("rte-fewshot", [{"sentence1": "a", "sentence2": "b"}], "row 0 has no label"),
        ("induction", [{"title": "t"}], "row 0 has no text"),
    ],
)
def test_a_data_file_without_the_datasets_fields_is_refused_in_one_line(
    tmp_path, dataset, rows, message
):
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(ValueError, match=message) as error:
        load_prefixes(PrefixConfig(dataset, data_file=path))
    assert "\n" not in str(error.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prefixes(PrefixConfig(dataset, data_file=str(tmp_path / "missing.jsonl")))


def test_data_files_in_json_and_parquet(tmp_path):
    import pyarrow
    import pyarrow.parquet

    as_json = tmp_path / "rte.json"
    as_json.write_text(json.dumps(RTE_ROWS))
    as_parquet = tmp_path / "rte.parquet"
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(RTE_ROWS), as_parquet)
    jsonl = load_prefixes(
        PrefixConfig("glue-rte", data_file=write_jsonl(tmp_path / "r.jsonl", RTE_ROWS))
    )
    for path in (as_json, as_parquet):
        assert load_prefixes(PrefixConfig("glue-rte", data_file=str(path)))[0] == jsonl[0]
    csv = tmp_path / "rte.csv"
    csv.write_text("sentence1,sentence2,label\n")
    with pytest.raises(ValueError, match="use one of .jsonl, .json, .parquet"):
        load_prefixes(PrefixConfig("glue-rte", data_file=str(csv)))


def test_shards_carry_their_own_per_prefix_fields_and_join_back(tmp_path):
    path = write_jsonl(tmp_path / "rte.jsonl", RTE_ROWS)
    whole, meta = load_prefixes(PrefixConfig("rte-fewshot", data_file=path))
    parts = [
        load_prefixes(PrefixConfig("rte-fewshot", data_file=path, shard=f"{k}/3")) for k in range(3)
    ]
    assert [p for part, _ in parts for p in part] == whole
    assert all(len(m["expected"]) == len(p) == 2 for p, m in parts)
    combined = {"combined": [m for _, m in parts]}
    assert source_field(combined, "expected") == meta["expected"]
    assert source_field(combined, "labels") == meta["labels"]
    assert source_field({"dataset": "x"}, "expected") is None
    assert source_task(combined) == source_task(meta) == "rte"
    assert source_task({"dataset": "x"}) is None


def test_local_txt_one_prefix_per_line_blank_lines_skipped(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("The cat\n\nsat on \r\nthe mat\n")
    got, meta = load_prefixes(PrefixConfig(str(path)))
    assert got == ["The cat", "sat on ", "the mat"]
    assert meta["num_prefixes"] == 3
    assert load_prefixes(PrefixConfig(str(path), num_prefixes=2))[0] == ["The cat", "sat on "]


def test_local_jsonl_tsv_and_json(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"text": "a\nb"}) + "\n\n" + json.dumps({"text": "c"}) + "\n")
    assert load_prefixes(PrefixConfig(str(jsonl)))[0] == ["a\nb", "c"]
    tsv = tmp_path / "p.tsv"
    tsv.write_text('index\tsentence1\n0\t"quoted" text\n1\tplain\n')
    assert load_prefixes(PrefixConfig(str(tsv), column="sentence1"))[0] == [
        '"quoted" text',
        "plain",
    ]
    plain = tmp_path / "p.json"
    plain.write_text(json.dumps(["x", "y"]))
    assert load_prefixes(PrefixConfig(str(plain)))[0] == ["x", "y"]


@pytest.mark.parametrize(
    "name, content, column, message",
    [
        ("a.tsv", "x\ty\n1\t2\n", None, "pass --column"),
        ("a.tsv", "x\ty\n1\t2\n", "z", "no column 'z'"),
        ("a.jsonl", '{"body": "x"}\n', None, "no field 'text'"),
        ("a.json", '{"x": 1}', None, "JSON list of strings"),
        ("a.csv", "x\n", None, "use one of"),
        ("a.jsonl", '{"text": ""}\n', None, "prefix 0 .* is empty"),
        ("a.txt", "\n\n", None, "gave no prefixes"),
    ],
)
def test_local_file_errors_say_what_to_fix(tmp_path, name, content, column, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_prefixes(PrefixConfig(str(path), column=column))


def test_unknown_dataset_and_bad_count():
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*wikipedia"):
        load_prefixes(PrefixConfig("nope"))
    with pytest.raises(ValueError, match="--num-prefixes must be positive"):
        load_prefixes(PrefixConfig("wikipedia", num_prefixes=0))


def test_registry_lists_every_source_in_help():
    text = describe_sources()
    for name in PREFIX_SOURCES:
        assert name in text
    assert {"wikipedia", "glue-rte", "demo-wiki", "demo-rte"} <= set(PREFIX_SOURCES)
    tasks = {"induction", "rte-fewshot", "cot", "demo-induction", "demo-rte-fewshot"}
    assert tasks <= set(PREFIX_SOURCES)


@pytest.mark.parametrize(
    "name, content, column, message",
    [
        ("a.jsonl", b'{"text": "x"}\n["a", "b"]\n', None, r"a.jsonl:2 holds a JSON list, not an"),
        ("a.jsonl", b'{"text": "x"}\n\n{"text": \n', None, r"a.jsonl:3 is not valid JSON"),
        ("a.jsonl", b'{"text": null}\n', None, r"a.jsonl:1: field 'text' is null, not a string"),
        ("a.json", b'[\n"a",\n]', None, r"a.json:3 is not valid JSON"),
        ("a.txt", b"fine\nalso fine\ncaf\xe9\n", None, r"a.txt:3 is not UTF-8 text \(byte 0xe9\)"),
        ("a.jsonl", b'{"text": "\xff"}\n', None, r"a.jsonl:1 is not UTF-8"),
        ("a.tsv", b"id\tbody\n0\tfine\n1\n", "body", r"a.tsv:3 has no 'body' value"),
        ("dir.txt", None, None, "not a file"),
    ],
)
def test_bad_local_files_name_the_file_and_line(tmp_path, name, content, column, message):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        load_prefixes(PrefixConfig(str(path), column=column))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "name, content, column",
    [
        ("a.txt", "first\nsecond\n", None),
        ("a.jsonl", '{"text": "first"}\n{"text": "second"}\n', None),
        ("a.json", '["first", "second"]', None),
        ("a.tsv", "body\nfirst\nsecond\n", "body"),
    ],
)
def test_a_byte_order_mark_is_not_part_of_the_first_prefix(tmp_path, name, content, column):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + content.encode())
    assert load_prefixes(PrefixConfig(str(path), column=column))[0] == ["first", "second"]
