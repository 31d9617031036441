"""Run an hfcast pipeline on this machine with the kfp local runner (subprocesses, no cluster).

``use_venv=False``: each component runs in this Python environment, where hfcast is installed
(a fresh venv per task would not have it and costs seconds). The repository root goes on
PYTHONPATH so the component subprocesses import ``components`` as the cluster image does.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


def pipeline_function(name: str) -> Any:
    """The pipeline function for ``training`` | ``training-gpu`` | ``batch`` | ``monitoring``."""
    if name == "training":
        from pipelines.training import training_cpu_pipeline as fn
    elif name == "training-gpu":
        from pipelines.training import training_pipeline as fn
    elif name == "batch":
        from pipelines.batch import batch_pipeline as fn
    elif name == "monitoring":
        from pipelines.monitoring import monitoring_pipeline as fn
    else:
        raise ValueError(f"unknown pipeline {name!r}: choose training, batch or monitoring")
    return fn


def _outputs(task: Any) -> dict[str, Any]:
    if task is None:
        return {}
    outs = getattr(task, "outputs", None)
    return dict(outs) if isinstance(outs, dict) else {}


def run_local(name: str, pipeline_root: str | None = None, **params: Any) -> dict[str, Any]:
    """Run pipeline ``name`` with ``params`` locally; returns the pipeline's outputs (may be empty).

    Raises:
        RuntimeError: a task failed (kfp's message names it; its log was streamed above).
    """
    from kfp import local

    fn = pipeline_function(name)
    path = os.environ.get("PYTHONPATH", "")
    if str(ROOT) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), path) if p)
    home = Path(params.get("home") or os.environ.get("HFCAST_HOME") or ".hfcast").resolve()
    root = Path(pipeline_root) if pipeline_root else home / "kfp-local"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    t0 = time.perf_counter()
    task = fn(**params)
    log.info("pipeline %s finished in %.1f s (artifacts under %s)", name, time.perf_counter() - t0, root)
    return _outputs(task)
