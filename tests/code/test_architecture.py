"""The house rules of the import graph, checked on the source text (AST), function bodies included.

* The core library ``src/hfcast`` never imports Kubeflow, Kubernetes, KServe or the outer packages
  (``components``, ``pipelines``, ``serving``): not at module level, not inside a function, not by a
  string given to ``importlib.import_module`` / ``__import__``.
* No first-party module imports another that imports it back (no cycle in the module graph of
  ``hfcast``, ``components``, ``pipelines`` and ``serving``), counting imports inside functions,
  because a lazy import is still a dependency.
* No import climbs the layers (:data:`LAYERS`, lowest first): a module imports its own layer or
  the ones below. The outer packages sit on the core in the order serving < components <
  pipelines; inside the core, a stage never imports what orchestrates it (the models never import
  training, training never the monitor, the monitor never the lifecycle: the lifecycle hands the
  monitor what it calls). A new module must be given a layer here.
* No name starting with ``_`` is imported from another module (a private helper used elsewhere is
  made public, or moved), and a private module (``_common``, ``_modules``) is imported only from
  its own package. Tests are exempt.
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


#: the layers, lowest first: (name, module prefixes). A module belongs to the layer of its longest
#: matching prefix; it may import modules of its own layer and of the layers below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("hfcast", "hfcast.contracts", "hfcast.errors", "hfcast.config", "hfcast.market",
                    "hfcast.storage", "hfcast.provenance", "hfcast.csvout", "hfcast.backtest_ci", "hfcast.distributed",
                    "hfcast.sharding", "hfcast.losses", "hfcast.metrics", "hfcast.plots", "hfcast.journal",
                    "hfcast.integrity", "hfcast.calibration", "hfcast.gate", "hfcast.checkpoint", "hfcast.versioning",
                    "hfcast.testing")),
    ("data", ("hfcast.data",)),
    ("features", ("hfcast.features",)),
    ("models", ("hfcast.models", "hfcast.forecaster", "hfcast.selection", "hfcast.pyfunc", "hfcast.pyfunc_entry")),
    ("registry and runtime", ("hfcast.registry", "hfcast.promotion", "hfcast.runners", "hfcast.quantize",
                              "hfcast.export", "hfcast.feature_store")),
    ("stages", ("hfcast.train", "hfcast.walkforward", "hfcast.evaluate", "hfcast.scoring", "hfcast.predict",
                "hfcast.backtest", "hfcast.explain")),
    ("monitoring", ("hfcast.monitoring",)),
    ("orchestration", ("hfcast.lifecycle", "hfcast.prepare", "hfcast.replay", "hfcast.report")),
    ("command line", ("hfcast.cli", "hfcast.cliopts", "hfcast.__main__")),
    ("serving", ("serving",)),
    ("components", ("components",)),
    ("pipelines", ("pipelines",)),
]


def _layer(module: str) -> int | None:
    best, found = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, found = len(p), i
    return found


def _climbs(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for m, targets in sorted(graph.items()):
        for t in sorted(targets):
            lm, lt = _layer(m), _layer(t)
            if lm is not None and lt is not None and lt > lm:
                out.append(f"{m} ({LAYERS[lm][0]}) imports {t} ({LAYERS[lt][0]})")
    return out


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in _graph() if _layer(m) is None)
    assert not missing, f"give these modules a layer in LAYERS (tests/code/test_architecture.py): {missing}"


def test_the_layer_check_finds_a_planted_climb() -> None:
    assert _climbs({"hfcast.models.lstm": {"hfcast.train"}, "hfcast.lifecycle": {"hfcast.monitoring.drift"}}) == \
        ["hfcast.models.lstm (models) imports hfcast.train (stages)"]
    assert _climbs({"components.trigger_training": {"pipelines.starters"}}) == \
        ["components.trigger_training (components) imports pipelines.starters (pipelines)"]
    assert _climbs({"hfcast.monitoring.retraining": {"hfcast.lifecycle"}})


def test_no_import_climbs_the_layers() -> None:
    climbs = _climbs(_graph())
    assert not climbs, "imports that climb the layers (pass what is needed in, or move the code down):\n" + \
        "\n".join(climbs)


def _private_imports(path: Path) -> list[str]:
    """``from X import _name`` (X first-party, another module), ``X._name`` on an imported first-party
    module, and a private module imported from outside its package."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    first = tuple(PACKAGE_ROOTS)
    out = []
    tree = ast.parse(path.read_text(), filename=str(path))
    modules = {}
    for line, module, names in _imports(path):
        if module.split(".")[0] not in first:
            continue
        parts = module.split(".")
        for i, part in enumerate(parts):
            if part.startswith("_") and not part.startswith("__"):
                owner = ".".join(parts[:i])
                if not (package == owner or package.startswith(owner + ".")):
                    out.append(f"{path.relative_to(ROOT)}:{line} imports the private module {module} from outside {owner}")
        for n in names:
            if n.startswith("_") and not n.startswith("__") and not (package == module or package.startswith(module + ".")):
                out.append(f"{path.relative_to(ROOT)}:{line} imports the private name {module}.{n}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in first:
                    modules[a.asname or a.name.split(".")[0]] = a.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in first:
            for a in node.names:
                modules[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            out.append(f"{path.relative_to(ROOT)}:{node.lineno} uses the private name {modules[node.value.id]}.{node.attr}")
    return out


def test_the_private_name_check_finds_planted_ones(tmp_path) -> None:
    planted = CORE / "_planted_private_check.py"
    planted.write_text("from hfcast.calibration import _cluster_ids\nfrom hfcast.models._modules import JointHead\n"
                       "from hfcast import storage\n\n\ndef f():\n    return storage._secret\n")
    try:
        found = _private_imports(planted)
    finally:
        planted.unlink()
    assert len(found) == 3 and "hfcast.calibration._cluster_ids" in found[0] and "private module" in found[1]


def test_no_private_names_across_modules() -> None:
    offenders = [o for p in _first_party_files() for o in _private_imports(p)]
    assert not offenders, "private names used across modules (make them public or move them):\n" + "\n".join(offenders)
