"""The house rules of the import graph, checked on the source text (AST), function bodies included.

* The core library ``src/hfcast`` never imports Kubeflow, Kubernetes, KServe or the outer packages
  (``components``, ``pipelines``, ``serving``): not at module level, not inside a function, not by a
  string given to ``importlib.import_module`` / ``__import__``.
* No first-party module imports another that imports it back (no cycle in the module graph of
  ``hfcast``, ``components``, ``pipelines`` and ``serving``), counting imports inside functions,
  because a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "src" / "hfcast"
FORBIDDEN_IN_CORE = {"kfp", "kubernetes", "kserve", "components", "pipelines", "serving"}
PACKAGE_ROOTS = {"hfcast": ROOT / "src", "components": ROOT, "pipelines": ROOT, "serving": ROOT}


def _module_name(path: Path) -> str:
    for pkg, base in PACKAGE_ROOTS.items():
        try:
            rel = path.relative_to(base)
        except ValueError:
            continue
        if rel.parts[0] != pkg:
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        return ".".join(parts)
    raise ValueError(f"{path} is not in a first-party package")


def _first_party_files() -> list[Path]:
    files = []
    for pkg, base in PACKAGE_ROOTS.items():
        files += [p for p in (base / pkg).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(files)


def _imports(path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """Every import in ``path``: (line, absolute module, imported names) — relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Call):  # importlib.import_module("x") / __import__("x")
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                out.append((node.lineno, node.args[0].value, ()))
    return out


def test_core_never_imports_the_platform() -> None:
    offenders = []
    files = [p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts]
    assert len(files) > 20, "the core library was not found where expected"
    for path in files:
        for line, module, _ in _imports(path):
            if module.split(".")[0] in FORBIDDEN_IN_CORE:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, "the core must not import Kubeflow/Kubernetes/KServe or the outer packages:\n" + \
        "\n".join(offenders)


def _graph() -> dict[str, set[str]]:
    files = _first_party_files()
    modules = {_module_name(p) for p in files}
    graph: dict[str, set[str]] = defaultdict(set)
    for path in files:
        me = _module_name(path)
        graph[me]
        for _, module, names in _imports(path):
            targets = {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
            if len(targets) < len(names) or not names:  # some names are attributes of ``module`` itself
                while module and module not in modules:
                    module = module.rpartition(".")[0]
                if module:
                    targets.add(module)
            graph[me] |= {t for t in targets if t != me}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = _graph()
    assert "hfcast.cli" in graph and any(m.startswith("pipelines") for m in graph)
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("outer", ["components", "pipelines", "serving"])
def test_outer_packages_import_the_core_not_the_reverse(outer: str) -> None:
    graph = _graph()
    core_to_outer = [(m, t) for m, ts in graph.items() if m.startswith("hfcast") for t in ts
                     if t.split(".")[0] == outer]
    assert not core_to_outer
