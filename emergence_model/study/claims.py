"""The claims a study makes, and Holm's correction over them.

A claim is a difference the report would call clear of zero: a set against the reference set, KL
at matched entropy, the jump net of its control, hard copies against hard non-copies, the target
against the line its rungs draw, a task set's target above its small models' trend (which is also
the jump at the right token, for a one-token answer: counted once). Each has a
p-value from its bootstrap standard error; Holm's step-down correction is applied over every claim
of the report at once (one family), and a claim holds only if its corrected p is below ALPHA. The
report lists them all, held or withdrawn.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from emergence_model.stats import holm

ALPHA = 0.05
"""Family-wise error rate of the claims a report makes."""

# The claims' names, which the report's sections look their verdicts up by.
MATCHED_KL = "KL minus the reference set's at matched entropy"
JUMP_NET_OF_REPLICA = "jump net of the replica's (its control)"


def vs_reference(measure: str, reference: str) -> str:
    return f"{measure} minus {reference}'s"


def copy_split(metric: str) -> str:
    return f"{metric}: hard copies minus hard non-copies"


def rung_line(measure: str) -> str:
    return f"{measure} at the target minus its rungs' line"


def above_trend(metric: str) -> str:
    return f"{metric} of the target minus its small models' line"


def _claims_of_set(summary: dict) -> Iterator[tuple[str, dict]]:
    """(what, statistic) of every claim one set's summary makes."""
    vs = summary.get("vs_reference")
    if vs:
        for measure, stat in vs["emergence"].items():
            yield vs_reference(measure, vs["reference"]), stat
    matched = summary.get("kl_entropy", {}).get("matched_vs_reference")
    if matched:
        yield MATCHED_KL, matched
    controls = summary.get("jump_controls", {})
    if "net_of_replica" in controls:
        yield JUMP_NET_OF_REPLICA, controls["net_of_replica"]
    split = summary.get("copies", {}).get("split", {}).get("matched")
    if split:
        for metric, stat in split["difference"].items():
            yield copy_split(metric), stat
    for measure, test in (summary.get("rung_curve") or {}).get("back_test", {}).items():
        if "measured_minus_predicted" in test:
            yield rung_line(measure), test["measured_minus_predicted"]
    for metric, test in (summary.get("answers") or {}).get("above_trend", {}).items():
        if "measured_minus_predicted" in test:
            yield above_trend(metric), test["measured_minus_predicted"]


def apply_holm(studies: Sequence[dict]) -> list[dict]:
    """Every claim of the `studies` (one report), Holm-corrected together; each study gets its
    own as study["claims"]: {"set", "claim", "value", "ci", "p", "p_holm", "holds"}. Returns all."""
    everything = []
    for study in studies:
        study["claims"] = []
        for summary in study["sets"]:
            for what, stat in _claims_of_set(summary):
                claim = {
                    "set": summary["name"],
                    "claim": what,
                    "value": stat["value"],
                    "ci": stat["ci"],
                    "p": stat.get("p", math.nan),
                }
                study["claims"].append(claim)
                everything.append(claim)
    adjusted = holm([c["p"] for c in everything])
    for claim, p in zip(everything, adjusted, strict=True):
        claim["p_holm"] = p
        claim["holds"] = bool(math.isfinite(p) and p < ALPHA)
    return everything


def holds(study: dict, set_name: str, claim: str) -> bool | None:
    """Whether a claim of `study` about `set_name` holds after Holm (None: not tested)."""
    for c in study.get("claims", []):
        if c["set"] == set_name and c["claim"] == claim:
            return c["holds"]
    return None
