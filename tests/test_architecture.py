"""The layering of docs/architecture.md, checked on the source: which package may import which, and no cycles."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import lateral

PACKAGE = Path(lateral.__file__).parent

# package (first component under lateral/) -> the packages it may import; docs/architecture.md explains the order
BELOW_ENGINE = {
    "errors",
    "heap",
    "textfile",
    "config",
    "checkpoint",
    "registry",
    "data",
    "models",
    "inference",
    "convert",
}
ALLOWED = {
    "errors": set(),
    "heap": set(),
    "textfile": {"errors"},
    "config": {"errors", "textfile"},
    "checkpoint": {"errors"},
    "registry": {"config", "checkpoint", "errors"},
    "data": {"registry", "config", "errors", "textfile"},
    "models": {"data", "registry", "config", "checkpoint", "errors"},
    "inference": {"models", "errors"},
    "convert": {"models", "registry", "config", "checkpoint", "errors"},
    "engine": BELOW_ENGINE,
    "cli": BELOW_ENGINE | {"engine"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lateral_imports(path: Path) -> set[str]:
    """Every ``lateral.*`` module ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("lateral"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lateral"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in lateral_imports(path):
            while target not in modules and "." in target:  # 'lateral.config.ConfigError' -> 'lateral.config'
                target = target.rsplit(".", 1)[0]
            inside_own_package = name.startswith(target + ".") and target != "lateral"
            if target in modules and target != name and not inside_own_package:
                graph[name].add(target)
    return graph


def test_every_package_imports_only_the_layers_below_it():
    offenders = []
    for module, targets in import_graph().items():
        source = package_of(module)
        if source in ("", "__main__"):  # lateral/__init__ resolves names lazily; __main__ runs the CLI
            continue
        assert source in ALLOWED, f"{module}: package '{source}' is not in docs/architecture.md's table"
        for target in targets:
            wanted = package_of(target)
            if wanted != source and wanted not in ALLOWED[source]:
                offenders.append(f"{module} imports {target}")
    assert offenders == []


def test_there_are_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target] if target in path else [module, target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
