"""The package's modules import one another in one direction only (issue 12: counter and
replay imported each other, and so did the service's app and routes, one of them from inside a
function to hide it). Read from the source: every import, at any depth, but those only for type
checkers."""

from __future__ import annotations

import ast
from pathlib import Path

import anomaly_counter

ROOT = Path(anomaly_counter.__file__).parent
PACKAGE = "anomaly_counter"


def _module_of(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_of(p): p for p in ROOT.rglob("*.py")}


def _type_checking_only(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                name = f"{base}.{alias.name}"
                if name in MODULES:
                    found.add(name)
                elif base in MODULES:
                    found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(module)
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = {module: _imports(module, path) for module, path in MODULES.items()}
    assert graph["anomaly_counter.service.app"] >= {"anomaly_counter.service.routes"}
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)
