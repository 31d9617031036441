"""Run an hfcast pipeline on this machine with the kfp local runner (subprocesses, no cluster).

``use_venv=False``: each component runs in this Python environment, where hfcast, ``components``
and ``pipelines`` are installed (a fresh venv per task would not have them and costs seconds).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pipelines.names import pipeline_function

log = logging.getLogger(__name__)


def _outputs(task: Any) -> dict[str, Any]:
    if task is None:
        return {}
    outs = getattr(task, "outputs", None)
    return dict(outs) if isinstance(outs, dict) else {}


def run_local(name: str, pipeline_root: str | None = None, **params: Any) -> dict[str, Any]:
    """Run pipeline ``name`` (:data:`pipelines.names.PIPELINES`) with ``params`` on this machine.

    Artifacts go under ``pipeline_root`` (default ``<home>/kfp-local``, home from the ``settings``
    parameter, else HFCAST_HOME, else ``.hfcast``).

    Returns:
        The pipeline's outputs (may be empty).

    Raises:
        ValueError: unknown pipeline name.
        RuntimeError: a task failed (kfp's message names it; its log was streamed above).
    """
    from kfp import local

    fn = pipeline_function(name)
    if pipeline_root:
        root = Path(pipeline_root)
    else:
        from hfcast.config import settings_from_param

        root = settings_from_param(str(params.get("settings") or "")).home / "kfp-local"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root.resolve()))
    t0 = time.perf_counter()
    task = fn(**params)
    log.info("pipeline %s finished in %.1f s (artifacts under %s)", name, time.perf_counter() - t0, root)
    return _outputs(task)
