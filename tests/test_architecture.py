"""The package's shape, checked from its source: no import cycle among ``harness`` modules.

A cycle makes import order matter (a module half-initialised when its peer reads it) and hides
behind function-level imports, so those count too; only ``if TYPE_CHECKING:`` blocks, which
never run, are left out. ``harness/probe/`` is standalone (it runs inside the job's own
interpreter) and is not part of the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "harness"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "probe" not in path.relative_to(PACKAGE).parts[:1]
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, str]]:
    """Every module named by an import statement anywhere in ``tree`` (functions included),
    except inside ``if TYPE_CHECKING:``, as (the module if it exists, else this one): ``from a
    import b`` names ``a.b`` where that is a module, else ``a``."""
    found: list[tuple[str, str]] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending += node.orelse
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            found += [(f"{base}.{alias.name}", base) for alias in node.names]
        pending += ast.iter_child_nodes(node)
    return found


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """``harness`` module -> the ``harness`` modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = set()
        for preferred, fallback in _imports(tree, name, path.name == "__init__.py"):
            resolved = preferred if preferred in modules else fallback
            if resolved in modules and resolved != name:
                edges.add(resolved)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that starts and ends on the same module, or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                finished = path.pop()
                done.add(finished)
                on_path.discard(finished)
                stack.pop()
            elif nxt in on_path:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_graph_sees_function_level_imports() -> None:
    graph = import_graph()
    assert "harness.diff.tensors" in graph["harness.diff.artifacts"]
    assert "harness.verdict" in graph["harness.cli"]


def test_find_cycle_reports_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_backend_module_over_500_lines() -> None:
    """A rung's module that grows past this is doing two things; split it by phase (plan, run,
    collect), as sagemaker_local/ is."""
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in (PACKAGE / "backends").rglob("*.py")
    }
    assert {path: lines for path, lines in sizes.items() if lines > 500} == {}
