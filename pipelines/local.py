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


def settings_params(settings: Any) -> dict[str, Any]:
    """Pipeline parameters that reproduce ``settings`` in every component (credentials excluded)."""
    import json

    return {"home": str(settings.home), "lake_url": settings.lake_url, "mlflow_uri": settings.mlflow_uri,
            "feast_repo": str(settings.feast_repo), "s3_endpoint": settings.s3_endpoint or "",
            "params_json": json.dumps(dict(settings.params), default=str)}


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


def retrain_subprocess(settings: Any, reason: str, drifted_dates: list[str]) -> dict[str, Any]:
    """``pipelines.training.run_local`` in a fresh Python process, for callers inside a kfp step.

    Why: kfp's executor imports ``kfp.dsl`` in runtime-only mode (``_KFP_RUNTIME``), where
    ``dsl.component`` and ``dsl.pipeline`` do not exist, so a step cannot build a pipeline in its
    own process. Credentials reach the child through the inherited environment only.
    """
    import json
    import subprocess
    import sys
    import tempfile

    env = {k: v for k, v in os.environ.items() if k != "_KFP_RUNTIME"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="hfcast-retrain-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps({"settings": settings_params(settings), "reason": reason,
                                   "drifted_dates": list(drifted_dates)}))
        proc = subprocess.run([sys.executable, "-m", "pipelines.local", str(req), str(res)], env=env, cwd=str(ROOT))
        if not res.exists():
            return {"status": "failed", "new_version": None, "promoted": False,
                    "error": f"retraining process exited with {proc.returncode} and no result"}
        return json.loads(res.read_text())


def _retrain_main(request: str, result: str) -> None:
    import json

    from components._settings import make_settings
    from pipelines.training import run_local as run_training

    req = json.loads(Path(request).read_text())
    settings = make_settings(**req["settings"])
    out = run_training(settings, reason=req["reason"], drifted_dates=req["drifted_dates"])
    Path(result).write_text(json.dumps(out, default=str))


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    _retrain_main(sys.argv[1], sys.argv[2])
