"""The Brown corpus as WikiText-style plain text: more real English for a real ladder.

    python bench/brown_text.py brown.zip ../data/brown.txt

Reads NLTK's tagged Brown corpus (`packages/corpora/brown.zip` of github.com/nltk/nltk_data;
Francis and Kucera 1964, revised 1979: 500 samples of edited American English, about 1.16M
words, "distributed with the permission of the copyright holder, redistribution permitted") and
writes one paragraph a line, a blank line before each, in WikiText-2's tokenisation: the
part-of-speech tags dropped; words, punctuation, 's and n't apart by spaces; `` and '' as "; a
hyphen inside a word as @-@, and a comma or point inside a number as @,@ or @.@.
`build_real_suite.py --extra-text` appends it to WikiText-2 (`real-brown` in
predictor_ladders.py).
"""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path

SAMPLE = re.compile(r"brown/c[a-r]\d\d")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path, help="NLTK's brown.zip")
    parser.add_argument("out", type=Path, help="the text file to write")
    args = parser.parse_args()
    if not args.archive.is_file():
        raise SystemExit(f"no file at {args.archive}: fetch NLTK's packages/corpora/brown.zip")
    if not zipfile.is_zipfile(args.archive):
        raise SystemExit(f"{args.archive} is not a zip archive: pass NLTK's brown.zip")
    paragraphs = brown_paragraphs(args.archive)
    if not paragraphs:
        raise SystemExit(f"{args.archive} holds no Brown samples (brown/ca01 ...): pass brown.zip")
    # as WikiText-2's files: a blank line before each paragraph, so that appended text stays apart
    args.out.write_text("".join(f" \n {p} \n" for p in paragraphs), encoding="utf-8")
    words = sum(len(p.split()) for p in paragraphs)
    print(f"{len(paragraphs)} paragraphs, {words} words -> {args.out}")


if __name__ == "__main__":
    main()
