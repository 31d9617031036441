"""Compile every pipeline to ``pipelines/compiled/*.yaml`` (uploadable in the Kubeflow UI).

``python -m pipelines.compile`` (``make compile-pipelines``); a test fails when a committed file
differs from what this writes, so the YAML never drifts from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

COMPILED = Path(__file__).resolve().parent / "compiled"


def targets() -> dict[str, Any]:
    """File name -> pipeline function."""
    from pipelines.batch import batch_pipeline
    from pipelines.monitoring import monitoring_pipeline
    from pipelines.training import training_cpu_pipeline, training_pipeline

    return {"training.yaml": training_pipeline, "training_cpu.yaml": training_cpu_pipeline,
            "batch_inference.yaml": batch_pipeline, "monitoring.yaml": monitoring_pipeline}


def compile_to(fn: Any, path: Path) -> Path:
    """Compile one pipeline function to ``path``."""
    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=fn, package_path=str(path))
    return path


def compile_all(out_dir: Path = COMPILED, only: Iterable[str] | None = None) -> list[Path]:
    """Compile every pipeline (or those whose file name starts with one of ``only``)."""
    chosen = {k: v for k, v in targets().items() if not only or any(k.startswith(o) for o in only)}
    return [compile_to(fn, Path(out_dir) / name) for name, fn in sorted(chosen.items())]


if __name__ == "__main__":
    for p in compile_all(only=sys.argv[1:] or None):
        print(p)
