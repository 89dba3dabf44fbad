"""Model suites: which models are cached, in order of size, the target last.

A suite is one entry in `SUITES`; its function's docstring is what `cache_features.py --help` shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Suite:
    """A family of models of one tokenizer, smallest first, the target last."""

    name: str
    """Registry name, or "custom" for a list given on the command line."""
    model_ids: tuple[str, ...]
    """Hub ids or local `save_pretrained` directories; the last one is the target."""
    param_counts: tuple[int | None, ...]
    """Parameter count of each model where known without loading it (None: counted at load)."""
    revision: str | None = None
    """Hub revision for every model, e.g. Pythia's training checkpoint "step143000"."""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.model_ids:
            raise ValueError(f"suite {self.name!r} has no models; give at least one")
        if len(self.param_counts) != len(self.model_ids):
            raise ValueError(
                f"suite {self.name!r}: {len(self.model_ids)} models but "
                f"{len(self.param_counts)} parameter counts"
            )

    @property
    def target_id(self) -> str:
        return self.model_ids[-1]


# Total parameters (both embedding matrices included), from the suite's own configs.
PYTHIA_PARAM_COUNTS: dict[str, int] = {
    "pythia-70m": 70_426_624,
    "pythia-160m": 162_322_944,
    "pythia-410m": 405_334_016,
    "pythia-1b": 1_011_781_632,
    "pythia-1.4b": 1_414_647_808,
    "pythia-2.8b": 2_775_208_960,
    "pythia-6.9b": 6_857_302_016,
    "pythia-12b": 11_846_072_320,
}
# The original challenge's ladder: 6.9b is left out, the 12b is the target.
PYTHIA_LADDER = ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "12b")


def param_count_for(model_name: str) -> int | None:
    """Pythia's parameter count for a hub id, local path or short name; None for other models.

    "EleutherAI/pythia-70m", "pythia-70m-deduped", "pythia-70m@step1000" and
    "/models/pythia-70m/" all give 70426624.
    """
    name = str(model_name).rstrip("/\\").replace("\\", "/").split("/")[-1]
    name = name.split("@")[0].lower()
    name = name.removesuffix("-deduped")
    return PYTHIA_PARAM_COUNTS.get(name)


def _pythia(name: str, suffix: str, revision: str | None, description: str) -> Suite:
    ids = tuple(f"EleutherAI/pythia-{size}{suffix}" for size in PYTHIA_LADDER)
    return Suite(
        name=name,
        model_ids=ids,
        param_counts=tuple(param_count_for(i) for i in ids),
        revision=revision,
        description=description,
    )


def pythia(revision: str | None = None, suite_dir: Path | None = None) -> Suite:
    """EleutherAI Pythia 70m, 160m, 410m, 1b, 1.4b, 2.8b and the target 12b (the challenge's)."""
    return _pythia("pythia", "", revision, pythia.__doc__)


def pythia_deduped(revision: str | None = None, suite_dir: Path | None = None) -> Suite:
    """The same ladder trained on the deduplicated Pile (EleutherAI/pythia-*-deduped)."""
    return _pythia("pythia-deduped", "-deduped", revision, pythia_deduped.__doc__)


def demo(revision: str | None = None, suite_dir: Path | None = None) -> Suite:
    """Small GPT-NeoX models trained on the fly on CPU (built on first use in --suite-dir)."""
    if revision is not None:
        raise ValueError("the demo suite has no revisions; drop --revision")
    from emergence_model.demo import demo_suite

    return demo_suite(suite_dir)


SUITES: dict[str, Callable[..., Suite]] = {
    "pythia": pythia,
    "pythia-deduped": pythia_deduped,
    "demo": demo,
}


def get_suite(name: str, *, revision: str | None = None, suite_dir: Path | None = None) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; pick one of {', '.join(SUITES)}")
    return SUITES[name](revision=revision, suite_dir=suite_dir)


def custom_suite(model_ids: list[str], revision: str | None = None) -> Suite:
    """A suite from a list of hub ids or local directories (`--models A,B,...,TARGET`)."""
    model_ids = [m.strip() for m in model_ids if m.strip()]
    return Suite(
        name="custom",
        model_ids=tuple(model_ids),
        param_counts=tuple(param_count_for(m) for m in model_ids),
        revision=revision,
        description="models given with --models",
    )


def describe_suites() -> str:
    """One line per registered suite, for `--help`."""
    return "\n".join(
        f"  {name:<16} {(fn.__doc__ or '').strip().splitlines()[0]}" for name, fn in SUITES.items()
    )
