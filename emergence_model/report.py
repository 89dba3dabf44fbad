"""Reports of evaluation results: a table for the terminal, Markdown, JSON and matplotlib figures.

A result ("summary") is what `evaluate.evaluate_cache` returns; a report shows one or more
(title, summary) panels. Figures are drawn with matplotlib on its headless Agg backend and saved
as PNG next to results.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from emergence_model.files import atomic_file

METRIC_TITLES = {
    "top1": "top-1",
    "top5": "top-5",
    "hard_top1": "hard top-1",
    "loglik": "log-lik",
    "kl": "KL",
    "accept": "sum min(p,q)",
}
TABLE_COLUMNS = ("top1", "top5", "hard_top1", "loglik", "kl", "accept")
PERCENT_METRICS = ("top1", "top5", "hard_top1")
# What a strategy's calls cost (meter.Cost.summary): its key, column title and digits.
COST_COLUMNS = (("ms_per_100", "ms/100", 1), ("peak_mb", "peak MB", 1))
COLORS = {"network": "#d62728", "function": "#2ca02c", "baseline": "#1f77b4"}


def format_number(
    value: float, percent: bool = False, *, digits: int | None = None, signed: bool = False
) -> str:
    """One number as every table shows it: agreements in percent (points) to 1 digit, anything
    else to 3; `digits` for another precision, `signed` for a difference (+0.3, -1.2)."""
    scale, default_digits = (100.0, 1) if percent else (1.0, 3)
    places = default_digits if digits is None else digits
    return f"{value * scale:{'+' if signed else ''}.{places}f}"


def format_stat(
    stat: dict | None, percent: bool = False, *, digits: int | None = None, signed: bool = False
) -> str:
    """ "value [lo, hi]" of a {"value", "ci"} statistic, each number as `format_number` shows it;
    "-" for a missing or NaN value."""
    if stat is None or math.isnan(stat["value"]):
        return "-"
    lo, hi = (format_number(x, percent, digits=digits, signed=signed) for x in stat["ci"])
    return f"{format_number(stat['value'], percent, digits=digits, signed=signed)} [{lo}, {hi}]"


def table_head() -> list[str]:
    metrics = [METRIC_TITLES[c] + (" %" if "top" in c else "") for c in TABLE_COLUMNS]
    return ["strategy", *metrics, *[title for _, title, _ in COST_COLUMNS]]


def strategies_by_top1(summary: dict) -> list[str]:
    return sorted(summary["strategies"], key=lambda s: -summary["strategies"][s]["top1"]["value"])


def table_rows(summary: dict) -> list[list[str]]:
    rows = []
    for name in strategies_by_top1(summary):
        entry = summary["strategies"][name]
        cells = [name]
        for column in TABLE_COLUMNS:
            cells.append(format_stat(entry.get(column), percent=column in PERCENT_METRICS))
        cost = entry.get("cost") or {}
        for key, _, digits in COST_COLUMNS:
            value = cost.get(key)
            cells.append("-" if value is None else format_number(value, digits=digits))
        rows.append(cells)
    for name in summary.get("failed", {}):
        rows.append([name, "failed", *["-"] * (len(TABLE_COLUMNS) + len(COST_COLUMNS) - 1)])
    return rows


def failure_lines(summary: dict) -> list[str]:
    """ "NAME failed: REASON" for each entry that could not be scored."""
    return [f"{name} failed: {reason}" for name, reason in summary.get("failed", {}).items()]


def header_lines(summary: dict, title: str) -> list[str]:
    lines = [
        f"{title}: {summary['cache']} ({summary['rows']}, {summary['num_prefixes']} prefixes)",
        f"target {summary['target']}; easy prefixes (largest small model agrees with the target): "
        f"{format_stat(summary['easy_share'], percent=True)}%",
    ]
    for net, comp in summary.get("comparisons", {}).items():
        verdict = "beats" if comp["beats_best_baseline"] else "does NOT beat"
        lines.append(
            f"{net} - {comp['baseline']} (best baseline) top-1: "
            f"{format_stat(comp['top1_diff'], percent=True)} points; hard prefixes: "
            f"{format_stat(comp['hard_top1_diff'], percent=True)} -> {verdict} it "
            "(95% paired bootstrap)"
        )
        distribution = [
            f"{METRIC_TITLES[m]} {format_stat(comp[m + '_diff'], percent=False)} "
            f"(vs {comp[m + '_diff']['baseline']})"
            for m in ("kl", "accept")
            if m + "_diff" in comp
        ]
        if distribution:
            lines.append(
                f"{net}'s distribution minus the best baseline's: " + "; ".join(distribution)
            )
        recall = summary["strategies"][net].get("candidate_recall")
        if recall is not None:
            lines.append(f"{net}: target's top token among its candidates on {100 * recall:.1f}%")
    lines += summary.get("notes", [])
    return lines


def format_table(summary: dict, title: str = "evaluation") -> str:
    """A fixed-width table for the terminal."""
    rows = [table_head(), *table_rows(summary)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = [" ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    text.insert(1, " ".join("-" * w for w in widths))
    failures = failure_lines(summary)
    return "\n".join(
        [*header_lines(summary, title), "", *text, *([""] + failures if failures else [])]
    )


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def format_markdown(summary: dict, title: str = "evaluation") -> str:
    lines = [f"## {title}", "", *[f"- {line}" for line in header_lines(summary, title)], ""]
    lines += markdown_table(table_head(), table_rows(summary))
    lines.append("")
    failures = failure_lines(summary)
    if failures:
        lines += [*[f"- {line}" for line in failures], ""]
    lines.append(
        "Intervals: 95% percentile bootstrap over prefixes "
        f"({summary['num_bootstrap']} resamples). top-1/top-5: agreement with the "
        "target's top token; hard: prefixes where the largest small model disagrees "
        "with the target; log-lik: mean log-probability of the target's top token; KL: "
        "KL(target || predicted), nats; sum min(p,q): the sampled speculative-decoding acceptance "
        "of the predicted distribution as a draft for the target's. A participant's function "
        "gives guesses, not a distribution: top-1 only. ms/100: wall milliseconds of a "
        "strategy's own calls per 100 prefixes (baselines and networks on chunks of the cache's "
        "log-probabilities, functions on their batches of float16 probabilities); peak MB: the "
        "most resident memory one call added above what the process held when it began "
        "(Linux's peak RSS, reset before each call, with freed memory first returned to the "
        "system; '-' where not measured)."
    )
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (no display is needed or used)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path) -> Path:
    """Write `figure` as a PNG at `path` (atomically) and close it."""
    path = Path(path)
    with atomic_file(path) as f:
        figure.savefig(f, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(figure)
    return path


def agreement_figure(panels: Sequence[tuple[str, dict]], metric: str = "top1"):
    """Horizontal bars of `metric` per strategy with their 95% intervals, a panel per result."""
    plt = pyplot()
    heights = [len(summary["strategies"]) for _, summary in panels]
    figure, axes = plt.subplots(
        len(panels),
        1,
        figsize=(7.5, 0.9 + 0.32 * sum(heights) + 0.6 * len(panels)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (title, summary) in zip(axes[:, 0], panels, strict=True):
        order = strategies_by_top1(summary)[::-1]  # best on top
        entries = summary["strategies"]
        values = [100 * entries[name][metric]["value"] for name in order]
        lows = [100 * entries[name][metric]["ci"][0] for name in order]
        highs = [100 * entries[name][metric]["ci"][1] for name in order]
        colors = [COLORS[entry_kind(name, entries[name])] for name in order]
        ax.barh(order, values, color=colors, alpha=0.75)
        ax.errorbar(
            values,
            order,
            xerr=[
                [v - lo for v, lo in zip(values, lows, strict=True)],
                [hi - v for v, hi in zip(values, highs, strict=True)],
            ],
            fmt="none",
            ecolor="black",
            capsize=3,
        )
        for y, (value, high) in enumerate(zip(values, highs, strict=True)):
            ax.text(high + 1, y, f"{value:.1f}%", va="center", fontsize=8)
        ax.set_xlim(0, 110)
        ax.set_xlabel(f"{METRIC_TITLES[metric]} agreement with the target (%)")
        failed = len(summary.get("failed", {}))
        ax.set_title(
            f"{title}: {summary['num_prefixes']} prefixes, 95% bootstrap intervals"
            + (f"; {failed} failed (results.md)" if failed else ""),
            fontsize=10,
        )
        ax.grid(axis="x", color="#dddddd")
        ax.set_axisbelow(True)
    figure.tight_layout()
    return figure


def entry_kind(name: str, entry: dict) -> str:
    """ "network", "function" or "baseline" (summaries written before kinds: by name)."""
    return entry.get("kind") or ("network" if name.startswith("network") else "baseline")


def write_reports(out_dir: str | Path, panels: Sequence[tuple[str, dict]]) -> list[Path]:
    """results.json, results.md and agreement.png for one or more (title, summary) results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json", out_dir / "results.md"]
    with atomic_file(paths[0]) as f:
        f.write((json.dumps(dict(panels), indent=1, default=float) + "\n").encode())
    with atomic_file(paths[1]) as f:
        f.write("\n".join(format_markdown(s, t) for t, s in panels).encode())
    paths.append(save_figure(agreement_figure(panels), out_dir / "agreement.png"))
    return paths
