"""The package's shape, checked from its source: no import cycle among ``harness`` modules.

A cycle makes import order matter (a module half-initialised when its peer reads it) and hides
behind function-level imports, so those count too; only ``if TYPE_CHECKING:`` blocks, which
never run, are left out. ``harness/probe/`` is standalone (it runs inside the job's own
interpreter) and is not part of the graph.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

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
    assert "harness.judge.tensors" in graph["harness.judge.artifacts"]
    assert "harness.ladder.bisect" in graph["harness.cli.job_commands"]


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


#: The flow, lowest first, a folder each: a module imports only from its own layer and the
#: layers below it. spec: what a job is and receives; record: what a run wrote; runtime: what the
#: rungs run on (processes, sandboxes, images, S3, installs); rungs; judge: the checks and the
#: verdict; report; drivers: what users call (the ladder and bisect, the CLI, the plugins).
LAYERS: dict[str, tuple[str, ...]] = {
    "base": ("harness._version", "harness.errors"),
    "spec": ("harness.spec",),
    "record": ("harness.record",),
    "runtime": ("harness.runtime",),
    "rungs": ("harness.backends",),
    "judge": ("harness.judge",),
    "report": ("harness.report",),
    "drivers": (
        "harness",
        "harness.__main__",
        "harness.ladder",
        "harness.testing",
        "harness.cli",
        "harness.pytest_plugin",
        "harness.airflow",
    ),
}
#: The package's own top-level modules: its version, its errors, the CLI's ``python -m`` entry,
#: the public test helpers and the pytest plugin (its name is what users put in ``conftest.py``).
_PACKAGE_API = frozenset(
    ("harness._version", "harness.errors", "harness.__main__", "harness.testing", "harness.pytest_plugin")
)
#: The rungs' own modules; the rest of harness/backends/ is what rungs share (base, containers,
#: hosts, the toolkit, the SDK's helpers), which names no rung.
RUNG_MODULES = (
    "harness.backends.local",
    "harness.backends.docker",
    "harness.backends.sagemaker",
    "harness.backends.sagemaker_local",
)


def _layer(module: str) -> str:
    """The layer of ``module``: the one naming it or the longest package above it."""
    best = max(
        ((layer, prefix) for layer, prefixes in LAYERS.items() for prefix in prefixes if _within(module, prefix)),
        key=lambda found: len(found[1]),
        default=None,
    )
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def _within(module: str, package: str) -> bool:
    return module == package or (package != "harness" and module.startswith(package + "."))


def _rung_of(module: str) -> str | None:
    return next((rung for rung in RUNG_MODULES if _within(module, rung)), None)


def test_the_loose_modules_are_the_packages_own() -> None:
    """Everything else lives in the folder of its layer, so the tree reads as the flow."""
    loose = sorted(name for name, path in _modules().items() if path.parent == PACKAGE and path.stem != "__init__")
    assert [name for name in loose if name not in _PACKAGE_API] == []


def test_no_two_modules_share_a_name() -> None:
    """A name says what a module is wherever it is imported (``archives`` packs what a run
    wrote; ``judge.artifacts`` compares them)."""
    names = Counter(module.rsplit(".", 1)[-1] for module in import_graph())
    assert sorted(name for name, count in names.items() if count > 1) == []


def test_every_import_runs_down_the_flow() -> None:
    order = list(LAYERS)
    upward = sorted(
        f"{module} ({_layer(module)}) -> {target} ({_layer(target)})"
        for module, targets in import_graph().items()
        for target in targets
        if order.index(_layer(target)) > order.index(_layer(module))
    )
    assert upward == []


def test_no_module_reaches_into_a_rung_but_the_rung_itself() -> None:
    """Rungs are reached through the registry (harness.backends): no rung imports another, what
    rungs share imports none, and the rest of the harness imports none."""
    reaches = sorted(
        (module, target)
        for module, targets in import_graph().items()
        for target in targets
        if _rung_of(target) is not None and _rung_of(module) != _rung_of(target)
    )
    assert reaches == []


@pytest.mark.parametrize(
    ("graph", "upward"),
    [
        ({"harness.record.run_record": {"harness.judge.verdict"}}, True),  # the record would know its judge
        ({"harness.judge.verdict": {"harness.record.run_record"}}, False),
        ({"harness.backends.docker": {"harness.judge.logs"}}, True),
    ],
)
def test_the_layer_check_sees_an_arrow_back_up(graph: dict[str, set[str]], upward: bool) -> None:
    order = list(LAYERS)
    found = [(m, t) for m, ts in graph.items() for t in ts if order.index(_layer(t)) > order.index(_layer(m))]
    assert bool(found) == upward


#: The flow every workload shares (docs/architecture.md, "A workload"): it takes a job as a
#: ``harness.spec.workload.Workload``, never as training's ``JobSpec``.
GENERIC_FLOW = (
    "harness.spec.workload",
    "harness.backends.base",
    "harness.record.run_record",
    "harness.record.models",
    "harness.judge.protocol",
    "harness.judge.verdict",
)


def test_the_flow_every_workload_shares_imports_no_training_spec() -> None:
    graph = import_graph()
    assert {module: "harness.spec.job" for module in GENERIC_FLOW if "harness.spec.job" in graph[module]} == {}


def test_tests_import_their_helpers_by_their_own_names() -> None:
    """``fake_records``, not ``tests.fake_records``: an installed package that ships a top-level
    ``tests`` (CI installs several) shadows this directory as a package."""
    here = Path(__file__).resolve().parent
    assert [
        p.name for p in sorted(here.glob("*.py")) if re.search(r"^(from|import) tests\.", p.read_text(), re.M)
    ] == []
