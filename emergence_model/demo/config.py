"""The demo suite's configuration and the layout of its directory, and reading its record.

Standard library only, so that the suite registry can read a built suite without torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

SUITE_FILE = "suite.json"
CORPUS_FILE = "corpus.json"
TOKENIZER_DIR = "tokenizer"
MODELS_DIR = "models"
CACHES_DIR = "caches"
TRAINING_FILE = "training.json"
STATE_FILE = "train_state.pt"
VALID_LOSSES_FILE = "valid_window_losses.npy"
SUITE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Rung:
    """One model of the ladder."""

    hidden_size: int
    num_layers: int
    num_heads: int
    peak_lr: float
    """Peak learning rate: smaller models take larger steps, as in Pythia."""

    def __post_init__(self) -> None:
        if min(self.hidden_size, self.num_layers, self.num_heads) < 1 or self.peak_lr <= 0:
            raise ValueError(f"rung {self} needs positive sizes and learning rate")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise ValueError(
                f"rung {self}: hidden_size must split into heads whose size is a multiple of 4 "
                "(rotary embeddings cover a quarter of each head, in pairs)"
            )


# Measured on 2 CPU cores: every rung improves on the one below at this budget, and the whole ladder
# trains in a few minutes. Learning rates fall geometrically from 8e-3 to 2.8e-3.
DEFAULT_LADDER = (
    Rung(32, 1, 2, 8.0e-3),
    Rung(48, 1, 2, 6.7e-3),
    Rung(64, 2, 2, 5.6e-3),
    Rung(96, 2, 4, 4.7e-3),
    Rung(128, 3, 4, 4.0e-3),
    Rung(160, 4, 4, 3.3e-3),
    Rung(192, 4, 6, 2.8e-3),
)


@dataclass(frozen=True)
class DemoConfig:
    """How the demo suite is built. Every field is recorded in suite.json."""

    ladder: tuple[Rung, ...] = DEFAULT_LADDER
    """The models, smallest first, the target last."""
    steps: int = 560
    """Optimizer steps per model (the same for every model)."""
    batch_size: int = 8
    """Sequences per step."""
    seq_len: int = 128
    """Tokens per training sequence."""
    warmup_steps: int = 56
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on biases and norms)."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    seed: int = 0
    """Seed of the initial weights and of the batch order."""
    vocab_size: int = 2048
    """Size of the byte-level BPE trained on the corpus (unused with --tokenizer)."""
    valid_percent: int = 35
    """Share of modules (or documents) held out from training: the validation loss uses them."""
    valid_tokens: int = 65536
    """At most this many held-out tokens score each model's validation loss."""
    checkpoint_every: int = 50
    """Steps between training checkpoints of the model being trained."""
    target_checkpoints: int = 6
    """Checkpoints of the target kept along its training, at 1/2, 1/4, ... of its steps: with the
    final target they are the demo-steps suite, a ladder over training time (0: none)."""
    replica_seed: int | None = None
    """Seed of the target's second training (another initialisation and batch order, the same
    data), whose agreement with the target is the noise ceiling (default: --seed + 1)."""
    repeat_share: float = 0.0
    """Share of the training windows read a second time with one of their spans repeated through
    the window (in-context copying to learn; give more --steps to read them): 0, none."""
    target_steps: int | None = None
    """Optimizer steps of the target (and of its replica) when it trains longer than the small
    models' --steps; its warm-up grows in proportion and its checkpoints are kept at halvings of
    these steps (default: --steps)."""
    copy_share: float = 0.0
    """Share of each batch that is synthetic copying windows: a span of distinct --copy-alphabet
    words written again and again through real text, each copy after a random gap, so that only
    in-context copying (induction) predicts it (synthetic.py; 0: none)."""
    alternation_share: float = 0.0
    """Share of each batch that is runs "x y x y ..." of alphabet word pairs, which seed the
    previous-token head that induction is built on (synthetic.py; 0: none)."""
    copy_alphabet: int = 32
    """Single-token words that the copying and alternation windows are made of."""
    copy_span_min: int = 6
    """Fewest words of a copied span."""
    copy_span_max: int = 16
    """Most words of a copied span."""
    copy_gap_max: int = 16
    """Most real-text tokens before each copy of a span (the gap is uniform from 0)."""
    corpus: str | None = None
    """Plain-text corpus file (documents separated by blank lines); default: stdlib docstrings."""
    tokenizer: str | None = None
    """A tokenizers JSON file (e.g. GPT-NeoX-20B's); default: a BPE trained on the corpus."""

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "seq_len", "vocab_size", "valid_tokens")
        for name in (*positive, "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError("--warmup-steps must be at least 0 and below --steps")
        if not 0 < self.valid_percent < 100:
            raise ValueError("--valid-percent must be between 1 and 99")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("--min-lr-ratio must be between 0 and 1")
        if len(self.ladder) < 2:
            raise ValueError("the ladder needs at least two models (small ones and a target)")
        if self.target_checkpoints < 0:
            raise ValueError("--target-checkpoints must be at least 0")
        if not 0.0 <= self.repeat_share <= 1.0:
            raise ValueError(f"--repeat-share must be between 0 and 1, got {self.repeat_share}")
        if self.replica_seed is not None and self.replica_seed == self.seed:
            raise ValueError("--replica-seed must differ from --seed, or the replica is the target")
        if self.target_steps is not None and self.target_steps < self.steps:
            raise ValueError(
                f"--target-steps must be at least --steps ({self.steps}), got {self.target_steps}"
            )
        self._check_synthetic_share()

    def _check_synthetic_share(self) -> None:
        for name in ("copy_share", "alternation_share"):
            share = getattr(self, name)
            flag = f"--{name.replace('_', '-')}"
            if not 0.0 <= share < 1.0:
                raise ValueError(f"{flag} must be at least 0 and below 1, got {share}")
            if share and not round(share * self.batch_size):
                raise ValueError(
                    f"{flag} {share} of --batch-size {self.batch_size} is no window a step; "
                    f"give at least {1 / self.batch_size:.3g}"
                )
        if self.real_windows_per_step() < 1:
            raise ValueError(
                "--copy-share plus --alternation-share leave no real-text window in a batch; "
                "lower them"
            )
        if not 1 <= self.copy_span_min <= self.copy_span_max:
            raise ValueError(
                "--copy-span-min must be at least 1 and at most --copy-span-max, got "
                f"{self.copy_span_min} and {self.copy_span_max}"
            )
        if self.copy_span_max > self.copy_alphabet:
            raise ValueError(
                f"--copy-span-max {self.copy_span_max} needs as many distinct words; give "
                f"--copy-alphabet at least {self.copy_span_max}"
            )
        if self.copy_alphabet < 2 or self.copy_gap_max < 0:
            raise ValueError("--copy-alphabet must be at least 2 and --copy-gap-max at least 0")

    def synthetic_windows_per_step(self) -> tuple[int, int]:
        """(copying windows, alternation windows) in each step's batch."""
        return round(self.copy_share * self.batch_size), round(
            self.alternation_share * self.batch_size
        )

    def real_windows_per_step(self) -> int:
        """Real-text windows in each step's batch: the rest of it."""
        return self.batch_size - sum(self.synthetic_windows_per_step())

    def resolved_target_steps(self) -> int:
        """The target's optimizer steps."""
        return self.steps if self.target_steps is None else self.target_steps

    def target_config(self) -> DemoConfig:
        """The configuration the target (and its replica) trains with: --target-steps steps and
        the warm-up grown in proportion (the same recipe when they equal --steps)."""
        steps = self.resolved_target_steps()
        warmup = self.warmup_steps * steps // self.steps
        return dataclasses.replace(self, steps=steps, warmup_steps=warmup, target_steps=None)

    def target_checkpoint_steps(self) -> list[int]:
        """The steps at which the target's training is kept: its steps // 2, steps // 4, ... (the
        `target_checkpoints` largest, distinct and positive), in increasing order."""
        steps = self.resolved_target_steps()
        halvings = {steps >> k for k in range(1, self.target_checkpoints + 1)}
        return sorted(step for step in halvings if step > 0)

    def resolved_replica_seed(self) -> int:
        """The seed of the target's second training."""
        return self.seed + 1 if self.replica_seed is None else self.replica_seed

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> DemoConfig:
        data = dict(data)
        data["ladder"] = tuple(Rung(**r) for r in data["ladder"])
        # Suites recorded before checkpoints of the target were kept have none.
        data.setdefault("target_checkpoints", 0)
        return cls(**data)


# Six one-layer small models and a two-layer, one-head target of about the largest one's size,
# which trains seven times longer: with a named synthetic share of copying and alternation
# windows (synthetic.py), in-context copying of random words forms in the target after a plateau
# and in none of the one-layer models (docs/tasks.md, "A ladder on which an ability emerges").
EMERGENT_LADDER = (
    Rung(32, 1, 2, 8.0e-3),
    Rung(40, 1, 1, 7.3e-3),
    Rung(48, 1, 2, 6.7e-3),
    Rung(56, 1, 1, 6.1e-3),
    Rung(64, 1, 2, 5.6e-3),
    Rung(72, 1, 1, 5.1e-3),
    Rung(64, 2, 1, 2.0e-3),
)
PRESETS = {
    "emergent": DemoConfig(
        ladder=EMERGENT_LADDER,
        target_steps=4000,
        copy_share=0.25,
        alternation_share=0.25,
    ),
}
"""Named configurations (`python -m emergence_model.demo build --preset NAME`)."""


def preset_config(name: str, **changes) -> DemoConfig:
    """The preset `name` with `changes` to its fields; ValueError naming the presets if unknown."""
    if name not in PRESETS:
        raise ValueError(f"unknown --preset {name!r}; pick one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **changes)


def default_suite_dir() -> Path:
    """$XDG_CACHE_HOME/emergence-model/demo, else ~/.cache/emergence-model/demo."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "emergence-model" / "demo"


def suite_path(suite_dir: str | os.PathLike | None) -> Path:
    """`suite_dir` as a Path, or the default suite directory when it is None."""
    return Path(suite_dir) if suite_dir is not None else default_suite_dir()


def short_count(count: int) -> str:
    """A parameter count as a model name has it: 143840 -> "144k", 2566272 -> "2.6m"."""
    return f"{count / 1e6:.1f}m" if count >= 1_000_000 else f"{round(count / 1e3)}k"


def log(message: str) -> None:
    """A progress line on stderr that does not break a running progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(f"[demo] {message}", file=sys.stderr)


def read_suite_record(suite_dir: Path) -> dict:
    """The content of the suite's suite.json, {} when there is none (nothing built yet)."""
    path = suite_dir / SUITE_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); delete {suite_dir} and rebuild the suite"
        ) from e
    if data.get("format_version") != SUITE_FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {data.get('format_version')!r}, this package writes "
            f"{SUITE_FORMAT_VERSION}; delete {suite_dir} and rebuild the suite"
        )
    return data


def resolve_config(
    suite_dir: Path,
    config: DemoConfig | None = None,
    *,
    corpus: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
) -> DemoConfig:
    """The suite's configuration: the recorded one for an existing suite, else `config`.

    Asking an existing suite for a different configuration is refused rather than mixing models.
    """
    files = {"corpus": corpus, "tokenizer": tokenizer}
    files = {k: str(Path(v).resolve()) for k, v in files.items() if v is not None}
    if files:
        config = dataclasses.replace(config or DemoConfig(), **files)
    record = read_suite_record(suite_dir)
    if not record:
        return config or DemoConfig()
    stored = DemoConfig.from_json(record["config"])
    if config is not None and config != stored:
        changed = [
            f"{f.name} {getattr(stored, f.name)!r} -> {getattr(config, f.name)!r}"
            for f in dataclasses.fields(DemoConfig)
            if getattr(stored, f.name) != getattr(config, f.name)
        ]
        raise ValueError(
            f"suite dir {suite_dir} was built with another configuration ({'; '.join(changed)}); "
            "pass a new --suite-dir or delete that directory"
        )
    return stored
