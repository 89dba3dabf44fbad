"""The predictor on every ladder it is judged on: build or reuse each, train it, one table.

    python bench/predictor_ladders.py                         # every ladder: build, train, table
    python bench/predictor_ladders.py --build-only            # only the ladders and their caches
    python bench/predictor_ladders.py --ladders seed0 onelayer --ablations   # + the ablations
    python bench/predictor_ladders.py --ladders seed1 -- --max-epochs 8      # train.py flags

Ladders (each in ROOT/<name>, --root, default /work/suites):

- seed0 .. seed3: the demo suite (`python -m emergence_model.demo caches --seed S`): the
  standard library's docstrings, a 2k BPE, seven GPT-NeoX models; trained on demo-wiki,
  transfer to demo-rte.
- onelayer: the demo's corpus and recipe, but six one-layer small models and a two-layer target
  of similar sizes (`ONE_LAYER_LADDER`), so that the largest small model is the best single
  guide; demo-wiki, transfer to demo-rte.
- real: WikiText-2 from ../shared/data with an 8k BPE trained on it
  (`bench/build_real_suite.py --bpe-vocab 8192 --caches`, the default ladder and steps);
  trained on the paragraphs' openings, transfer to demo-rte-style prompts cut from WikiText and to
  the real GLUE RTE training pairs.

Each ladder is trained with `python train.py --train-cache ... --transfer-cache ...` (a new
user's command) in ROOT/runs/<ladder>/<setting>, and a finished run whose settings and caches are
unchanged is read back rather than retrained (train.py itself resumes finished folds). The
table gives, per ladder, the network minus the best baseline in top-1 agreement (points, 95%
paired bootstrap), in-domain (cross-fitted over every prefix) and on transfer, and the same
paired differences of KL(target || q) and of sum_x min(p, q) against the best baseline on each.
`--ablations` adds one row per change of `ABLATIONS` (train.py flags against the defaults).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from emergence_model.cache import open_cache  # noqa: E402
from emergence_model.demo.caches import prepare_demo_caches  # noqa: E402
from emergence_model.demo.config import DemoConfig, Rung  # noqa: E402
from emergence_model.demo.build import build_suite  # noqa: E402

# Six one-layer small models and a two-layer target, the demo's widths and learning rates: with one
# layer a small model cannot copy from its context, the target can start to, and the largest small
# model is the closest to it.
ONE_LAYER_LADDER = (
    Rung(32, 1, 2, 8.0e-3),
    Rung(48, 1, 2, 6.7e-3),
    Rung(64, 1, 2, 5.6e-3),
    Rung(96, 1, 4, 4.7e-3),
    Rung(128, 1, 4, 4.0e-3),
    Rung(160, 1, 4, 3.3e-3),
    Rung(192, 2, 6, 2.8e-3),
)
REAL_BPE_VOCAB = 8192


@dataclass(frozen=True)
class Ladder:
    """How to build a ladder in a directory; returns (training cache, transfer caches)."""

    build: Callable[[Path], tuple[Path, list[Path]]]
    about: str


def demo_ladder(config: DemoConfig) -> Callable[[Path], tuple[Path, list[Path]]]:
    def build(suite_dir: Path) -> tuple[Path, list[Path]]:
        build_suite(suite_dir, config, progress=False)
        wiki, rte = prepare_demo_caches(suite_dir, progress=False)
        return wiki, [rte]

    return build


def real_ladder(suite_dir: Path) -> tuple[Path, list[Path]]:
    from build_real_suite import build_real_suite

    wiki, demo_rte, glue_rte = build_real_suite(suite_dir, bpe_vocab=REAL_BPE_VOCAB, caches=True)
    return wiki, [demo_rte, glue_rte]


LADDERS = {
    **{
        f"seed{s}": Ladder(demo_ladder(DemoConfig(seed=s)), f"demo suite --seed {s}")
        for s in range(4)
    },
    "onelayer": Ladder(
        demo_ladder(DemoConfig(ladder=ONE_LAYER_LADDER)), "one-layer small models, 2-layer target"
    ),
    "real": Ladder(real_ladder, f"WikiText-2, {REAL_BPE_VOCAB}-token BPE"),
}

# One change each against train.py's defaults (the design in the README's predictor section).
ABLATIONS: dict[str, list[str]] = {}


def train_ladder(
    root: Path, name: str, setting: str, flags: Sequence[str], retrain: bool = False
) -> dict:
    """train.py on one ladder with `flags`; its results.json (reused when nothing changed)."""
    train_cache, transfers = LADDERS[name].build(root / name)
    run_dir = root / "runs" / name / setting
    settings = {
        "flags": list(flags),
        "caches": {str(p): open_cache(p).fingerprint for p in [train_cache, *transfers]},
    }
    results, recorded = run_dir / "report" / "results.json", run_dir / "settings.json"
    if (
        not retrain
        and results.exists()
        and recorded.exists()
        and json.loads(recorded.read_text()) == settings
    ):
        return json.loads(results.read_text())
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "--train-cache",
        str(train_cache),
        *[arg for t in transfers for arg in ("--transfer-cache", str(t))],
        "--out",
        str(run_dir / "network.ckpt"),
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *flags,
    ]
    print(f"[{name}/{setting}] {' '.join(command)}", flush=True)
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    print(f"[{name}/{setting}] done in {time.perf_counter() - started:.0f} s", flush=True)
    recorded.write_text(json.dumps(settings, indent=1))
    return json.loads(results.read_text())


def interval(stat: dict, scale: float, digits: int) -> str:
    lo, hi = stat["ci"]
    return (
        f"{stat['value'] * scale:+.{digits}f} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]"
    )


def panel_cells(summary: dict) -> list[str]:
    """top-1 (points), KL and sum min(p, q): network minus the best baseline of each, paired."""
    comparison = summary["comparisons"]["network"]
    cells = [f"{interval(comparison['top1_diff'], 100, 1)} ({comparison['baseline']})"]
    for metric, digits in (("kl", 3), ("accept", 3)):
        diff = comparison.get(f"{metric}_diff")
        cells.append("-" if diff is None else f"{interval(diff, 1, digits)} ({diff['baseline']})")
    return cells


def table(rows: list[tuple[str, str, dict]]) -> str:
    head = ["ladder", "setting", "panel", "top-1 vs best", "KL vs best", "sum min(p,q) vs best"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for ladder, setting, results in rows:
        for title, summary in results.items():
            panel = title.split(" (")[0] + " " + Path(summary["cache"]).name
            cells = [ladder, setting, panel, *panel_cells(summary)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="flags after -- go to every train.py run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", type=Path, default=Path("/work/suites"))
    parser.add_argument("--ladders", nargs="+", default=list(LADDERS), choices=list(LADDERS))
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--ablations", action="store_true", help="also one row per ABLATIONS")
    parser.add_argument("--retrain", action="store_true", help="ignore finished runs")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = parser.parse_args(argv)
    if args.build_only:
        for name in args.ladders:
            started = time.perf_counter()
            print(f"[{name}] caches: {LADDERS[name].build(args.root / name)}", flush=True)
            print(f"[{name}] ready in {time.perf_counter() - started:.0f} s", flush=True)
        return
    settings = {"default" if not extra else "custom": extra}
    if args.ablations:
        settings.update(ABLATIONS)
    rows = []
    for setting, flags in settings.items():
        for name in args.ladders:
            rows.append(
                (name, setting, train_ladder(args.root, name, setting, flags, args.retrain))
            )
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
