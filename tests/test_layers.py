"""The harness's modules import each other in one direction: no cycle, not even through an
import inside a function, and each module imports alone in a fresh interpreter."""

import ast
import subprocess
import sys

import pytest

from harness.paths import REPO_ROOT

MODULES = sorted(p.stem for p in (REPO_ROOT / "harness").glob("*.py") if p.stem not in ("__init__", "__main__"))


def harness_imports(module: str) -> set[str]:
    """The harness modules ``module`` imports anywhere in its code (top level or in functions)."""
    tree = ast.parse((REPO_ROOT / "harness" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness"):
            if node.module == "harness":  # from harness import checksums
                found |= {alias.name for alias in node.names if alias.name in MODULES}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("harness.")}
    return found - {module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle_through_a_function_level_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    code = "def f():\n    from harness.config import X\n"
    assert [n.module for n in ast.walk(ast.parse(code)) if isinstance(n, ast.ImportFrom)] == ["harness.config"]


def test_no_import_cycle_inside_harness():
    graph = {m: harness_imports(m) for m in MODULES}
    assert graph["evaluate"] >= {"protocol", "runs"} and "train" not in graph["evaluate"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module):
    proc = subprocess.run([sys.executable, "-c", f"import harness.{module}"], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
