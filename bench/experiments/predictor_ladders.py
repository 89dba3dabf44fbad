"""The predictor on every ladder it is judged on: build or reuse each, train it, one table.

    python bench/predictor_ladders.py                         # every ladder: build, train, table
    python bench/predictor_ladders.py --build-only            # only the ladders and their caches
    python bench/predictor_ladders.py --ladders seed0 onelayer --ablations   # + the ablations
    python bench/predictor_ladders.py --ladders seed1 -- --max-epochs 8      # train.py flags

Ladders (each in ROOT/<name>, --root, default ../suites beside the repository):

- seed0 .. seed3: the demo suite (`python -m emergence_model.demo caches --seed S`): the
  standard library's docstrings, a 2k BPE, seven GPT-NeoX models; trained on demo-wiki,
  transfer to demo-rte.
- onelayer: the demo's corpus and recipe, but six one-layer small models and a two-layer target
  of similar sizes (`ONE_LAYER_LADDER`), so that the largest small model is the best single
  guide; demo-wiki, transfer to demo-rte.
- real: WikiText-2 from ../shared/data with an 8k BPE trained on it
  (`bench/build_real_suite.py --bpe-vocab 8192 --caches`, the default ladder and steps: 0.5M to
  4.9M parameters); trained on the paragraphs' openings, transfer to demo-rte-style prompts cut
  from WikiText and to the real GLUE RTE training pairs.
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
  ../data/brown.txt with `python bench/brown_text.py brown.zip ../data/brown.txt` from
  `packages/corpora/brown.zip` of github.com/nltk/nltk_data.

Each ladder is trained with `python train.py --train-cache ... --transfer-cache ...` (a new
user's command) in ROOT/runs/<ladder>/<setting>, and a finished run whose flags, caches, defaults
and network design (`PREDICTOR_DESIGN`) are unchanged is read back rather than retrained
(train.py itself resumes finished folds). The table gives, per ladder, the network minus the best
baseline in top-1 agreement (points, 95% paired bootstrap), in-domain (cross-fitted over every
prefix) and on transfer, and the same paired differences of KL(target || q) and of
sum_x min(p, q) against the best baseline on each.
`--ablations` adds one row per change of `ABLATIONS` (train.py flags against the defaults).
"""

from __future__ import annotations

import argparse
import json
import shlex
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
from emergence_model.checkpoint import build_predictor, load_checkpoint  # noqa: E402
from emergence_model.demo.build import build_suite  # noqa: E402
from emergence_model.demo.caches import prepare_demo_caches  # noqa: E402
from emergence_model.demo.config import DemoConfig, Rung, read_suite_record  # noqa: E402
from emergence_model.evaluate import evaluate_cache, make_baselines  # noqa: E402
from emergence_model.model import PREDICTOR_DESIGN  # noqa: E402
from emergence_model.strategies import NetworkStrategy  # noqa: E402
from emergence_model.study.demo import default_settings  # noqa: E402

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
ROOT = REPO.parent / "suites"  # the ladders, beside the repository (--root)
WIKITEXT_TEST = REPO.parent / "data" / "wikitext2-test.txt"  # see real-2x above
BROWN_TEXT = REPO.parent / "data" / "brown.txt"  # see real-brown above


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
        from build_real_suite import build_real_suite

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

# One change each against train.py's defaults (the design in the README's predictor section).
ABLATIONS: dict[str, list[str]] = {
    "correction bounded to 1 nat": ["--max-correction", "1"],
    "64 candidates": ["--num-candidates", "64"],
    "256 candidates": ["--num-candidates", "256"],
    "base: mean": ["--base", "mean"],
    "base: largest": ["--base", "largest"],
    "base: extrapolate": ["--base", "extrapolate"],
    "features: no context": ["--features", ""],
    "features: no token embedding": ["--token-embedding", "0"],
    "half the training prefixes": ["--train-fraction", "0.5"],
    "objective: logits on the top token (cross-entropy)": ["--soft-weight", "0"],
    "objective: logits soft at temperature 1": ["--target-temperature", "1"],
    "training: 4 epochs at lr 3e-3": ["--max-epochs", "4", "--lr", "3e-3"],
    "training: 12 epochs": ["--max-epochs", "12"],
    "training: learning rate from Lightning's finder": ["--lr-find"],
    "MLP width 64": ["--hidden-size", "64"],
}
ONE_MEMBER = "one fold's network on transfer, not the ensemble"


@dataclass
class Run:
    """One train.py run: its leaderboard panels, each fold's validation top-1 and its checkpoint."""

    panels: dict
    val_top1: list[float]
    checkpoint: Path


def train_ladder(
    root: Path, name: str, setting: str, flags: Sequence[str], retrain: bool = False
) -> Run:
    """train.py on one ladder with `flags` (reused when nothing changed since)."""
    train_cache, transfers = LADDERS[name].build(root / name)
    run_dir = root / "runs" / name / setting
    settings = {
        "flags": list(flags),
        # what the flags are changes to: a run of older defaults or network design is redone
        "defaults": list(default_settings()),
        "design": PREDICTOR_DESIGN,
        "caches": {str(p): open_cache(p).fingerprint for p in [train_cache, *transfers]},
    }
    results, recorded = run_dir / "report" / "results.json", run_dir / "settings.json"
    checkpoint = run_dir / "network.ckpt"
    fresh = results.exists() and recorded.exists() and checkpoint.exists()
    settings = json.loads(json.dumps(settings))  # as read back
    if retrain or not fresh or json.loads(recorded.read_text()) != settings:
        command = [
            sys.executable,
            str(REPO / "train.py"),
            "--train-cache",
            str(train_cache),
            *[arg for t in transfers for arg in ("--transfer-cache", str(t))],
            "--out",
            str(checkpoint),
            "--run-dir",
            str(run_dir),
            "--no-progress",
            *flags,
        ]
        print(f"[{name}/{setting}] {shlex.join(command)}", flush=True)
        started = time.perf_counter()
        run_dir.mkdir(parents=True, exist_ok=True)
        recorded.unlink(missing_ok=True)
        with open(run_dir / "train.log", "w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        print(f"[{name}/{setting}] done in {time.perf_counter() - started:.0f} s", flush=True)
        recorded.write_text(json.dumps(settings, indent=1))
    metrics = load_checkpoint(checkpoint)["metrics"]
    val = [m["best_val_top1"] for k, m in sorted(metrics.items()) if k.startswith("fold-")]
    return Run(json.loads(results.read_text()), val, checkpoint)


def one_member_on_transfer(run: Run) -> dict:
    """The transfer panels again, scored by one fold's network instead of the ensemble of all."""
    checkpoint = load_checkpoint(run.checkpoint)
    member = NetworkStrategy(
        build_predictor(checkpoint).member(0),
        checkpoint["model_names"],
        checkpoint["target_name"],
    )
    panels = {}
    for title, summary in run.panels.items():
        if title.startswith("transfer"):
            cache = open_cache(summary["cache"])
            strategies = {**make_baselines(params=checkpoint["baselines"]), "network": member}
            panels[title] = evaluate_cache(cache, [(None, strategies)])
    return panels


def signed(stat: dict, scale: float, digits: int) -> str:
    lo, hi = stat["ci"]
    return (
        f"{stat['value'] * scale:+.{digits}f} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]"
    )


def panel_name(title: str, summary: dict) -> str:
    return title.split(" (")[0] + " " + Path(summary["cache"]).name


def results_row(summary: dict) -> list[str]:
    """Network and best baseline: top-1 (and their paired difference, points), KL and
    sum min(p, q) (and theirs), each metric against the best baseline on that metric."""
    entries, comparison = summary["strategies"], summary["comparisons"]["network"]
    best = comparison["baseline"]
    cells = [
        f"{100 * entries['network']['top1']['value']:.1f} / "
        f"{100 * entries[best]['top1']['value']:.1f} ({best})",
        signed(comparison["top1_diff"], 100, 1),
    ]
    for metric in ("kl", "accept"):
        diff = comparison.get(f"{metric}_diff")
        if diff is None:
            cells += ["-", "-"]
            continue
        ref = diff["baseline"]
        cells += [
            f"{entries['network'][metric]['value']:.3f} / {entries[ref][metric]['value']:.3f} "
            f"({ref})",
            signed(diff, 1, 3),
        ]
    return cells


def markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def results_table(runs: dict[str, Run]) -> str:
    head = [
        "ladder",
        "set",
        "top-1 %, network / best baseline",
        "network - best, points",
        "KL, network / best",
        "network - best",
        "sum min(p,q), network / best",
        "network - best",
    ]
    rows = [
        [name, panel_name(title, summary), *results_row(summary)]
        for name, run in runs.items()
        for title, summary in run.panels.items()
    ]
    return markdown(head, rows)


def ablation_table(ladders: Sequence[str], runs: dict[tuple[str, str], Run]) -> str:
    """One row per setting: per ladder, the mean validation top-1 over folds (what choices are
    made on), and the in-domain and transfer paired differences to the best baseline."""
    head = ["setting"]
    for name in ladders:
        head += [f"{name}: validation top-1", f"{name}: in-domain", f"{name}: transfer"]
        head += [f"{name}: network's KL, in-domain / transfer"]
    rows = []
    for setting in dict.fromkeys(s for s, _ in runs):
        row = [setting]
        for name in ladders:
            run = runs.get((setting, name))
            if run is None:
                row += ["-", "-", "-", "-"]
                continue
            val = f"{100 * sum(run.val_top1) / len(run.val_top1):.2f}" if run.val_top1 else "-"
            diffs = {
                panel_name(title, s): signed(s["comparisons"]["network"]["top1_diff"], 100, 1)
                for title, s in run.panels.items()
            }
            in_domain = [v for k, v in diffs.items() if k.startswith("in-domain")]
            transfer = {k.split()[-1]: v for k, v in diffs.items() if k.startswith("transfer")}
            cell = "; ".join(f"{k} {v}" if len(transfer) > 1 else v for k, v in transfer.items())
            kl = [
                f"{s['strategies']['network']['kl']['value']:.3f}"
                for s in run.panels.values()
                if "kl" in s["strategies"]["network"]
            ]
            row += [val, in_domain[0] if in_domain else "-", cell or "-", " / ".join(kl) or "-"]
        rows.append(row)
    return markdown(head, rows)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="flags after -- go to every train.py run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--ladders", nargs="+", default=list(LADDERS), choices=list(LADDERS))
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--ablations", action="store_true", help="also one row per ABLATIONS")
    parser.add_argument(
        "--settings", nargs="+", choices=list(ABLATIONS), help="only these ABLATIONS rows"
    )
    parser.add_argument("--retrain", action="store_true", help="ignore finished runs")
    parser.add_argument("--out", type=Path, help="also write the tables (Markdown) here")
    args = parser.parse_args(argv)
    if args.build_only:
        for name in args.ladders:
            started = time.perf_counter()
            print(f"[{name}] caches: {LADDERS[name].build(args.root / name)}", flush=True)
            print(f"[{name}] ready in {time.perf_counter() - started:.0f} s", flush=True)
        return
    default = "default" if not extra else "custom: " + " ".join(extra)
    runs = {
        name: train_ladder(args.root, name, default.split(":")[0], extra, args.retrain)
        for name in args.ladders
    }
    text = f"Results ({default}):\n\n{results_table(runs)}\n"
    if args.ablations:
        ablations = {(default, name): run for name, run in runs.items()}
        for setting, flags in ABLATIONS.items():
            if args.settings and setting not in args.settings:
                continue
            for name in args.ladders:
                ablations[setting, name] = train_ladder(
                    args.root, name, setting, flags, args.retrain
                )
        for name, run in runs.items():
            member = one_member_on_transfer(run)
            if member:
                ablations[ONE_MEMBER, name] = Run(member, [], run.checkpoint)
        text += f"\nAblations (one change each):\n\n{ablation_table(args.ladders, ablations)}\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
