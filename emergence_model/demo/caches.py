"""The demo suite's feature caches: build the suite, then cache it on demo-wiki and demo-rte.

The caches go through the same code as `cache_features.py --suite demo --dataset demo-wiki`: the
suite registry, the prefix-source registry and `extract_suite`. A cache left by an earlier version
of the suite or of the prefix sets is rebuilt; a cache of anything else is never touched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from emergence_model.cache import CacheError, open_cache, read_cache_header
from emergence_model.demo.build import build_suite
from emergence_model.demo.config import CACHES_DIR, log, suite_path
from emergence_model.extract import ExtractConfig, extract_suite
from emergence_model.prefixes import PrefixConfig, load_prefixes
from emergence_model.suites import get_suite

DEMO_DATASETS = ("demo-wiki", "demo-rte")
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
    paths = []
    for dataset in DEMO_DATASETS:
        out = cache_root / dataset
        prefixes, source = load_prefixes(PrefixConfig(dataset, seed=seed), suite_dir)
        try:
            cache = open_cache(out)
            reusable = cache.model_names == list(suite.model_ids) and cache.prefixes == prefixes
        except (CacheError, FileNotFoundError):
            reusable = False
        if reusable:
            log(f"reusing the {dataset} cache in {out}")
            paths.append(out)
            continue
        if is_stale_demo_cache(out, dataset, suite.model_ids, prefixes):
            log(f"the {dataset} cache in {out} holds other prefixes or models: rebuilding it")
            shutil.rmtree(out)
        log(f"caching {len(suite.model_ids)} models x {len(prefixes)} {dataset} prefixes")
        config = ExtractConfig(
            device="cpu", batch_size=batch_size, cache_dtype=cache_dtype, progress=progress
        )
        extract_suite(suite, prefixes, out, config, source=source, seed=seed)
        paths.append(out)
    return paths[0], paths[1]
