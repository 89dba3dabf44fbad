"""Predict a large language model's next-token choice from the smaller models of its family.

The public API is imported lazily, so that `from emergence_model import open_cache` does not
pay for torch, Lightning or transformers.
"""

import sys
from importlib import import_module

__version__ = "0.1.0"


def lazy_exports(package: str, exports: dict[str, str]):
    """A package's `__getattr__` and `__dir__` that import each public name of `exports` (name ->
    the package's module that defines it) when first used, so that the package's `__init__`
    imports none of its modules."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{exports[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(sys.modules[package].__all__)

    return __getattr__, __dir__


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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
