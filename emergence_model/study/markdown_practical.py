"""report.md's section 3, what predicting the target buys: the measured costs, speculative
decoding at each cost, the real decoding run, and cascades at their net compute."""

from __future__ import annotations

from emergence_model.report import markdown_table
from emergence_model.study.formatting import figure_name, stat_text

MODES = ("greedy", "sampled")


def practical_section(study: dict) -> list[str]:
    lines = ["### 3. What predicting the target buys", ""]
    reference = study["sets"][0]
    if reference["speculative"] is None:
        lines += [
            "Speculative decoding: not reported for a ladder along training time, whose "
            "checkpoints all cost what the target costs.",
            "",
        ]
    else:
        lines += _costs(study.get("costs"))
        lines += _speculative(study, reference)
        lines += _acceptance_by_set(study)
        if "generation" in study:
            lines += _generation(study["generation"])
    lines += _cascade(study)
    return lines


def _costs(costs: dict | None) -> list[str]:
    if costs is None:
        return [
            "Costs were not timed (the suite's models are not local directories, or "
            "--no-measure-costs): speed-ups are at the parameter ratio or at --cost-ratio.",
            "",
        ]
    batches = costs["batches"]
    head = ["model, or a draft's combination", *[f"batch {b} (ms)" for b in batches]]
    table = [
        [name.rstrip("/").split("/")[-1], *[f"{1e3 * steps[str(b)]:.3f}" for b in batches]]
        for name, steps in costs["models"].items()
    ]
    table += [
        [f"{draft}: combination", *[f"{1e3 * d['combine'][str(b)]:.3f}" for b in batches]]
        for draft, d in costs["drafts"].items()
        if draft in ("network", "mean-prob")
    ]
    return [
        f"Measured costs: one decode step with a KV cache after {costs['context_tokens']} tokens "
        f"of context, median of repeats, {costs['threads']} CPU thread(s) (on a machine shared "
        "with other jobs: the times are noisy, the ratios less so). A draft costs the steps of "
        "the models it runs plus its combination of them (for the network, its forward pass on "
        "its real input); one more token in a target pass costs "
        f"{costs['catch_up_token']:.3f} of a step (what a token a cascade answered costs when "
        "the target catches up on it).",
        "",
        *markdown_table(head, table),
        "",
    ]


def _speculative(study: dict, reference: dict) -> list[str]:
    lines = [
        f"Speculative decoding (Leviathan et al. 2023) on `{reference['name']}`: acceptance a "
        "per position (greedy: top-1 agreement; sampled: sum_x min(p, q)), a draft step's cost c "
        "over a target step, the best draft length g and the expected speed-up "
        "(1 - a^(g+1)) / ((1 - a)(g c + 1)) at the measured cost (the headline) and at the "
        "parameter ratio; g 0 means speculating does not pay (speed-up 1).",
        "",
    ]
    kinds = list(next(iter(reference["speculative"].values()))["costs"])
    # speed-ups at the headline cost and at the parameter ratio (the others are in study.json)
    shown = list(dict.fromkeys([kinds[0], "parameters"]))
    head = ["draft", *[f"c ({k})" for k in kinds]]
    for mode in MODES:
        head += [f"{mode} a %", *[f"{mode} g: speed-up ({k})" for k in shown]]
    table = []
    for name, e in reference["speculative"].items():
        row = [name, *[f"{e['costs'][k]:.3f}" for k in kinds]]
        for mode in MODES:
            row.append(stat_text(e[mode]["acceptance"], "top1"))
            for k in shown:
                point = e[mode]["by_cost"][k]
                row.append(f"{point['draft_length']}: {stat_text(point['speedup'])}")
        table.append(row)
    return [*lines, *markdown_table(head, table), "",
            f"![speed-up]({figure_name(study, 'speedup')})", ""]  # fmt: skip


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
            cell = stat_text(s["speculative"][draft]["sampled"]["acceptance"], "top1")
            diff = s.get("vs_reference", {}).get("sampled_acceptance", {}).get(draft)
            row.append(f"{cell}; {stat_text(diff, 'top1', True)} vs {reference}" if diff else cell)
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
    target = generation["target"]
    lines = [
        f"Measured: speculative decoding of {generation['prompts']} held-out prefixes, "
        f"{generation['max_new_tokens']} new tokens each, with the suite's own models and a KV "
        f"cache, {generation['threads']} CPU thread(s), in one run (the network head that never "
        "saw those prefixes drafts). The target alone: "
        + "; ".join(
            f"{mode} {stat_text(target[mode]['tokens_per_second'])} tokens/s" for mode in MODES
        )
        + ". The offline estimate is the formula's at the acceptance each draft has on the "
        "positions it decoded (target and draft teacher-forced along the decoded text).",
        "",
    ]
    head = ["draft", "mode", "g", "acceptance %", "offline a %", "target passes / token",
            "offline estimate", "tokens/s", "speed-up, wall clock"]  # fmt: skip
    table = []
    for name, modes in generation["drafts"].items():
        for mode, m in modes.items():
            table.append(
                [
                    name,
                    mode,
                    _draft_length(m),
                    stat_text(m.get("verified_acceptance"), "top1"),
                    f"{100 * m['offline_acceptance']:.1f}",
                    stat_text(m["passes_per_token"]),
                    f"{m['offline_passes_per_token']:.3f}",
                    stat_text(m["tokens_per_second"]),
                    stat_text(m["speedup"]),
                ]
            )
    lines += [*markdown_table(head, table), ""]
    cascade = generation.get("cascade")
    if cascade:
        lines += [
            f"The {cascade['predictor']}'s cascade along the target's greedy continuations "
            f"({cascade['tokens_per_continuation']:.1f} tokens each): a continuation agrees with "
            "the target's only if every one of its tokens does.",
            "",
        ]
        head = ["level", "t", "tokens answered %", "token agreement %", "continuations agreeing %"]
        table = [
            [
                f"{float(level):.0%}",
                f"{point['threshold']:.3f}",
                stat_text(point["saved"], "saved"),
                stat_text(point["token_agreement"], "agreement"),
                stat_text(point["continuation_agreement"], "agreement"),
            ]
            for level, point in cascade["levels"].items()
        ]
        lines += [*markdown_table(head, table), ""]
    return lines


def _draft_length(m: dict) -> str:
    """The draft length run, and the offline best where that differs (0: do not speculate, run
    at 1 to show what speculating costs)."""
    offline = m.get("offline_draft_length", m["draft_length"])
    return str(m["draft_length"]) + (
        f" (best offline: {offline})" if offline != m["draft_length"] else ""
    )


def _cascade(study: dict) -> list[str]:
    lines = [
        "Cascade: answer from the predictor where its top probability is at least t, else run "
        "the target; t chosen on held-out folds of the reference set to keep each agreement "
        "level. Savings are gross in target calls and net in compute: the predictor and the "
        "small models run on every prefix (cost c), the target where the cascade defers, and a "
        "token the cascade answered still enters the target's next pass (its catch-up cost). "
        "Net compute under 1 target step per token is a saving. A per-token agreement a is "
        "about a^T over a T-token continuation if tokens agreed independently (the measured "
        "run above scores whole continuations).",
        "",
    ]
    head = ["set", "predictor", "level", "t", "target calls saved %", "agreement %",
            "net compute (target steps)", "net saving",
            "agreement over T tokens, if independent"]  # fmt: skip
    table = []
    for s in study["sets"]:
        for name, entry in s["cascade"].items():
            for level, point in entry["levels"].items():
                table.append(
                    [
                        s["name"],
                        f"{name} (c {entry['cost']:.3f}, {entry['cost_kind']})",
                        f"{float(level):.0%}",
                        ", ".join(f"{t:.3f}" for t in point["thresholds"]),
                        stat_text(point["saved"], "saved"),
                        stat_text(point["agreement"], "agreement"),
                        stat_text(point["net_compute"]),
                        stat_text(point["net_saving"], signed=True),
                        f"{100 * point['continuation_agreement_if_independent']:.1f}%",
                    ]
                )
    lines += markdown_table(head, table)
    return [*lines, "", f"![cascade]({figure_name(study, 'cascade')})", ""]
