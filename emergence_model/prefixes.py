"""Prefix sources: which texts the models continue.

`PREFIX_SOURCES` maps a name to a loader; a new source is one function with
`@register_source("name")`, and its docstring is what `cache_features.py --help` shows (the
offline demo's sources are registered by its plugin, `emergence_model.demo.registry`).
`load_prefixes` also takes a local file path or "hub:org/name". How a prefix is cut from raw
text (the first 10-20 words, the RTE template, the task prompts) is `prompts.py`'s.

Every hub source also reads a local file in its hub dataset's format (`--data-file`: .jsonl,
.json or .parquet records with the dataset's fields), so that it runs without the hub. The task
sets (induction, the RTE sets, cot and their demo versions) record their `task` ("induction",
"rte", "cot") and, per prefix, the continuation that is right (`expected`, and `labels` for RTE)
in their metadata, which a cache keeps in `meta["source"]`; `source_field` reads a per-prefix
field back, from a cache of shards too.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from emergence_model import Registry
from emergence_model.prompts import (
    COT_TEMPLATE,
    DEFAULT_SHOTS,
    INDUCTION_REPEAT,
    INDUCTION_WORDS,
    RTE_TEMPLATE,
    WIKIPEDIA_WORDS,
    cot_prefixes,
    induction_prefixes,
    rte_fewshot_prefixes,
    wikipedia_prefixes,
)

WIKIPEDIA_DATASET = ("wikimedia/wikipedia", "20231101.en")
GLUE_DATASET = ("nyu-mll/glue", "rte")
GSM8K_DATASET = ("openai/gsm8k", "main")
# The fields each hub dataset's rows have, which a --data-file must have too.
DATASET_FIELDS = {
    WIKIPEDIA_DATASET: ("text",),
    GLUE_DATASET: ("sentence1", "sentence2", "label"),
    GSM8K_DATASET: ("question", "answer"),
}
DEFAULT_WIKIPEDIA_PREFIXES = 20_000
DEFAULT_INDUCTION_PREFIXES = 5_000
# Articles are drawn through a shuffle buffer of the stream, so that a sample is not only the
# lowest page ids, without downloading the 20 GB dump.
WIKIPEDIA_SHUFFLE_BUFFER = 10_000
LOCAL_SUFFIXES = (".txt", ".jsonl", ".tsv", ".json")
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
# Source metadata with one entry per prefix: cut with the prefixes (--num-prefixes, --shard).
# "documents" names the document each prefix was cut from, where several share one (the study
# resamples a document's prefixes together).
PER_PREFIX_FIELDS = ("expected", "labels", "rows", "steps", "documents")

Loader = Callable[["PrefixConfig", "Path | None"], tuple[list[str], dict]]
PREFIX_SOURCES: Registry[Loader] = Registry("prefix source")
FEWSHOT_SOURCES: Registry[Loader] = Registry("few-shot prefix source")
"""The sources that take --shots: solved examples before each query."""


def register_source(name: str, *, fewshot: bool = False) -> Callable[[Loader], Loader]:
    """A decorator that registers a prefix source under `name` (`fewshot`: it takes --shots)."""

    def add(loader: Loader) -> Loader:
        PREFIX_SOURCES.add(name, loader)
        if fewshot:
            FEWSHOT_SOURCES.add(name, loader)
        return loader

    return add


def read_records(path: Path, fields: Sequence[str], dataset: str) -> list[dict]:
    """The rows of a local file in a hub dataset's format: .jsonl (a record a line), .json (a list
    of records) or .parquet; every row must have `fields`, as `dataset`'s rows do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data-file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
    elif suffix == ".parquet":
        import pyarrow.parquet

        rows = pyarrow.parquet.read_table(path).to_pylist()
    else:
        raise ValueError(
            f"--data-file {path}: use one of {', '.join(RECORD_SUFFIXES)} with {dataset}'s fields"
        )
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"--data-file {path} must hold records (objects) with {dataset}'s fields")
    for i, row in enumerate(rows):
        missing = [f for f in fields if f not in row]
        if missing:
            raise ValueError(
                f"--data-file {path}: row {i} has no {', '.join(missing)} (fields: "
                f"{', '.join(row) or 'none'}); {dataset} rows have {', '.join(fields)}"
            )
    if not rows:
        raise ValueError(f"--data-file {path} holds no rows")
    return rows


def dataset_rows(
    dataset: tuple[str, str], split: str, data_file: str | None, streaming: bool = False
) -> Iterable[dict]:
    """The rows of a hub dataset's split, or of `data_file` (a local file in its format)."""
    if data_file is not None:
        return read_records(Path(data_file), DATASET_FIELDS[dataset], dataset[0])
    from datasets import load_dataset

    name, config = dataset
    if streaming:
        return load_dataset(name, config, split=split, streaming=True)
    return load_dataset(name, config, split=split)


def _dataset_meta(dataset: tuple[str, str], split: str, data_file: str | None) -> dict:
    name, config = dataset
    meta = {"dataset": name, "config": config, "split": split}
    if data_file is not None:
        meta.update(split=None, data_file=str(Path(data_file).resolve()))
    return meta


def wikipedia_articles(config: PrefixConfig) -> Iterable[dict]:
    """Wikipedia articles: the hub's stream through a seeded shuffle buffer, or --data-file."""
    split = config.split or "train"
    rows = dataset_rows(WIKIPEDIA_DATASET, split, config.data_file, streaming=True)
    if config.data_file is None:
        rows = rows.shuffle(seed=config.seed, buffer_size=WIKIPEDIA_SHUFFLE_BUFFER)
    return rows


@register_source("wikipedia")
def wikipedia(config: PrefixConfig, suite_dir: Path | None = None) -> tuple[list[str], dict]:
    """First 10-20 words of English Wikipedia articles (wikimedia/wikipedia, streamed)."""
    num_prefixes = config.num_prefixes or DEFAULT_WIKIPEDIA_PREFIXES
    prefixes = wikipedia_prefixes(wikipedia_articles(config), num_prefixes, config.seed)
    meta = _dataset_meta(WIKIPEDIA_DATASET, config.split or "train", config.data_file)
    meta["words"] = list(WIKIPEDIA_WORDS)
    meta["shuffle_buffer"] = WIKIPEDIA_SHUFFLE_BUFFER
    return prefixes, meta


def _rte(config: PrefixConfig, shots: int) -> tuple[list[str], dict]:
    split = config.split or "train"
    rows = list(dataset_rows(GLUE_DATASET, split, config.data_file))
    prefixes, answers = rte_fewshot_prefixes(rows, shots, config.seed)
    meta = _dataset_meta(GLUE_DATASET, split, config.data_file)
    meta.update(task="rte", template=RTE_TEMPLATE, shots=shots)
    meta["labels"] = [int(r["label"]) for r in rows]
    meta["expected"] = answers
    return prefixes, meta


@register_source("glue-rte")
def glue_rte(config: PrefixConfig, suite_dir: Path | None = None) -> tuple[list[str], dict]:
    """GLUE RTE pairs (nyu-mll/glue rte, --split) in the challenge's True-or-False template."""
    return _rte(config, 0)


@register_source("rte-fewshot", fewshot=True)
def rte_fewshot(config: PrefixConfig, suite_dir: Path | None = None) -> tuple[list[str], dict]:
    """GLUE RTE after --shots solved pairs (default 2) drawn from other rows, seeded."""
    return _rte(config, config.resolved_shots())


@register_source("induction")
def induction(config: PrefixConfig, suite_dir: Path | None = None) -> tuple[list[str], dict]:
    """In-context copying: a Wikipedia passage of 12-40 words, then its first 2-6 words again."""
    num_prefixes = config.num_prefixes or DEFAULT_INDUCTION_PREFIXES
    prefixes, expected = induction_prefixes(wikipedia_articles(config), num_prefixes, config.seed)
    meta = _dataset_meta(WIKIPEDIA_DATASET, config.split or "train", config.data_file)
    meta.update(
        task="induction",
        words=list(INDUCTION_WORDS),
        repeat=list(INDUCTION_REPEAT),
        shuffle_buffer=WIKIPEDIA_SHUFFLE_BUFFER,
        expected=expected,
    )
    return prefixes, meta


@register_source("cot")
def cot(config: PrefixConfig, suite_dir: Path | None = None) -> tuple[list[str], dict]:
    """Chain of thought: a GSM8K question (openai/gsm8k main), then j reference sentences.

    The question, "Let's think step by step." and the first j sentences of the reference solution,
    for every j; questions in a seeded order."""
    split = config.split or "train"
    rows = list(dataset_rows(GSM8K_DATASET, split, config.data_file))
    order = list(range(len(rows)))
    random.Random(config.seed).shuffle(order)
    prefixes, expected, origin = cot_prefixes(rows[i] for i in order)
    meta = _dataset_meta(GSM8K_DATASET, split, config.data_file)
    meta.update(
        task="cot",
        template=COT_TEMPLATE,
        expected=expected,
        rows=[order[o["row"]] for o in origin],
        steps=[o["step"] for o in origin],
    )
    return prefixes, meta


HUB_SOURCES = ("wikipedia", "glue-rte", "rte-fewshot", "induction", "cot")


def source_field(source: dict, field: str) -> list | None:
    """A per-prefix field of a cache's `meta["source"]` (e.g. "expected"), in prefix order; the
    shards' own fields joined for a cache combined from shards; None where a source has none."""
    if "combined" in source:
        parts = [source_field(part, field) for part in source["combined"]]
        if any(part is None for part in parts):
            return None
        return [value for part in parts for value in part]
    return source.get(field)


def source_task(source: dict) -> str | None:
    """The task a cache's prefixes pose ("induction", "rte", "cot"; its shards' for a combined
    cache), None for plain text."""
    if "combined" in source:
        return next((t for part in source["combined"] if (t := source_task(part))), None)
    return source.get("task")


def _take(prefixes: list[str], meta: dict, rows: slice) -> tuple[list[str], dict]:
    """The prefixes in `rows`, with their per-prefix metadata."""
    meta = dict(meta)
    for field in PER_PREFIX_FIELDS:
        if field in meta:
            meta[field] = meta[field][rows]
    return prefixes[rows], meta


def read_text(path: Path) -> str:
    """A local file's text: UTF-8, without a leading byte-order mark (an editor's, not part of
    the first prefix); ValueError naming the file and line of a byte that is not UTF-8."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory; pass a prefix file") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line} is not UTF-8 text (byte {data[e.start]:#04x}); save the file as UTF-8"
        ) from None


def _json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON ({e.msg}, column {e.colno})") from None


def load_local(path: Path, column: str | None = None) -> list[str]:
    """A local file: .txt (one prefix per line), .jsonl or .tsv (with `column`), .json (a list).

    Messages name the file and the line of what is wrong in it."""
    suffix = path.suffix.lower()
    if suffix not in LOCAL_SUFFIXES:
        raise ValueError(
            f"cannot read prefixes from {path}: use one of {', '.join(LOCAL_SUFFIXES)}, "
            "or a registered dataset"
        )
    text = read_text(path)
    if suffix == ".txt":
        # Blank lines are separators, not prefixes: an empty prefix has no next token to predict.
        lines = text.split("\n")
        return [line.removesuffix("\r") for line in lines if line.strip()]
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno} is not valid JSON ({e.msg})") from None
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise ValueError(f"{path} must hold a JSON list of strings; use .jsonl for records")
        return data
    if suffix == ".jsonl":
        column = column or "text"
        prefixes = []
        for line_number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            record = _json(line, where)
            if not isinstance(record, dict):
                raise ValueError(
                    f"{where} holds a JSON {type(record).__name__}, not an object; each line "
                    f'of a .jsonl file is one record, e.g. {{"{column}": "..."}}'
                )
            if column not in record:
                raise ValueError(
                    f"{where} has no field {column!r} (fields: {', '.join(record)}); pass --column"
                )
            if not isinstance(record[column], str):
                raise ValueError(
                    f"{where}: field {column!r} is {json.dumps(record[column])[:40]}, not a "
                    "string; every prefix is text"
                )
            prefixes.append(record[column])
        return prefixes
    if column is None:
        raise ValueError(f"{path} is a .tsv file; pass --column with the prefix column's name")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    if column not in (reader.fieldnames or []):
        raise ValueError(
            f"{path} has no column {column!r} (columns: "
            f"{', '.join(reader.fieldnames or [])}); pass --column"
        )
    prefixes = []
    for row in reader:
        if row[column] is None:
            raise ValueError(
                f"{path}:{reader.line_num} has no {column!r} value (fewer tab-separated fields "
                "than the header); fix that line"
            )
        prefixes.append(row[column])
    return prefixes


def load_hub(
    spec: str, split: str | None, column: str | None, num_prefixes: int | None
) -> list[str]:
    """Any hub dataset, "org/name" or "org/name:config", streamed, with a text `column`."""
    from datasets import load_dataset

    if not column:
        raise ValueError(f"hub dataset {spec!r} needs --column naming its text field")
    name, _, config = spec.partition(":")
    rows = load_dataset(name, config or None, split=split or "train", streaming=True)
    return [str(row[column]) for row in itertools.islice(rows, num_prefixes)]


@dataclass
class PrefixConfig:
    """Which prefixes the models continue (cache_features.py's prefix flags)."""

    dataset: str | None = None
    """A registered prefix source (listed below), a local file, or hub:ORG/NAME[:CONFIG]."""
    split: str | None = None
    """Dataset split (default: train)."""
    column: str | None = None
    """Text column of a .jsonl/.tsv file or hub dataset."""
    num_prefixes: int | None = None
    """How many prefixes (default: all; wikipedia 20000, induction 5000)."""
    seed: int = 0
    """Sampling seed of the prefix set."""
    shots: int | None = None
    """rte-fewshot: solved examples before each query, drawn from other rows (default 2, and 1
    for demo-rte-fewshot; 0 is glue-rte)."""
    data_file: str | None = None
    """A hub source (wikipedia, glue-rte, rte-fewshot, induction, cot) read from this local file
    in its hub dataset's format (.jsonl, .json or .parquet records with its fields)."""
    shard: str | None = None
    """K/N: only the K-th of N contiguous slices of the prefixes (K from 0), to spread one
    dataset over machines; join the parts with --combine."""

    def __post_init__(self) -> None:
        if self.num_prefixes is not None and self.num_prefixes <= 0:
            raise ValueError(f"--num-prefixes must be positive, got {self.num_prefixes}")
        if self.shots is not None and self.shots < 0:
            raise ValueError(f"--shots must be at least 0, got {self.shots}")
        if self.shots is not None and self.dataset not in FEWSHOT_SOURCES:
            raise ValueError(f"--shots goes with --dataset {' or '.join(FEWSHOT_SOURCES)}")
        if self.data_file is not None and self.dataset not in HUB_SOURCES:
            raise ValueError(
                f"--data-file stands in for a hub source; use it with --dataset "
                f"{', '.join(HUB_SOURCES)}"
            )
        self.shard_slice()  # refuse a bad --shard before anything runs

    def shard_slice(self) -> tuple[int, int] | None:
        """(K, N) of --shard K/N, or None."""
        if self.shard is None:
            return None
        try:
            k, n = (int(x) for x in self.shard.split("/"))
        except ValueError:
            raise ValueError(f"--shard must look like K/N (e.g. 0/4), got {self.shard!r}") from None
        if not 0 <= k < n:
            raise ValueError(f"--shard K/N needs 0 <= K < N, got {self.shard!r}")
        return k, n

    def resolved_shots(self, default: int = DEFAULT_SHOTS) -> int:
        """--shots, or the source's `default` when not given."""
        return default if self.shots is None else self.shots


def load_prefixes(config: PrefixConfig, suite_dir: Path | None = None) -> tuple[list[str], dict]:
    """Prefixes and a description of where they came from, for the cache's metadata.

    `config.dataset` is a PREFIX_SOURCES name, a local file, or "hub:org/name[:config]". Local and
    hub datasets give their first `num_prefixes` rows, in file order. With a shard, only that
    contiguous slice of the prefixes is returned.
    """
    dataset, split, column, num_prefixes, seed = (
        config.dataset,
        config.split,
        config.column,
        config.num_prefixes,
        config.seed,
    )
    if dataset is None:
        raise ValueError("no prefixes chosen: pass --dataset (a source, a file or hub:ORG/NAME)")
    if dataset in PREFIX_SOURCES:
        prefixes, meta = _take(*PREFIX_SOURCES[dataset](config, suite_dir), slice(num_prefixes))
    elif dataset.startswith("hub:"):
        prefixes = load_hub(dataset.removeprefix("hub:"), split, column, num_prefixes)
        meta = {"dataset": dataset, "split": split or "train", "column": column}
    elif Path(dataset).is_file():
        prefixes = load_local(Path(dataset), column)[:num_prefixes]
        meta = {"dataset": str(Path(dataset).resolve()), "column": column}
    else:
        raise ValueError(
            f"unknown dataset {dataset!r}: not a file, not hub:org/name, not one of "
            f"{', '.join(PREFIX_SOURCES)}"
        )
    check_prefixes(prefixes, dataset)
    meta.setdefault("dataset", dataset)
    meta["num_prefixes"] = len(prefixes)
    meta["seed"] = seed
    shard = config.shard_slice()
    if shard is not None:
        k, n = shard
        rows = slice(k * len(prefixes) // n, (k + 1) * len(prefixes) // n)
        prefixes, meta = _take(prefixes, meta, rows)
        meta["shard"] = config.shard
        if not prefixes:
            raise ValueError(f"shard {config.shard} of {meta['num_prefixes']} prefixes is empty")
    return prefixes, meta


def check_prefixes(prefixes: list[str], dataset: str) -> None:
    """Refuse no prefixes, and a prefix that is not text or is empty (nothing to continue)."""
    if not prefixes:
        raise ValueError(f"dataset {dataset!r} gave no prefixes; check its path, split and column")
    for i, prefix in enumerate(prefixes):
        if not isinstance(prefix, str):
            raise ValueError(
                f"prefix {i} of {dataset!r} is {type(prefix).__name__}, not text; check --column"
            )
        if not prefix:
            raise ValueError(
                f"prefix {i} of {dataset!r} is empty; a model needs at least one token to "
                "continue, so remove empty rows"
            )


def describe_sources() -> str:
    """One line per registered source, for `--help`."""
    width = max(16, *map(len, PREFIX_SOURCES))
    lines = [
        f"  {name:<{width}} {(fn.__doc__ or '').strip().splitlines()[0]}"
        for name, fn in PREFIX_SOURCES.items()
    ]
    lines.append("  PATH             local .txt (a prefix a line), .jsonl/.tsv (--column), .json")
    lines.append("  hub:ORG/NAME     any hub dataset, ORG/NAME[:CONFIG], with --column and --split")
    return "\n".join(lines)
