import json

import pytest

from emergence_model.prefixes import PREFIX_SOURCES, PrefixConfig, describe_sources, load_prefixes
from emergence_model.prompts import RTE_TEMPLATE

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
    def fake(kind, suite_dir, seed):
        return [f"{kind} {i} {suite_dir} {seed}" for i in range(5)]

    monkeypatch.setattr("emergence_model.prefixes.demo_prefixes", fake)
    got, meta = load_prefixes(PrefixConfig("demo-rte", num_prefixes=2, seed=3), tmp_path)
    assert got == [f"rte 0 {tmp_path} 3", f"rte 1 {tmp_path} 3"]
    assert meta["dataset"] == "demo-rte" and meta["seed"] == 3
    assert load_prefixes(PrefixConfig("demo-wiki"))[0][0].startswith("wiki 0")


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
