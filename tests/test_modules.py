"""The modules' import graph: every `import mtsnn_*` of every mtsnn_*.py, at the top or inside a
function, read from the source; the graph must have no cycle and every import must go down the
layers (base; data, runtime, fused; core; runs, gradients; convert; tables). Names that moved out
of the core say where they went."""
import ast
import importlib
import tomllib
from pathlib import Path

import pytest

import mtsnn_core as mt

ROOT = Path(__file__).resolve().parents[1]


def import_graph(folder):
    """{module: set of the mtsnn_* modules it imports anywhere in its source} for folder/mtsnn_*.py."""
    graph = {}
    for path in sorted(Path(folder).glob("mtsnn_*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
        graph[path.stem] = {name for name in found if name.startswith("mtsnn_") and name != path.stem}
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules [a, b, ..., a], or None when the graph has none."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for name in sorted(graph.get(module, ())):
            if state.get(name) == "open":
                return stack[stack.index(name):] + [name]
            if name not in state and (cycle := visit(name)):
                return cycle
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_modules_import_each_other_without_a_cycle():
    graph = import_graph(ROOT)
    assert {"mtsnn_core", "mtsnn_fused", "mtsnn_convert", "mtsnn_tables", "mtsnn_gradients"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_check_finds_a_cycle(tmp_path):
    """A lazy import inside a function counts as much as one at the top."""
    (tmp_path / "mtsnn_a.py").write_text("import mtsnn_b\n")
    (tmp_path / "mtsnn_b.py").write_text("def f():\n    from mtsnn_c import g\n")
    (tmp_path / "mtsnn_c.py").write_text("import torch\n\n\ndef g():\n    import mtsnn_a as a\n    return a\n")
    graph = import_graph(tmp_path)
    assert graph == {"mtsnn_a": {"mtsnn_b"}, "mtsnn_b": {"mtsnn_c"}, "mtsnn_c": {"mtsnn_a"}}
    assert find_cycle(graph) == ["mtsnn_a", "mtsnn_b", "mtsnn_c", "mtsnn_a"]
    (tmp_path / "mtsnn_c.py").write_text("import torch\n")
    assert find_cycle(import_graph(tmp_path)) is None


LAYERS = [["mtsnn_base"], ["mtsnn_data", "mtsnn_runtime", "mtsnn_fused"], ["mtsnn_core"],
          ["mtsnn_runs", "mtsnn_gradients"], ["mtsnn_convert"], ["mtsnn_tables"]]


def test_every_import_goes_down_the_layers():
    """The core imports nothing above it (mtsnn_runs calls train, not the other way round), the
    data and the runtime nothing but mtsnn_base, the kernels nothing."""
    layer = {module: i for i, modules in enumerate(LAYERS) for module in modules}
    graph = import_graph(ROOT)
    assert set(graph) == set(layer), "a module is missing from LAYERS"
    upward = [(a, b) for a, imported in graph.items() for b in imported if layer[b] >= layer[a]]
    assert not upward, f"imports that do not go down a layer: {upward}"
    assert graph["mtsnn_base"] == graph["mtsnn_fused"] == set()
    assert graph["mtsnn_data"] <= {"mtsnn_base"} and graph["mtsnn_runtime"] <= {"mtsnn_base"}


def test_every_module_is_installed():
    modules = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"]
    assert sorted(modules) == sorted(p.stem for p in ROOT.glob("mtsnn_*.py"))


def test_the_core_stays_small():
    assert len((ROOT / "mtsnn_core.py").read_text().splitlines()) <= 800


MOVED = {name: module for module, names in mt._MOVED.items() for name in names.split()}


@pytest.mark.parametrize("name", sorted(MOVED))
def test_a_moved_name_says_where_it_lives_now(name):
    module = MOVED[name]
    assert hasattr(importlib.import_module(module), name) and name not in vars(mt)
    with pytest.raises(AttributeError, match=f"^mtsnn_core.{name} moved to {module}.{name} \\(import {module}\\)$"):
        getattr(mt, name)


def test_moved_names_and_unknown_names_raise_attribute_errors():
    with pytest.raises(AttributeError, match=r"mtsnn_core.train_sweep moved to mtsnn_runs.train_sweep"):
        mt.train_sweep
    assert not hasattr(mt, "write_results") and not hasattr(mt, "no_such_name")
    with pytest.raises(AttributeError, match="module 'mtsnn_core' has no attribute 'no_such_name'"):
        mt.no_such_name
    # what the core imports from below for itself stays reachable here
    assert mt.load_dataset is importlib.import_module("mtsnn_data").load_dataset
    assert mt.load_checkpoint is importlib.import_module("mtsnn_runtime").load_checkpoint
