"""The layout is the pipeline (docs/architecture.md): checked by walking src/semsim with ``ast``.

Every import counts, also those inside functions: no cycle between modules, none between stage packages,
each stage package imports only the stages below it, and the top level holds at most four modules.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "semsim"

# What each stage package may import (besides itself). `errors` and `common` are the base of everything;
# `annotation` sits on `data` only; `cli` and the top-level `demo` may use every stage.
BASE = {"errors", "common"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "common": {"errors"},
    "data": BASE,
    "annotation": BASE | {"data"},
    "models": BASE | {"data"},
    "victims": BASE | {"data", "models"},
    "attacks": BASE | {"data", "models", "victims"},
    "learned": BASE | {"data", "models"},
    "metrics": BASE | {"data", "models", "learned"},
    "analysis": BASE | {"data", "models", "learned", "metrics"},
    "grid": BASE | {"data", "models", "victims", "attacks", "learned", "metrics", "analysis"},
    "demo": BASE | {"data", "models", "victims", "attacks", "learned", "metrics", "analysis", "grid"},
    "cli": BASE | {"data", "models", "victims", "attacks", "learned", "metrics", "analysis", "grid",
                   "annotation", "demo"},
    "__main__": {"cli"},
}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The semsim modules ``name`` imports, anywhere in its file (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import semsim.metrics.pixel as p` -> that module
                target = target.rpartition(".")[0]
            if target.startswith("semsim") and target != name:
                found.add(target)
    return found


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "semsim"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), i.e. the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_walk_sees_imports_inside_functions(graph: dict[str, set[str]]) -> None:
    # cli/score.py imports the scoring workflow only inside the command: the walk must still see it
    assert "semsim.metrics.scoring" in graph["semsim.cli.score"]
    assert "semsim.common.io" in graph["semsim.grid.tasks"]


def test_no_import_cycle_between_modules(graph: dict[str, set[str]]) -> None:
    assert _cycles(graph) == []


def test_stage_packages_import_only_the_stages_below(graph: dict[str, set[str]]) -> None:
    stages: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph.items():
        for target in targets:
            a, b = _stage(module), _stage(target)
            if a != b and b != "semsim":  # the package root only holds __version__
                stages[a].add(b)
    assert _cycles(stages) == []
    wrong = {a: sorted(bs - ALLOWED[a]) for a, bs in stages.items() if bs - ALLOWED.get(a, set())}
    assert wrong == {}, f"stage imports against docs/architecture.md: {wrong}"
    assert set(stages) <= set(ALLOWED), f"a new stage package needs its place in ALLOWED: {set(stages) - set(ALLOWED)}"


def test_package_root_is_small_and_imports_nothing(graph: dict[str, set[str]]) -> None:
    top = sorted(p.stem for p in ROOT.glob("*.py"))
    assert len(top) <= 4, top
    assert graph["semsim"] == set()
