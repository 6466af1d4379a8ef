"""The package's imports run down (DESIGN.md "Layout"): cli -> compat -> judge/training ->
steering -> analysis -> hub -> extraction -> store -> engines -> the bottom modules, and no
two modules import each other, even through a chain or under TYPE_CHECKING. Read from the
source, so a function-level import counts as much as a top-level one."""

from __future__ import annotations

import ast
from pathlib import Path

import pvrs

PACKAGE = Path(pvrs.__file__).parent

# Higher imports lower. Peers share a floor and may not import each other.
FLOORS = {
    "engines": 1,
    "store": 2,
    "extraction": 3,
    "hub": 4,
    "analysis": 5,
    "steering": 6,
    "judge": 7,
    "training": 7,
    "compat": 8,
    "cli": 9,
}
# Modules every floor may use: errors, paths, defaults, the lazy-export helper, JSON input
# reading and the compiled core.
BOTTOM = 0
TOP = 10  # the package's own __init__ / __main__, which re-export everything


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pvrs"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if not module.startswith("pvrs"):
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in MODULES or alias.name == "_core" else module)
    return {m for m in found if m in MODULES or m == "pvrs._core"}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _floor(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return TOP
    return FLOORS.get(parts[1], BOTTOM)


def _above(dep: str, module: str) -> bool:
    """Whether `module` importing `dep` points up or sideways (to a peer's floor). The bottom
    modules may use each other; the cycle test keeps them apart."""
    if _floor(dep) == _floor(module):
        return _floor(dep) != BOTTOM and module.split(".")[1] != dep.split(".")[1]
    return _floor(dep) > _floor(module)


def test_every_import_points_down() -> None:
    up = sorted(
        f"{module} imports {dep}"
        for module, deps in GRAPH.items()
        for dep in deps
        if _floor(module) != TOP and _above(dep, module)
    )
    assert not up, "imports that do not point down:\n" + "\n".join(up)


def test_no_module_imports_itself_through_others() -> None:
    # Tarjan's strongly connected components over the module graph.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not cycles, "modules that import each other:\n" + "\n".join(map(str, cycles))


def test_the_engines_read_without_extraction() -> None:
    """The issue that set this rule: engines/ imported extraction's request and result types."""
    for module, deps in GRAPH.items():
        if module.startswith("pvrs.engines"):
            assert not [d for d in deps if d.startswith("pvrs.extraction")], module
