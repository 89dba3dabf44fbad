"""The package's import graph: no module imports one that imports it back, not even lazily, and the
light modules (the demo's configuration, the suite registry) stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import emergence_model

PACKAGE_DIR = Path(emergence_model.__file__).parent
PACKAGE = "emergence_model"


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    names = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def is_script_guard(node: ast.stmt) -> bool:
    """Whether `node` is `if __name__ == "__main__":`."""
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and [type(c) for c in test.comparators] == [ast.Constant]
        and test.comparators[0].value == "__main__"
    )


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its source (module level, inside
    functions, relative imports resolved), and the packages that importing them runs first.

    Not what a module imports under `if __name__ == "__main__":`: that code runs only when the
    file is run as a script (`python -m emergence_model.evaluate`), as the module `__main__`, a
    module other than `name`, which nothing imports back."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    targets = set()
    tree = ast.parse(path.read_text(), str(path))
    nodes = (n for top in tree.body if not is_script_guard(top) for n in ast.walk(top))
    for node in nodes:
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                # `from package import module` imports the module; `from module import name`
                # imports the module that defines the name.
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in modules else base)
    found = set()
    for target in targets:
        parts = target.split(".")
        # Importing a.b.c runs a and a.b first.
        for end in range(1, len(parts) + 1):
            module = ".".join(parts[:end])
            if module in modules and module != name:
                found.add(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules, as a path a -> ... -> a."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{group} is not strongly connected")


def describe(cycles: list[list[str]]) -> str:
    return "; ".join(" -> ".join(m.removeprefix(f"{PACKAGE}.") for m in c) for c in cycles)


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    source = "import os\n\ndef f():\n    from . import b\n    from .c import thing\n"
    (tmp_path / "a.py").write_text(source)
    modules = {f"{PACKAGE}.a": Path(), f"{PACKAGE}.b": Path(), f"{PACKAGE}.c": Path()}
    got = imported_modules(f"{PACKAGE}.a", tmp_path / "a.py", modules)
    assert got == {f"{PACKAGE}.b", f"{PACKAGE}.c"}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]


def test_the_demo_package_imports_downwards_only():
    graph = import_graph()
    demo = f"{PACKAGE}.demo"
    assert graph[demo] == set(), "demo/__init__.py must import none of its modules"
    light = {f"{demo}.{m}" for m in ("config", "corpus", "tokenizer", "prefix_sets")}
    for module in light:
        assert not graph[module] & {f"{demo}.build", f"{demo}.caches", f"{demo}.pretrain"}
    assert graph[f"{PACKAGE}.suites"] <= {PACKAGE, f"{PACKAGE}.cache", demo, f"{demo}.config"}

    def importers(target: str) -> set[str]:
        return {module for module, imports in graph.items() if target in imports}

    # only the entry points above the demo use its builder: the commands and the study's default
    # run on the demo (demo.study); the registries and the core never do
    entry_points = {m for m in graph if m.startswith(f"{PACKAGE}.commands.")} | {f"{demo}.study"}
    assert importers(f"{demo}.caches") <= entry_points
    assert importers(f"{demo}.build") <= {f"{demo}.caches"} | entry_points


def test_the_graph_leaves_out_what_a_script_guard_imports(tmp_path):
    source = 'from . import b\n\nif __name__ == "__main__":\n    from . import c\n'
    (tmp_path / "a.py").write_text(source)
    modules = {f"{PACKAGE}.a": Path(), f"{PACKAGE}.b": Path(), f"{PACKAGE}.c": Path()}
    assert imported_modules(f"{PACKAGE}.a", tmp_path / "a.py", modules) == {f"{PACKAGE}.b"}


def is_core(module: str) -> bool:
    """Everything but the demo (a plugin), the commands and the `python -m` shims is the core."""
    outside = (f"{PACKAGE}.demo", f"{PACKAGE}.commands")
    return not module.startswith(outside) and not module.endswith("__main__")


def test_the_core_imports_neither_the_demo_nor_the_commands():
    graph = import_graph()
    outside = (f"{PACKAGE}.demo", f"{PACKAGE}.commands")
    core = [module for module in graph if is_core(module)]
    assert f"{PACKAGE}.suites" in core and f"{PACKAGE}.study.ladder" in core
    wrong = {m: sorted(i for i in graph[m] if i.startswith(outside)) for m in core}
    assert not {m: i for m, i in wrong.items() if i}, "the core imports the demo or a command"


def test_importing_the_core_loads_no_plugin_and_no_command():
    """The demo registers itself when a registry is first read, not when the core is imported."""
    core = sorted(m for m in module_names() if is_core(m))
    code = (
        f"import sys; import {', '.join(core)}; "
        "print(sorted(m for m in sys.modules if m.startswith(('emergence_model.demo', "
        "'emergence_model.commands'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_registries_load_the_demo_plugin_when_read():
    code = (
        "import sys; from emergence_model.suites import SUITES; "
        "print('emergence_model.demo.registry' in sys.modules, 'demo' in SUITES, "
        "'emergence_model.demo.registry' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, f"import cycles: {describe(cycles)}"


@pytest.mark.parametrize(
    "module", [f"{PACKAGE}.demo.config", f"{PACKAGE}.suites", f"{PACKAGE}.demo.registry"]
)
def test_light_modules_do_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_cache_package_imports_none_of_its_modules_and_the_network_needs_no_cache():
    graph = import_graph()
    cache = f"{PACKAGE}.cache"
    assert not {m for m in graph[cache] if m.startswith(f"{cache}.")}, (
        "cache/__init__.py must import none of its modules (it exports them lazily)"
    )
    for module in ("model", "logprobs", "folds"):
        imports = graph[f"{PACKAGE}.{module}"]
        assert not {m for m in imports if m == cache or m.startswith(f"{cache}.")}, module


@pytest.mark.parametrize(
    "module", [f"{PACKAGE}.folds", f"{PACKAGE}.logprobs", f"{PACKAGE}.cache.combine"]
)
def test_folds_the_floor_and_the_whole_cache_package_do_not_import_torch(module):
    test_light_modules_do_not_import_torch(module)


def test_no_module_of_the_package_or_the_bench_grows_past_600_lines():
    bench = PACKAGE_DIR.parent / "bench"
    long = {
        str(path.relative_to(PACKAGE_DIR.parent)): n
        for path in [*PACKAGE_DIR.rglob("*.py"), *bench.rglob("*.py")]
        if (n := len(path.read_text().splitlines())) > 600
    }
    assert not long, f"split these by job: {long}"
