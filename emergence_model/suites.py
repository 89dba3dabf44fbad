"""Model suites: which models are cached, in order of size, the target last.

A suite is one entry in `SUITES`; its function's docstring is what `cache_features.py --help` shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from emergence_model.demo.config import read_suite_record, short_count, suite_path


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


def resolve_param_counts(
    model_names: Sequence[str], param_counts: Sequence[int] | None = None
) -> list[int]:
    """Given counts (one per model) or Pythia's known ones; unknown names without counts are
    refused in one line."""
    if param_counts is not None:
        if len(param_counts) != len(model_names):
            raise ValueError(
                f"--param-counts has {len(param_counts)} numbers for {len(model_names)} models "
                f"({', '.join(model_names)}); give one per model"
            )
        return [int(c) for c in param_counts]
    counts = [param_count_for(name) for name in model_names]
    unknown = [name for name, c in zip(model_names, counts, strict=True) if c is None]
    if unknown:
        raise ValueError(
            f"unknown parameter counts for {', '.join(unknown)}; pass --param-counts with one "
            f"number per model ({len(model_names)} in all), or use Pythia's model names"
        )
    return counts


def parse_int_list(text: str | None, flag: str) -> list[int] | None:
    """ "1,2_000,3" -> [1, 2000, 3]; None stays None; anything else names `flag`."""
    if text is None:
        return None
    try:
        return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None


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
    """Small GPT-NeoX models trained on CPU (python -m emergence_model.demo build; --suite-dir)."""
    if revision is not None:
        raise ValueError("the demo suite has no revisions; drop --revision")
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
    return Suite(
        name="demo",
        model_ids=tuple(str(suite_dir / m["directory"]) for m in models),
        param_counts=tuple(m["param_count"] for m in models),
        revision=None,
        description=(
            f"{len(models)} GPT-NeoX models ({short_count(models[0]['param_count'])} "
            f"to {short_count(models[-1]['param_count'])}) trained on "
            f"{record['corpus']['source']} in {suite_dir}"
        ),
    )


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


@dataclass
class SuiteConfig:
    """Which models are cached (cache_features.py's model flags)."""

    suite: str | None = None
    """A registered suite of models (listed below)."""
    models: str | None = None
    """Comma-separated hub ids or local save_pretrained dirs, smallest first, target last."""
    revision: str | None = None
    """Hub revision of every model, e.g. step143000 (Pythia)."""
    param_counts: str | None = None
    """Comma-separated parameter counts, one per model, for models that are not Pythia."""
    suite_dir: Path | None = None
    """Where the demo suite lives (default: the user cache dir)."""

    def __post_init__(self) -> None:
        self.counts()  # refuse malformed counts before anything runs

    def counts(self) -> list[int] | None:
        return parse_int_list(self.param_counts, "--param-counts")

    def resolve(self) -> Suite:
        """The chosen suite: exactly one of --suite and --models."""
        if (self.suite is None) == (self.models is None):
            raise ValueError(
                "give exactly one of --suite and --models (or another job, see --help)"
            )
        if self.models is not None:
            return custom_suite(self.models.split(","), self.revision)
        return get_suite(self.suite, revision=self.revision, suite_dir=self.suite_dir)


def describe_suites() -> str:
    """One line per registered suite, for `--help`."""
    return "\n".join(
        f"  {name:<16} {(fn.__doc__ or '').strip().splitlines()[0]}" for name, fn in SUITES.items()
    )
