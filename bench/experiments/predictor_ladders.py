"""The predictor on every ladder it is judged on: build or reuse each, train it, one table.

    python -m bench.experiments.predictor_ladders                  # every ladder: build, train
    python -m bench.experiments.predictor_ladders --build-only     # only the ladders and caches
    python -m bench.experiments.predictor_ladders --ladders seed0 onelayer --ablations
    python -m bench.experiments.predictor_ladders --small-sets 1500  # also from 1,500 prefixes
    python -m bench.experiments.predictor_ladders --ladders seed1 -- --max-epochs 8  # train.py's

The ladders are those of `bench.experiments.ladders`, each in ROOT/<name> (--root, default
../suites beside the repository). Each is trained with `python train.py --train-cache ...
--transfer-cache ...` (a new user's command) in ROOT/runs/<ladder>/<setting> (--runs: elsewhere),
and a finished run
whose flags, caches, defaults and network design (`PREDICTOR_DESIGN`) are unchanged is read back
rather than retrained (train.py itself resumes finished folds). The table gives, per ladder, the
network minus the best baseline in top-1 agreement (points, 95% paired bootstrap), in-domain
(cross-fitted over every prefix) and on transfer, and the same paired differences of
KL(target || q) and of sum_x min(p, q) against the best baseline on each. `--ablations` adds one
row per change of `ABLATIONS` (train.py flags against the defaults). The tables go to
docs/results/predictor_ladders.md and .json.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import AFTER_DASHES, REPO, start_run
from bench.experiments.ladders import LADDER_NAMES, LADDERS, LadderRoot
from emergence_model.cache import open_cache
from emergence_model.checkpoint import build_predictor, checkpoint_selection, load_checkpoint
from emergence_model.cli import exit_on_user_error
from emergence_model.demo.study import default_settings
from emergence_model.evaluate import evaluate_cache, make_baselines
from emergence_model.model import PREDICTOR_DESIGN
from emergence_model.pipeline import NETWORK_ALONE
from emergence_model.report import format_number, format_stat
from emergence_model.results import Section
from emergence_model.selection import guided
from emergence_model.strategies import NETWORK_GUIDE, NetworkStrategy

# How a ladder's network is trained: a new user's command. (One place to change if train.py moves.)
TRAIN_COMMAND = [sys.executable, str(REPO / "train.py")]

# One change each against train.py's defaults (the design in docs/predictor.md): train.py flags.
ABLATIONS: dict[str, list[str]] = {
    name: shlex.split(flags)
    for name, flags in {
        "the earlier training: 8 epochs, the epoch kept on validation top-1": (
            "--max-epochs 8 --steps 1000000000 --monitor top1"
        ),
        "no token embedding": "--token-embedding 0",
        "64 candidates": "--num-candidates 64",
        "256 candidates": "--num-candidates 256",
        "base: mean": "--base mean",
        "base: largest": "--base largest",
        "base: extrapolate": "--base extrapolate",
        "features: no context": "--features ''",
        "features: each model's log-prob and gap": "--features context,models",
        "objective: logits on the top token (cross-entropy)": "--soft-weight 0",
        "objective: logits soft at temperature 1": "--target-temperature 1",
        "the issue's MLP on 256 candidates: a residual on the largest, each model's log-prob and "
        "gap, cross-entropy": (
            "--num-candidates 256 --base largest --features context,models --soft-weight 0"
        ),
        "half the training prefixes": "--train-fraction 0.5",
        "training: learning rate 3e-3": "--lr 3e-3",
        "training: learning rate from Lightning's finder": "--lr-find",
        "MLP width 64": "--hidden-size 64",
    }.items()
}
ONE_MEMBER = "one fold's network on transfer, not the ensemble"


@dataclass
class LaddersConfig:
    """Which ladders to train and which tables to make."""

    ladders: list[str] = field(
        default_factory=lambda: list(LADDER_NAMES), metadata={"choices": LADDER_NAMES}
    )
    """The ladders, in the tables' order (`bench.experiments.ladders`)."""
    build_only: bool = False
    """Only build the ladders and their caches: no training, no tables."""
    ablations: bool = False
    """Also one row per change of ABLATIONS, trained on each of --ablation-ladders."""
    ablation_ladders: list[str] = field(
        default_factory=lambda: list(LADDER_NAMES), metadata={"choices": LADDER_NAMES}
    )
    """The ladders --ablations trains on (those among --ladders; default: all)."""
    settings: list[str] = field(default_factory=list, metadata={"choices": list(ABLATIONS)})
    """With --ablations: only these rows of ABLATIONS; none given, every row."""
    retrain: bool = False
    """Train again even where a finished run with the same settings is there."""
    small_sets: list[int] = field(default_factory=list)
    """Also train on this many prefixes of each training cache (train.py --max-train-prefixes N:
    a user's small labelled set), a results section each."""
    small_set_ladders: list[str] = field(
        default_factory=lambda: [n for n in LADDER_NAMES if n.startswith("real")],
        metadata={"choices": LADDER_NAMES},
    )
    """The ladders --small-sets trains on (those among --ladders): the real-text ones."""
    train_args: list[str] = field(
        default_factory=list, metadata={"cli": False, AFTER_DASHES: "train.py flags for every run"}
    )
    """train.py flags for every run (the arguments after --): the default setting's changes."""


@dataclass
class Trained:
    """One train.py run: its leaderboard panels, each fold's validation top-1 and its checkpoint."""

    panels: dict
    val_top1: list[float]
    checkpoint: Path


def train_ladder(
    where: LadderRoot,
    name: str,
    setting: str,
    flags: Sequence[str],
    retrain: bool = False,
    threads: int | None = None,
) -> Trained:
    """train.py on one ladder with `flags` (reused when nothing changed since; `threads`, this
    run's --threads, is how it runs, not what it computes); the ladder is built first where its
    training cache is not."""
    train_cache, transfers = where.built(name) or LADDERS[name].build(where.root / name)
    run_dir = where.runs_dir / name / setting
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
            *TRAIN_COMMAND,
            "--train-cache",
            str(train_cache),
            *[arg for t in transfers for arg in ("--transfer-cache", str(t))],
            "--out",
            str(checkpoint),
            "--run-dir",
            str(run_dir),
            "--no-progress",
            *([] if threads is None else ["--threads", str(threads)]),
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
    return Trained(json.loads(results.read_text()), val, checkpoint)


def one_member_on_transfer(run: Trained) -> dict:
    """The transfer panels again, scored by one fold's network instead of the ensemble of all."""
    checkpoint = load_checkpoint(run.checkpoint)
    member = NetworkStrategy(
        build_predictor(checkpoint).member(0),
        checkpoint["model_names"],
        checkpoint["target_name"],
    )
    selection = checkpoint_selection(checkpoint)
    member = guided(member, None if selection is None else selection.choice(0))
    panels = {}
    for title, summary in run.panels.items():
        if title.startswith("transfer"):
            cache = open_cache(summary["cache"])
            strategies = {**make_baselines(params=checkpoint["baselines"]), "network": member}
            panels[title] = evaluate_cache(cache, [(None, strategies)])
    return panels


def panel_name(title: str, summary: dict) -> str:
    return title.split(" (")[0] + " " + Path(summary["cache"]).name


def guide_cell(summary: dict) -> str:
    """Which guide the network guessed with on a panel: one, or each fold's with its count."""
    params = summary["strategies"]["network"]["params"]
    parts = params if isinstance(params, list) else [params]
    guides = [p.get("guide", NETWORK_GUIDE) for p in parts]
    counts = Counter(guides)
    if len(counts) == 1:
        return guides[0]
    return ", ".join(f"{guide} x{count}" for guide, count in counts.items())


def results_row(summary: dict) -> list[str]:
    """Network and best baseline: top-1 (and their paired difference, points), the guide the
    network guessed with and the network alone's difference, KL and sum min(p, q) (and theirs),
    each metric against the best baseline on that metric."""
    entries, comparison = summary["strategies"], summary["comparisons"]["network"]
    best = comparison["baseline"]
    alone = summary["comparisons"].get(NETWORK_ALONE)
    cells = [
        f"{format_number(entries['network']['top1']['value'], percent=True)} / "
        f"{format_number(entries[best]['top1']['value'], percent=True)} ({best})",
        format_stat(comparison["top1_diff"], percent=True, signed=True),
        guide_cell(summary),
        "-" if alone is None else format_stat(alone["top1_diff"], percent=True, signed=True),
    ]
    for metric in ("kl", "accept"):
        diff = comparison.get(f"{metric}_diff")
        if diff is None:
            cells += ["-", "-"]
            continue
        ref = diff["baseline"]
        cells += [
            f"{format_number(entries['network'][metric]['value'])} / "
            f"{format_number(entries[ref][metric]['value'])} ({ref})",
            format_stat(diff, signed=True),
        ]
    return cells


def results_section(runs: dict[str, Trained], setting: str) -> Section:
    head = [
        "ladder",
        "set",
        "top-1 %, network / best baseline",
        "network - best, points",
        "guessed with",
        "network alone - best",
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
    numbers = {
        name: {panel_name(title, s): s for title, s in run.panels.items()}
        for name, run in runs.items()
    }
    return Section(f"Results ({setting})", head, rows, numbers=numbers)


def ablation_section(ladders: Sequence[str], runs: dict[tuple[str, str], Trained]) -> Section:
    """One row per setting: per ladder, the mean validation top-1 over folds (what choices are
    made on), and the in-domain and transfer paired differences to the best baseline."""
    head = ["setting"]
    for name in ladders:
        head += [f"{name}: validation top-1", f"{name}: in-domain", f"{name}: transfer"]
        head += [f"{name}: network's KL, in-domain / transfer"]
    rows, numbers = [], {}
    for setting in dict.fromkeys(s for s, _ in runs):
        row = [setting]
        for name in ladders:
            run = runs.get((setting, name))
            if run is None:
                row += ["-", "-", "-", "-"]
                continue
            val = sum(run.val_top1) / len(run.val_top1) if run.val_top1 else None
            diffs = {
                panel_name(title, s): s["comparisons"]["network"]["top1_diff"]
                for title, s in run.panels.items()
            }
            in_domain = [v for k, v in diffs.items() if k.startswith("in-domain")]
            transfer = {k.split()[-1]: v for k, v in diffs.items() if k.startswith("transfer")}
            cell = "; ".join(
                (f"{k} " if len(transfer) > 1 else "") + format_stat(v, percent=True, signed=True)
                for k, v in transfer.items()
            )
            kl = {
                panel_name(title, s): s["strategies"]["network"]["kl"]["value"]
                for title, s in run.panels.items()
                if "kl" in s["strategies"]["network"]
            }
            row += [
                "-" if val is None else format_number(val, percent=True, digits=2),
                format_stat(in_domain[0], percent=True, signed=True) if in_domain else "-",
                cell or "-",
                " / ".join(map(format_number, kl.values())) or "-",
            ]
            numbers.setdefault(setting, {})[name] = {
                "validation_top1": run.val_top1,
                "top1_diff": diffs,
                "network_kl": kl,
            }
        rows.append(row)
    return Section("Ablations (one change each)", head, rows, numbers=numbers)


def main(argv: Sequence[str] | None = None) -> None:
    (config, where), run = start_run(__file__, __doc__, argv, LaddersConfig, LadderRoot)
    if config.build_only:
        for name in config.ladders:
            started = time.perf_counter()
            print(f"[{name}] caches: {LADDERS[name].build(where.root / name)}", flush=True)
            print(f"[{name}] ready in {time.perf_counter() - started:.0f} s", flush=True)
        return
    extra, threads = config.train_args, run.options.threads
    default = "default" if not extra else "custom: " + " ".join(extra)
    runs = {
        name: train_ladder(where, name, default.split(":")[0], extra, config.retrain, threads)
        for name in config.ladders
    }
    sections = [results_section(runs, default)]
    for n in config.small_sets:
        flags = [*extra, "--max-train-prefixes", str(n)]
        small = {
            name: train_ladder(where, name, f"{n} prefixes", flags, config.retrain, threads)
            for name in config.ladders
            if name in config.small_set_ladders
        }
        sections.append(results_section(small, f"{default}, {n} training prefixes"))
    if config.ablations:
        ladders = [name for name in config.ladders if name in config.ablation_ladders]
        ablations = {(default, name): runs[name] for name in ladders}
        for setting, flags in ABLATIONS.items():
            if config.settings and setting not in config.settings:
                continue
            for name in ladders:
                ablations[setting, name] = train_ladder(
                    where, name, setting, flags, config.retrain, threads
                )
        for name in ladders:
            member = one_member_on_transfer(runs[name])
            if member:
                ablations[ONE_MEMBER, name] = Trained(member, [], runs[name].checkpoint)
        sections.append(ablation_section(ladders, ablations))
    run.write("The predictor on every ladder", sections)


if __name__ == "__main__":
    exit_on_user_error(main)
