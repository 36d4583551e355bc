"""The package's structure, read from its source with ``ast``: no import circle, one place that
saves and restores the user's model state, and ``compare_layers`` as a composition of public names."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import captum_elfa

ROOT = Path(captum_elfa.__file__).resolve().parent


def _modules() -> Dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = ("captum_elfa",) + p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = _modules()


def _imported_modules(name: str, path: Path) -> Set[str]:
    """The captum_elfa modules ``name`` imports anywhere (module level, functions, TYPE_CHECKING).

    ``from pkg import sub`` is an edge to ``pkg.sub`` when ``sub`` is a module, else to ``pkg``."""
    is_pkg = path.name == "__init__.py"
    deps: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - (node.level - 1) - (0 if is_pkg else 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            deps.update(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names)
    return {d for d in deps if d in MODULES and d != name}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_has_no_circle() -> None:
    graph = {name: _imported_modules(name, path) for name, path in MODULES.items()}
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100  # the graph was read
    assert "captum_elfa.attr.analyzers.base" in graph["captum_elfa.attr.analyzers.cam"]
    assert _cycles(graph) == []


def _calls(path: Path, attrs: Set[str]) -> List[str]:
    """``obj.attr(...)`` calls and ``obj.attr = ...`` assignments for ``attr`` in ``attrs``."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in attrs:
            hits.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.func.attr}()")
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and t.attr in attrs:
                    hits.append(f"{path.relative_to(ROOT)}:{node.lineno} .{t.attr} =")
    return hits


# where the package changes a training flag or requires_grad outside the guard, and why that is
# not the user's model: the inputs' gradient leaf, a model the demo trains itself, a wrapper
# module that mirrors the flag of the model it wraps
_NOT_THE_USERS_MODEL = {
    "attr/analyzers/_checks.py": {".requires_grad_()"},  # inputs.detach().requires_grad_()
    "_captum_compat.py": {".requires_grad_()"},  # NoiseTunnel's noisy copies of the inputs
    "demo.py": {".train()", ".eval()"},  # trains the demo's own CNN
    "insights.py": {".train()"},  # GrayscaleToRGB copies the wrapped model's flag
    "cli/_commands.py": {".eval()"},  # the model the CLI loaded itself
}


def test_model_state_is_saved_and_restored_in_one_place() -> None:
    attrs = {"train", "eval", "requires_grad_", "requires_grad", "training"}
    outside = []
    for path in sorted(MODULES.values()):
        rel = str(path.relative_to(ROOT))
        if rel == "_capture/guard.py":
            assert len(_calls(path, attrs)) >= 4  # eval, train(flag), requires_grad_ both ways
            continue
        allowed = _NOT_THE_USERS_MODEL.get(rel, set())
        outside += [h for h in _calls(path, attrs) if h.split(" ", 1)[1] not in allowed]
    assert outside == []


def test_compare_layers_imports_no_private_name() -> None:
    path = MODULES["captum_elfa.attr.compare_layers"]
    tree = ast.parse(path.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    assert "LayerFactorAnalysis" in names and "pcace_fit" in names and "permutation_null" in names
    assert [n for n in names if n.startswith("_")] == []
    # and it sets no fitted (trailing-underscore) attribute of another object
    sets = [
        t.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Attribute) and t.attr.endswith("_") and not t.attr.startswith("__")
    ]
    assert sets == []
