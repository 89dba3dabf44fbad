"""How report.md shows the study's numbers, figures and verdicts (shared by its sections)."""

from __future__ import annotations

from collections.abc import Sequence

from emergence_model.report import format_stat

FIGURES_DIR = "figures"
PERCENT_KEYS = ("miss", "top1", "agreement", "saved", "ceiling", "exact")


def stat_text(stat: dict | None, key: str = "", signed: bool = False) -> str:
    """A statistic as the tables show it (percent for rates)."""
    return format_stat(stat, percent=key in PERCENT_KEYS, signed=signed)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-")


def figure_name(study: dict, what: str, set_name: str | None = None) -> str:
    parts = [_slug(study["title"]), what, *([_slug(set_name)] if set_name else [])]
    return f"{FIGURES_DIR}/{'-'.join(parts)}.png"


def verdict(claims: Sequence[dict], set_name: str, claim: str) -> str:
    """ "holds" / "withdrawn" for a claim after Holm, "" when it was not tested."""
    for c in claims:
        if c["set"] == set_name and c["claim"] == claim:
            return "holds" if c["holds"] else "withdrawn"
    return ""
