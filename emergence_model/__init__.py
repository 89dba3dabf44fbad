"""Predict a large language model's next-token choice from the smaller models of its family.

The public API is imported lazily, so that `from emergence_model import open_cache` does not
pay for torch, Lightning or transformers.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "CacheError": "cache",
    "FeatureCache": "cache",
    "open_cache": "cache",
    "combine_caches": "cache",
    "import_challenge_pickle": "challenge",
    "export_challenge_pickle": "challenge",
    "load_challenge_pickle": "challenge",
    "SUITES": "suites",
    "get_suite": "suites",
    "PREFIX_SOURCES": "prefixes",
    "load_prefixes": "prefixes",
    "extract_suite": "extract",
    "PredictorConfig": "model",
    "PerTokenPredictor": "model",
    "STRATEGIES": "strategies",
    "load_strategy": "checkpoint",
    "load_checkpoint": "checkpoint",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'emergence_model' has no attribute {name!r}")
    value = getattr(import_module(f"emergence_model.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
