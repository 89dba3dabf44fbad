"""The demo suite's text: English docstrings of the installed Python standard library, or a file.

Every Python installation carries a few megabytes of English prose in its standard library's
docstrings. They are read from the source files with `ast` (nothing is imported or executed, nothing
is downloaded, nothing is copied into this repository), cleaned into paragraphs of prose, and split
into training and validation documents by a stable hash of the module path, so a module is wholly on
one side. The text depends on the Python version (and on what the distribution ships), which the
corpus metadata records.

The same module makes the demo's two prefix sets from the documents: Wikipedia-style openings (the
first 10-20 words, as the real `wikipedia` source) and RTE-style pairs in the GLUE template, and
trains the demo's byte-level BPE tokenizer.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emergence_model.files import write_json_atomic
from emergence_model.prefixes import RTE_TEMPLATE, wikipedia_prefixes

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
# Ids 0 and 1, as in the GPT-NeoX tokenizer that Pythia uses.
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
# Test suites, IDLE's tests and third-party packages are not the library's own documentation.
SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests"})
SKIPPED_DIRS |= {"idle_test"}
DOCUMENTED_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# A paragraph is kept as prose when at least this share of its words are plain words.
MIN_PROSE_SHARE = 0.6
_PLAIN_WORD = re.compile(r"[(\"']?[A-Za-z][a-z]*(?:'[a-z]+)?[)\"']?[,.;:!?)]*")
# A sentence ends at . ! or ? followed by space and a capital letter (or an opening quote).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
RTE_SENTENCE_WORDS = (5, 35)


@dataclass
class Corpus:
    """Training and validation documents plus where they came from."""

    train: list[str]
    """Training documents, in corpus order."""
    valid: list[str]
    """Held-out documents: validation loss and every demo prefix come from these."""
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


# ---------------------------------------------------------------------------------------------
# Tokenizer


def train_bpe_tokenizer(documents: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `documents`; ids 0/1 are end-of-text and padding.

    Training is deterministic: the same documents give the same merges in any process.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise ValueError(
            f"vocab_size {vocab_size} is below the 256 bytes + special tokens; raise it"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer, length=len(documents))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )


def load_tokenizer_file(path: Path):
    """A `tokenizers` JSON file (e.g. GPT-NeoX-20B's) with <|endoftext|> and <|padding|> tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist; pass a tokenizer.json")
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as e:
        raise ValueError(f"cannot read tokenizer file {path} ({e}); pass a tokenizers JSON") from e
    # Checked on the file itself: the transformers wrapper would add a missing token silently.
    missing = [t for t in SPECIAL_TOKENS if backend.token_to_id(t) is None]
    if missing:
        raise ValueError(
            f"tokenizer file {path} has no {', '.join(missing)} token; the demo needs both "
            "(as GPT-NeoX's tokenizer has)"
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )


# ---------------------------------------------------------------------------------------------
# Prefixes


def _word_starts(text: str) -> list[int]:
    return [m.start() for m in re.finditer(r"\S+", text)]


def opening_candidates(documents: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Texts whose openings make Wikipedia-style prefixes: each document from its start, then each
    paragraph after the first, then each sentence that is not a paragraph's first.

    Each candidate runs to the end of its document less its last word, so a prefix drawn from it
    always has a real next word.
    """
    docs, paragraphs, sentences = [], [], []
    for doc in documents:
        body_end = _word_starts(doc)[-1] if doc.strip() else 0
        offset = 0
        for p_index, paragraph in enumerate(doc.split("\n")):
            starts = [offset]
            starts += [offset + m.end() for m in _SENTENCE_END.finditer(paragraph)]
            for s_index, start in enumerate(starts):
                if start < body_end:
                    text = doc[start:body_end].strip()
                    if s_index:
                        sentences.append(text)
                    elif p_index:
                        paragraphs.append(text)
                    else:
                        docs.append(text)
            offset += len(paragraph) + 1
    counts = {"documents": len(docs), "paragraphs": len(paragraphs), "sentences": len(sentences)}
    return docs + paragraphs + sentences, counts


def wiki_style_prefixes(documents: Sequence[str], seed: int = 0) -> tuple[list[str], dict]:
    """The first 10-20 words (uniform, from `seed`) of document, paragraph and sentence openings.

    The same draw as the real `wikipedia` source (`prefixes.wikipedia_prefixes`); documents alone
    are too few for several thousand prefixes, so paragraph and sentence openings follow the
    document openings. Duplicates are dropped.
    """
    candidates, counts = opening_candidates(documents)
    prefixes = list(dict.fromkeys(wikipedia_prefixes(candidates, len(candidates), seed)))
    return prefixes, {"candidates": counts, "num_prefixes": len(prefixes)}


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


def rte_style_prefixes(
    documents: Sequence[str], seed: int = 0, max_premise_words: int = 45
) -> tuple[list[str], dict]:
    """RTE-template prompts from documents' sentences: a premise of one or two sentences of a
    document, and a hypothesis that is one of its sentences, another sentence of the same document,
    or a sentence of another document, so that both true and false pairs occur.
    """
    rng = random.Random(seed)
    per_doc = [s for s in (split_sentences(d) for d in documents) if s]
    pool = [(d, i) for d, sents in enumerate(per_doc) for i in range(len(sents))]
    if len(per_doc) < 2:
        return [], {"num_prefixes": 0, "hypotheses": {}}
    prefixes, kinds = [], {"in_premise": 0, "same_document": 0, "other_document": 0}
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
            prefixes.append(RTE_TEMPLATE.format(sentence1=" ".join(premise), sentence2=hypothesis))
    return prefixes, {"num_prefixes": len(prefixes), "hypotheses": kinds}
