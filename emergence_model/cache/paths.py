"""Output-path guards: refuse, before anything is written, a path that cannot be written as asked
or that lies inside a feature cache (a cache's directory holds only its own files). Caches,
checkpoints and reports are all written through them."""

from __future__ import annotations

import os
from pathlib import Path

from emergence_model.cache.format import LOGPROBS_FILE, META_FILE, CacheError
from emergence_model.files import check_output_path


def cache_containing(path: str | os.PathLike) -> Path | None:
    """The feature cache that `path` would be inside of (a parent directory with meta.json and
    logprobs.npy), or None."""
    for parent in Path(path).absolute().parents:
        if (parent / META_FILE).is_file() and (parent / LOGPROBS_FILE).is_file():
            return parent
    return None


def check_cache_destination(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse a path that cannot hold a cache, before anything is written: a file, a link to
    nothing, a directory inside another cache."""
    try:
        path = check_output_path(path, flag, directory=True)
    except ValueError as e:
        raise CacheError(str(e)) from None
    outer = cache_containing(path)
    if outer is not None:
        raise CacheError(
            f"{flag} {path} is inside the feature cache {outer}; pick a directory outside it"
        )
    return path


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse a file path that cannot be written as asked (a directory, a link to nothing, a
    file among its parents) or that lies inside a feature cache, before anything is written."""
    path = check_output_path(path, flag, directory=False)
    outer = cache_containing(path)
    if outer is not None:
        raise ValueError(f"{flag} {path} is inside the feature cache {outer}; write it elsewhere")
    return path
