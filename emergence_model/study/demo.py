"""The study's default run on the offline demo: the ladders and caches it studies."""

from __future__ import annotations

from pathlib import Path

from emergence_model.demo.caches import prepare_demo_caches
from emergence_model.demo.config import suite_path

DEMO_CHECKPOINT = Path("checkpoints/demo.ckpt")


def demo_ladders(suite_dir: str | Path | None = None) -> list[dict]:
    """The demo's ladders to study, with what is missing built (the suite, its caches)."""
    suite_dir = suite_path(suite_dir)
    wiki, rte = prepare_demo_caches(suite_dir)
    if not DEMO_CHECKPOINT.is_file():
        raise ValueError(f"no {DEMO_CHECKPOINT}: run python train.py first")
    return [
        {
            "checkpoint": DEMO_CHECKPOINT,
            "caches": [wiki, rte],
            "ceilings": {},
            "title": "demo-size",
        }
    ]
