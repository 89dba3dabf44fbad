"""The registries and their plugins (emergence_model/__init__.py): the demo's built in, another
package's from its entry points."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest

import emergence_model
from emergence_model import Registry
from emergence_model.prefixes import (
    FEWSHOT_SOURCES,
    PREFIX_SOURCES,
    PrefixConfig,
    describe_sources,
)
from emergence_model.suites import SUITES, Suite, describe_suites, get_suite

PLUGIN = '''
from emergence_model.prefixes import register_source
from emergence_model.suites import Suite, register_suite


@register_suite("elsewhere")
def elsewhere(revision=None, suite_dir=None):
    """A suite another package registers."""
    return Suite("elsewhere", ("org/small", "org/target"), (1, 2))


@register_source("elsewhere-text", fewshot=True)
def elsewhere_text(config, suite_dir=None):
    """Prefixes another package registers."""
    return ["a b", "c d"], {"shots": config.resolved_shots(3)}
'''


def test_a_registry_refuses_a_name_twice_and_keeps_the_order():
    registry = Registry("thing")
    registry.add("b", 1)
    registry.register("a")(2)
    assert list(registry) == ["b", "a"] and registry["a"] == 2 and "c" not in registry
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        registry.add("a", 3)


def test_the_demo_registers_its_suites_and_sources():
    assert {"demo", "demo-steps", "demo-ceiling"} <= set(SUITES)
    assert {"demo-wiki", "demo-rte", "demo-rte-fewshot", "demo-induction"} <= set(PREFIX_SOURCES)
    assert SUITES["demo"].__module__ == "emergence_model.demo.registry"
    assert PrefixConfig("demo-rte-fewshot", shots=2).shots == 2  # a few-shot source


def test_another_package_plugs_in_through_its_entry_point(tmp_path, monkeypatch):
    (tmp_path / "elsewhere_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint(
        name="elsewhere", value="elsewhere_plugin", group=emergence_model.PLUGIN_GROUP
    )

    def entry_points(group):
        return [entry] if group == emergence_model.PLUGIN_GROUP else []

    emergence_model.load_plugins()  # the built-in ones, for good, before the registries are copied
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    # plugins to load again, into copies of the registries that the test's end throws away
    monkeypatch.setattr(emergence_model, "_plugins_loaded", False)
    for registry in (SUITES, PREFIX_SOURCES, FEWSHOT_SOURCES):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.delitem(sys.modules, "elsewhere_plugin", raising=False)
    suite = get_suite("elsewhere")
    assert isinstance(suite, Suite) and suite.target_id == "org/target"
    assert "elsewhere" in describe_suites() and "elsewhere-text" in describe_sources()
    assert PrefixConfig("elsewhere-text", shots=1).shots == 1
    assert "demo" in SUITES  # the built-in plugin as well
