"""Model suites: which models are cached, in order of size, the target last.

A suite is a function `(revision, suite_dir) -> Suite` registered with `@register_suite("name")`
in `SUITES`; its docstring is what `cache_features.py --help` shows. The offline demo's suites
(demo, demo-steps, demo-ceiling) are registered by its plugin, `emergence_model.demo.registry`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emergence_model import Registry
from emergence_model.cache import SCALE_AXES


@dataclass(frozen=True)
class Suite:
    """A family of models of one tokenizer along a scale, smallest first, the target last.

    A ladder of sizes (Pythia 70m ... 12b) has parameter counts for scales; a ladder of one
    model's training checkpoints (hub revisions such as Pythia's step1000) has the training
    tokens each checkpoint has seen. The predictor extrapolates along either in log scale.
    """

    name: str
    """Registry name, or "custom" for a list given on the command line."""
    model_ids: tuple[str, ...]
    """Hub ids or local `save_pretrained` directories; the last one is the target."""
    param_counts: tuple[int | None, ...]
    """Parameter count of each model where known without loading it (None: counted at load)."""
    revisions: tuple[str | None, ...] = ()
    """Hub revision of each model, e.g. Pythia's training checkpoint "step1000" (empty: none)."""
    scale_axis: str = "parameters"
    """What the scales measure: "parameters" (a ladder of sizes) or "tokens" (of training)."""
    scales: tuple[float | None, ...] = ()
    """Each model's scale along the axis (empty or None: its parameter count)."""
    description: str = ""

    def __post_init__(self) -> None:
        n = len(self.model_ids)
        if not n:
            raise ValueError(f"suite {self.name!r} has no models; give at least one")
        for what, values in (
            ("parameter counts", self.param_counts),
            ("revisions", self.revisions),
            ("scales", self.scales),
        ):
            if values and len(values) != n:
                raise ValueError(f"suite {self.name!r}: {n} models but {len(values)} {what}")
        if self.scale_axis not in SCALE_AXES:
            raise ValueError(
                f"--scale-axis {self.scale_axis!r} is not one of {', '.join(SCALE_AXES)}"
            )
        if self.scale_axis != "parameters" and (
            not self.scales or any(s is None for s in self.scales)
        ):
            raise ValueError(
                f"suite {self.name!r} measures scale in {self.scale_axis}: give every model's "
                "scale (--scales), or use Pythia's stepN revisions, whose tokens are known"
            )
        if any(s is not None and s <= 0 for s in self.scales):
            raise ValueError(f"suite {self.name!r}: scales must be positive, got {self.scales}")

    @property
    def target_id(self) -> str:
        return self.model_ids[-1]

    def revision(self, index: int) -> str | None:
        """Hub revision of model `index` (None: the default branch)."""
        return self.revisions[index] if self.revisions else None

    @property
    def model_names(self) -> tuple[str, ...]:
        """What a cache calls each model: its id, with "@revision" where it has one."""
        return tuple(
            model_spec(model_id, self.revision(i)) for i, model_id in enumerate(self.model_ids)
        )

    def scale(self, index: int, param_count: int) -> float:
        """Model `index`'s scale, given its parameter count (the scale of a ladder of sizes)."""
        known = self.scales[index] if self.scales else None
        return float(param_count if known is None else known)


SuiteFactory = Callable[..., Suite]
SUITES: Registry[SuiteFactory] = Registry("suite")
register_suite = SUITES.register


# Pythia's batches: 1024 sequences of 2048 tokens a step (its model cards).
PYTHIA_TOKENS_PER_STEP = 2_097_152


def model_spec(model_id: str, revision: str | None) -> str:
    """ "org/name@revision", or the id alone without a revision."""
    return f"{model_id}@{revision}" if revision else model_id


def model_basename(name: str) -> str:
    """A model's name without org or directory: "EleutherAI/pythia-70m" -> "pythia-70m"."""
    return str(name).rstrip("/\\").replace("\\", "/").split("/")[-1].lower()


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """ "EleutherAI/pythia-1b@step1000" -> ("EleutherAI/pythia-1b", "step1000"); a local
    directory (which may hold an @ in its path) or a plain id has no revision."""
    spec = spec.strip()
    if "@" not in spec or Path(spec).expanduser().is_dir():
        return spec, None
    model_id, _, revision = spec.rpartition("@")
    if not model_id or not revision:
        raise ValueError(f"model {spec!r} should look like ORG/NAME@REVISION, e.g. @step1000")
    return model_id, revision


def pythia_training_tokens(revision: str | None) -> int | None:
    """Tokens a Pythia checkpoint has seen: stepN -> N x 2,097,152; None if not a step."""
    if revision is None or not revision.startswith("step") or not revision[4:].isdigit():
        return None
    return int(revision[4:]) * PYTHIA_TOKENS_PER_STEP


# Total parameters (both embedding matrices included), from the suite's own configs.
PYTHIA_PARAM_COUNTS: dict[str, int] = {
    "pythia-14m": 14_067_712,
    "pythia-31m": 30_494_720,
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
# PolyPythias (van der Wal et al., ICLR 2025) trained 14m, 31m, 70m, 160m and 410m again from
# seeds 1-9 (another initialisation and data order) as EleutherAI/pythia-{size}-seed{1-9};
# EleutherAI/pythia-{size} is the original run. The largest of them is the target of a ladder that
# has a noise ceiling on the hub.
POLYPYTHIA_LADDER = ("14m", "31m", "70m", "160m", "410m")
_SEED_SUFFIX = re.compile(r"-(?:data-|weight-)?seed\d+$")


def param_count_for(model_name: str) -> int | None:
    """Pythia's parameter count for a hub id, local path or short name; None for other models.

    "EleutherAI/pythia-70m", "pythia-70m-deduped", "pythia-70m@step1000",
    "EleutherAI/pythia-70m-seed3" (PolyPythias) and "/models/pythia-70m/" all give 70426624.
    """
    name = model_basename(model_name).split("@")[0]
    name = _SEED_SUFFIX.sub("", name.removesuffix("-deduped"))
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
        revisions=(revision,) * len(ids) if revision else (),
        description=description,
    )


@register_suite("pythia")
def pythia(revision: str | None = None, suite_dir: Path | None = None) -> Suite:
    """EleutherAI Pythia 70m, 160m, 410m, 1b, 1.4b, 2.8b and the target 12b (the challenge's)."""
    return _pythia("pythia", "", revision, pythia.__doc__)


@register_suite("pythia-deduped")
def pythia_deduped(revision: str | None = None, suite_dir: Path | None = None) -> Suite:
    """The same ladder trained on the deduplicated Pile (EleutherAI/pythia-*-deduped)."""
    return _pythia("pythia-deduped", "-deduped", revision, pythia_deduped.__doc__)


# Pythia-1b's checkpoints doubling from step 1000 (2.1B tokens), the final one the target.
PYTHIA_STEPS_LADDER = (1000, 2000, 4000, 8000, 16000, 32000, 143000)


@register_suite("pythia-1b-steps")
def pythia_1b_steps(revision: str | None = None, suite_dir: Path | None = None) -> Suite:
    """Pythia-1b along its training: step1000 ... step32000, the target the final step143000."""
    if revision is not None:
        raise ValueError("pythia-1b-steps is a ladder of revisions; drop --revision")
    return custom_suite(
        [f"EleutherAI/pythia-1b@step{step}" for step in PYTHIA_STEPS_LADDER],
        name="pythia-1b-steps",
        description=pythia_1b_steps.__doc__,
    )


@register_suite("polypythias")
def polypythia(revision: str | None = None, suite_dir: Path | None = None) -> Suite:
    """Pythia 14m, 31m, 70m, 160m and the target 410m, whose other seeds are on the hub."""
    ids = [f"EleutherAI/pythia-{size}" for size in POLYPYTHIA_LADDER]
    return custom_suite(ids, revision, name="polypythias", description=polypythia.__doc__)


@register_suite("polypythias-ceiling")
def polypythia_ceiling(revision: str | None = None, suite_dir: Path | None = None) -> Suite:
    """Pythia-410m trained from seed 1 (PolyPythias), then the target pythia-410m: the ceiling."""
    ids = ["EleutherAI/pythia-410m-seed1", "EleutherAI/pythia-410m"]
    return custom_suite(
        ids,
        revision,
        scale_axis="parameters",
        name="polypythias-ceiling",
        description=polypythia_ceiling.__doc__,
    )


def custom_suite(
    model_specs: Sequence[str],
    revision: str | None = None,
    *,
    scale_axis: str | None = None,
    scales: Sequence[float] | None = None,
    name: str = "custom",
    description: str = "models given with --models",
) -> Suite:
    """A suite from hub ids or local directories, each optionally "@REVISION" (`--models
    A,B,...,TARGET`); `revision` applies to those without one.

    One model at several revisions is a ladder along training time: its scale axis is "tokens",
    known for Pythia's stepN revisions; anything else is a ladder of sizes unless told."""
    parsed = [parse_model_spec(m) for m in model_specs if m.strip()]
    ids = tuple(model_id for model_id, _ in parsed)
    revisions = tuple(rev or revision for _, rev in parsed)
    if scale_axis is None:
        one_model = len(set(ids)) == 1 and len(ids) > 1
        scale_axis = "tokens" if one_model and len(set(revisions)) == len(ids) else "parameters"
    if scales is None and scale_axis == "tokens":
        tokens = [
            pythia_training_tokens(r) if param_count_for(i) else None
            for i, r in zip(ids, revisions, strict=True)
        ]
        if 0 in tokens:
            raise ValueError(
                "step0 has seen no training tokens, so it has no place on a log scale; start "
                "the ladder at step1 or later"
            )
        scales = tokens
    return Suite(
        name=name,
        model_ids=ids,
        param_counts=tuple(param_count_for(m) for m in ids),
        revisions=revisions if any(revisions) else (),
        scale_axis=scale_axis,
        scales=tuple(scales) if scales is not None else (),
        description=description,
    )


def get_suite(name: str, *, revision: str | None = None, suite_dir: Path | None = None) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; pick one of {', '.join(SUITES)}")
    return SUITES[name](revision=revision, suite_dir=suite_dir)


@dataclass
class SuiteConfig:
    """Which models are cached (cache_features.py's model flags)."""

    suite: str | None = None
    """A registered suite of models (listed below)."""
    models: str | None = None
    """Comma-separated hub ids or local save_pretrained dirs, smallest first, target last; each
    may name a revision, ORG/NAME@REVISION (e.g. EleutherAI/pythia-1b@step1000)."""
    revision: str | None = None
    """Hub revision of every model without its own, e.g. step143000 (Pythia)."""
    param_counts: str | None = None
    """Comma-separated parameter counts, one per model, for models that are not Pythia."""
    scale_axis: str | None = None
    """What the ladder's scale is: parameters (sizes) or tokens (training checkpoints); default:
    tokens for one model at several revisions, else parameters."""
    scales: str | None = None
    """Comma-separated scale of each model along --scale-axis (default: parameter counts; the
    training tokens of Pythia's stepN revisions)."""
    suite_dir: Path | None = field(default=None, metadata={"cli": False})
    """Where the demo suite lives (default: the user cache dir); its flag is --suite-dir, one of
    the options every command shares (cli.RunOptions)."""

    def __post_init__(self) -> None:
        self.counts()  # refuse malformed numbers before anything runs
        self.scale_values()

    def counts(self) -> list[int] | None:
        return parse_int_list(self.param_counts, "--param-counts")

    def scale_values(self) -> list[int] | None:
        return parse_int_list(self.scales, "--scales")

    def resolve(self) -> Suite:
        """The chosen suite: exactly one of --suite and --models."""
        if (self.suite is None) == (self.models is None):
            raise ValueError(
                "give exactly one of --suite and --models (or another job, see --help)"
            )
        if self.models is not None:
            return custom_suite(
                self.models.split(","),
                self.revision,
                scale_axis=self.scale_axis,
                scales=self.scale_values(),
            )
        if self.scale_axis is not None or self.scales is not None:
            raise ValueError("--scale-axis and --scales go with --models; a suite has its own")
        return get_suite(self.suite, revision=self.revision, suite_dir=self.suite_dir)


def describe_suites() -> str:
    """One line per registered suite, for `--help`."""
    width = max(16, *map(len, SUITES))
    return "\n".join(
        f"  {name:<{width}} {(fn.__doc__ or '').strip().splitlines()[0]}"
        for name, fn in SUITES.items()
    )
