"""The demo suite's documents: the standard library's English docstrings, or a text file.

Every Python installation carries a few megabytes of English prose in its standard library's
docstrings. They are read from the source files with `ast` (nothing is imported or executed, nothing
is downloaded, nothing is copied into this repository), cleaned into paragraphs of prose, and split
into training and validation documents by a stable hash of the module path, so a module is wholly on
one side. The text depends on the Python version (and on what the distribution ships), which the
corpus metadata records.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emergence_model.demo.config import CORPUS_FILE, DemoConfig, log
from emergence_model.files import write_json_atomic

# Test suites, IDLE's tests and third-party packages are not the library's own documentation.
SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests"})
SKIPPED_DIRS |= {"idle_test"}
DOCUMENTED_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# A paragraph is kept as prose when at least this share of its words are plain words.
MIN_PROSE_SHARE = 0.6
_PLAIN_WORD = re.compile(r"[(\"']?[A-Za-z][a-z]*(?:'[a-z]+)?[)\"']?[,.;:!?)]*")


@dataclass
class Corpus:
    """Training and validation documents plus where they came from."""

    train: list[str]
    """Training documents, in corpus order."""
    valid: list[str]
    """Held-out documents: the validation loss comes from these (prefixes come from both sides)."""
    meta: dict = field(default_factory=dict)
    """Source, Python version, counts and a hash of the text, for the suite's metadata."""

    def save(self, path: Path) -> None:
        write_json_atomic(path, {"meta": self.meta, "train": self.train, "valid": self.valid})

    @classmethod
    def load(cls, path: Path) -> Corpus:
        data = json.loads(path.read_text())
        return cls(train=data["train"], valid=data["valid"], meta=data["meta"])


def stable_percent(key: str) -> int:
    """0-99 from a hash of `key`, the same on every machine and Python (unlike `hash`)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100


def _text_sha256(documents: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for doc in documents:
        digest.update(doc.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_files(root: Path) -> list[Path]:
    """Every .py file of the standard library under `root`, in sorted (deterministic) order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Sorting in place fixes the walk order; pruning skips tests and installed packages.
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith("config-")
        )
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return files


def module_docstrings(source: bytes) -> Iterator[str]:
    """Docstrings of a module, its classes and functions, in source order, never importing it."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        # A few stdlib files are templates or test data that do not parse: they have no docs.
        return
    for node in ast.walk(tree):
        if isinstance(node, DOCUMENTED_NODES):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def is_prose(paragraph: str) -> bool:
    words = paragraph.split()
    if len(words) < 3:
        return False
    plain = sum(bool(_PLAIN_WORD.fullmatch(w)) for w in words)
    return plain >= MIN_PROSE_SHARE * len(words)


def clean_docstring(doc: str) -> str:
    """The prose paragraphs of a docstring, each on one line; "" when none is prose.

    Doctest examples, indented literal blocks (code, tables), reST directives and signature lines
    are dropped; line wrapping inside a paragraph becomes one space.
    """
    paragraphs = []
    for block in re.split(r"\n[ \t]*\n", doc):
        lines = []
        for line in block.splitlines():
            if line.lstrip().startswith((">>>", "...", ".. ")):
                break
            lines.append(line)
        if not lines or lines[0][:1].isspace():
            continue
        paragraph = " ".join(" ".join(lines).split())
        if is_prose(paragraph):
            paragraphs.append(paragraph)
    return "\n".join(paragraphs)


def stdlib_corpus(valid_percent: int = 20, root: Path | None = None) -> Corpus:
    """English docstrings of the standard library, deduplicated, split by module path hash."""
    root = Path(root) if root is not None else stdlib_root()
    files = stdlib_source_files(root)
    if not files:
        raise FileNotFoundError(
            f"no Python source files under {root}; this Python ships without its standard "
            "library sources, so pass --corpus FILE with your own text"
        )
    seen: set[str] = set()
    corpus = Corpus(train=[], valid=[])
    for path in files:
        module = path.relative_to(root).as_posix()
        split = corpus.valid if stable_percent(module) < valid_percent else corpus.train
        for doc in module_docstrings(path.read_bytes()):
            text = clean_docstring(doc)
            # Inherited and copied docstrings repeat; one copy keeps validation text unseen.
            if text and text not in seen:
                seen.add(text)
                split.append(text)
    corpus.meta = {
        "source": "python-stdlib-docstrings",
        "python_version": sys.version.split()[0],
        "implementation": sys.implementation.name,
        "stdlib_root": str(root),
        "num_files": len(files),
        "split": f"module path sha256 % 100 < {valid_percent} -> validation",
    }
    return _with_counts(corpus)


def text_file_corpus(path: Path, valid_percent: int = 20) -> Corpus:
    """A plain-text file: documents are blocks separated by blank lines, split by text hash."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist; pass a plain-text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"corpus file {path} is not UTF-8 text ({e.reason}); convert it") from e
    seen: set[str] = set()
    corpus = Corpus(train=[], valid=[])
    for block in re.split(r"\n[ \t]*\n", text):
        doc = block.strip()
        if doc and doc not in seen:
            seen.add(doc)
            split = corpus.valid if stable_percent(doc) < valid_percent else corpus.train
            split.append(doc)
    if not corpus.train or not corpus.valid:
        raise ValueError(
            f"corpus file {path} gave {len(corpus.train)} training and {len(corpus.valid)} "
            "validation documents; it needs many documents separated by blank lines"
        )
    corpus.meta = {
        "source": "text-file",
        "path": str(path.resolve()),
        "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "python_version": sys.version.split()[0],
        "split": f"document text sha256 % 100 < {valid_percent} -> validation",
    }
    return _with_counts(corpus)


def _with_counts(corpus: Corpus) -> Corpus:
    corpus.meta.update(
        {
            "train_documents": len(corpus.train),
            "valid_documents": len(corpus.valid),
            "train_chars": sum(map(len, corpus.train)),
            "valid_chars": sum(map(len, corpus.valid)),
            "text_sha256": _text_sha256(corpus.train + ["<valid>"] + corpus.valid),
        }
    )
    return corpus


def prepare_corpus(suite_dir: Path, config: DemoConfig) -> Corpus:
    """The suite's corpus: read from suite_dir if there, else made and saved there."""
    path = suite_dir / CORPUS_FILE
    if path.exists():
        return Corpus.load(path)
    if config.corpus is None:
        log("reading the standard library's docstrings with ast")
        corpus = stdlib_corpus(config.valid_percent)
    else:
        corpus = text_file_corpus(Path(config.corpus), config.valid_percent)
    suite_dir.mkdir(parents=True, exist_ok=True)
    corpus.save(path)
    return corpus
