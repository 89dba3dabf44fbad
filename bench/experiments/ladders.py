"""The ladders the experiments are judged on, each built (or reused) in ROOT/<name>.

- seed0 .. seed3: the demo suite (`python -m emergence_model.demo caches --seed S`): the
  standard library's docstrings, a 2k BPE, seven GPT-NeoX models; trained on demo-wiki,
  transfer to demo-rte.
- onelayer: the demo's corpus and recipe, but six one-layer small models and a two-layer target
  of similar sizes (`ONE_LAYER_LADDER`), so that the largest small model is the best single
  guide; demo-wiki, transfer to demo-rte.
- real: WikiText-2 from ../shared/data with an 8k BPE trained on it
  (`python -m bench.builders.build_real_suite --bpe-vocab 8192 --caches`, the default ladder and
  steps: 0.5M to 4.9M parameters); trained on the paragraphs' openings, transfer to
  demo-rte-style prompts cut from WikiText and to the real GLUE RTE training pairs.
- real-onelayer: the same text, tokenizer and recipe with `ONE_LAYER_LADDER`, the issue's second
  ladder (there the largest small model is the best single guide).
- real-long: the real ladder trained four times as long (2,240 steps, about four passes over
  the text), so that the target has more to learn than its predecessors have.
- real-2x: the real ladder on twice the text, WikiText-2's test split appended, and twice the
  steps (1,120). The test split is not in ../shared/data: fetch
  `word_language_model/data/wikitext-2/test.txt` of github.com/pytorch/examples (WikiText-2,
  Merity et al. 2016, CC BY-SA 3.0) to ../data/wikitext2-test.txt beside the repository.
- real-brown: real-2x's text and the Brown corpus (about 1.2M words of edited American English,
  3.6 times real-2x's text in all), five times the steps (2,800: about two passes). Make
  ../data/brown.txt with `python -m bench.builders.brown_text --archive brown.zip --out
  ../data/brown.txt` from `packages/corpora/brown.zip` of github.com/nltk/nltk_data.
- emergent: the demo's text plus a named synthetic share of copying and alternation windows,
  six one-layer small models and a two-layer target trained seven times longer
  (`python -m emergence_model.demo build --preset emergent`): copying random words back from the
  context forms in the target and in none of the small models (docs/tasks.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.builders.build_real_suite import build_real_suite
from bench.common import REPO
from emergence_model.cache import IncompleteCacheError, open_cache
from emergence_model.demo.build import build_suite
from emergence_model.demo.caches import prepare_demo_caches
from emergence_model.demo.config import PRESETS, DemoConfig, Rung, read_suite_record

# Six one-layer small models and a two-layer target, the demo's widths and learning rates: with one
# layer a small model cannot copy from its context, the target can start to, and the largest small
# model is the closest to it.
ONE_LAYER_LADDER = (
    *(dataclasses.replace(rung, num_layers=1) for rung in DemoConfig.ladder[:-1]),
    dataclasses.replace(DemoConfig.ladder[-1], num_layers=2),
)
REAL_BPE_VOCAB = 8192
ROOT = REPO.parent / "suites"  # the ladders, beside the repository (--root)
WIKITEXT_TEST = REPO.parent / "data" / "wikitext2-test.txt"  # see real-2x above
BROWN_TEXT = REPO.parent / "data" / "brown.txt"  # see real-brown above
# The in-domain cache every ladder's network is trained on, and the transfer sets there may be.
TRAINING_SET = "demo-wiki"
TRANSFER_SETS = ("demo-rte", "glue-rte")


@dataclass(frozen=True)
class Ladder:
    """How to build a ladder in a directory; returns (training cache, transfer caches)."""

    build: Callable[[Path], tuple[Path, list[Path]]]
    about: str


def demo_ladder(config: DemoConfig) -> Callable[[Path], tuple[Path, list[Path]]]:
    def build(suite_dir: Path) -> tuple[Path, list[Path]]:
        record = read_suite_record(suite_dir)
        if record:  # built already, perhaps by an older version: keep its own configuration
            stored = DemoConfig.from_json(record["config"])
            if (stored.seed, stored.ladder) != (config.seed, config.ladder):
                raise ValueError(f"{suite_dir} holds another ladder: pass another --root")
        build_suite(suite_dir, None if record else config, progress=False)
        wiki, rte = prepare_demo_caches(suite_dir, progress=False)
        return wiki, [rte]

    return build


def real_ladder(
    ladder: tuple[Rung, ...], steps: int = DemoConfig.steps, extra_text: tuple[Path, ...] = ()
) -> Callable[[Path], tuple[Path, list[Path]]]:
    def build(suite_dir: Path) -> tuple[Path, list[Path]]:
        wiki, demo_rte, glue_rte = build_real_suite(
            suite_dir,
            bpe_vocab=REAL_BPE_VOCAB,
            caches=True,
            ladder=ladder,
            steps=steps,
            extra_text=extra_text,
        )
        return wiki, [demo_rte, glue_rte]

    return build


LADDERS = {
    **{
        f"seed{s}": Ladder(demo_ladder(DemoConfig(seed=s)), f"demo suite --seed {s}")
        for s in range(4)
    },
    "onelayer": Ladder(
        demo_ladder(DemoConfig(ladder=ONE_LAYER_LADDER)), "one-layer small models, 2-layer target"
    ),
    "emergent": Ladder(
        demo_ladder(PRESETS["emergent"]),
        "the demo's text plus a synthetic copying share; one-layer small models, 2-layer target",
    ),
    "real": Ladder(real_ladder(DemoConfig.ladder), f"WikiText-2, {REAL_BPE_VOCAB}-token BPE"),
    "real-onelayer": Ladder(
        real_ladder(ONE_LAYER_LADDER),
        f"WikiText-2, {REAL_BPE_VOCAB}-token BPE, one-layer small models, 2-layer target",
    ),
    "real-long": Ladder(
        real_ladder(DemoConfig.ladder, steps=4 * DemoConfig.steps),
        f"WikiText-2, {REAL_BPE_VOCAB}-token BPE, four times the steps",
    ),
    "real-2x": Ladder(
        real_ladder(DemoConfig.ladder, steps=2 * DemoConfig.steps, extra_text=(WIKITEXT_TEST,)),
        f"WikiText-2 validation + test, {REAL_BPE_VOCAB}-token BPE, twice the steps",
    ),
    "real-brown": Ladder(
        real_ladder(
            DemoConfig.ladder, steps=5 * DemoConfig.steps, extra_text=(WIKITEXT_TEST, BROWN_TEXT)
        ),
        f"WikiText-2 validation + test + Brown, {REAL_BPE_VOCAB}-token BPE, five times the steps",
    ),
}
LADDER_NAMES = list(LADDERS)


@dataclass
class LadderRoot:
    """Where the ladders are."""

    root: Path = ROOT
    """Where the ladders are built and kept, ../suites beside the repository by default:
    ROOT/<ladder> holds a ladder's suite and caches, ROOT/runs/<ladder> its trained networks."""
    runs: Path | None = None
    """Where the trained networks go instead of ROOT/runs (e.g. beside ladders one may only
    read)."""

    def cache(self, ladder: str, name: str = TRAINING_SET) -> Path:
        """The path of a ladder's cache `name` (it may not be built)."""
        return self.root / ladder / "caches" / name

    @property
    def runs_dir(self) -> Path:
        """Where the ladders' trained networks are: RUNS/<ladder>/<setting>."""
        return self.runs if self.runs is not None else self.root / "runs"

    def built(self, ladder: str) -> tuple[Path, list[Path]] | None:
        """A ladder's training cache and transfer caches where its training cache is there and
        none of them is unfinished (nothing is built or written), else None: its build then
        resumes what an interrupted one left."""
        if not (self.cache(ladder) / "meta.json").is_file():
            return None
        transfers = [self.cache(ladder, t) for t in TRANSFER_SETS]
        transfers = [t for t in transfers if (t / "meta.json").is_file()]
        try:
            for path in (self.cache(ladder), *transfers):
                open_cache(path)
        except IncompleteCacheError:
            return None
        return self.cache(ladder), transfers
