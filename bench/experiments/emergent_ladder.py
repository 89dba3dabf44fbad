"""A ladder on which an ability emerges, and the study's answer on it.

    python -m bench.experiments.emergent_ladder                     # ../suites/emergent, resumes
    python -m bench.experiments.emergent_ladder --threads 2 --no-steps-study

Builds (or resumes, or reuses) the `emergent` ladder of bench/experiments/ladders.py under
ROOT/emergent: the demo's text plus its named synthetic share (demo/synthetic.py), six one-layer
small models and a two-layer target trained longer, kept along its training. Caches the ladder
and the target's checkpoints on demo-wiki, demo-random-copy (copy the next 4 random words of a
span seen earlier in a held-out passage) and demo-random-copy-control (the same prompts, the
span's first occurrence replaced: nothing to copy). Scores every model on both sets, exact match
of the 4 answer tokens (greedy) and log-probability per answer token, the task minus its control
paired by prompt (95% bootstrap intervals, resampled by held-out document). Then studies the
ladder (`emergence_model.study.ladder.study_ladder`, as `emergence-model study` does) with the
network trained on ordinary text (the ladder's demo-wiki cache, train.py's defaults but a
smaller step budget, --train-steps): its
top-1 miss and KL on the copying prompts against their controls, the rung-by-rung curve, and the
network calibrated on a few copying prompts (`calibrate.calibrated_panel`). The tables go to
docs/results/emergent_ladder.md and .json, the figures to docs/results/emergent_ladder/, the
study's own report beside them (study/); its work stays under --out.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import start_run
from bench.experiments.ladders import LADDERS, ROOT
from emergence_model.cache import FeatureCache, open_cache
from emergence_model.calibrate import CALIBRATED, calibrated_panel
from emergence_model.checkpoint import load_checkpoint, network_strategy
from emergence_model.cli import exit_on_user_error
from emergence_model.demo.caches import RANDOM_COPY_DATASETS, prepare_random_copy_caches
from emergence_model.demo.config import read_suite_record
from emergence_model.demo.study import trained_on
from emergence_model.evaluate import EvalConfig, make_baselines, score_rows
from emergence_model.model import PredictorConfig
from emergence_model.pipeline import train_and_evaluate
from emergence_model.prefixes import source_field
from emergence_model.report import format_number, format_stat, pyplot
from emergence_model.results import Section, run_stamp
from emergence_model.selection import GUIDE_BASELINES
from emergence_model.stats import DEFAULT_BOOTSTRAP, ClusterBootstrap
from emergence_model.strategies import model_basename
from emergence_model.study.answers import model_scores
from emergence_model.study.config import StudyConfig
from emergence_model.study.formatting import FIGURES_DIR
from emergence_model.study.ladder import load_cache_tokenizer, set_clusters, study_ladder
from emergence_model.study.report import write_study_report
from emergence_model.training import TrainConfig

LADDER = "emergent"
TASK, CONTROL = RANDOM_COPY_DATASETS
WIKI = "demo-wiki"


@dataclass
class EmergentLadderConfig:
    """Where the ladder is, and what the study is told."""

    root: Path = ROOT
    """Where the ladders are built and kept: the emergent ladder is ROOT/emergent."""
    out: Path = Path("reports/emergent-ladder")
    """The study's work (networks, rung networks) and full report."""
    steps_study: bool = True
    """Also study the target's checkpoints (a network trained on their demo-wiki cache)."""
    train_steps: int = 1000
    """Optimizer steps of each fold of the network (train.py's --steps; its default, 3000, takes
    about three times as long: the rung curve trains four more networks of five folds)."""
    calibration: list[int] = field(default_factory=lambda: [16, 64])
    """Copying prompts labelled by the target that calibrate the network (each size N)."""
    draws: int = 3
    """Random draws of the N calibration prompts (seeds 0, 1, ...)."""
    bootstrap: int = DEFAULT_BOOTSTRAP
    """Bootstrap resamples behind every 95% interval."""
    seed: int = 0
    """Seed of the prefix sets, the folds and the bootstrap."""

    def __post_init__(self) -> None:
        if any(n < 2 for n in self.calibration) or self.draws < 1 or self.bootstrap < 1:
            raise ValueError("--calibration sizes must be at least 2, --draws and --bootstrap 1")
        if self.train_steps < 1:
            raise ValueError(f"--train-steps must be at least 1, got {self.train_steps}")


def trained_network(path: Path, train_cache: Path, transfers: list[Path], steps: int) -> Path:
    """The network at `path` if it was trained on `train_cache` with `steps` steps a fold by this
    version's recipe, else one trained now (train.py's defaults but --steps) and saved there."""
    if path.is_file() and trained_on(path, train_cache):
        if load_checkpoint(path)["train_config"]["steps"] == steps:
            print(f"reusing {path}, trained on {train_cache}", flush=True)
            return path
    print(f"training the network on {train_cache} into {path}", flush=True)
    train_config = TrainConfig(progress=False, steps=steps)
    train_and_evaluate(
        train_cache, transfers, path, PredictorConfig(), train_config, None, EvalConfig()
    )
    return path


def paired_sets(task: FeatureCache, control: FeatureCache) -> tuple[list[str], np.ndarray]:
    """The expected answers the task set and its control share, and their clusters (documents);
    ValueError if the two caches do not hold one control per prompt."""
    expected = source_field(task.meta["source"], "expected")
    if expected != source_field(control.meta["source"], "expected") or len(task) != len(control):
        raise ValueError(
            f"{task.path} and {control.path} do not hold the same prompts and their controls; "
            "delete both and run again"
        )
    clusters, _ = set_clusters(task)
    return expected, clusters


def answer_scores(task: FeatureCache, control: FeatureCache, config, tokenizer) -> list[dict]:
    """Per model: exact match and log-probability per answer token on the task and on its
    control, and task minus control, paired by prompt."""
    expected, clusters = paired_sets(task, control)
    rows = np.arange(len(task))
    scored = [
        model_scores(c, rows, expected, tokenizer, on_disk=True, copy_control=False, seed=0)
        for c in (task, control)
    ]
    kept = np.intersect1d(scored[0]["kept"], scored[1]["kept"])
    at = [np.searchsorted(s["kept"], kept) for s in scored]
    sampler = ClusterBootstrap(clusters[kept], len(kept), config.bootstrap, config.seed)
    out = []
    for m, name in enumerate(task.model_names):
        entry = {"model": model_basename(name), "scale": task.scales[m], "prompts": len(kept)}
        for metric in ("exact", "logprob"):
            on_task, on_control = (
                s[metric][i, m].astype(np.float64) for s, i in zip(scored, at, strict=True)
            )
            entry[metric] = sampler.mean(on_task)
            entry[f"{metric}_control"] = sampler.mean(on_control)
            entry[f"{metric}_difference"] = sampler.mean(on_task - on_control)
        out.append(entry)
    return out


def answer_section(title: str, scores: list[dict], notes: str) -> Section:
    head = [
        "model",
        "scale",
        "exact match %",
        "control %",
        "task - control, points",
        "log-prob / token",
        "control",
        "task - control",
    ]
    rows = [
        [
            s["model"],
            f"{s['scale']:,.0f}",
            format_stat(s["exact"], percent=True),
            format_stat(s["exact_control"], percent=True),
            format_stat(s["exact_difference"], percent=True, signed=True),
            format_stat(s["logprob"]),
            format_stat(s["logprob_control"]),
            format_stat(s["logprob_difference"], signed=True),
        ]
        for s in scores
    ]
    return Section(title, head, rows, notes, scores)


def study(checkpoint: Path, caches: dict[str, Path], out: Path, title: str, config) -> dict:
    """The study of one ladder on demo-wiki (the reference, the network's training set), the
    copying prompts and their controls."""
    study_config = StudyConfig(
        measure_costs=False, bootstrap=config.bootstrap, seed=config.seed, top_emergent=10
    )
    paths = [caches[WIKI], caches[TASK], caches[CONTROL]]
    print(f"studying {title}: {', '.join(p.name for p in paths)}", flush=True)
    return study_ladder(checkpoint, paths, out / "work" / title, study_config, title=title)


def predictor_rows(result: dict, config) -> tuple[list[list[str]], dict]:
    """Per set the predictor's top-1 miss and KL, and the copying prompts minus their controls,
    paired by prompt."""
    names = [s["name"] for s in result["study"]["sets"]]
    per_set = {
        name: (s, r) for name, s, r in zip(names, result["sets"], result["rows"], strict=True)
    }
    rows, numbers = [], {"best_predictor": result["study"]["best_predictor"]["overall"]}
    for name, summary in zip(names, result["study"]["sets"], strict=True):
        e = summary["emergence"]
        vs = summary.get("vs_reference", {}).get("emergence", {})
        matched = summary["kl_entropy"].get("matched_vs_reference")
        rows.append(
            [
                name,
                str(summary["num_prefixes"]),
                format_stat(e["miss"], percent=True),
                format_stat(e["kl"]),
                format_stat(vs.get("miss"), percent=True, signed=True),
                format_stat(vs.get("kl"), signed=True),
                format_stat(matched, signed=True),
            ]
        )
        numbers[name] = {"emergence": e, "vs_reference": vs, "kl_matched_vs_reference": matched}
    (task, task_rows), (control, control_rows) = per_set[TASK], per_set[CONTROL]
    both, ti, ci = np.intersect1d(
        task["per_row"]["rows"], control["per_row"]["rows"], return_indices=True
    )
    clusters, _ = set_clusters(task["cache"])
    sampler = ClusterBootstrap(
        None if clusters is None else clusters[both], len(both), config.bootstrap, config.seed
    )
    paired = {k: sampler.mean(task_rows[k][ti] - control_rows[k][ci]) for k in ("miss", "kl")}
    rows.append(
        [
            f"{TASK} - control, paired",
            str(len(both)),
            format_stat(paired["miss"], percent=True, signed=True),
            format_stat(paired["kl"], signed=True),
            "",
            "",
            "",
        ]
    )
    numbers["task_minus_control"] = paired
    return rows, numbers


def rung_rows(result: dict) -> tuple[list[list[str]], list[dict]]:
    """Per rung and set: the predictor from the rungs below, its top-1 miss, KL and the share of
    the step from the rung below that it recovers."""
    rows, numbers = [], []
    for summary in result["study"]["sets"]:
        curve = summary.get("rung_curve")
        if not curve:
            continue
        for rung in curve["rungs"]:
            rows.append(
                [
                    summary["name"],
                    rung["model"],
                    format_stat(rung["miss"], percent=True),
                    format_stat(rung["kl"]),
                    format_stat(rung["recovered"], percent=True),
                ]
            )
            numbers.append({"set": summary["name"], **rung})
    return rows, numbers


def calibration_rows(checkpoint: Path, caches: dict[str, Path], config) -> tuple[list, list]:
    """The network calibrated on N target-labelled prompts of a set, against the network alone,
    on the set's other prompts: top-1 agreement with the target and KL, paired."""
    loaded = load_checkpoint(checkpoint)
    network = network_strategy(loaded, str(checkpoint))
    baselines = make_baselines(params=loaded["baselines"])
    strategies = {"network": network, **{n: baselines[n] for n in GUIDE_BASELINES}}
    rows, numbers = [], []
    for name in (TASK, CONTROL):
        cache = open_cache(caches[name])
        clusters, _ = set_clusters(cache)
        for n in config.calibration:
            draws = []
            for draw in range(config.draws):
                rest, named, _ = calibrated_panel(cache, strategies, n, seed=draw)
                scored = score_rows(cache, {k: named[k] for k in ("network", CALIBRATED)}, rest)
                before, after = (scored["strategies"][k] for k in ("network", CALIBRATED))
                sampler = ClusterBootstrap(
                    None if clusters is None else clusters[rest],
                    len(rest),
                    config.bootstrap,
                    config.seed,
                )
                draws.append(
                    {
                        "top1": sampler.mean(before["top1"]),
                        "top1_calibrated": sampler.mean(after["top1"]),
                        "top1_gain": sampler.mean(after["top1"] - before["top1"]),
                        "kl": sampler.mean(before["kl"]),
                        "kl_calibrated": sampler.mean(after["kl"]),
                    }
                )
            first = draws[0]
            spread = [d["top1_gain"]["value"] for d in draws]
            rows.append(
                [
                    name,
                    str(n),
                    format_stat(first["top1"], percent=True),
                    format_stat(first["top1_calibrated"], percent=True),
                    format_stat(first["top1_gain"], percent=True, signed=True),
                    " to ".join(
                        format_number(x, percent=True, signed=True)
                        for x in (min(spread), max(spread))
                    ),
                    format_stat(first["kl"]),
                    format_stat(first["kl_calibrated"]),
                ]
            )
            numbers.append({"set": name, "n": n, "draws": draws})
            print(" | ".join(rows[-1]), flush=True)
    return rows, numbers


def draw_answer_figure(path: Path, size: list[dict], steps: list[dict]) -> None:
    """Exact match and log-probability per answer token of the task and its control, along size
    and along the target's training."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex="col")
    for col, (scores, xlabel) in enumerate(
        ((size, "parameters"), (steps, "tokens seen by the target"))
    ):
        x = [s["scale"] for s in scores]
        for row, (metric, ylabel) in enumerate(
            (("exact", "exact match of 4 answer tokens"), ("logprob", "log-prob per answer token"))
        ):
            ax = axes[row, col]
            for suffix, label in (("", "copying prompts"), ("_control", "control")):
                stats = [s[metric + suffix] for s in scores]
                y = np.array([s["value"] for s in stats])
                lo, hi = (np.array([s["ci"][i] for s in stats]) for i in (0, 1))
                ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=label)
            ax.set_xscale("log")
            ax.set_ylabel(ylabel)
            if row == 1:
                ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
    axes[0, 0].set_title("along size (the ladder)")
    axes[0, 1].set_title("along the target's training")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_rung_figure(path: Path, rung_numbers: list[dict], title: str) -> None:
    """The predictor's top-1 miss and KL per rung (each from the rungs below), per set."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in dict.fromkeys(r["set"] for r in rung_numbers):
        rungs = [r for r in rung_numbers if r["set"] == name]
        x = [r["scale"] for r in rungs]
        for ax, metric in zip(axes, ("miss", "kl"), strict=True):
            y = np.array([r[metric]["value"] for r in rungs])
            lo, hi = (np.array([r[metric]["ci"][i] for r in rungs]) for i in (0, 1))
            ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=name)
    for ax, label in zip(axes, ("top-1 miss", "KL (nats)"), strict=True):
        ax.set_xscale("log")
        ax.set_ylabel(label)
        ax.set_xlabel("scale of the rung predicted")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_section(suite_dir: Path) -> Section:
    record = read_suite_record(suite_dir)
    config = record["config"]
    rows = [
        [
            m["name"],
            f"{m['hidden_size']}/{m['num_layers']}/{m['num_heads']}",
            f"{m['param_count']:,}",
            str(m["steps"]),
            format_number(m["valid_loss"]),
            format_number(m["train_seconds"], digits=0),
        ]
        for m in record["models"]
    ]
    notes = (
        f"Each step's batch: {config['batch_size']} windows of {config['seq_len']} tokens, "
        f"copy share {config['copy_share']}, alternation share {config['alternation_share']} "
        f"(alphabet of {config['copy_alphabet']} words), the rest real text. Built in "
        f"{record['build_seconds']:.0f} s (suite.json's build_seconds, summed over resumed runs)."
    )
    head = ["model", "hidden/layers/heads", "parameters", "steps", "valid loss", "train s"]
    return Section("The ladder", head, rows, notes, record["models"])


def main(argv: Sequence[str] | None = None) -> None:
    (config,), run = start_run(__file__, __doc__, argv, EmergentLadderConfig)
    suite_dir = config.root / LADDER
    started = time.perf_counter()
    LADDERS[LADDER].build(suite_dir)
    caches = prepare_random_copy_caches(
        suite_dir, seed=config.seed, progress=run.options.progress, steps_wiki=config.steps_study
    )
    print(f"ladder and caches ready in {time.perf_counter() - started:.0f} s", flush=True)
    tokenizer = load_cache_tokenizer([open_cache(caches.size[TASK])])
    size, steps = (
        answer_scores(open_cache(c[TASK]), open_cache(c[CONTROL]), config, tokenizer)
        for c in (caches.size, caches.steps)
    )
    own = config.out / "work" / "checkpoints"
    ladders = [("emergent-size", caches.size)]
    if config.steps_study:
        ladders.append(("emergent-steps", caches.steps))
    results, checkpoints = [], {}
    for title, sets in ladders:
        path = own / f"{title}-steps{config.train_steps}.ckpt"
        transfers = [sets["demo-rte"]] if "demo-rte" in sets else []
        checkpoints[title] = trained_network(path, sets[WIKI], transfers, config.train_steps)
        results.append(study(checkpoints[title], sets, config.out, title, config))
    stamp = run_stamp(run.command, time.perf_counter() - run.started, ignore=config.out)
    write_study_report(config.out, results, stamp)
    figures = run.results_dir / "emergent_ladder"
    if figures.exists():
        shutil.rmtree(figures)  # figures of an earlier run that this one no longer draws
    (figures / "study" / FIGURES_DIR).mkdir(parents=True)
    for name in ("report.md", "report.json"):
        shutil.copy2(config.out / name, figures / "study" / name)
    for figure in sorted((config.out / FIGURES_DIR).glob("*.png")):
        shutil.copy2(figure, figures / "study" / FIGURES_DIR / figure.name)
    draw_answer_figure(figures / "answers.png", size, steps)
    sections = [
        build_section(suite_dir),
        answer_section(
            "The ability along size",
            size,
            "Exact match: the model's argmax is the answer's token at each of its 4 positions "
            "(greedy decoding gives the whole answer). Task - control: paired by prompt, 95% "
            "bootstrap interval resampled by held-out document. Figure: "
            "[emergent_ladder/answers.png](emergent_ladder/answers.png).",
        ),
        answer_section(
            "The ability along the target's training",
            steps,
            "The target's kept checkpoints (scale: tokens seen), then the final target.",
        ),
    ]
    for (title, _), result in zip(ladders, results, strict=True):
        rows, numbers = predictor_rows(result, config)
        head = [
            "set",
            "prefixes",
            "top-1 miss %",
            "KL (nats)",
            "miss - demo-wiki, points",
            "KL - demo-wiki",
            "KL - demo-wiki, matched entropy",
        ]
        notes = (
            f"The study's best predictor ({numbers['best_predictor']}) with the network trained on "
            f"this ladder's {WIKI} cache (ordinary text; {config.train_steps} steps a fold), "
            "against the target's next token. The "
            "last row: copying prompts minus their controls, paired by prompt."
        )
        sections.append(Section(f"The predictor on {title}", head, rows, notes, numbers))
        rows, numbers = rung_rows(result)
        if rows:
            name = f"rungs_{title}.png"
            draw_rung_figure(figures / name, numbers, title)
            head = ["set", "rung predicted", "top-1 miss %", "KL (nats)", "step recovered %"]
            notes = (
                "Each rung predicted by the network recipe trained on the rungs below it "
                f"(study/rungs.py). Figure: [emergent_ladder/{name}](emergent_ladder/{name})."
            )
            sections.append(Section(f"Rung by rung, {title}", head, rows, notes, numbers))
    rows, numbers = calibration_rows(checkpoints["emergent-size"], caches.size, config)
    head = [
        "set",
        "N",
        "network top-1 %",
        "calibrated top-1 %",
        "gain, points",
        "gain over draws",
        "KL",
        "KL calibrated",
    ]
    notes = (
        f"The emergent-size network calibrated on N prompts of the set labelled by the target "
        f"(calibrate.calibrated_panel), scored on the others; first of {config.draws} draws with "
        "its paired 95% interval, then the range of the gain over the draws."
    )
    sections.append(Section("Calibration on a few prompts", head, rows, notes, numbers))
    run.write("A ladder on which an ability emerges", sections)


if __name__ == "__main__":
    exit_on_user_error(main)
