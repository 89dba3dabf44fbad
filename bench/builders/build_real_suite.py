"""Build a realistic offline suite from real text: WikiText-2 with the Pythia tokenizer.

    python bench/build_real_suite.py                          # the demo ladder, full length (slow)
    python bench/build_real_suite.py --steps 20 --rungs 3     # a short run that shows it works
    python bench/build_real_suite.py --caches                 # + wiki-style and GLUE RTE caches
    python bench/build_real_suite.py --bpe-vocab 8192 --caches   # an 8k BPE trained on the text
    python bench/build_real_suite.py --extra-text wikitext2-test.txt   # + more WikiText-2 text

The same builder as the demo (`emergence_model.demo.build.build_suite`) with `corpus=` and
`tokenizer=`: documents are WikiText-2's paragraphs, split by a hash of their text, and the models
have Pythia's 50,304 logit rows for the tokenizer's 50,281 ids. `--bpe-vocab N` trains a
byte-level BPE of N tokens on the WikiText training documents instead (the demo's tokenizer
trainer): with 8,192 tokens the ladder is 0.5M to 4.9M parameters and builds several times faster
than with Pythia's 50k embeddings. `--extra-text FILE ...` appends more text of the same kind
(e.g. WikiText-2's test split, `word_language_model/data/wikitext-2/test.txt` of
github.com/pytorch/examples, CC BY-SA 3.0) to the shared WikiText-2 validation text; the
documents of all of it are split by the same hash. With `--caches` it also caches the suite on
the paragraphs' openings (`demo-wiki`) and on the real GLUE RTE training pairs in the
challenge's template, the transfer set the predictor is scored on with Pythia.

Reads ../shared/data (a benchmark, never a test: a fresh clone has no ../shared).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path

from emergence_model.cache import CacheError, open_cache
from emergence_model.demo.build import build_suite, summary_table
from emergence_model.demo.caches import prepare_demo_caches
from emergence_model.demo.config import DemoConfig, Rung
from emergence_model.extract import ExtractConfig, extract_suite
from emergence_model.lm import load_tokenizer
from emergence_model.prompts import rte_prefixes
from emergence_model.suites import get_suite

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def glue_rte_prefixes(tsv: Path, tokenizer, max_tokens: int) -> list[str]:
    """GLUE RTE pairs in the challenge's template, those that fit the models' training length."""
    with open(tsv, encoding="utf-8", newline="") as f:
        prefixes = rte_prefixes(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    lengths = map(len, tokenizer(prefixes, add_special_tokens=False)["input_ids"])
    return [p for p, n in zip(prefixes, lengths, strict=True) if n <= max_tokens]


def joined_text(suite_dir: Path, files: Sequence[Path]) -> Path:
    """The one text file the builder reads: `files[0]` itself, or all of them joined in
    `suite_dir` (rewritten only when it changes, so that a built suite is reused)."""
    if len(files) == 1:
        return files[0]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"no text file at {', '.join(missing)}: fetch it or drop --extra-text")
    text = "".join(f.read_text(encoding="utf-8") for f in files)
    path = suite_dir / "corpus-text.txt"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        suite_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def build_real_suite(
    suite_dir: Path,
    data_dir: Path = DATA,
    *,
    steps: int = DemoConfig.steps,
    rungs: int = len(DemoConfig.ladder),
    bpe_vocab: int | None = None,
    caches: bool = False,
    ladder: tuple[Rung, ...] = DemoConfig.ladder,
    extra_text: Sequence[Path] = (),
) -> list[Path]:
    """Build (or reuse) the suite of the first `rungs` of `ladder` on the shared WikiText-2 text
    and `extra_text` and, with `caches`, its demo-wiki, demo-rte and glue-rte caches; returns the
    cache paths."""
    config = DemoConfig(
        ladder=ladder[:rungs],
        steps=steps,
        warmup_steps=min(DemoConfig.warmup_steps, steps // 10),
        vocab_size=bpe_vocab or DemoConfig.vocab_size,
    )
    started = time.perf_counter()
    info = build_suite(
        suite_dir,
        config,
        corpus=joined_text(suite_dir, [data_dir / "wikitext2-valid.txt", *extra_text]),
        tokenizer=None if bpe_vocab else data_dir / "gpt-neox-20b-tokenizer.json",
    )
    print(summary_table(info))
    print(f"corpus: {json.dumps(info['corpus'])}")
    print(f"wall time this run: {time.perf_counter() - started:.0f} s")
    if not caches:
        return []
    wiki, demo_rte = prepare_demo_caches(suite_dir)
    suite = get_suite("demo", suite_dir=suite_dir)
    tsv = data_dir / "rte-train.tsv"
    rte = suite_dir / "caches" / "glue-rte"
    try:
        open_cache(rte)
    except (CacheError, FileNotFoundError):
        prefixes = glue_rte_prefixes(tsv, load_tokenizer(suite.target_id), 128)
        source = {"dataset": str(tsv), "max_tokens": 128}
        extract_suite(suite, prefixes, rte, ExtractConfig(device="cpu"), source=source)
    print(f"caches: {wiki} {demo_rte} {rte}")
    return [wiki, demo_rte, rte]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--suite-dir", type=Path, default=Path("runs/real-suite"))
    parser.add_argument("--steps", type=int, default=DemoConfig.steps)
    parser.add_argument("--rungs", type=int, default=len(DemoConfig.ladder), help="first N rungs")
    parser.add_argument(
        "--bpe-vocab",
        type=int,
        default=None,
        help="train a byte-level BPE of this many tokens on the text (default: Pythia's tokenizer)",
    )
    parser.add_argument("--caches", action="store_true", help="also cache demo-wiki and GLUE RTE")
    parser.add_argument(
        "--extra-text",
        type=Path,
        nargs="+",
        default=[],
        help="more plain-text files appended to the shared WikiText-2 validation text",
    )
    args = parser.parse_args()
    build_real_suite(
        args.suite_dir,
        args.data_dir,
        steps=args.steps,
        rungs=args.rungs,
        bpe_vocab=args.bpe_vocab,
        caches=args.caches,
        extra_text=args.extra_text,
    )


if __name__ == "__main__":
    main()
