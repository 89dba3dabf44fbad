"""The feature cache: every model's next-token log-probabilities for every prefix, on disk.

One job per module:

    format.py    the files, their metadata and the checks every reader and writer makes
    reader.py    `open_cache` and `FeatureCache`: a finished cache, its rows read when used
    writer.py    `create_cache` and `CacheWriter`: writing, resuming, the full check at the end
    rows.py      rows written into the arrays' files, and the done parts of a job's processes
    combine.py   `combine_caches` and `select_models`: new caches from finished ones
    paths.py     output-path guards: nothing is written inside a cache

A finished run reads every row back and records the result in meta.json ("check"): a cache that
failed it, or whose run stopped before it, does not open. A rerun resumes a cache only if it would
write the same numbers (`create_cache`); `combine_caches` joins only caches made alike. How the
numbers themselves are floored and cast is `emergence_model.logprobs`.

The public names below are imported from their modules when first used, as the package's own are:
this file imports none of its modules, so that they can import each other and the light modules
that read a cache's metadata (the suite registry) never load the writer.
"""

from emergence_model import lazy_exports

# public name -> the module of this package that defines it
_EXPORTS = {
    "ARGMAX_FILE": "format",
    "CACHE_DTYPES": "format",
    "CACHE_FILES": "format",
    "CHECK_FAILED": "format",
    "CHECK_PASSED": "format",
    "CHECK_PENDING": "format",
    "CHECK_SKIPPED": "format",
    "CHECK_STATUSES": "format",
    "DIGESTED_FILES": "format",
    "DONE_FILE": "format",
    "FORMAT_VERSION": "format",
    "LOGPROBS_FILE": "format",
    "META_FILE": "format",
    "NORMALISATION_TOLERANCE": "format",
    "PREFIXES_FILE": "format",
    "REQUIRED_META": "format",
    "SCALE_AXES": "format",
    "CacheError": "format",
    "IncompleteCacheError": "format",
    "read_cache_header": "format",
    "FeatureCache": "reader",
    "open_cache": "reader",
    "COMMIT_SECONDS": "writer",
    "RESUME_EXTRACTION_KEYS": "writer",
    "CacheWriter": "writer",
    "create_cache": "writer",
    "combine_caches": "combine",
    "select_models": "combine",
    "cache_containing": "paths",
    "check_cache_destination": "paths",
    "check_output_file": "paths",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
