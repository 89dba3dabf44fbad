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


KIND_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def concentric(i: int) -> tuple[float, float]:
    """Marker size and z-order of the i-th series: each smaller than the one before and drawn
    over it, so that series whose points coincide show as concentric markers."""
    return max(3.0, 11.0 - 2.0 * i), 2.0 + i


def _legend_below(ax, columns: int = 2) -> None:
    """The legend under the axes, where no point can hide an entry."""
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=columns,
              frameon=False)  # fmt: skip


def speedup_figure(name: str, speculative: dict):
    """Expected speed-up of speculative decoding against each draft's cost (the headline cost:
    given, else measured at batch 1, else parameters), greedy (solid) and sampled (dashed), with
    the acceptance's interval carried through the formula; drafts of one kind (each small model
    alone, networks on the k smallest) joined in order of cost, each kind its own marker."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(7.5, 5.2))
    kinds: dict[str, list[dict]] = {}
    for draft, entry in speculative.items():
        kinds.setdefault(_draft_kind(draft), []).append(entry)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (kind, entries) in enumerate(kinds.items()):
        entries = sorted(entries, key=lambda e: e["cost"])
        # earlier kinds drawn larger and below: points that coincide (drafts that do not pay, at
        # speed-up 1) show as concentric markers, none hidden
        size, order = concentric(i)
        for mode, style, fill in (("greedy", "-", None), ("sampled", "--", "none")):
            values = [e[mode]["speedup"] for e in entries]
            ax.errorbar(
                [e["cost"] for e in entries],
                [v["value"] for v in values],
                yerr=[
                    [v["value"] - v["ci"][0] for v in values],
                    [v["ci"][1] - v["value"] for v in values],
                ],
                fmt=KIND_MARKERS[i % len(KIND_MARKERS)] + style,
                color=colors[i % len(colors)],
                markerfacecolor=fill,
                capsize=2,
                markersize=size,
                zorder=order,
                label=f"{kind}, {mode}",
            )
    ax.axhline(1.0, color="#999999", linewidth=0.8)
    ax.set_xscale("log")
    kinds_used = sorted({e["cost_kind"] for e in speculative.values()})
    ax.set_xlabel(f"draft step's cost / target step ({', '.join(kinds_used)})")
    ax.set_ylabel("expected speed-up at the best draft length")
    ax.set_title(f"{name}: speculative decoding, speed-up against draft cost")
    ax.grid(color="#eeeeee")
    _legend_below(ax)
    figure.tight_layout()
    return figure


def cascade_figure(sets: Sequence[tuple[str, dict]]):
    """Agreement with the target against net compute per token (the network's step on every
    prefix, a target step where it defers, the catch-up of the tokens it answered), for the
    network's cascade on each set, with the operating points chosen on held-out folds (one
    marker per agreement level, in the legend)."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(7.0, 5.2))
    styles = ("-", "--", "-.", ":")
    levels: list[str] = []
    for i, (name, cascade) in enumerate(sets):
        entry = cascade["network"]
        curve = entry["curve"]
        ax.plot(curve["net_compute"], curve["agreement"], styles[i % len(styles)],
                color=_color(i), label=name)  # fmt: skip
        size, order = concentric(i)
        for level, point in entry["levels"].items():
            if level not in levels:
                levels.append(level)
            ax.plot(
                point["net_compute"]["value"],
                point["agreement"]["value"],
                KIND_MARKERS[levels.index(level) % len(KIND_MARKERS)],
                color=_color(i),
                markersize=size,
                markeredgewidth=1.5,
                markerfacecolor="none",
                zorder=order + 10,
            )
    for j, level in enumerate(levels):  # one neutral legend entry per level, after the sets
        ax.plot([], [], KIND_MARKERS[j % len(KIND_MARKERS)], color="black", markerfacecolor="white",
                label=f"threshold keeping {float(level):.0%} on held-out folds")  # fmt: skip
    ax.axvline(1.0, color="#999999", linewidth=0.8)
    ax.text(1.0, ax.get_ylim()[0], " the target alone", fontsize=7, color="#666666",
            va="bottom")  # fmt: skip
    kind = sets[0][1]["network"]["cost_kind"] if sets else ""
    ax.set_xlabel(f"net compute per token, in target steps (costs: {kind})")
    ax.set_ylabel("agreement with the target")
    ax.set_title("Cascade: answer from the network when it is confident, else run the target")
    ax.grid(color="#eeeeee")
    _legend_below(ax)
    figure.tight_layout()
    return figure


def copy_figure(curves: Sequence[tuple[str, str, list[dict]]]):
    """Copying in context against scale: each model's copy rate minus its rate on the control
    (the repeated words after another prompt's passage), with 95% intervals; one panel per
    ladder and set, each titled by both."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.0), squeeze=False)
    for ax, (title, axis, models) in zip(axes[0], curves, strict=True):
        scales = [m["scale"] for m in models]
        for key, color, label in (
            ("copy_minus_control", "#1f77b4", "copy minus control"),
            ("copy", "#bbbbbb", "copy rate (raw)"),
        ):
            y = np.array([m[key]["value"] for m in models]) * 100
            lo = np.array([m[key]["ci"][0] for m in models]) * 100
            hi = np.array([m[key]["ci"][1] for m in models]) * 100
            ax.errorbar(scales, y, yerr=[y - lo, hi - y], fmt="o-", capsize=3, color=color,
                        label=label)  # fmt: skip
        net = models[-1]["copy_minus_control"]["value"] * 100
        ax.plot(scales[-1], net, "*", color="#d62728", markersize=12, label="target")
        ax.axhline(0.0, color="#999999", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("parameters" if axis == "parameters" else "training tokens")
        ax.set_ylabel("top token is the copy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(color="#eeeeee")
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _line_with_ci(ax, x, stats, color, label, style="o-", percent=False, face=None):
    scale = 100 if percent else 1
    y = np.array([s["value"] for s in stats]) * scale
    lo = np.array([s["ci"][0] for s in stats]) * scale
    hi = np.array([s["ci"][1] for s in stats]) * scale
    ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt=style, capsize=3, color=color, label=label,
                markerfacecolor=face)  # fmt: skip


def rung_figure(title: str, axis: str, sets: Sequence[tuple[str, dict, dict | None]]):
    """Emergence over scale: per set (one color each) KL(p_k || q_k) and the share of the step
    from rung k-1 that the prediction recovers, against log scale; the line fitted on the rungs
    below the target extended to it (dashed) and its prediction there (open marker), beside the
    noise floor KL(p_T || p_T') where a replica exists (a cross)."""
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, (name, curve, floor) in enumerate(sets):
        # each set a little to the side, so that no interval hides another's
        x = np.log10([r["scale"] for r in curve["rungs"]]) + 0.01 * (i - (len(sets) - 1) / 2)
        for ax, key in ((left, "kl"), (right, "recovered")):
            _line_with_ci(ax, x, [r[key] for r in curve["rungs"]], _color(i), name)
            test = curve.get("back_test", {}).get(key, {})
            if "predicted" in test:
                xs = np.array([x[0], x[-1]])
                values = [r[key]["value"] for r in curve["rungs"][:-1]]
                slope, intercept = np.polyfit(x[:-1], values, 1)
                ax.plot(xs, slope * xs + intercept, "--", color=_color(i), linewidth=1)
                _line_with_ci(ax, [x[-1] + 0.03], [test["predicted"]], _color(i), None,
                              style="o", face="white")  # fmt: skip
        if floor is not None:
            left.plot(x[-1], floor["value"], "x", color=_color(i), markersize=9)
    for marker, face, label in (
        ("x", None, "noise floor KL(p_T || p_T') (replica)"),
        ("o", "white", "the rungs' line at the target"),
    ):  # neutral legend entries, after the sets
        left.plot([], [], marker, color="black", markerfacecolor=face, linestyle="none",
                  label=label)  # fmt: skip
    return _finish_pair(
        figure,
        [
            ("KL(p_k || q_k), nats", "KL of each rung from its prediction"),
            ("share of the step from rung k-1 recovered", "1 - KL(p_k || q_k) / KL(p_k || p_k-1)"),
        ],
        f"{_scale_label(axis)} of rung k",
        f"{title}: emergence over scale (dashed: the line through the rungs below the target; "
        "open: its prediction at the target)",
    )


def _scale_label(axis: str) -> str:
    """The x-axis label of a ladder's log scale: parameters, or tokens seen along training."""
    return "log10 parameters" if axis == "parameters" else "log10 training tokens"


def _is_proxy(handle) -> bool:
    """Whether a legend handle is a marker drawn with no data (a legend entry only)."""
    return hasattr(handle, "get_xdata") and len(handle.get_xdata()) == 0


def _finish_pair(figure, texts, xlabel: str, suptitle: str):
    """Two panels' labels ((ylabel, title) each), one shared legend under them (the left
    panel's entries) and a title over both."""
    axes = figure.axes
    for ax, (ylabel, title) in zip(axes, texts, strict=True):
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(color="#eeeeee")
    handles, labels = axes[0].get_legend_handles_labels()
    # the series first, then the neutral entries (markers drawn with no data) that explain them
    order = sorted(range(len(handles)), key=lambda j: _is_proxy(handles[j]))
    handles, labels = [handles[j] for j in order], [labels[j] for j in order]
    figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
                  frameon=False)  # fmt: skip
    figure.suptitle(suptitle, fontsize=10)
    rows = -(-len(labels) // 4)  # legend rows under the panels
    figure.tight_layout(rect=(0, 0.05 + 0.04 * rows, 1, 0.95))
    return figure


def answers_figure(title: str, axis: str, sets: Sequence[tuple[str, dict]]):
    """Schaeffer's test: per task set, exact match of the whole answer (left) and its
    log-probability per token (right) against log scale, every model of the ladder."""
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, (name, answers) in enumerate(sets):
        x = np.log10([m["scale"] for m in answers["models"]]) + 0.01 * (i - (len(sets) - 1) / 2)
        _line_with_ci(left, x, [m["exact"] for m in answers["models"]], _color(i), name,
                      percent=True)  # fmt: skip
        _line_with_ci(right, x, [m["logprob"] for m in answers["models"]], _color(i), name)
    return _finish_pair(
        figure,
        [
            ("exact match of the whole answer (%)", "discontinuous: exact match"),
            ("log-probability of the answer per token", "continuous: log-probability"),
        ],
        _scale_label(axis),
        f"{title}: task sets' answers along the ladder",
    )


def entropy_figure(title: str, sets: Sequence[tuple[str, dict]]):
    """KL to the best predictor per quantile bin of the target's entropy (the reference set's
    bins), one line per set: the sets compared at matched entropy."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(7.0, 4.6))
    for i, (name, kl_entropy) in enumerate(sets):
        bins = [b for b in kl_entropy["bins"] if b["prefixes"]]
        _line_with_ci(ax, [b["entropy"] for b in bins], [b["kl"] for b in bins], _color(i), name)
    ax.set_xlabel("the target's entropy, nats (mean of each quantile bin)")
    ax.set_ylabel("mean KL(target || best predictor), nats")
    ax.set_title(f"{title}: KL against the target's entropy")
    ax.grid(color="#eeeeee")
    _legend_below(ax)
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
            stat = summary["agreement"][strategy]  # intervals by cluster
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
