"""The package layout shows the architecture: imports go one way and never in a circle.

Layers, bottom to top: ``ftlight.files`` < ``ftlight.data`` < ``ftlight.models`` <
``ftlight.callbacks`` < ``ftlight.finetuner`` < ``ftlight.cli``; ``compat`` sits above all of
ftlight. Every import statement counts, also those inside functions (a lazy import that
closes a circle is still a circle, only a hidden one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ftlight", "compat")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported by ``name`` (with the parent packages Python imports too)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                # importing a.b.c runs a/__init__ and a/b/__init__ first, except the packages
                # that contain the importing module itself (already being imported)
                if candidate in known and not (name + ".").startswith(candidate + "."):
                    found.add(candidate)
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_sees_the_layers(graph: dict[str, set[str]]) -> None:
    # guards against a parser that finds nothing, which would make the tests below vacuous
    assert "ftlight.data.config" in graph["ftlight.models.backbone"]
    assert "ftlight.files" in graph["ftlight.callbacks.guards"]
    assert any(_within(m, "ftlight") for m in graph["compat.layers.base"])


LAYERS = [
    "ftlight.files",
    "ftlight.data",
    "ftlight.models",
    "ftlight.callbacks",
    "ftlight.finetuner",
    "ftlight.cli",
]


@pytest.mark.parametrize("lower", LAYERS[:-1])
def test_lower_layers_never_import_upper_ones(graph: dict[str, set[str]], lower: str) -> None:
    above = LAYERS[LAYERS.index(lower) + 1 :]
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _within(module, lower)
        for target in targets
        if any(_within(target, layer) for layer in above)
    )
    assert not upward, f"{lower} must not import {above}: {upward}"


def test_ftlight_never_imports_compat(graph: dict[str, set[str]]) -> None:
    found = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _within(module, "ftlight")
        for target in targets
        if _within(target, "compat")
    )
    assert not found, f"ftlight must not depend on compat: {found}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles_in_ftlight(graph: dict[str, set[str]]) -> None:
    ftlight_only = {m: {t for t in ts if _within(t, "ftlight")} for m, ts in graph.items()}
    cycles = [c for c in _cycles(ftlight_only) if all(_within(m, "ftlight") for m in c)]
    assert not cycles, f"import cycles: {cycles}"


def test_no_import_cycles_in_compat(graph: dict[str, set[str]]) -> None:
    """compat imports one way too (models -> engine -> feature_cache, models -> saving /
    summary), lazy imports included."""
    compat_only = {m: {t for t in ts if _within(t, "compat")} for m, ts in graph.items()}
    cycles = [c for c in _cycles(compat_only) if all(_within(m, "compat") for m in c)]
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    fake = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert _cycles(fake) == [["p.a", "p.b", "p.c"]]
