"""report.md: the study's answers in the order of its questions, every number with its 95%
interval, every claim with its Holm-corrected p (what the practical sections say is in
`markdown_practical`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from emergence_model.report import markdown_table
from emergence_model.results import stamp_lines
from emergence_model.study import claims as claims_of
from emergence_model.study.claims import ALPHA
from emergence_model.study.formatting import FIGURES_DIR, figure_name, stat_text, verdict
from emergence_model.study.markdown_practical import practical_section

EMERGENCE_TITLES = {
    "kl": "KL to best predictor (nats)",
    "surprisal": "surprisal of target's top (nats)",
    "miss": "top-1 miss %",
    "jump": "jump over the trend (nats)",
}


def format_report(studies: Sequence[dict], stamp: dict | None = None) -> str:
    lines = ["# The emergence study", ""]
    if stamp is not None:
        lines += [*stamp_lines(stamp), ""]
        lines += ["Written by the command above: run it again rather than edit this file.", ""]
    lines += [
        "How hard is the target's next-token distribution to predict from the smaller models of "
        "its family, what does predicting it buy at measured costs, and where is it hardest? "
        "Every number is a mean over prefixes with its 95% interval from resampling the set's "
        "clusters (prefixes cut from one document are resampled together); choices (the best "
        "predictor, a cascade's threshold) are made on other folds of the reference set than "
        "the prefixes they are scored on. A claim is called clear of zero only if it survives "
        f"Holm's correction over every claim of this report (family-wise {ALPHA:.0%}): the "
        "last section lists them, held or withdrawn.",
        "",
    ]
    for study in studies:
        lines += format_ladder(study)
    lines += claims_section(studies)
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
    ]
    lines += [
        "Clusters resampled for the intervals: "
        + "; ".join(
            f"`{s['name']}` by {s['clusters']['by']} ({s['clusters']['clusters']} for "
            f"{s['clusters']['prefixes']} prefixes)"
            for s in study["sets"]
        )
        + ".",
        "",
    ]
    if study.get("tokenizer_note"):
        lines += [f"Note: {study['tokenizer_note']}.", ""]
    lines += rung_section(study)
    lines += prefix_section(study)
    lines += practical_section(study)
    lines += task_section(study)
    return lines


def rung_section(study: dict) -> list[str]:
    lines = ["### 1. Emergence over scale", ""]
    curves = [s for s in study["sets"] if "rung_curve" in s]
    if not curves:
        reason = study.get("rung_curve_skipped") or "not asked for (--no-rung-curve)"
        return [*lines, f"Not measured: {reason}.", ""]
    lines += [
        "For each rung k from the third small model up to the target, the checkpoint's recipe "
        "is trained on the rungs below k to predict rung k (cross-fitted: each prefix scored by "
        "the network that never saw it). KL(p_k || q_k) is how far the rung is from its "
        "prediction; the share recovered, 1 - KL(p_k || q_k) / KL(p_k || p_{k-1}), how much of "
        "the step from the rung below the prediction gets right. The noise floor is "
        "KL(p_T || p_T'), the target against itself trained from another seed.",
        "",
    ]
    head = ["set", "rung k", "scale", "KL(p_k \\|\\| q_k)", "miss %", "share recovered",
            "KL(p_k \\|\\| p_k-1)"]  # fmt: skip
    table = []
    for s in curves:
        for r in s["rung_curve"]["rungs"]:
            table.append(
                [
                    s["name"],
                    r["model"],
                    f"{r['scale']:.3g}",
                    stat_text(r["kl"]),
                    stat_text(r["miss"], "miss"),
                    stat_text(r["recovered"]),
                    stat_text(r["previous_kl"]),
                ]
            )
        if s.get("floor"):
            table.append([s["name"], "floor (replica)", "", stat_text(s["floor"]), "", "", ""])
    lines += markdown_table(head, table)
    lines += ["", f"![rungs]({figure_name(study, 'rungs')})", ""]
    lines += [
        "The back-test: each measure's least-squares line in log scale through the rungs below "
        "the target, extrapolated to the target, against the target's own point (the line's "
        "uncertainty carried by resampling every rung together):",
        "",
    ]
    head = ["set", "measure", "rungs fitted", "line at the target", "measured",
            "measured - line", "after Holm"]  # fmt: skip
    table = []
    claims = study.get("claims", [])
    for s in curves:
        for measure, test in s["rung_curve"]["back_test"].items():
            if "predicted" not in test:
                table.append([s["name"], measure, test.get("skipped", ""), "", "", "", ""])
                continue
            key = "miss" if measure == "miss" else ""
            table.append(
                [
                    s["name"],
                    measure,
                    str(test["fitted_on"]),
                    stat_text(test["predicted"], key),
                    stat_text(test["measured"], key),
                    stat_text(test["measured_minus_predicted"], key, signed=True),
                    verdict(claims, s["name"], claims_of.rung_line(measure)),
                ]
            )
    return [*lines, *markdown_table(head, table), ""]


def prefix_section(study: dict) -> list[str]:
    lines = [
        "### 2. How emergent each prefix is",
        "",
        "Per prefix, KL from the target to the best predictor built from the small models, "
        "beside its floor (the replica's KL from the target) and their ratio; the jump (the "
        "target's log-probability of its own top token over the small models' trend) beside its "
        "control (the same for the replica at the replica's own top token: positive by "
        "selection alone) and the jump net of it.",
        "",
    ]
    head = ["set", "prefixes", *[EMERGENCE_TITLES[k] for k in EMERGENCE_TITLES], "floor KL",
            "KL / floor", "replica's jump", "jump net of replica", "noise ceiling %"]  # fmt: skip
    table = []
    for s in study["sets"]:
        controls = s.get("jump_controls", {})
        table.append(
            [
                s["name"],
                str(s["num_prefixes"]),
                *[stat_text(s["emergence"][k], k) for k in EMERGENCE_TITLES],
                stat_text(s.get("floor")),
                stat_text(s.get("kl_normalised")),
                stat_text(controls.get("replica")),
                stat_text(controls.get("net_of_replica"), signed=True),
                stat_text(s.get("ceiling"), "ceiling"),
            ]
        )
    lines += markdown_table(head, table)
    lines += ["", f"![emergence]({figure_name(study, 'emergence')})", ""]
    lines += _jump_verdicts(study)
    lines += _entropy(study)
    lines += _vs_reference(study)
    lines += ["Agreement of every strategy with the target (top-1 %):", ""]
    names = [n for n in study["sets"][0]["agreement"] if not n.startswith("model:")]
    head = ["strategy", *[s["name"] for s in study["sets"]]]
    table = [[n, *[stat_text(s["agreement"][n], "top1") for s in study["sets"]]] for n in names]
    table.append(
        ["noise ceiling", *[stat_text(s.get("ceiling"), "ceiling") for s in study["sets"]]]
    )
    lines += markdown_table(head, table)
    lines += ["", f"![sets]({figure_name(study, 'sets')})", ""]
    lines += _scaling(study)
    lines += _most_emergent(study)
    return lines


def _jump_verdicts(study: dict) -> list[str]:
    lines = []
    claims = study.get("claims", [])
    for s in study["sets"]:
        controls = s.get("jump_controls", {})
        parts = []
        if "net_of_replica" in controls:
            held = verdict(claims, s["name"], claims_of.JUMP_NET_OF_REPLICA)
            parts.append(
                f"net of its control {stat_text(controls['net_of_replica'], signed=True)} nats "
                f"({held} after Holm)"
            )
        else:
            parts.append("no replica to control it: the jump is not read as emergence")
        if "at_true_token" in controls:  # its claim is Schaeffer's log-probability test
            parts.append(
                f"at the right token ({controls['true_token_prompts']} prompts, no selection) "
                f"{stat_text(controls['at_true_token'], signed=True)} nats"
            )
        lines.append(f"- `{s['name']}`: jump {stat_text(s['emergence']['jump'], signed=True)}; "
                     + "; ".join(parts))  # fmt: skip
    return [*lines, ""]


def _entropy(study: dict) -> list[str]:
    sets = study["sets"]
    edges = sets[0]["kl_entropy"]["edges"]
    lines = [
        "KL grows with the target's entropy, so sets are compared within quantile bins of it "
        f"(edges from `{sets[0]['name']}`: {', '.join(f'{e:.2f}' for e in edges)} nats):",
        "",
    ]
    head = ["set", *[f"bin {b + 1}" for b in range(len(edges) + 1)], "minus reference, matched",
            "after Holm"]  # fmt: skip
    table = []
    for s in sets:
        cells = [
            f"{stat_text(b['kl'])} (n={b['prefixes']})" if b["prefixes"] else "-"
            for b in s["kl_entropy"]["bins"]
        ]
        matched = s["kl_entropy"].get("matched_vs_reference")
        held = verdict(study.get("claims", []), s["name"], claims_of.MATCHED_KL)
        table.append([s["name"], *cells, stat_text(matched, signed=True), held])
    lines += markdown_table(head, table)
    return [*lines, "", f"![entropy]({figure_name(study, 'entropy')})", ""]


def _vs_reference(study: dict) -> list[str]:
    others = [s for s in study["sets"][1:] if "vs_reference" in s]
    if not others:
        return []
    ref = study["sets"][0]["name"]
    claims = study.get("claims", [])
    head = ["set", *EMERGENCE_TITLES.values(), "network top-1 %"]
    table = []
    for s in others:
        cells = []
        for k in EMERGENCE_TITLES:
            held = verdict(claims, s["name"], claims_of.vs_reference(k, ref))
            cells.append(f"{stat_text(s['vs_reference']['emergence'][k], k, True)} {held}")
        table.append([s["name"], *cells, stat_text(s["vs_reference"]["top1"]["network"], "top1")])
    return [
        f"Difference to `{ref}` (this set minus it; the sets resampled independently; after "
        "Holm: holds or withdrawn):",
        "",
        *markdown_table(head, table),
        "",
    ]


def _scaling(study: dict) -> list[str]:
    lines = [
        "The scaling view: each small model's mean log-probability of the target's top token "
        "against log scale, the least-squares trend through them extended to the target's "
        "scale, and the target's own value (read at its own argmax: see the jump's control).",
        "",
    ]
    for s in study["sets"]:
        sc = s["scaling"]
        lines.append(
            f"- `{s['name']}`: trend at the target {stat_text(sc['trend'])}, target "
            f"{stat_text(sc['target_logprob'])}, best predictor "
            f"{stat_text(sc['predictor_logprob'])} nats"
        )
        lines.append(f"  ![scaling {s['name']}]({figure_name(study, 'scaling', s['name'])})")
    return [*lines, ""]


def _most_emergent(study: dict) -> list[str]:
    lines = ["The most emergent prefixes (largest KL to the best predictor first; floor: the "
             "replica's KL from the target on the same prefix):", ""]  # fmt: skip
    for s in study["sets"]:
        lines += [f"`{s['name']}`:", ""]
        table = [
            [
                f"`{_short(item['prefix'])}`",
                f"{item['kl']:.2f}",
                "-" if item.get("floor_kl") is None or math.isnan(item["floor_kl"])
                else f"{item['floor_kl']:.2f}",
                f"{item['jump']:+.2f}",
                f"`{item['target']!r}`",
                f"`{item['trend']!r}`",
                f"`{item['predictor']!r}`",
            ]
            for item in s["most_emergent"]
        ]  # fmt: skip
        lines += markdown_table(
            ["prefix", "KL", "floor", "jump", "target chose", "trend chose", "predictor chose"],
            table,
        )
        lines.append("")
    return lines


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split()).replace("|", "/").replace("`", "'")
    return text if len(text) <= width else "..." + text[-width:]


def task_section(study: dict) -> list[str]:
    """Question (c): in-context copying against its controls, and every task set's answers under
    a discontinuous and a continuous metric (Schaeffer's test)."""
    lines = []
    claims = study.get("claims", [])
    copies = [s for s in study["sets"] if "copies" in s]
    answers = [s for s in study["sets"] if "answers" in s]
    if not copies and not answers:
        return []
    lines += ["### 4. Where emergence lives: tasks with a known answer", ""]
    for s in copies:
        c = s["copies"]
        lines.append(
            f"`{s['name']}` ({c['prefixes']} prompts), raw copy rates (the model's top token is "
            "the copy): "
            + "; ".join(f"{name} {stat_text(st, 'top1')}%" for name, st in c["models"].items())
        )
        lines.append("")
        control = c.get("control")
        if control:
            lines += [
                f"Against the control ({control['prompts']} prompts: the repeated words after "
                "another prompt's passage), copying in context is the copy rate minus the "
                "control's (points): "
                + "; ".join(
                    f"{m['model']} {stat_text(m['copy_minus_control'], 'top1', True)}"
                    for m in control["models"]
                ),
                "",
            ]
        matched = c.get("split", {}).get("matched")
        if matched:
            lines += _copy_split(s["name"], c["split"], claims)
    if any(s["copies"].get("control") for s in copies):
        lines += [f"![copies]({FIGURES_DIR}/copies.png)", ""]
    if answers:
        lines += _answers(answers, claims)
        lines += [f"![answers]({figure_name(study, 'answers')})", ""]
    return lines


def _copy_split(name: str, split: dict, claims: Sequence[dict]) -> list[str]:
    """Hard copies against hard non-copies (the matched comparison), beside the raw split."""
    matched = split["matched"]
    rows = [
        ["the target copies (all)", split["copies"], None],
        ["the target does not copy (all)", split["other"], None],
        ["hard: the target copies, the largest small model does not", matched["hard_copies"],
         None],
        ["hard: neither the target copies nor agrees with the largest", matched["hard_other"],
         None],
    ]  # fmt: skip
    table = [
        [title, str(g["prefixes"]), stat_text(g["kl"]), stat_text(g["miss"], "miss")]
        for title, g, _ in rows
    ]
    diff = matched["difference"]
    table.append(
        [
            "hard copies minus hard non-copies",
            "",
            f"{stat_text(diff['kl'], signed=True)} "
            f"{verdict(claims, name, claims_of.copy_split('kl'))}",
            f"{stat_text(diff['miss'], 'miss', True)} "
            f"{verdict(claims, name, claims_of.copy_split('miss'))}",
        ]
    )
    return [
        f"`{name}`: is the target harder to predict where it copies? Copies the largest small "
        "model does not make are hard by selection; they are compared with the prompts where "
        "the target neither copies nor agrees with the largest small model "
        "(the target copies, the largest small model does not: the matched rows).",
        "",
        *markdown_table(["prompts where", "n", "KL, nats", "top-1 miss %"], table),
        "",
    ]


def _answers(sets: Sequence[dict], claims: Sequence[dict]) -> list[str]:
    lines = [
        "Schaeffer's test: each task set's expected answer scored by every model of the ladder, "
        "by a discontinuous metric (exact match of the whole answer) and a continuous one (its "
        "log-probability per token); the target against the line through the small models in "
        "log scale. An emergence that shows under exact match but not under log-probability is "
        "the metric's, not the model's.",
        "",
    ]
    head = ["set", "scored on", "prompts", "metric", "target", "small models' line",
            "target - line", "after Holm"]  # fmt: skip
    table = []
    verdicts = []
    for s in sets:
        a = s["answers"]
        held = {}
        for metric, key in (("exact", "exact"), ("logprob", "")):
            test = a["above_trend"][metric]
            held[metric] = verdict(claims, s["name"], claims_of.above_trend(metric))
            if "predicted" not in test:
                table.append([s["name"], a["source"], str(a["prompts"]), metric,
                              test.get("skipped", ""), "", "", ""])  # fmt: skip
                continue
            table.append(
                [
                    s["name"],
                    a["source"],
                    str(a["prompts"]),
                    metric,
                    stat_text(test["measured"], key),
                    stat_text(test["predicted"], key),
                    stat_text(test["measured_minus_predicted"], key, signed=True),
                    held[metric],
                ]
            )
        verdicts.append(f"- `{s['name']}`: {_schaeffer_verdict(a, held)}")
    return [*lines, *markdown_table(head, table), "", *verdicts, ""]


def _schaeffer_verdict(answers: dict, held: dict) -> str:
    def above(metric: str) -> bool:
        test = answers["above_trend"][metric]
        return held[metric] == "holds" and test["measured_minus_predicted"]["value"] > 0

    if above("exact") and above("logprob"):
        return (
            "the target is above its small models' line under both metrics: its emergence "
            "survives the continuous metric"
        )
    if above("exact"):
        return "above the line under exact match only: the continuous metric does not confirm it"
    if above("logprob"):
        return "above the line under log-probability only"
    return "no emergence under either metric: the target is where its small models' line puts it"


def claims_section(studies: Sequence[dict]) -> list[str]:
    claims = [(s["title"], c) for s in studies for c in s.get("claims", [])]
    if not claims:
        return []
    lines = [
        "## Claims, corrected for multiple comparisons",
        "",
        f"Every difference this report tests against zero ({len(claims)}), with its p from the "
        f"bootstrap standard error and Holm's step-down correction over all of them "
        f"(family-wise {ALPHA:.0%}). A claim holds if its corrected p is below {ALPHA}; the "
        "others are withdrawn, whatever their uncorrected interval says.",
        "",
    ]
    head = ["ladder", "set", "claim", "value [95% interval]", "p", "p (Holm)", "verdict"]
    table = [
        [
            title,
            c["set"],
            c["claim"],
            stat_text(c, "miss" if c["claim"].startswith(("miss", "exact")) else "", True),
            _p(c["p"]),
            _p(c["p_holm"]),
            "holds" if c["holds"] else "withdrawn",
        ]
        for title, c in claims
    ]
    return [*lines, *markdown_table(head, table), ""]


def _p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "-"
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"
