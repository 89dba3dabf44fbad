"""The study's report files: study.json, per_prefix.jsonl (one row per prefix of every set), PNG
figures, and report.md (`markdown.format_report`), after Holm's correction over every claim."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emergence_model.files import atomic_file, write_json_atomic
from emergence_model.report import save_figure
from emergence_model.study import figures
from emergence_model.study.analysis import EMERGENCE, draft_names
from emergence_model.study.claims import apply_holm
from emergence_model.study.formatting import FIGURES_DIR, figure_name
from emergence_model.study.markdown import format_report

PER_PREFIX_CONTROLS = ("entropy", "floor_kl", "replica_jump", "true_jump")
"""Per-prefix controls written beside the emergence scores (`controls.control_rows`)."""


def write_study_report(
    out: str | Path, ladders: Sequence[dict], stamp: dict | None = None
) -> list[Path]:
    """Write everything for the ladder studies (`study_ladder` results) under `out`; `stamp`
    (`results.run_stamp`): what made them, at the top of report.md."""
    out = Path(out)
    (out / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    studies = [ladder["study"] for ladder in ladders]
    claims = apply_holm(studies)
    paths = [*draw_figures(out, ladders)]
    with atomic_file(out / "study.json") as f:
        text = json.dumps(_finite_json(studies), indent=1, default=_json_default, allow_nan=False)
        f.write((text + "\n").encode())
    paths.append(out / "study.json")
    paths.append(write_per_prefix(out / "per_prefix.jsonl", ladders))
    with atomic_file(out / "report.md") as f:
        f.write(format_report(studies, stamp).encode())
    paths.append(out / "report.md")
    if stamp is not None:  # beside report.md: what made it, and every claim it makes
        record = {"title": "The emergence study", "stamp": stamp, "claims": claims}
        write_json_atomic(out / "report.json", _finite_json(record))
        paths.append(out / "report.json")
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


def draw_figures(out: Path, ladders: Sequence[dict]) -> list[Path]:
    paths = []
    copy_curves = []

    def save(figure, name: str) -> None:
        paths.append(save_figure(figure, out / name))

    for ladder in ladders:
        study, rows = ladder["study"], ladder["rows"]
        sets = study["sets"]
        best = study["best_predictor"]["overall"]
        names = [s["name"] for s in sets]
        kls = [(n, r["kl"]) for n, r in zip(names, rows, strict=True)]
        save(figures.emergence_histogram(kls, best), figure_name(study, "emergence"))
        for summary in sets:
            save(
                figures.scaling_figure(summary["name"], summary["scaling"]),
                figure_name(study, "scaling", summary["name"]),
            )
            control = summary.get("copies", {}).get("control")
            if control:
                title = f"{study['title']}: {summary['name']}"
                copy_curves.append((title, control["axis"], control["models"]))
        curves = [(s["name"], s["rung_curve"], s.get("floor")) for s in sets if "rung_curve" in s]
        if curves:
            save(figures.rung_figure(study["title"], study["scale_axis"], curves),
                 figure_name(study, "rungs"))  # fmt: skip
        save(figures.entropy_figure(study["title"], [(s["name"], s["kl_entropy"]) for s in sets]),
             figure_name(study, "entropy"))  # fmt: skip
        answers = [(s["name"], s["answers"]) for s in sets if "answers" in s]
        if answers:
            save(figures.answers_figure(study["title"], study["scale_axis"], answers),
                 figure_name(study, "answers"))  # fmt: skip
        if sets[0]["speculative"]:
            save(figures.speedup_figure(sets[0]["name"], sets[0]["speculative"]),
                 figure_name(study, "speedup"))  # fmt: skip
        save(figures.cascade_figure([(s["name"], s["cascade"]) for s in sets]),
             figure_name(study, "cascade"))  # fmt: skip
        save(figures.sets_figure([(s["name"], s, s.get("ceiling")) for s in sets]),
             figure_name(study, "sets"))  # fmt: skip
    if copy_curves:
        save(figures.copy_figure(copy_curves), f"{FIGURES_DIR}/copies.png")
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
                        **{k: _finite(rows[k][i]) for k in PER_PREFIX_CONTROLS if k in rows},
                        "target_logprob": _finite(per_row["target"]["logprob"][i]),
                        "sampled_acceptance": {n: _finite(scored[n]["accept"][i]) for n in drafts},
                    }
                    if rows.get("expected") is not None:
                        record["copy_token"] = int(rows["expected"][i])
                    f.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
    return path


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
