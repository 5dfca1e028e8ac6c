"""The package's import graph, read statically from every module's ``import`` statements.

Edges are counted in two kinds: *module level* (run when the module is imported) and *function
level* (an import inside a function, run when it is called). Imports under ``if TYPE_CHECKING:``
never run and are not edges. What is forbidden:

- a cycle among module-level imports (an import-order bug waiting for the next edit);
- a cycle in the graph of both kinds together: moving an import into a function hides a cycle
  from the interpreter, not from a reader, who still climbs back up to follow one request;
- a cycle among the stage packages (``api``, ``rows``, ``reuse``, ``submit``, ``wait``, ``gather``):
  a later stage may read an earlier one's records, never the other way round;
- a stage package importing the
  Airflow-facing shell (``operators``, ``sensors``, ``triggers``, ``plugins``, ``decorators``), and
  a trigger importing an operator or a sensor;
- an SDK type (``anthropic.types...``, or any name of ``anthropic`` but the two clients the hook
  builds) read outside ``airflow_batch/api/`` and the emulator (a server of its own, which checks
  itself against the SDK's types on purpose).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import airflow_batch

PACKAGE = Path(airflow_batch.__file__).parent
STAGES = ("api", "rows", "submit", "wait", "gather", "reuse")
SHELL = ("operators", "sensors", "triggers", "plugins", "decorators")
SDK_CLIENTS = {"Anthropic", "AsyncAnthropic"}


def _name(path: Path) -> str:
    parts = ["airflow_batch", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(path): path for path in PACKAGE.rglob("*.py")}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, level: str = "module") -> Iterator[tuple[str, ast.Import | ast.ImportFrom]]:
    """Yield (level, import statement) of every import that runs, with the level it runs at."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), level)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield level, node
        inner = "function" if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else level
        yield from _imports(node, inner)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """Return the package's modules an import statement loads (a ``from`` of a submodule: it)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in MODULES}
    base = node.module or ""
    if node.level:
        package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
    targets = set()
    for alias in node.names:
        if f"{base}.{alias.name}" in MODULES:
            targets.add(f"{base}.{alias.name}")
        elif base in MODULES:
            targets.add(base)
    return targets


def _graph() -> dict[str, dict[str, set[str]]]:
    graph: dict[str, dict[str, set[str]]] = {}
    for module, path in MODULES.items():
        edges: dict[str, set[str]] = {"module": set(), "function": set()}
        for level, node in _imports(ast.parse(path.read_text(), str(path))):
            edges[level] |= _targets(module, node) - {module}
        graph[module] = edges
    return graph


GRAPH = _graph()


def _cycles(levels: tuple[str, ...]) -> list[list[str]]:
    """Return the import cycles among modules through imports of ``levels``."""
    return _components({module: set().union(*(GRAPH[module][level] for level in levels)) for module in GRAPH})


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components of more than one node (Tarjan, iterative)."""
    edges = {node: sorted(targets) for node, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, at = work.pop()
            if at == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if at < len(edges[node]):
                work.append((node, at + 1))
                child = edges[node][at]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def _explain(component: list[str], levels: tuple[str, ...]) -> str:
    members = set(component)
    return "; ".join(
        f"{module} -[{level}]-> {target}"
        for module in component
        for level in levels
        for target in sorted(GRAPH[module][level] & members)
    )


def test_the_graph_is_read_from_the_whole_package() -> None:
    assert len(GRAPH) > 100
    assert "airflow_batch.gather.batch_parts" in GRAPH["airflow_batch.gather.gathering"]["module"]
    assert "airflow_batch.emulator.processing" in GRAPH["airflow_batch.emulator.files"]["module"]
    assert "airflow_batch.rows.contract" not in GRAPH["airflow_batch.gather.tables"]["function"]


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function() -> None:
    GRAPH["airflow_batch.rows.failures"]["function"].add("airflow_batch.rows.gathered")
    try:
        assert any("airflow_batch.rows.failures" in c for c in _cycles(("module", "function")))
        assert not any("airflow_batch.rows.failures" in c for c in _cycles(("module",)))
    finally:
        GRAPH["airflow_batch.rows.failures"]["function"].discard("airflow_batch.rows.gathered")


def test_no_import_cycle_among_module_level_imports() -> None:
    cycles = _cycles(("module",))
    assert not cycles, "\n".join(_explain(c, ("module",)) for c in cycles)


def test_no_import_cycle_even_through_imports_inside_functions() -> None:
    cycles = _cycles(("module", "function"))
    assert not cycles, "\n".join(_explain(c, ("module", "function")) for c in cycles)


def test_no_cycle_among_the_stage_packages() -> None:
    packages: dict[str, set[str]] = {package: set() for package in STAGES}
    for module, edges in GRAPH.items():
        if _package(module) in STAGES:
            packages[_package(module)] |= {
                _package(target)
                for target in edges["module"] | edges["function"]
                if _package(target) in STAGES
            } - {_package(module)}
    assert "rows" in packages["gather"] and "rows" in packages["submit"]
    cycles = _components(packages)
    assert not cycles, cycles


def test_stage_packages_never_import_the_airflow_shell_and_triggers_no_operator() -> None:
    bad = []
    for module, edges in GRAPH.items():
        package = module.split(".")[1] if module.count(".") else ""
        targets = edges["module"] | edges["function"]
        for target in targets:
            target_package = target.split(".")[1] if target.count(".") else ""
            if package in STAGES and target_package in SHELL:
                bad.append(f"{module} -> {target}")
            if package == "triggers" and target_package in ("operators", "sensors"):
                bad.append(f"{module} -> {target}")
    assert not bad, bad


def test_no_sdk_type_is_read_outside_the_api_seam() -> None:
    bad = []
    for module, path in MODULES.items():
        if module.startswith(("airflow_batch.api", "airflow_batch.emulator")):
            continue
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):  # TYPE_CHECKING imports included: an annotation reads a type too
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "anthropic":
                names = {alias.name for alias in node.names}
                if node.module != "anthropic" or names - SDK_CLIENTS:
                    bad.append(f"{module}: from {node.module} import {', '.join(sorted(names))}")
            if isinstance(node, ast.Import):
                bad += [f"{module}: import {a.name}" for a in node.names if a.name.startswith("anthropic.")]
        for word in ("anthropic.types", "MessageBatch"):
            if word in source:
                bad.append(f"{module}: names {word}")
    assert not bad, "\n".join(bad)
