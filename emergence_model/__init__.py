"""Predict a large language model's next-token choice from the smaller models of its family.

The public API is imported lazily, so that `from emergence_model import open_cache` does not
pay for torch, Lightning or transformers.

The registries (suites, prefix sources, strategies) are `Registry` objects that plugins add to.
A plugin is a module whose import registers its entries (`@register_suite("name")` in suites.py,
`@register_source("name")` in prefixes.py, `@register("name")` in strategies.py). Plugins are
loaded once, the first time any registry is read, never when a core module is imported:

- this package's own, by name from `BUILTIN_PLUGINS` (the offline demo,
  `emergence_model.demo.registry`), so that they work from a source checkout and from an
  install whose metadata predates them, and no core module imports them;
- other packages', declared as entry points of the group `emergence_model.plugins`, e.g. in
  their setup.cfg: `[options.entry_points] emergence_model.plugins = mine = my_package.registry`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from importlib import import_module
from typing import TypeVar

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


PLUGIN_GROUP = "emergence_model.plugins"
BUILTIN_PLUGINS = ("emergence_model.demo.registry",)
_plugins_loaded = False

T = TypeVar("T")


def load_plugins() -> None:
    """Import every plugin once: `BUILTIN_PLUGINS`, then the entry points of `PLUGIN_GROUP`."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    # Set first: a plugin that reads a registry while it registers must not load plugins again.
    _plugins_loaded = True
    from importlib.metadata import entry_points

    try:
        for name in BUILTIN_PLUGINS:
            import_module(name)
        for entry in entry_points(group=PLUGIN_GROUP):
            entry.load()
    except BaseException:
        _plugins_loaded = False
        raise


class Registry(Mapping[str, T]):
    """Names to things of one kind, in the order they were registered; reading it (a lookup, a
    listing, `in`) first loads the plugins, which add their entries."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that adds what it decorates under `name`."""

        def add(entry: T) -> T:
            self.add(name, entry)
            return entry

        return add

    def __getitem__(self, name: str) -> T:
        load_plugins()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(self._entries)

    def __len__(self) -> int:
        load_plugins()
        return len(self._entries)


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

__all__ = ["__version__", "Registry", "load_plugins", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
