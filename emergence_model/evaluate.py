"""Evaluate strategies on a cache: agreement with the target's top token, with 95% intervals.

    python -m emergence_model.evaluate --cache cache/glue-rte --checkpoint checkpoints/wiki.ckpt
    python -m emergence_model.evaluate --cache cache/wikipedia --checkpoint CKPT --out reports/wiki

For every strategy: top-1 and top-5 agreement with the target's argmax, the mean log-likelihood
of the target's top token and KL(target || predicted) where the strategy has a distribution, each
with a 95% bootstrap interval over prefixes; the share of easy prefixes (the largest small model
already agrees with the target) and agreement on the hard rest; and a paired bootstrap interval of
(network - best baseline) top-1, so that "beats the best baseline" can be checked (the best
baseline is picked on the very rows scored, which favours the baseline). When the cache is the
one a checkpoint was trained on, every prefix is scored only by a network that never saw it: the
fold's head of a cross-fitted checkpoint, or the held-out test prefixes with --folds 1.

The cache is read in chunks of rows, so a 20k x 7 x 50277 cache never sits in memory whole.
Writes a table on screen and, with --out, results.json, results.md and agreement.svg.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from emergence_model.cache import FeatureCache, open_cache
from emergence_model.model import floor_logprobs
from emergence_model.strategies import (
    STRATEGIES,
    NetworkStrategy,
    Strategy,
    baseline_names,
    model_basename,
)

METRICS = ("top1", "top5", "loglik", "kl")
METRIC_TITLES = {
    "top1": "top-1",
    "top5": "top-5",
    "hard_top1": "hard top-1",
    "loglik": "log-lik",
    "kl": "KL",
}


def score_rows(
    cache: FeatureCache,
    strategies: dict[str, Strategy],
    indices: np.ndarray | None = None,
    chunk_rows: int = 64,
) -> dict:
    """Per-prefix results: {"easy": (n,) bool, name: {metric: (n,) array}} over `indices`.

    For a network, "in_candidates" says whether the target's top token was among the tokens its
    MLP scored (the most probable under the small models' mean)."""
    indices = np.arange(len(cache)) if indices is None else np.asarray(indices, dtype=np.int64)
    small_counts, target_count = cache.param_counts[:-1], cache.param_counts[-1]
    largest = int(np.argmax(small_counts))
    per_row: dict = {name: {m: [] for m in METRICS} for name in strategies}
    easy = cache.argmax[indices, largest] == cache.target_argmax[indices]
    for start in range(0, len(indices), chunk_rows):
        chunk = indices[start : start + chunk_rows]
        rows = torch.from_numpy(cache.rows(chunk))  # (n, M + 1, V)
        target = torch.from_numpy(cache.target_argmax[chunk])  # (n,)
        target_logp = torch.log_softmax(rows[:, -1], dim=1)  # (n, V)
        small = rows[:, :-1]
        for name, strategy in strategies.items():
            scores = torch.from_numpy(strategy.scores(small, small_counts, target_count))
            out = per_row[name]
            out["top1"].append((scores.argmax(dim=1) == target).numpy())
            top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices
            out["top5"].append((top5 == target[:, None]).any(dim=1).numpy())
            if strategy.gives_distribution:
                out["loglik"].append(scores.gather(1, target[:, None]).squeeze(1).numpy())
                kl = (target_logp.exp() * (target_logp - scores)).sum(dim=1)
                out["kl"].append(kl.numpy())
            if isinstance(strategy, NetworkStrategy):
                k = strategy.predictor.config.candidates_for(cache.vocab_size)
                mean = torch.logsumexp(floor_logprobs(small), dim=1)
                hits = (mean.topk(k, dim=1).indices == target[:, None]).any(dim=1)
                out.setdefault("in_candidates", []).append(hits.numpy())
    result = {"easy": easy}
    for name, metrics in per_row.items():
        result[name] = {m: np.concatenate(v).astype(np.float64) for m, v in metrics.items() if v}
    return result


def bootstrap_ci(
    values: np.ndarray, num_bootstrap: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling prefixes)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = np.empty(num_bootstrap)
    step = max(1, 2**22 // values.size)  # resamples per batch, ~32 MB of indices
    for start in range(0, num_bootstrap, step):
        n = min(step, num_bootstrap - start)
        means[start : start + n] = values[rng.integers(0, values.size, (n, values.size))].mean(1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return (float(lo), float(hi))


def concat_rows(parts: Sequence[dict]) -> dict:
    """Join `score_rows` results of disjoint row sets (e.g. the folds of a cross-fit)."""
    joined = {"easy": np.concatenate([p["easy"] for p in parts])}
    for name in parts[0]:
        if name != "easy":
            joined[name] = {m: np.concatenate([p[name][m] for p in parts]) for m in parts[0][name]}
    return joined


def summarize(
    per_row: dict,
    strategies: dict[str, Strategy],
    *,
    num_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Means and 95% intervals per strategy, easy share, and network vs best baseline."""
    easy = per_row["easy"]
    n = int(easy.size)

    def stat(values: np.ndarray) -> dict:
        lo, hi = bootstrap_ci(values, num_bootstrap, seed)
        return {"value": float(values.mean()) if values.size else math.nan, "ci": [lo, hi]}

    summary: dict = {
        "num_prefixes": n,
        "easy_share": stat(easy.astype(np.float64)),
        "strategies": {},
    }
    for name, strategy in strategies.items():
        rows = per_row[name]
        entry = {m: stat(rows[m]) for m in METRICS if m in rows}
        entry["hard_top1"] = stat(rows["top1"][~easy])
        entry["distribution"] = strategy.gives_distribution
        entry["params"] = strategy.params()
        if "in_candidates" in rows:
            entry["candidate_recall"] = float(rows["in_candidates"].mean())
        summary["strategies"][name] = entry
    baselines = [s for s in strategies if not isinstance(strategies[s], NetworkStrategy)]
    networks = [s for s in strategies if isinstance(strategies[s], NetworkStrategy)]
    if baselines:
        best = max(baselines, key=lambda s: summary["strategies"][s]["top1"]["value"])
        summary["best_baseline"] = best
        summary["comparisons"] = {}
        for net in networks:
            diff = per_row[net]["top1"] - per_row[best]["top1"]
            lo, hi = bootstrap_ci(diff, num_bootstrap, seed)
            hard_diff = diff[~easy]
            hard_lo, hard_hi = bootstrap_ci(hard_diff, num_bootstrap, seed)
            summary["comparisons"][net] = {
                "baseline": best,
                "top1_diff": {"value": float(diff.mean()), "ci": [lo, hi]},
                "hard_top1_diff": {
                    "value": float(hard_diff.mean()) if hard_diff.size else math.nan,
                    "ci": [hard_lo, hard_hi],
                },
                "beats_best_baseline": bool(lo > 0),
            }
    return summary


def evaluate_cache(
    cache: FeatureCache,
    parts: Sequence[tuple[np.ndarray | None, dict[str, Strategy]]],
    *,
    rows_description: str = "all prefixes",
    chunk_rows: int = 64,
    num_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Score each part's strategies on its rows of `cache` (None: all) and summarize them
    together, with intervals. Several parts make a cross-fit: every part names the same
    strategies, and part K's network is the one that never saw part K's rows."""
    per_row = concat_rows([score_rows(cache, s, rows, chunk_rows) for rows, s in parts])
    strategies = parts[0][1]
    summary = summarize(per_row, strategies, num_bootstrap=num_bootstrap, seed=seed)
    for name in strategies:
        params = [part[name].params() for _, part in parts]
        if any(p != params[0] for p in params):
            summary["strategies"][name]["params"] = params
    summary.update(
        cache=str(cache.path),
        rows=rows_description,
        target=cache.target_name,
        small_models=cache.model_names[:-1],
        num_bootstrap=num_bootstrap,
    )
    return summary


def _fmt(stat: dict | None, percent: bool) -> str:
    """ "value [lo, hi]", in percent for agreements."""
    if stat is None or math.isnan(stat["value"]):
        return "-"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    lo, hi = stat["ci"]
    return f"{stat['value'] * scale:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"


TABLE_COLUMNS = ("top1", "top5", "hard_top1", "loglik", "kl")


def table_head() -> list[str]:
    return ["strategy", *[METRIC_TITLES[c] + (" %" if "top" in c else "") for c in TABLE_COLUMNS]]


def table_rows(summary: dict) -> list[list[str]]:
    rows = []
    order = sorted(summary["strategies"], key=lambda s: -summary["strategies"][s]["top1"]["value"])
    for name in order:
        entry = summary["strategies"][name]
        cells = [name]
        for column in TABLE_COLUMNS:
            cells.append(_fmt(entry.get(column), percent=column in ("top1", "top5", "hard_top1")))
        rows.append(cells)
    return rows


def header_lines(summary: dict, title: str) -> list[str]:
    lines = [
        f"{title}: {summary['cache']} ({summary['rows']}, {summary['num_prefixes']} prefixes)",
        f"target {summary['target']}; easy prefixes (largest small model agrees with the target): "
        f"{_fmt(summary['easy_share'], percent=True)}%",
    ]
    for net, comp in summary.get("comparisons", {}).items():
        verdict = "beats" if comp["beats_best_baseline"] else "does NOT beat"
        lines.append(
            f"{net} - {comp['baseline']} (best baseline) top-1: "
            f"{_fmt(comp['top1_diff'], percent=True)} points; hard prefixes: "
            f"{_fmt(comp['hard_top1_diff'], percent=True)} -> {verdict} it (95% paired bootstrap)"
        )
        recall = summary["strategies"][net].get("candidate_recall")
        if recall is not None:
            lines.append(f"{net}: target's top token among its candidates on {100 * recall:.1f}%")
    return lines


def format_table(summary: dict, title: str = "evaluation") -> str:
    """A fixed-width table for the terminal."""
    rows = [table_head(), *table_rows(summary)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = [" ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    text.insert(1, " ".join("-" * w for w in widths))
    return "\n".join([*header_lines(summary, title), "", *text])


def format_markdown(summary: dict, title: str = "evaluation") -> str:
    head = table_head()
    lines = [f"## {title}", "", *[f"- {line}" for line in header_lines(summary, title)], ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    lines.append("")
    lines.append(
        "Intervals: 95% percentile bootstrap over prefixes "
        f"({summary['num_bootstrap']} resamples). top-1/top-5: agreement with the "
        "target's top token; hard: prefixes where the largest small model disagrees "
        "with the target; log-lik: mean log-probability of the target's top token; KL: "
        "KL(target || predicted), nats."
    )
    return "\n".join(lines) + "\n"


def agreement_svg(panels: Sequence[tuple[str, dict]], metric: str = "top1") -> str:
    """A small SVG bar chart of `metric` with 95% intervals per strategy, one panel per result."""
    bar_h, gap, label_w, plot_w, pad = 18, 6, 150, 360, 12
    parts, y = [], pad
    for title, summary in panels:
        entries = summary["strategies"]
        order = sorted(entries, key=lambda s: -entries[s][metric]["value"])
        parts.append(
            f'<text x="{pad}" y="{y + 12}" font-weight="bold">{html.escape(title)}: '
            f"{METRIC_TITLES[metric]} agreement with "
            f"{html.escape(model_basename(summary['target']))} "
            f"({summary['num_prefixes']} prefixes, 95% bootstrap)</text>"
        )
        y += 22
        x0 = pad + label_w
        for tick in range(0, 101, 20):
            tx = x0 + plot_w * tick / 100
            height = len(order) * (bar_h + gap)
            parts.append(
                f'<line x1="{tx:.1f}" y1="{y}" x2="{tx:.1f}" y2="{y + height}" stroke="#ddd"/>'
                f'<text x="{tx:.1f}" y="{y + height + 12}" font-size="10" '
                f'text-anchor="middle">{tick}%</text>'
            )
        for name in order:
            stat = entries[name][metric]
            v, (lo, hi) = stat["value"], stat["ci"]
            color = "#d62728" if name.startswith("network") else "#1f77b4"
            cy = y + bar_h / 2
            parts.append(
                f'<text x="{x0 - 6}" y="{cy + 4:.1f}" text-anchor="end">{html.escape(name)}</text>'
                f'<rect x="{x0}" y="{y}" width="{plot_w * v:.1f}" height="{bar_h}" '
                f'fill="{color}" opacity="0.75"/>'
                f'<line x1="{x0 + plot_w * lo:.1f}" y1="{cy:.1f}" x2="{x0 + plot_w * hi:.1f}" '
                f'y2="{cy:.1f}" stroke="black" stroke-width="2"/>'
                f'<text x="{x0 + plot_w * max(v, hi) + 4:.1f}" y="{cy + 4:.1f}" '
                f'font-size="10">{100 * v:.1f}%</text>'
            )
            y += bar_h + gap
        y += 30
    width = pad * 2 + label_w + plot_w + 60
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
        f'font-family="sans-serif" font-size="12">\n'
        f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(parts) + "\n</svg>\n"
    )


def write_reports(out_dir: str | Path, panels: Sequence[tuple[str, dict]]) -> list[Path]:
    """results.json, results.md and agreement.svg for one or more (title, summary) results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json", out_dir / "results.md", out_dir / "agreement.svg"]
    paths[0].write_text(json.dumps({t: s for t, s in panels}, indent=1, default=float) + "\n")
    paths[1].write_text("\n".join(format_markdown(s, t) for t, s in panels))
    paths[2].write_text(agreement_svg(panels))
    return paths


def make_baselines(names: Sequence[str] | None = None, params: dict | None = None) -> dict:
    """Registered baselines by name (default: all), with tuned `params` per name where given."""
    params = params or {}
    baselines: dict[str, Strategy] = {}
    for name in names or baseline_names():
        if name not in STRATEGIES or name == "network":
            raise ValueError(f"unknown baseline {name!r}; pick from {', '.join(baseline_names())}")
        baselines[name] = STRATEGIES[name](**params.get(name, {}))
    return baselines


def trained_on(cache: FeatureCache, checkpoint: dict) -> bool:
    """Whether `cache` holds the very rows the checkpoint was trained on."""
    from emergence_model.checkpoint import cache_fingerprint

    fingerprint = checkpoint.get("data", {}).get("fingerprint")
    return fingerprint == cache_fingerprint(cache.model_names, cache.prefixes)


def cross_fit_parts(
    cache: FeatureCache, checkpoint: dict, baselines: dict[str, Strategy]
) -> list[tuple[np.ndarray, dict[str, Strategy]]]:
    """For the checkpoint's own training cache: per fold, its held-out rows with the baselines
    and the network (head) that never saw them."""
    from emergence_model.checkpoint import build_predictor
    from emergence_model.training import fold_splits

    split = checkpoint["data"]["split"]
    splits = fold_splits(
        cache.prefixes,
        split.get("folds", 1),
        split["val_fraction"],
        split["test_fraction"],
        split["seed"],
    )
    predictor = build_predictor(checkpoint)
    if len(predictor.heads) != len(splits):
        raise ValueError(
            f"checkpoint has {len(predictor.heads)} networks for {len(splits)} folds; retrain it"
        )
    names, target = checkpoint["model_names"], checkpoint["target_name"]
    return [
        (test, {**baselines, "network": NetworkStrategy(predictor.member(k), names, target)})
        for k, (_, _, test) in enumerate(splits)
    ]


def main(argv: Sequence[str] | None = None) -> dict:
    from emergence_model.checkpoint import build_predictor, check_compatible, load_checkpoint

    parser = argparse.ArgumentParser(
        prog="python -m emergence_model.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="strategies:\n"
        + "\n".join(
            f"  {n:<12} {(c.__doc__ or '').strip().splitlines()[0]}" for n, c in STRATEGIES.items()
        ),
    )
    parser.add_argument("--cache", required=True, help="cache directory (cache_features.py --out)")
    parser.add_argument(
        "--checkpoint", action="append", default=[], help="a trained network (repeatable)"
    )
    parser.add_argument("--out", help="directory for results.json, results.md, agreement.svg")
    parser.add_argument(
        "--strategies", help="comma-separated baselines to score (default: all registered)"
    )
    parser.add_argument(
        "--all-rows",
        action="store_true",
        help="score every prefix with the whole network even on its own training cache",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--chunk-rows", type=int, default=64, help="prefixes read at a time")
    args = parser.parse_args(argv)

    cache = open_cache(args.cache)
    checkpoints = [(Path(p), load_checkpoint(p)) for p in args.checkpoint]
    for _, checkpoint in checkpoints:
        check_compatible(
            checkpoint,
            cache.model_names[:-1],
            cache.vocab_size,
            str(cache.path),
            target_name=cache.target_name,
        )
    names = args.strategies.split(",") if args.strategies else None
    baselines = make_baselines(names, checkpoints[0][1].get("baselines") if checkpoints else None)
    own = [path for path, c in checkpoints if trained_on(cache, c)]
    if own and not args.all_rows:
        if len(checkpoints) > 1:
            parser.error(
                f"{own[0]} was trained on this cache: evaluate it alone (on its held-out "
                "prefixes) or pass --all-rows"
            )
        parts = cross_fit_parts(cache, checkpoints[0][1], baselines)
        description = f"held-out prefixes of {own[0].name}'s training cache"
    else:
        strategies = dict(baselines)
        for path, c in checkpoints:
            key = "network" if len(checkpoints) == 1 else f"network:{path.stem}"
            predictor = build_predictor(c)
            strategies[key] = NetworkStrategy(predictor, c["model_names"], c["target_name"])
        parts, description = [(None, strategies)], "all prefixes"
    summary = evaluate_cache(
        cache,
        parts,
        rows_description=description,
        chunk_rows=args.chunk_rows,
        num_bootstrap=args.bootstrap,
        seed=args.seed,
    )
    title = Path(args.cache).name
    print(format_table(summary, title))
    if args.out:
        for path in write_reports(args.out, [(title, summary)]):
            print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    from emergence_model.cli import exit_on_user_error

    exit_on_user_error(main)
