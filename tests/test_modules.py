"""The modules' import graph: every `import mtsnn_*` of every mtsnn_*.py, at the top or inside a
function, read from the source (nothing is imported); the graph must have no cycle."""
import ast
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("module", ["mtsnn_fused"])
def test_the_lowest_modules_import_no_other(module):
    assert import_graph(ROOT)[module] == set()
