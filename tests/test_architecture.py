"""The package's layering (docs/architecture.md): no import cycle and no upward import.

Every import statement of every module under ``src/nmrn`` counts, those inside functions too
(a late import is how a cycle hides); only imports under ``if TYPE_CHECKING:`` are left out,
since they never run. A module may import modules of a lower layer and of its own layer, as
long as the module graph stays acyclic; the package root (``nmrn/__init__.py``) is the facade
and nothing inside the package may import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A prefix covers a package and everything in it.
LAYERS: list[tuple[str, ...]] = [
    ("nmrn._version", "nmrn.errors"),
    ("nmrn.config", "nmrn.argtypes"),
    ("nmrn.io", "nmrn.data", "nmrn.model"),
    ("nmrn.sampling",),
    ("nmrn.training", "nmrn.baselines"),
    ("nmrn.models",),
    ("nmrn.evaluation",),
    ("nmrn.serving", "nmrn.streams"),
    ("nmrn.cli", "nmrn.__main__"),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "nmrn").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer_of(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _target(name: str) -> str:
    """The module an imported dotted name refers to (``nmrn.x.y`` may be a name in ``nmrn.x``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(module: str) -> set[str]:
    """The nmrn modules that ``module`` imports at run time."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] if base else []
        else:
            for child in ast.iter_child_nodes(node):
                visit(child)
            return
        for name in names:
            if name == "nmrn" or name.startswith("nmrn."):
                found.add(_target(name))

    visit(tree)
    found.discard(module)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        if module != "nmrn":
            layer_of(module)


def test_nothing_imports_the_package_root() -> None:
    offenders = sorted(m for m, deps in GRAPH.items() if "nmrn" in deps)
    assert not offenders, f"import the module that defines the name, not nmrn: {offenders}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "nmrn"))
def test_no_upward_import(module: str) -> None:
    upward = sorted(d for d in GRAPH[module] if d != "nmrn" and layer_of(d) > layer_of(module))
    assert not upward, (
        f"{module} (layer {layer_of(module)}) imports higher layers: "
        + ", ".join(f"{d} (layer {layer_of(d)})" for d in upward)
    )


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_checker_sees_late_imports() -> None:
    # the walker itself: a function-level import is an edge like any other
    assert "nmrn.training.contract" in GRAPH["nmrn.models"]
    assert "nmrn.serving.commands" in GRAPH["nmrn.cli"]  # imported inside a function
