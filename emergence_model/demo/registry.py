"""The offline demo's plugin: its suites and prefix sources, registered with the core's registries.

The core never imports the demo: it loads this module by name, the first time a registry is read
(`emergence_model.BUILTIN_PLUGINS`), as it loads other packages' plugins from their entry points.
No torch at import, so that listing the suites and sources (every --help) stays cheap.

- suites: `demo` (the ladder of sizes), `demo-steps` (the target along its training) and
  `demo-ceiling` (the target trained again from another seed, then the target), read from a
  built suite's record;
- prefix sources: `demo-wiki`, `demo-rte`, `demo-rte-fewshot`, `demo-induction`,
  `demo-random-copy` and `demo-random-copy-control`, drawn from the suite's own corpus
  (`prefix_sets.py`).
"""

from __future__ import annotations

from pathlib import Path

from emergence_model.demo.config import read_suite_record, short_count, suite_path
from emergence_model.demo.prefix_sets import DEMO_SHOTS, demo_prefix_set
from emergence_model.prefixes import Loader, PrefixConfig, register_source
from emergence_model.suites import Suite, register_suite


def built_demo(name: str, revision: str | None, suite_dir: Path | None) -> tuple[Path, dict]:
    """The directory and record of a finished demo suite; refused in one line if not built."""
    if revision is not None:
        raise ValueError(f"the {name} suite has no revisions; drop --revision")
    suite_dir = suite_path(suite_dir)
    record = read_suite_record(suite_dir)
    models = record.get("models", [])
    built = record.get("status") == "complete" and all(
        (suite_dir / m["directory"]).is_dir() for m in models
    )
    if not built:
        raise ValueError(
            f"the demo suite in {suite_dir} is not built; build it with `python -m "
            f"emergence_model.demo build --suite-dir {suite_dir}` (or `python train.py`, which "
            "builds it)"
        )
    return suite_dir, record


@register_suite("demo")
def demo(revision: str | None = None, suite_dir: Path | None = None) -> Suite:
    """Small GPT-NeoX models trained on CPU (python -m emergence_model.demo build; --suite-dir)."""
    suite_dir, record = built_demo("demo", revision, suite_dir)
    models = record["models"]
    return Suite(
        name="demo",
        model_ids=tuple(str(suite_dir / m["directory"]) for m in models),
        param_counts=tuple(m["param_count"] for m in models),
        description=(
            f"{len(models)} GPT-NeoX models ({short_count(models[0]['param_count'])} "
            f"to {short_count(models[-1]['param_count'])}) trained on "
            f"{record['corpus']['source']} in {suite_dir}"
        ),
    )


@register_suite("demo-steps")
def demo_steps(revision: str | None = None, suite_dir: Path | None = None) -> Suite:
    """The demo's target along its training: its kept checkpoints, the final one the target."""
    suite_dir, record = built_demo("demo-steps", revision, suite_dir)
    target = record["models"][-1]
    checkpoints = target.get("checkpoints") or []
    if not checkpoints or not all((suite_dir / c["directory"]).is_dir() for c in checkpoints):
        raise ValueError(
            f"the demo suite in {suite_dir} kept no checkpoints of its target (built before they "
            "were kept, or with --target-checkpoints 0); build a new one with `python -m "
            "emergence_model.demo caches --suite-dir NEW_DIR`"
        )
    models = [*checkpoints, target]
    return Suite(
        name="demo-steps",
        model_ids=tuple(str(suite_dir / m["directory"]) for m in models),
        param_counts=(target["param_count"],) * len(models),
        scale_axis="tokens",
        scales=tuple(float(m["tokens_seen"]) for m in models),
        description=(
            f"{target['name']} after {', '.join(str(c['step']) for c in checkpoints)} and "
            f"{target['steps']} steps of its training in {suite_dir}"
        ),
    )


@register_suite("demo-ceiling")
def demo_ceiling(revision: str | None = None, suite_dir: Path | None = None) -> Suite:
    """The demo's target trained again from another seed, then the target: the noise ceiling."""
    suite_dir, record = built_demo("demo-ceiling", revision, suite_dir)
    target, replica = record["models"][-1], record.get("replica")
    if replica is None or not (suite_dir / replica["directory"]).is_dir():
        raise ValueError(
            f"the demo suite in {suite_dir} has no second training of its target; train it with "
            f"`python -m emergence_model.demo caches --suite-dir {suite_dir}`"
        )
    return Suite(
        name="demo-ceiling",
        model_ids=(str(suite_dir / replica["directory"]), str(suite_dir / target["directory"])),
        param_counts=(replica["param_count"], target["param_count"]),
        description=(
            f"{target['name']} trained again with seed {replica['seed']} (another initialisation "
            f"and batch order), then the target, in {suite_dir}"
        ),
    )


def _demo_source(kind: str, doc: str) -> Loader:
    def load(config: PrefixConfig, suite_dir: Path | None = None) -> tuple[list[str], dict]:
        shots = config.resolved_shots(DEMO_SHOTS) if kind == "rte-fewshot" else None
        prefixes, meta = demo_prefix_set(kind, suite_dir, seed=config.seed, shots=shots)
        return prefixes, {
            "dataset": f"demo-{kind}",
            "suite_dir": str(suite_dir or ""),
            "seed": config.seed,
            **meta,
        }

    load.__doc__ = doc
    return load


register_source("demo-wiki")(
    _demo_source("wiki", "Wikipedia-style prefixes of the demo suite's own corpus (offline).")
)
register_source("demo-rte")(
    _demo_source("rte", "RTE-template prefixes of the demo suite's own corpus (offline).")
)
register_source("demo-rte-fewshot", fewshot=True)(
    _demo_source(
        "rte-fewshot", "The demo's RTE-template prompts after --shots solved ones (1; offline)."
    )
)
register_source("demo-induction")(
    _demo_source(
        "induction", "In-context copying prompts from the demo suite's own corpus (offline)."
    )
)
register_source("demo-random-copy")(
    _demo_source(
        "random-copy",
        "Copying random words back from held-out passages: the emergent ladder's task (offline).",
    )
)
register_source("demo-random-copy-control")(
    _demo_source(
        "random-copy-control",
        "demo-random-copy with the words to copy replaced: nothing to copy (offline).",
    )
)
