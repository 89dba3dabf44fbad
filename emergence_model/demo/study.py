"""The study's default run on the offline demo: two ladders, the sets they are studied on, and
the checkpoints, reused where `python train.py` (or an earlier study, with the current defaults)
made them, trained where missing. `emergence-model study` with no checkpoint and no cache runs it.

- demo-size: the demo suite's ladder of sizes, on demo-wiki (the reference set), demo-rte,
  demo-induction and demo-rte-fewshot, with the network train.py makes on demo-wiki;
- demo-steps: the demo's target along its own training (its kept checkpoints), on demo-wiki and
  demo-induction, with a network trained the same way on that ladder's demo-wiki.

Both share the noise ceiling: the target trained again from another seed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from emergence_model.cache import open_cache
from emergence_model.checkpoint import CheckpointError, load_checkpoint
from emergence_model.demo.caches import SIZE_DATASETS, STEPS_DATASETS, prepare_demo_study_caches
from emergence_model.demo.config import log, suite_path
from emergence_model.evaluate import EvalConfig
from emergence_model.model import PREDICTOR_DESIGN, PredictorConfig
from emergence_model.pipeline import DEMO_CHECKPOINT, train_and_evaluate
from emergence_model.training import TrainConfig

# The demo's models are on disk and small: its study also trains the cheaper drafts and decodes
# 100 held-out prompts for real. Everything else is StudyConfig's defaults.
DEMO_SETTINGS = {"subset_networks": True, "generate_prompts": 100}


def default_settings() -> tuple[dict, dict]:
    """What the study trains a missing network with: PredictorConfig's defaults (its flags, not
    what train.py fills in from the cache and the folds) and TrainConfig's (less how a run
    looks)."""
    defaults = PredictorConfig()
    predictor = {
        f.name: getattr(defaults, f.name)
        for f in dataclasses.fields(PredictorConfig)
        if f.metadata.get("cli", True)
    }
    training = dataclasses.asdict(TrainConfig(progress=False))
    del training["progress"]
    return predictor, training


def trained_on(checkpoint: Path, cache_path: Path, defaults: bool = False) -> bool:
    """Whether `checkpoint` loads, was trained on the cache at `cache_path`, by this version's
    design of the network (`PREDICTOR_DESIGN`) and by this version's training (its recorded
    training config has every field of TrainConfig: one made before, e.g. before the fitted
    mixture, is trained again, its finished folds reused). With `defaults`, also with this
    version's default settings (`default_settings`): a network the study trained itself under an
    older default is trained again."""
    try:
        loaded = load_checkpoint(checkpoint)
    except CheckpointError:
        return False
    recorded = loaded.get("data", {}).get("fingerprint")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train_config = loaded.get("train_config")
    current = isinstance(train_config, dict) and fields <= set(train_config)
    current = current and loaded.get("design") == PREDICTOR_DESIGN
    if current and defaults:
        predictor, training = default_settings()
        config = dict(loaded["config"])
        rule = config.get("embedding_min_prefixes") == predictor["embedding_min_prefixes"]
        if rule and config.get("token_embedding") == 0:  # the default, left out on few prefixes
            config["token_embedding"] = predictor["token_embedding"]
        wanted = [(predictor, config), (training, train_config)]
        current = all(got.get(k) == v for want, got in wanted for k, v in want.items())
    return recorded == open_cache(cache_path).fingerprint and current


def ensure_checkpoint(
    candidates: list[Path], train_cache: Path, transfer_caches: list[Path], out: Path
) -> Path:
    """The first of `candidates` trained on `train_cache` (`out`, the study's own, only if with
    the current defaults), else a network trained now (with the defaults train.py uses) and
    saved at `out`."""
    for path in candidates:
        if path.is_file() and trained_on(path, train_cache, defaults=path == out):
            log(f"reusing {path}, trained on {train_cache}")
            return path
    log(f"training the network on {train_cache} into {out}")
    train_and_evaluate(
        train_cache,
        transfer_caches,
        out,
        PredictorConfig(),
        TrainConfig(progress=False),
        eval_config=EvalConfig(),
    )
    return out


def demo_ladders(suite_dir: str | Path | None, out: Path, progress: bool = True) -> list[dict]:
    """The ladders of the demo's study, everything missing built (the suite, the target's second
    training, every cache, the networks)."""
    caches = prepare_demo_study_caches(suite_path(suite_dir), progress=progress)
    size = [caches.size[d] for d in SIZE_DATASETS]
    own = out / "work" / "checkpoints"
    ladders = [
        {
            "checkpoint": ensure_checkpoint(
                [DEMO_CHECKPOINT, own / "demo-size.ckpt"],
                size[0],
                size[1:],
                own / "demo-size.ckpt",
            ),
            "caches": size,
            "ceilings": caches.ceiling,
            "title": "demo-size",
        }
    ]
    if caches.steps:
        steps = [caches.steps[d] for d in STEPS_DATASETS]
        ladders.append(
            {
                "checkpoint": ensure_checkpoint(
                    [own / "demo-steps.ckpt"], steps[0], steps[1:], own / "demo-steps.ckpt"
                ),
                "caches": steps,
                "ceilings": {d: caches.ceiling[d] for d in STEPS_DATASETS if d in caches.ceiling},
                "title": "demo-steps",
            }
        )
    return ladders
