"""The demo suite's feature caches: build the suite, then cache it on its prefix sets.

`prepare_demo_caches` makes what `train.py` needs: the size ladder on demo-wiki and demo-rte.
`prepare_demo_study_caches` makes what the study needs besides: the task sets (demo-induction,
demo-rte-fewshot) on the size ladder, the demo-steps suite (the target along its training) on
demo-wiki and demo-induction, and the demo-ceiling suite (the target trained again from another
seed, then the target) on every set. The caches go through the same code as `cache_features.py
--suite demo --dataset demo-wiki`: the suite registry, the prefix-source registry and
`extract_suite`. A cache left by an earlier version of the suite or of the prefix sets is rebuilt;
a cache of anything else is never touched.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emergence_model.cache import CacheError, open_cache, read_cache_header
from emergence_model.demo.build import build_replica, build_suite
from emergence_model.demo.config import CACHES_DIR, log, suite_path
from emergence_model.extract import ExtractConfig, extract_suite
from emergence_model.prefixes import PrefixConfig, load_prefixes
from emergence_model.suites import Suite, get_suite

DEMO_DATASETS = ("demo-wiki", "demo-rte")
# The study's sets: on the ladder of sizes and under the noise ceiling, every one; along training
# time, the Wikipedia-like set and in-context copying, the ability that appears (or not) with time.
SIZE_DATASETS = ("demo-wiki", "demo-rte", "demo-induction", "demo-rte-fewshot")
STEPS_DATASETS = ("demo-wiki", "demo-induction")
CEILING_DATASETS = SIZE_DATASETS
# The emergent ladder's task set and its control (demo/prefix_sets.py), along size and training.
RANDOM_COPY_DATASETS = ("demo-random-copy", "demo-random-copy-control")
STEPS_DIR, CEILING_DIR = "steps", "ceiling"
# The demo's models are tiny: larger batches than ExtractConfig's default are faster on a CPU.
DEMO_BATCH_SIZE = 32


def is_stale_demo_cache(
    out: Path, dataset: str, model_ids: Sequence[str], prefixes: Sequence[str]
) -> bool:
    """Whether `out` is a (complete or partial) `dataset` cache of other models or prefixes, as
    left by an earlier version of the suite or of the prefix sets; a cache of anything else is
    never touched."""
    try:
        meta, old_prefixes = read_cache_header(out)
    except CacheError:
        return False
    if (meta.get("source") or {}).get("dataset") != dataset:
        return False
    return meta["model_names"] != list(model_ids) or old_prefixes != list(prefixes)


def cache_prefix_set(
    suite: Suite,
    prefixes: list[str],
    source: dict,
    out: Path,
    config: ExtractConfig,
    seed: int,
) -> Path:
    """`suite`'s cache of the prefix set `source["dataset"]` at `out`: reused when finished,
    resumed when not, rebuilt when an earlier version of the suite or the set left it."""
    dataset = source["dataset"]
    try:
        cache = open_cache(out)
        reusable = cache.model_names == list(suite.model_ids) and cache.prefixes == prefixes
    except (CacheError, FileNotFoundError):
        reusable = False
    if reusable:
        log(f"reusing the {dataset} cache in {out}")
        return out
    if is_stale_demo_cache(out, dataset, suite.model_ids, prefixes):
        log(f"the {dataset} cache in {out} holds other prefixes or models: rebuilding it")
        shutil.rmtree(out)
    log(f"caching {suite.name}: {len(suite.model_ids)} models x {len(prefixes)} {dataset} prefixes")
    extract_suite(suite, prefixes, out, config, source=source, seed=seed)
    return out


def load_demo_prefixes(dataset: str, suite_dir: Path, seed: int) -> tuple[list[str], dict]:
    """A demo prefix set and its source metadata, through the prefix-source registry."""
    return load_prefixes(PrefixConfig(dataset, seed=seed), suite_dir)


def prepare_demo_caches(
    suite_dir: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    batch_size: int = DEMO_BATCH_SIZE,
    cache_dtype: str = ExtractConfig.cache_dtype,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Build (or reuse) the demo suite and its demo-wiki and demo-rte caches; returns their paths.

    `seed` draws the prefix sets (recorded in each cache's metadata); `cache_root` defaults to the
    suite's caches/ directory.
    """
    suite_dir = suite_path(suite_dir)
    cache_root = Path(cache_root) if cache_root is not None else suite_dir / CACHES_DIR
    build_suite(suite_dir, progress=progress)
    suite = get_suite("demo", suite_dir=suite_dir)
    config = ExtractConfig(
        device="cpu", batch_size=batch_size, cache_dtype=cache_dtype, progress=progress
    )
    wiki, rte = (
        cache_prefix_set(
            suite, *load_demo_prefixes(dataset, suite_dir, seed), cache_root / dataset, config, seed
        )
        for dataset in DEMO_DATASETS
    )
    return wiki, rte


@dataclass
class DemoStudyCaches:
    """The demo's caches for the study, each a dict from prefix set to cache directory."""

    size: dict[str, Path]
    """The ladder of sizes (the demo suite) on demo-wiki, demo-rte, demo-induction and
    demo-rte-fewshot."""
    steps: dict[str, Path] = field(default_factory=dict)
    """The ladder along training time (demo-steps: the target's kept checkpoints, scale axis
    tokens, the final target last) on demo-wiki and demo-induction; empty for a suite built before
    the target's checkpoints were kept."""
    ceiling: dict[str, Path] = field(default_factory=dict)
    """demo-ceiling on every set: [the target trained again from another seed, the target]; the
    first model's top-1 agreement with the target is the noise ceiling on that set."""


def prepare_demo_study_caches(
    suite_dir: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    batch_size: int = DEMO_BATCH_SIZE,
    cache_dtype: str = ExtractConfig.cache_dtype,
    progress: bool = True,
) -> DemoStudyCaches:
    """Build (or reuse) the demo suite, its target's second training and every cache the study
    reads (`DemoStudyCaches`); what is already built is reused, what was interrupted resumes.

    Under `cache_root` (default: the suite's caches/): `<set>/` for the size ladder (demo-wiki
    and demo-rte are `prepare_demo_caches`'), `steps/<set>/` and `ceiling/<set>/`.
    """
    return _study_caches(
        suite_dir,
        cache_root,
        SIZE_DATASETS,
        STEPS_DATASETS,
        CEILING_DATASETS,
        seed=seed,
        batch_size=batch_size,
        cache_dtype=cache_dtype,
        progress=progress,
    )


def prepare_random_copy_caches(
    suite_dir: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    batch_size: int = DEMO_BATCH_SIZE,
    progress: bool = True,
    steps_wiki: bool = True,
) -> DemoStudyCaches:
    """Build (or reuse) the suite and cache it for the random-copy study: the size ladder on
    demo-wiki and demo-rte (`prepare_demo_caches`) and on `RANDOM_COPY_DATASETS`, demo-steps on
    `RANDOM_COPY_DATASETS` and, with `steps_wiki` (what a study of demo-steps trains its network
    on), demo-wiki. The target's second training is not made (no ceiling: it would train the
    target's longest run again)."""
    return _study_caches(
        suite_dir,
        cache_root,
        RANDOM_COPY_DATASETS,
        ("demo-wiki",) * steps_wiki + RANDOM_COPY_DATASETS,
        (),
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        need_steps=True,
    )


def _study_caches(
    suite_dir: str | os.PathLike | None,
    cache_root: str | os.PathLike | None,
    size_sets: Sequence[str],
    steps_sets: Sequence[str],
    ceiling_sets: Sequence[str],
    *,
    seed: int,
    batch_size: int,
    progress: bool,
    cache_dtype: str = ExtractConfig.cache_dtype,
    need_steps: bool = False,
) -> DemoStudyCaches:
    """demo-wiki and demo-rte (`prepare_demo_caches`), then the size ladder on `size_sets`, the
    replica's ladder on `ceiling_sets` (the replica trained first, if any) and demo-steps on
    `steps_sets` (skipped with a note where the suite kept no checkpoints, unless `need_steps`).
    Each set is drawn once, however many suites cache it."""
    suite_dir = suite_path(suite_dir)
    cache_root = Path(cache_root) if cache_root is not None else suite_dir / CACHES_DIR
    wiki, rte = prepare_demo_caches(
        suite_dir,
        cache_root,
        seed=seed,
        batch_size=batch_size,
        cache_dtype=cache_dtype,
        progress=progress,
    )
    if ceiling_sets:
        build_replica(suite_dir, progress=progress)
    config = ExtractConfig(
        device="cpu", batch_size=batch_size, cache_dtype=cache_dtype, progress=progress
    )
    sets = functools.cache(lambda dataset: load_demo_prefixes(dataset, suite_dir, seed))

    def cache_all(suite: Suite, datasets: Sequence[str], root: Path) -> dict[str, Path]:
        return {d: cache_prefix_set(suite, *sets(d), root / d, config, seed) for d in datasets}

    caches = DemoStudyCaches(size={"demo-wiki": wiki, "demo-rte": rte})
    size_sets = [d for d in size_sets if d not in caches.size]
    caches.size.update(cache_all(get_suite("demo", suite_dir=suite_dir), size_sets, cache_root))
    if ceiling_sets:
        ceiling = get_suite("demo-ceiling", suite_dir=suite_dir)
        caches.ceiling = cache_all(ceiling, ceiling_sets, cache_root / CEILING_DIR)
    try:
        steps = get_suite("demo-steps", suite_dir=suite_dir)
    except ValueError as e:
        if need_steps:
            raise
        log(f"no demo-steps caches: {e}")
    else:
        caches.steps = cache_all(steps, steps_sets, cache_root / STEPS_DIR)
    return caches
