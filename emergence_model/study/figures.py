"""The study's figures, drawn with matplotlib (headless Agg backend) from the study's summaries."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from emergence_model.report import pyplot

SET_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def _color(i: int) -> str:
    return SET_COLORS[i % len(SET_COLORS)]


def _finish(figure, ax):
    """Legend, a light grid and a tight layout: how every single-panel figure here ends."""
    ax.legend(fontsize=8)
    ax.grid(color="#eeeeee")
    figure.tight_layout()
    return figure


def emergence_histogram(sets: Sequence[tuple[str, np.ndarray]], best: str):
    """Per set, the distribution of the per-prefix emergence score: KL(target || best
    predictor), on log-spaced bins (most prefixes are easy, a few very hard)."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(7.5, 4.0))
    values = [np.clip(v, 1e-4, None) for _, v in sets]
    top = max(float(v.max()) for v in values)
    # from the smallest values any set has in numbers (its 0.1th percentile), not from the floor
    low = min(float(np.percentile(v, 0.1)) for v in values)
    bins = np.logspace(math.log10(low) - 0.05, math.log10(max(top, 10 * low)) + 0.05, 40)
    for i, ((name, _), v) in enumerate(zip(sets, values, strict=True)):
        ax.hist(
            v,
            bins=bins,
            histtype="step",
            linewidth=1.6,
            color=_color(i),
            density=True,
            label=f"{name} (mean {v.mean():.3f} nats)",
        )
    ax.set_xscale("log")
    ax.set_xlabel(f"KL(target || {best}) per prefix, nats")
    ax.set_ylabel("density")
    ax.set_title("How emergent each prefix is: the target's distribution vs the best predictor")
    return _finish(figure, ax)


def scaling_figure(name: str, scaling: dict):
    """Each small model's mean log-probability of the target's top token against log scale, the
    least-squares trend through them extended to the target's scale, the target's own value
    and the best predictor's, each with its 95% interval."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(6.5, 4.0))
    x = np.log10(np.asarray(scaling["small_scales"], dtype=np.float64))
    x_target = math.log10(scaling["target_scale"])
    y = np.array([s["value"] for s in scaling["small_logprob"]])
    lo = np.array([s["ci"][0] for s in scaling["small_logprob"]])
    hi = np.array([s["ci"][1] for s in scaling["small_logprob"]])
    ax.errorbar(
        x, y, yerr=[y - lo, hi - y], fmt="o", color="#1f77b4", capsize=3, label="small models"
    )
    if len(x) > 1 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        line_x = np.array([x.min(), x_target])
        ax.plot(line_x, slope * line_x + intercept, "--", color="#1f77b4", label="trend, extended")
    for key, marker, color, label in (
        ("target_logprob", "*", "#d62728", "target"),
        ("predictor_logprob", "D", "#2ca02c", "best predictor"),
    ):
        stat = scaling[key]
        ax.errorbar(
            [x_target],
            [stat["value"]],
            yerr=[[stat["value"] - stat["ci"][0]], [stat["ci"][1] - stat["value"]]],
            fmt=marker,
            color=color,
            markersize=11 if marker == "*" else 7,
            capsize=3,
            label=label,
        )
    axis = "parameters" if scaling["axis"] == "parameters" else "training tokens"
    ax.set_xlabel(f"log10 {axis}")
    ax.set_ylabel("mean log-prob of the target's top token")
    ax.set_title(f"{name}: what scaling predicts at the target's {axis}")
    return _finish(figure, ax)


def _draft_kind(draft: str) -> str:
    if draft.startswith("model:"):
        return "one small model"
    if draft.startswith("network:"):
        return "network on the k smallest"
    return draft


def speedup_figure(name: str, speculative: dict):
    """Expected speed-up of speculative decoding against draft cost, per draft, greedy (solid)
    and sampled (dashed), with the acceptance's interval carried through the formula; drafts of
    one kind (each small model alone, networks on the k smallest) joined in order of cost."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(7.0, 4.2))
    kinds: dict[str, list[dict]] = {}
    for draft, entry in speculative.items():
        kinds.setdefault(_draft_kind(draft), []).append(entry)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (kind, entries), color in zip(kinds.items(), colors, strict=False):
        entries = sorted(entries, key=lambda e: e["cost"])
        for mode, style, marker in (("greedy", "-", "o"), ("sampled", "--", "s")):
            values = [e[mode]["speedup"] for e in entries]
            ax.errorbar(
                [e["cost"] for e in entries],
                [v["value"] for v in values],
                yerr=[
                    [v["value"] - v["ci"][0] for v in values],
                    [v["ci"][1] - v["value"] for v in values],
                ],
                fmt=marker + style,
                color=color,
                capsize=2,
                markersize=5,
                label=f"{kind}, {mode}",
            )
    ax.axhline(1.0, color="#999999", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("draft cost per step / target pass (parameters run)")
    ax.set_ylabel("expected speed-up at the best draft length")
    ax.set_title(f"{name}: speculative decoding, speed-up against draft cost")
    return _finish(figure, ax)


def cascade_figure(sets: Sequence[tuple[str, dict]]):
    """Target calls saved against agreement with the target, for the network's cascade on each
    set, with the operating points chosen on held-out folds."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (name, cascade) in enumerate(sets):
        entry = cascade["network"]
        ax.plot(entry["curve"]["saved"], entry["curve"]["agreement"], color=_color(i), label=name)
        points: dict[tuple[float, float], list[str]] = {}  # one label for levels that coincide
        for level, point in entry["levels"].items():
            xy = (point["saved"]["value"], point["agreement"]["value"])
            points.setdefault((round(xy[0], 3), round(xy[1], 3)), []).append(f"{float(level):.0%}")
        for xy, levels in points.items():
            ax.plot(*xy, "o", color=_color(i))
            ax.annotate(  # staggered by set: the sets' points often coincide too
                ", ".join(levels),
                xy,
                fontsize=7,
                color=_color(i),
                xytext=(4, -9 - 8 * i),
                textcoords="offset points",
            )
    ax.set_xlabel("share of target calls saved")
    ax.set_ylabel("agreement with the target")
    ax.set_title("Cascade: answer from the network when it is confident, else run the target")
    return _finish(figure, ax)


def copy_figure(curves: Sequence[tuple[str, str, list[float], list[dict]]]):
    """How often each model's top token is the in-context copy, against its scale (one panel per
    ladder: sizes, training steps), with 95% intervals."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.8), squeeze=False)
    for ax, (title, axis, scales, rates) in zip(axes[0], curves, strict=True):
        y = np.array([r["value"] for r in rates]) * 100
        lo = np.array([r["ci"][0] for r in rates]) * 100
        hi = np.array([r["ci"][1] for r in rates]) * 100
        ax.errorbar(scales, y, yerr=[y - lo, hi - y], fmt="o-", capsize=3)
        ax.plot(scales[-1], y[-1], "*", color="#d62728", markersize=12, label="target")
        ax.set_xscale("log")
        ax.set_xlabel("parameters" if axis == "parameters" else "training tokens")
        ax.set_ylabel("top token is the copy (%)")
        ax.set_title(title)
        ax.grid(color="#eeeeee")
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def sets_figure(rows: Sequence[tuple[str, dict, dict | None]]):
    """Per prefix set: the network's and the best baseline's agreement with the target beside
    the noise ceiling, and the mean emergence score (KL to the best predictor)."""
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 1.3 + 0.55 * len(rows)))
    names = [name for name, _, _ in rows][::-1]
    y = np.arange(len(names))
    for offset, key, color in ((0.18, "network", "#d62728"), (-0.18, "best_baseline", "#1f77b4")):
        values, errors = [], [[], []]
        for _, summary, _ in rows[::-1]:
            board = summary["leaderboard"]
            strategy = board["best_baseline"] if key == "best_baseline" else "network"
            stat = board["strategies"][strategy]["top1"]
            values.append(100 * stat["value"])
            errors[0].append(100 * (stat["value"] - stat["ci"][0]))
            errors[1].append(100 * (stat["ci"][1] - stat["value"]))
        left.barh(
            y + offset,
            values,
            height=0.34,
            color=color,
            alpha=0.8,
            label="network" if key == "network" else "best baseline",
        )
        left.errorbar(values, y + offset, xerr=errors, fmt="none", ecolor="black", capsize=2)
    for i, (_, _, ceiling) in enumerate(rows[::-1]):
        if ceiling is not None:
            left.plot(
                100 * ceiling["value"],
                i,
                "|",
                color="black",
                markersize=16,
                label="noise ceiling" if i == 0 else None,
            )
    left.set_yticks(y, names)
    left.set_xlim(0, 100)
    left.set_xlabel("top-1 agreement with the target (%)")
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, frameon=False)
    kl = [summary["emergence"]["kl"] for _, summary, _ in rows[::-1]]
    right.barh(
        y,
        [k["value"] for k in kl],
        color="#7f7f7f",
        xerr=[[k["value"] - k["ci"][0] for k in kl], [k["ci"][1] - k["value"] for k in kl]],
        capsize=2,
    )
    right.set_yticks(y, names)
    right.set_xlabel("mean KL(target || best predictor), nats")
    figure.suptitle("Where emergence lives: agreement and emergence score per prefix set")
    figure.tight_layout()
    return figure
