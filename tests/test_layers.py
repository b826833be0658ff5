"""The package's layers: every import (also those inside functions) goes to the same or a lower
floor, never sideways into another package of the same floor, and the modules import no cycle.

Floors: 0 shared helpers, 1 the loss library, 2 data / model / metrics, 3 one training run and
the report, 4 the Ray platform, 5 the ``python -m`` entry points at the top of the package.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "hytver_dist"

FLOORS = {
    "hytver_dist": 0, "hytver_dist._extras": 0, "hytver_dist.files": 0,
    "hytver_dist.ops": 1, "hytver_dist._C": 1, "hytver_dist.losses": 1,
    "hytver_dist.data": 2, "hytver_dist.model": 2, "hytver_dist.metrics": 2,
    "hytver_dist.run": 3, "hytver_dist.report": 3,
    "hytver_dist.sweep": 4,
    "hytver_dist.train": 5, "hytver_dist.evaluate": 5, "hytver_dist.synth": 5,
    "hytver_dist.predict": 5,
}
# What the loss library (floor 1) may import from outside the package.
LIBRARY_DEPENDENCIES = {"torch", "numpy"}


# The fused op's Python side belongs to the loss library.
SAME_UNIT = {"hytver_dist.ops": "hytver_dist.losses", "hytver_dist._C": "hytver_dist.losses"}


def module_name(path: Path, root: Path = PKG) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in root.rglob("*.py")}


MODULES = find_modules(PKG)


def unit(module: str) -> str:
    """The layer unit a module belongs to: the longest FLOORS key that prefixes it."""
    best = max((k for k in FLOORS if module == k or module.startswith(k + ".")), key=len)
    return SAME_UNIT.get(best, best)


def imports(module: str, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module, line) of every import in ``module``, relative ones resolved; ``from
    X import name`` counts as an import of ``X.name`` when that is a module."""
    path = modules[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            out += [(s, node.lineno) for s in subs] or [(target, node.lineno)]
    return out


def violations(module: str, modules: dict[str, Path]) -> list[str]:
    """Imports of ``module`` that go up a floor or sideways into a sibling package."""
    own = unit(module)
    floor = FLOORS[own]
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = []
    for target, line in imports(module, modules):
        top = target.split(".")[0]
        if top != "hytver_dist":
            if floor == 1 and top not in LIBRARY_DEPENDENCIES | stdlib:
                bad.append(f"line {line}: {target} (the loss library needs torch and numpy only)")
            continue
        other = unit(target)
        if FLOORS[other] > floor:
            bad.append(f"line {line}: {target} is on floor {FLOORS[other]}, above {floor}")
        elif FLOORS[other] == floor and other != own and floor != 0:
            bad.append(f"line {line}: {target} is a sibling package on floor {floor}")
    return bad


def find_cycle(modules: dict[str, Path]) -> list[str] | None:
    """One import cycle among ``modules`` (a package's ``__init__`` re-exporting its own
    submodules does not count), or None."""
    graph = {}
    for m, path in modules.items():
        targets = {t for t, _ in imports(m, modules) if t in modules and t != m}
        if path.name == "__init__.py":
            targets = {t for t in targets if not t.startswith(m + ".")}
        graph[m] = targets
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_every_module_has_a_floor():
    assert [m for m in MODULES if not any(m == k or m.startswith(k + ".") for k in FLOORS)] \
        == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down(module):
    bad = violations(module, MODULES)
    assert not bad, f"{module}:\n" + "\n".join(bad)


def test_no_import_cycle():
    cycle = find_cycle(MODULES)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_catch_an_upward_import_a_sibling_and_a_cycle(tmp_path):
    root = tmp_path / "hytver_dist"
    for pkg in ("losses", "sweep", "run", "report"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "sweep" / "x.py").write_text("def f():\n    from ..losses import y\n")
    (root / "losses" / "y.py").write_text("import ray\nfrom ..sweep import x\n")
    (root / "run" / "z.py").write_text("from hytver_dist.report import w\n")
    (root / "report" / "w.py").write_text("")
    modules = find_modules(root)
    assert violations("hytver_dist.losses.y", modules) == [
        "line 1: ray (the loss library needs torch and numpy only)",
        "line 2: hytver_dist.sweep.x is on floor 4, above 1"]
    assert violations("hytver_dist.run.z", modules) == [
        "line 1: hytver_dist.report.w is a sibling package on floor 3"]
    assert violations("hytver_dist.sweep.x", modules) == []
    assert find_cycle(modules) == ["hytver_dist.losses.y", "hytver_dist.sweep.x",
                                   "hytver_dist.losses.y"]
