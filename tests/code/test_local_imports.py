"""Imports live at the top of a module; a function imports inside its body only what defers a heavy
dependency, so that a dependency is visible where a reader looks for it.

A function-level import in ``src/hfcast`` is justified when the module it imports would load a
package of :data:`HEAVY` that the importing module does not load already at its top (computed over
the module-level imports of the whole core, parent packages included, ``TYPE_CHECKING`` blocks
excluded): ``torch`` kept out of ``hfcast --help``, ``mlflow`` out of the monitor's pure decision,
``evidently`` until a report is made. Any other function-level import (the standard library, a
light core module, a package the module imports anyway) is a hidden dependency and fails here.

:data:`PENDING` counts the ones a module may keep while other work in flight rewrites it (none
now); it may only go down.
"""

from __future__ import annotations

import ast
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

#: packages whose import costs enough (time, memory, optional installs) to defer until used
HEAVY = frozenset({
    "torch", "mlflow", "evidently", "feast", "onnx", "onnxruntime", "onnxscript", "tensorrt", "captum", "matplotlib",
    "pandas", "numpy", "scipy", "sklearn", "pyarrow", "polars", "fsspec", "s3fs", "boto3", "botocore", "dvc",
    "empyrical", "exchange_calendars", "pandas_market_calendars", "safetensors", "ibis", "httpx", "rich", "duckdb",
    "redis", "filelock", "psutil", "yaml", "typer", "click", "tritonclient", "grpc", "typeguard",
})

#: unjustified function-level imports left in modules that other changes in flight are rewriting
PENDING: dict[str, int] = {}


def _path(module: str) -> Path | None:
    p = SRC / Path(*module.split("."))
    if (p / "__init__.py").exists():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").exists() else None


@lru_cache(maxsize=None)
def _module_level_imports(path: Path) -> tuple[str, ...]:
    """Modules imported when ``path`` runs (not inside functions, not under ``if TYPE_CHECKING``)."""
    out: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for n in body:
            if isinstance(n, ast.Import):
                out.extend(a.name for a in n.names)
            elif isinstance(n, ast.ImportFrom) and not n.level:
                out.append(n.module or "")
                out.extend(f"{n.module}.{a.name}" for a in n.names if _path(f"{n.module}.{a.name}"))
            elif isinstance(n, ast.If) and "TYPE_CHECKING" not in ast.unparse(n.test):
                visit(n.body + n.orelse)
            elif isinstance(n, ast.Try):
                visit(n.body + n.orelse + n.finalbody + [s for h in n.handlers for s in h.body])
    visit(ast.parse(path.read_text()).body)
    return tuple(out)


@lru_cache(maxsize=None)
def heavy_loaded(module: str) -> frozenset[str]:
    """The :data:`HEAVY` packages that ``import module`` loads (through the core's module-level imports)."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        if parts[0] == "hfcast":
            todo += [".".join(parts[:i]) for i in range(1, len(parts))]
            p = _path(m)
            if p is not None:
                todo += list(_module_level_imports(p))
    return frozenset(m.split(".")[0] for m in seen) & HEAVY


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def hidden_imports(path: Path, module: str | None = None) -> list[str]:
    """The function-level imports of ``path`` that defer nothing heavy."""
    me = module or _module(path)
    mine = heavy_loaded(me)
    out = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for n in ast.walk(fn):
            if isinstance(n, ast.Import):
                mods = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and not n.level:
                subs = [f"{n.module}.{a.name}" for a in n.names if _path(f"{n.module}.{a.name}")]
                mods = [subs[0] if subs and len(subs) == len(n.names) else n.module or ""]
            else:
                continue
            if not any(heavy_loaded(m) - mine for m in mods):
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
                out.append(f"{where}:{n.lineno} imports {', '.join(mods)} inside {fn.name}()")
    return sorted(set(out))


def test_a_planted_hidden_import_is_found_and_a_deferred_heavy_one_is_not(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import json\n\n\ndef f():\n    import os\n    from hfcast.contracts import LOOKBACK\n"
                       "    import torch\n    from hfcast.models import build_model\n    return os, LOOKBACK, torch, build_model\n")
    found = hidden_imports(planted, module="hfcast._planted")
    assert [f.split(" imports ")[1] for f in found] == ["os inside f()", "hfcast.contracts inside f()"]
    assert "torch" in heavy_loaded("hfcast.models") and "torch" not in heavy_loaded("hfcast.config")


def test_no_new_function_level_imports_in_the_core():
    assert sys.version_info >= (3, 11)
    counts, offenders = {}, []
    for path in sorted(SRC.rglob("*.py")):
        found = hidden_imports(path)
        rel = str(path.relative_to(ROOT))
        counts[rel] = len(found)
        if len(found) > PENDING.get(rel, 0):
            offenders += found
    assert not offenders, ("function-level imports that defer nothing heavy (move them to the top of the "
                           "module; a heavy package is listed in HEAVY):\n" + "\n".join(offenders))
    lowered = {f: counts.get(f, 0) for f, n in PENDING.items() if counts.get(f, 0) < n}
    assert not lowered, f"fewer function-level imports than PENDING allows: lower it to {lowered}"
