"""The study's report: report.md (figures embedded, every number with its 95% interval),
study.json, per_prefix.jsonl (one row per prefix of every set) and PNG figures."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emergence_model.files import atomic_file
from emergence_model.report import format_stat, markdown_table, save_figure
from emergence_model.study import figures
from emergence_model.study.analysis import EMERGENCE, draft_names

FIGURES_DIR = "figures"
EMERGENCE_TITLES = {
    "kl": "KL to best predictor (nats)",
    "surprisal": "surprisal of target's top (nats)",
    "miss": "top-1 miss %",
    "jump": "jump over the trend (nats)",
}


def _stat(stat: dict | None, key: str = "") -> str:
    return format_stat(stat, percent=key in ("miss", "top1", "agreement", "saved", "ceiling"))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-")


def write_study_report(out: str | Path, ladders: Sequence[dict]) -> list[Path]:
    """Write everything for the ladder studies (`study_ladder` results) under `out`."""
    out = Path(out)
    (out / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    paths = [*draw_figures(out, ladders)]
    studies = [ladder["study"] for ladder in ladders]
    with atomic_file(out / "study.json") as f:
        text = json.dumps(_finite_json(studies), indent=1, default=_json_default, allow_nan=False)
        f.write((text + "\n").encode())
    paths.append(out / "study.json")
    paths.append(write_per_prefix(out / "per_prefix.jsonl", ladders))
    with atomic_file(out / "report.md") as f:
        f.write(format_report(ladders).encode())
    paths.append(out / "report.md")
    return paths


def _finite_json(value):
    """`value` with every non-finite float (an "always call the target" threshold of inf, a mean
    of no rows) as None, so that study.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _finite_json(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def figure_name(study: dict, what: str, set_name: str | None = None) -> str:
    parts = [_slug(study["title"]), what, *([_slug(set_name)] if set_name else [])]
    return f"{FIGURES_DIR}/{'-'.join(parts)}.png"


def draw_figures(out: Path, ladders: Sequence[dict]) -> list[Path]:
    paths = []
    copy_curves = []
    for ladder in ladders:
        study, rows = ladder["study"], ladder["rows"]
        best = study["best_predictor"]["overall"]
        names = [s["name"] for s in study["sets"]]
        paths.append(
            save_figure(
                figures.emergence_histogram(
                    [(n, r["kl"]) for n, r in zip(names, rows, strict=True)], best
                ),
                out / figure_name(study, "emergence"),
            )
        )
        for summary in study["sets"]:
            paths.append(
                save_figure(
                    figures.scaling_figure(summary["name"], summary["scaling"]),
                    out / figure_name(study, "scaling", summary["name"]),
                )
            )
            if "copies" in summary:
                copies = summary["copies"]
                copy_curves.append(
                    (
                        f"{study['title']}: {summary['name']}",
                        copies["axis"],
                        copies["scales"],
                        list(copies["models"].values()),
                    )
                )
        reference = study["sets"][0]
        if reference["speculative"]:
            paths.append(
                save_figure(
                    figures.speedup_figure(reference["name"], reference["speculative"]),
                    out / figure_name(study, "speedup"),
                )
            )
        paths.append(
            save_figure(
                figures.cascade_figure([(s["name"], s["cascade"]) for s in study["sets"]]),
                out / figure_name(study, "cascade"),
            )
        )
        paths.append(
            save_figure(
                figures.sets_figure([(s["name"], s, s.get("ceiling")) for s in study["sets"]]),
                out / figure_name(study, "sets"),
            )
        )
    if copy_curves:
        paths.append(
            save_figure(figures.copy_figure(copy_curves), out / FIGURES_DIR / "copies.png")
        )
    return paths


def write_per_prefix(path: Path, ladders: Sequence[dict]) -> Path:
    """One JSON line per prefix of every set: the prefix, the target's top token (id and text),
    each strategy's guess and every per-prefix score."""
    with atomic_file(path) as f:
        for ladder in ladders:
            decode = ladder["decode"]
            title = ladder["study"]["title"]
            for result, rows in zip(ladder["sets"], ladder["rows"], strict=True):
                cache, per_row = result["cache"], result["per_row"]
                scored = per_row["strategies"]
                drafts = draft_names(result["strategies"])
                for i, row in enumerate(per_row["rows"].tolist()):
                    token = int(per_row["target"]["token"][i])
                    record = {
                        "ladder": title,
                        "set": cache.path.name,
                        "row": row,
                        "prefix": cache.prefixes[row],
                        "target_token": token,
                        "target_text": decode(token),
                        "best_guess": int(rows["best_guess"][i]),
                        "best_text": decode(int(rows["best_guess"][i])),
                        "guesses": {n: int(scored[n]["guess"][i]) for n in scored},
                        **{k: _finite(rows[k][i]) for k in (*EMERGENCE, "trend")},
                        "target_logprob": _finite(per_row["target"]["logprob"][i]),
                        "sampled_acceptance": {n: _finite(scored[n]["accept"][i]) for n in drafts},
                    }
                    if rows.get("expected") is not None:
                        record["copy_token"] = int(rows["expected"][row])
                    f.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
    return path


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------
# report.md


def format_report(ladders: Sequence[dict]) -> str:
    lines = [
        "# The emergence study",
        "",
        "How hard is the target's next-token distribution to predict from the small models of its "
        "family, what does predicting it buy, and where is it hardest? Every number is a mean "
        "over prefixes with its 95% bootstrap interval; choices (the best predictor, a "
        "cascade's threshold) are made on other folds of the reference set than the prefixes "
        "they are scored on. Definitions are in the README.",
        "",
    ]
    for ladder in ladders:
        lines += format_ladder(ladder["study"])
    if any("copies" in s for ladder in ladders for s in ladder["study"]["sets"]):
        lines += [
            "## In-context copying along the ladders",
            "",
            f"![copies]({FIGURES_DIR}/copies.png)",
            "",
        ]
    return "\n".join(lines) + "\n"


def format_ladder(study: dict) -> list[str]:
    axis = study["scale_axis"]
    best = study["best_predictor"]
    lines = [
        f"## {study['title']}: {len(study['small_models'])} small models -> {study['target']} "
        f"(scale: {axis})",
        "",
        f"Checkpoint `{study['checkpoint']}`. Best predictor by KL, chosen on held-out folds of "
        f"`{study['sets'][0]['name']}`: {', '.join(best['per_fold'])} per fold; "
        f"`{best['overall']}` for the other sets.",
        "",
        "### 1. How emergent each prefix is",
        "",
    ]
    head = ["set", "prefixes", *[EMERGENCE_TITLES[k] for k in EMERGENCE], "noise ceiling %"]
    table = []
    for s in study["sets"]:
        emergence = s["emergence"]
        table.append(
            [
                s["name"],
                str(s["num_prefixes"]),
                *[_stat(emergence[k], k) for k in EMERGENCE],
                _stat(s.get("ceiling"), "ceiling"),
            ]
        )
    lines += markdown_table(head, table)
    lines += ["", f"![emergence]({figure_name(study, 'emergence')})", ""]
    lines += _vs_reference(study)
    lines += ["### Agreement of every strategy with the target (top-1 %)", ""]
    names = list(study["sets"][0]["leaderboard"]["strategies"])
    shown = [n for n in names if not n.startswith("model:")]
    head = ["strategy", *[s["name"] for s in study["sets"]]]
    table = [
        [n, *[_stat(s["leaderboard"]["strategies"][n]["top1"], "top1") for s in study["sets"]]]
        for n in shown
    ]
    table.append(["noise ceiling", *[_stat(s.get("ceiling"), "ceiling") for s in study["sets"]]])
    lines += markdown_table(head, table)
    lines += ["", f"![sets]({figure_name(study, 'sets')})", ""]
    lines += ["### The scaling view", ""]
    lines += [
        "Each small model's mean log-probability of the target's top token against log scale, "
        "the least-squares trend through them extended to the target's scale, and the target's "
        "own value: the jump (target minus trend) is what scaling does not predict.",
        "",
    ]
    for s in study["sets"]:
        sc = s["scaling"]
        lines.append(
            f"- `{s['name']}`: trend at the target {_stat(sc['trend'])}, target "
            f"{_stat(sc['target_logprob'])}, best predictor {_stat(sc['predictor_logprob'])}, "
            f"jump {_stat(s['emergence']['jump'])} nats"
        )
        lines.append(f"  ![scaling {s['name']}]({figure_name(study, 'scaling', s['name'])})")
    lines.append("")
    lines += _most_emergent(study)
    lines += _practical(study)
    if any("copies" in s for s in study["sets"]):
        lines += _copies(study)
    return lines


def _vs_reference(study: dict) -> list[str]:
    others = [s for s in study["sets"][1:] if "vs_reference" in s]
    if not others:
        return []
    ref = study["sets"][0]["name"]
    head = ["set", *[f"{EMERGENCE_TITLES[k]}" for k in EMERGENCE], "network top-1 %"]
    table = [
        [
            s["name"],
            *[_stat(s["vs_reference"]["emergence"][k], k) for k in EMERGENCE],
            _stat(s["vs_reference"]["top1"]["network"], "top1"),
        ]
        for s in others
    ]
    return [
        f"Difference to `{ref}` (this set minus it; intervals resample both sets):",
        "",
        *markdown_table(head, table),
        "",
    ]


def _most_emergent(study: dict) -> list[str]:
    lines = ["### The most emergent prefixes", ""]
    for s in study["sets"]:
        lines += [f"`{s['name']}` (largest KL to the best predictor first):", ""]
        table = [
            [
                f"`{_short(item['prefix'])}`",
                f"{item['kl']:.2f}",
                f"{item['jump']:+.2f}",
                f"`{item['target']!r}`",
                f"`{item['trend']!r}`",
                f"`{item['predictor']!r}`",
            ]
            for item in s["most_emergent"]
        ]
        lines += markdown_table(
            ["prefix", "KL", "jump", "target chose", "trend chose", "predictor chose"], table
        )
        lines.append("")
    return lines


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split()).replace("|", "/").replace("`", "'")
    return text if len(text) <= width else "..." + text[-width:]


def _practical(study: dict) -> list[str]:
    lines = ["### 2. What predicting the target buys", ""]
    reference = study["sets"][0]
    if reference["speculative"] is None:
        lines += [
            "Speculative decoding: not reported for a ladder along training time, whose "
            "checkpoints all cost what the target costs.",
            "",
        ]
    else:
        lines += [
            "Speculative decoding (Leviathan et al. 2023) on "
            f"`{reference['name']}`: acceptance a per position (greedy: top-1 agreement; "
            "sampled: sum_x min(p, q)), draft cost c (parameters run per step over the target's), "
            "the best draft length g and the expected speed-up (1 - a^(g+1)) / ((1 - a)(g c + 1)).",
            "",
        ]
        head = ["draft", "cost c", "greedy a %", "g", "speed-up", "sampled a %", "g", "speed-up"]
        table = []
        for name, e in reference["speculative"].items():
            table.append(
                [
                    name,
                    f"{e['cost']:.3f}",
                    _stat(e["greedy"]["acceptance"], "top1"),
                    str(e["greedy"]["draft_length"]),
                    _stat(e["greedy"]["speedup"]),
                    _stat(e["sampled"]["acceptance"], "top1"),
                    str(e["sampled"]["draft_length"]),
                    _stat(e["sampled"]["speedup"]),
                ]
            )
        lines += markdown_table(head, table)
        lines += ["", f"![speed-up]({figure_name(study, 'speedup')})", ""]
        lines += _acceptance_by_set(study)
        if "generation" in study:
            lines += _generation(study["generation"])
    lines += [
        "Cascade: answer from the predictor where its top probability is at least t, else run "
        "the target; t chosen on held-out folds of the reference set to keep each agreement "
        "level.",
        "",
    ]
    head = ["set", "predictor", "level", "t", "target calls saved %", "agreement %"]
    table = []
    for s in study["sets"]:
        for name, entry in s["cascade"].items():
            for level, point in entry["levels"].items():
                table.append(
                    [
                        s["name"],
                        name,
                        f"{float(level):.0%}",
                        ", ".join(f"{t:.3f}" for t in point["thresholds"]),
                        _stat(point["saved"], "saved"),
                        _stat(point["agreement"], "agreement"),
                    ]
                )
    lines += markdown_table(head, table)
    lines += ["", f"![cascade]({figure_name(study, 'cascade')})", ""]
    return lines


def _acceptance_by_set(study: dict) -> list[str]:
    """Sampled acceptance sum_x min(p, q) of each draft on every set, and each set's difference
    to the reference set (intervals resample both sets)."""
    sets = [s for s in study["sets"] if s.get("speculative")]
    if len(sets) < 2:
        return []
    reference = sets[0]["name"]
    head = ["draft", *[f"{s['name']}" for s in sets]]
    table = []
    for draft in sets[0]["speculative"]:
        row = [draft]
        for s in sets:
            cell = _stat(s["speculative"][draft]["sampled"]["acceptance"], "top1")
            diff = s.get("vs_reference", {}).get("sampled_acceptance", {}).get(draft)
            row.append(f"{cell}; {_stat(diff, 'top1')} vs {reference}" if diff else cell)
        table.append(row)
    return [
        f"Sampled acceptance (%) of each draft on every set, and minus `{reference}`'s:",
        "",
        *markdown_table(head, table),
        "",
    ]


def _generation(generation: dict) -> list[str]:
    if "skipped" in generation:
        return [f"A real speculative decoding run was skipped: {generation['skipped']}.", ""]
    lines = [
        f"Measured: speculative decoding of {generation['prompts']} held-out prefixes, "
        f"{generation['max_new_tokens']} new tokens each, with the suite's own models (the "
        "network head that never saw those prefixes drafts):",
        "",
    ]
    head = [
        "draft",
        "mode",
        "g",
        "acceptance %",
        "offline a %",
        "target passes / token",
        "offline estimate",
    ]
    table = []
    for name, modes in generation["drafts"].items():
        for mode, m in modes.items():
            table.append(
                [
                    name,
                    mode,
                    str(m["draft_length"]),
                    _stat(m["verified_acceptance_rate"], "top1"),
                    f"{100 * m['offline_acceptance']:.1f}",
                    _stat(m["passes_per_token"]),
                    f"{m['offline_passes_per_token']:.3f}",
                ]
            )
    return [*lines, *markdown_table(head, table), ""]


def _copies(study: dict) -> list[str]:
    lines = ["### In-context copying", ""]
    for s in study["sets"]:
        if "copies" not in s:
            continue
        c = s["copies"]
        lines.append(
            f"`{s['name']}` ({c['prefixes']} prompts): how often each model's top token is the "
            "copy: "
            + "; ".join(f"{name} {_stat(stat, 'top1')}%" for name, stat in c["models"].items())
        )
        lines.append("")
        if c.get("split", {}).get("copies", {}).get("prefixes"):
            lines += _copy_split(c["split"])
    return lines


def _copy_split(split: dict) -> list[str]:
    """Where the target copies against where it does not: KL and miss of the best predictor."""
    names = {
        "copies": "the target copies",
        "new": "the target copies, the largest small model does not",
        "other": "the target does not copy",
    }
    table = []
    for key, title in names.items():
        group = split[key]
        row = [title, str(group["prefixes"]), _stat(group["kl"]), _stat(group["miss"], "top1")]
        for metric, kind in (("kl", ""), ("miss", "top1")):
            diff = group.get("minus_other", {}).get(metric)
            row.append(_stat(diff, kind) if diff else "")
        table.append(row)
    head = ["prompts where", "n", "KL, nats", "top-1 miss %", "KL minus the rest"]
    head.append("miss minus the rest, points")
    return [*markdown_table(head, table), ""]
