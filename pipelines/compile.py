"""Compile every pipeline to ``pipelines/compiled/*.yaml`` (uploadable in the Kubeflow UI).

``python -m pipelines.compile [NAME_PREFIX ...]`` (``make compile-pipelines``); a test fails when a
committed file differs from what this writes, so the YAML never drifts from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

from pipelines.names import COMPILED, PIPELINES


def compile_to(fn: Any, path: Path) -> Path:
    """Compile one pipeline function to ``path``."""
    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=fn, package_path=str(path))
    return path


def compile_all(out_dir: Path = COMPILED, only: Iterable[str] | None = None) -> list[Path]:
    """Compile every pipeline of :data:`pipelines.names.PIPELINES` (or those whose name starts with
    one of ``only``, e.g. ``training`` for both training variants)."""
    chosen = {n: p for n, p in PIPELINES.items() if not only or any(n.startswith(o) for o in only)}
    return [compile_to(p.load(), Path(out_dir) / p.compiled) for _, p in sorted(chosen.items())]


if __name__ == "__main__":
    for out in compile_all(only=sys.argv[1:] or None):
        print(out)
