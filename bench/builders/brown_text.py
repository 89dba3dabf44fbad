"""The Brown corpus as WikiText-style plain text: more real English for a real ladder.

    python -m bench.builders.brown_text --archive brown.zip --out ../data/brown.txt

Reads NLTK's tagged Brown corpus (`packages/corpora/brown.zip` of github.com/nltk/nltk_data;
Francis and Kucera 1964, revised 1979: 500 samples of edited American English, about 1.16M
words, "distributed with the permission of the copyright holder, redistribution permitted") and
writes one paragraph a line, a blank line before each, in WikiText-2's tokenisation: the
part-of-speech tags dropped; words, punctuation, 's and n't apart by spaces; `` and '' as "; a
hyphen inside a word as @-@, and a comma or point inside a number as @,@ or @.@.
`python -m bench.builders.build_real_suite --extra-text` appends it to WikiText-2 (`real-brown`
in `bench.experiments.ladders`).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import start_run
from emergence_model.cli import exit_on_user_error

SAMPLE = re.compile(r"brown/c[a-r]\d\d")


@dataclass
class BrownTextConfig:
    """Which archive to read and where the text goes."""

    archive: Path | None = None
    """NLTK's brown.zip (packages/corpora/brown.zip of github.com/nltk/nltk_data)."""
    out: Path | None = None
    """The text file to write."""

    def __post_init__(self) -> None:
        if self.archive is None or self.out is None:
            raise ValueError("pass --archive (NLTK's brown.zip) and --out (the text file to write)")


def untagged(token: str) -> str:
    """One tagged token (word/tag) -> the word in WikiText's tokenisation."""
    word = token.rsplit("/", 1)[0]
    if word in ("``", "''"):
        return '"'
    word = re.sub(r"(?<=\w)(n't|'s)$", r" \1", word)  # do n't, Georgia 's
    word = re.sub(r"(?<=\w)-(?=\w)", " @-@ ", word)
    return re.sub(r"(?<=\d)([,.])(?=\d)", r" @\1@ ", word)


def brown_paragraphs(archive: Path) -> list[str]:
    """Every paragraph of the corpus's 500 samples, in order, one string each."""
    paragraphs = []
    with zipfile.ZipFile(archive) as z:
        for name in sorted(n for n in z.namelist() if SAMPLE.fullmatch(n)):
            text = z.read(name).decode("utf-8")
            for block in re.split(r"\n[ \t]*\n", text):
                words = [untagged(t) for t in block.split()]
                if words:
                    paragraphs.append(" ".join(words))
    return paragraphs


def main(argv: Sequence[str] | None = None) -> None:
    (config,), _ = start_run(__file__, __doc__, argv, BrownTextConfig, writes_results=False)
    if not config.archive.is_file():
        raise ValueError(f"no file at {config.archive}: fetch NLTK's packages/corpora/brown.zip")
    if not zipfile.is_zipfile(config.archive):
        raise ValueError(f"{config.archive} is not a zip archive: pass NLTK's brown.zip")
    paragraphs = brown_paragraphs(config.archive)
    if not paragraphs:
        raise ValueError(
            f"{config.archive} holds no Brown samples (brown/ca01 ...): pass brown.zip"
        )
    # as WikiText-2's files: a blank line before each paragraph, so that appended text stays apart
    config.out.write_text("".join(f" \n {p} \n" for p in paragraphs), encoding="utf-8")
    words = sum(len(p.split()) for p in paragraphs)
    print(f"{len(paragraphs)} paragraphs, {words} words -> {config.out}")


if __name__ == "__main__":
    exit_on_user_error(main)
