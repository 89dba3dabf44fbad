"""Build a realistic offline suite from real text: WikiText-2 with the Pythia tokenizer.

    python -m bench.builders.build_real_suite --suite-dir runs/real-suite   # full length (slow)
    python -m bench.builders.build_real_suite --suite-dir runs/short --steps 20 --rungs 3
    python -m bench.builders.build_real_suite --suite-dir S --caches    # + wiki-style, GLUE RTE
    python -m bench.builders.build_real_suite --suite-dir S --bpe-vocab 8192   # an 8k BPE
    python -m bench.builders.build_real_suite --suite-dir S --extra-text wikitext2-test.txt

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

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import SHARED_DATA, start_run
from emergence_model.cache import CacheError, open_cache
from emergence_model.cli import exit_on_user_error
from emergence_model.demo.build import build_suite, summary_table
from emergence_model.demo.caches import prepare_demo_caches
from emergence_model.demo.config import DemoConfig, Rung
from emergence_model.extract import ExtractConfig, extract_suite
from emergence_model.lm import load_tokenizer
from emergence_model.prompts import rte_prefixes
from emergence_model.suites import get_suite


@dataclass
class RealSuiteConfig:
    """The text, the tokenizer and the ladder of a suite built on real text."""

    data_dir: Path = SHARED_DATA
    """Where WikiText-2, the GPT-NeoX tokenizer and GLUE RTE are (../shared/data)."""
    steps: int = DemoConfig.steps
    """Training steps of each model."""
    rungs: int = len(DemoConfig.ladder)
    """The first N rungs of the demo's ladder."""
    bpe_vocab: int | None = None
    """Train a byte-level BPE of this many tokens on the text (default: Pythia's tokenizer)."""
    caches: bool = False
    """Also cache demo-wiki, demo-rte and GLUE RTE."""
    extra_text: list[Path] = field(default_factory=list)
    """More plain-text files appended to the shared WikiText-2 validation text."""


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
        raise ValueError(f"no text file at {', '.join(missing)}: fetch it or drop --extra-text")
    text = "".join(f.read_text(encoding="utf-8") for f in files)
    path = suite_dir / "corpus-text.txt"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        suite_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def build_real_suite(
    suite_dir: Path,
    data_dir: Path = SHARED_DATA,
    *,
    steps: int = DemoConfig.steps,
    rungs: int = len(DemoConfig.ladder),
    bpe_vocab: int | None = None,
    caches: bool = False,
    ladder: tuple[Rung, ...] = DemoConfig.ladder,
    extra_text: Sequence[Path] = (),
    progress: bool = True,
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
        progress=progress,
    )
    print(summary_table(info))
    print(f"corpus: {json.dumps(info['corpus'])}")
    print(f"wall time this run: {time.perf_counter() - started:.0f} s")
    if not caches:
        return []
    wiki, demo_rte = prepare_demo_caches(suite_dir, progress=progress)
    suite = get_suite("demo", suite_dir=suite_dir)
    tsv = data_dir / "rte-train.tsv"
    rte = suite_dir / "caches" / "glue-rte"
    try:
        open_cache(rte)
    except (CacheError, FileNotFoundError):
        prefixes = glue_rte_prefixes(tsv, load_tokenizer(suite.target_id), 128)
        source = {"dataset": str(tsv), "max_tokens": 128}
        extract = ExtractConfig(device="cpu", progress=progress)
        extract_suite(suite, prefixes, rte, extract, source=source)
    print(f"caches: {wiki} {demo_rte} {rte}")
    return [wiki, demo_rte, rte]


def main(argv: Sequence[str] | None = None) -> None:
    (config,), run = start_run(
        __file__, __doc__, argv, RealSuiteConfig, reads_suite=True, writes_results=False
    )
    if run.options.suite_dir is None:  # never the demo's own suite: this one is another
        raise ValueError("pass --suite-dir: where to build the suite (e.g. runs/real-suite)")
    build_real_suite(
        run.options.suite_dir,
        config.data_dir,
        steps=config.steps,
        rungs=config.rungs,
        bpe_vocab=config.bpe_vocab,
        caches=config.caches,
        extra_text=config.extra_text,
        progress=run.options.progress,
    )


if __name__ == "__main__":
    exit_on_user_error(main)
