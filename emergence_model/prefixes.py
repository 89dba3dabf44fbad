"""Prefix sources: which texts the models continue.

`PREFIX_SOURCES` maps a name to a loader; a new source is one entry, and its docstring is what
`cache_features.py --help` shows. `load_prefixes` also takes a local file path or "hub:org/name".
How a prefix is cut from raw text (the first 10-20 words, the RTE template) is `prompts.py`'s.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from emergence_model.demo.prefix_sets import demo_prefixes
from emergence_model.prompts import RTE_TEMPLATE, WIKIPEDIA_WORDS, rte_prefixes, wikipedia_prefixes

WIKIPEDIA_DATASET = ("wikimedia/wikipedia", "20231101.en")
GLUE_DATASET = ("nyu-mll/glue", "rte")
DEFAULT_WIKIPEDIA_PREFIXES = 20_000
# Articles are drawn through a shuffle buffer of the stream, so that a sample is not only the
# lowest page ids, without downloading the 20 GB dump.
WIKIPEDIA_SHUFFLE_BUFFER = 10_000
LOCAL_SUFFIXES = (".txt", ".jsonl", ".tsv", ".json")


def wikipedia(
    split: str | None = None,
    num_prefixes: int | None = None,
    seed: int = 0,
    column: str | None = None,
    suite_dir: Path | None = None,
) -> tuple[list[str], dict]:
    """First 10-20 words of English Wikipedia articles (wikimedia/wikipedia, streamed)."""
    from datasets import load_dataset

    name, config = WIKIPEDIA_DATASET
    split = split or "train"
    num_prefixes = num_prefixes or DEFAULT_WIKIPEDIA_PREFIXES
    stream = load_dataset(name, config, split=split, streaming=True)
    stream = stream.shuffle(seed=seed, buffer_size=WIKIPEDIA_SHUFFLE_BUFFER)
    prefixes = wikipedia_prefixes(stream, num_prefixes, seed)
    meta = {"dataset": name, "config": config, "split": split, "words": list(WIKIPEDIA_WORDS)}
    meta["shuffle_buffer"] = WIKIPEDIA_SHUFFLE_BUFFER
    return prefixes, meta


def glue_rte(
    split: str | None = None,
    num_prefixes: int | None = None,
    seed: int = 0,
    column: str | None = None,
    suite_dir: Path | None = None,
) -> tuple[list[str], dict]:
    """GLUE RTE pairs (nyu-mll/glue rte, --split) in the challenge's True-or-False template."""
    from datasets import load_dataset

    name, config = GLUE_DATASET
    split = split or "train"
    rows = load_dataset(name, config, split=split)
    prefixes = rte_prefixes(rows)[:num_prefixes]
    return prefixes, {"dataset": name, "config": config, "split": split, "template": RTE_TEMPLATE}


def _demo(kind: str) -> Callable[..., tuple[list[str], dict]]:
    def load(
        split: str | None = None,
        num_prefixes: int | None = None,
        seed: int = 0,
        column: str | None = None,
        suite_dir: Path | None = None,
    ) -> tuple[list[str], dict]:
        prefixes = list(demo_prefixes(kind, suite_dir, seed=seed))[:num_prefixes]
        return prefixes, {
            "dataset": f"demo-{kind}",
            "suite_dir": str(suite_dir or ""),
            "seed": seed,
        }

    what = "Wikipedia-style" if kind == "wiki" else "RTE-template"
    load.__doc__ = f"{what} prefixes of the demo suite's own corpus (offline)."
    return load


PREFIX_SOURCES: dict[str, Callable[..., tuple[list[str], dict]]] = {
    "wikipedia": wikipedia,
    "glue-rte": glue_rte,
    "demo-wiki": _demo("wiki"),
    "demo-rte": _demo("rte"),
}


def load_local(path: Path, column: str | None = None) -> list[str]:
    """A local file: .txt (one prefix per line), .jsonl or .tsv (with `column`), .json (a list)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        # Blank lines are separators, not prefixes: an empty prefix has no next token to predict.
        lines = path.read_text(encoding="utf-8").split("\n")
        return [line.removesuffix("\r") for line in lines if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise ValueError(f"{path} must hold a JSON list of strings; use .jsonl for records")
        return data
    if suffix == ".jsonl":
        column = column or "text"
        prefixes = []
        with open(path, encoding="utf-8") as f:
            for line_number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if column not in record:
                    raise ValueError(
                        f"{path}:{line_number} has no field {column!r} (fields: "
                        f"{', '.join(record)}); pass --column"
                    )
                prefixes.append(str(record[column]))
        return prefixes
    if suffix == ".tsv":
        if column is None:
            raise ValueError(f"{path} is a .tsv file; pass --column with the prefix column's name")
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if column not in (reader.fieldnames or []):
                raise ValueError(
                    f"{path} has no column {column!r} (columns: "
                    f"{', '.join(reader.fieldnames or [])}); pass --column"
                )
            return [row[column] for row in reader]
    raise ValueError(
        f"cannot read prefixes from {path}: use one of {', '.join(LOCAL_SUFFIXES)}, "
        "or a registered dataset"
    )


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
    """How many prefixes (default: all; wikipedia 20000)."""
    seed: int = 0
    """Sampling seed of the prefix set."""
    shard: str | None = None
    """K/N: only the K-th of N contiguous slices of the prefixes (K from 0), to spread one
    dataset over machines; join the parts with --combine."""

    def __post_init__(self) -> None:
        if self.num_prefixes is not None and self.num_prefixes <= 0:
            raise ValueError(f"--num-prefixes must be positive, got {self.num_prefixes}")
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
        prefixes, meta = PREFIX_SOURCES[dataset](
            split=split, num_prefixes=num_prefixes, seed=seed, column=column, suite_dir=suite_dir
        )
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
        prefixes = prefixes[k * len(prefixes) // n : (k + 1) * len(prefixes) // n]
        meta["shard"] = config.shard
        if not prefixes:
            raise ValueError(f"shard {config.shard} of {meta['num_prefixes']} prefixes is empty")
    return prefixes, meta


def check_prefixes(prefixes: list[str], dataset: str) -> None:
    if not prefixes:
        raise ValueError(f"dataset {dataset!r} gave no prefixes; check its path, split and column")
    for i, prefix in enumerate(prefixes):
        if not prefix:
            raise ValueError(
                f"prefix {i} of {dataset!r} is empty; a model needs at least one token to "
                "continue, so remove empty rows"
            )


def describe_sources() -> str:
    """One line per registered source, for `--help`."""
    lines = [
        f"  {name:<16} {(fn.__doc__ or '').strip().splitlines()[0]}"
        for name, fn in PREFIX_SOURCES.items()
    ]
    lines.append("  PATH             local .txt (a prefix a line), .jsonl/.tsv (--column), .json")
    lines.append("  hub:ORG/NAME     any hub dataset, ORG/NAME[:CONFIG], with --column and --split")
    return "\n".join(lines)
