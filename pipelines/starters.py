"""What starts a retraining that the monitor decided: the training pipeline on this machine (kfp
local runner) or a run on a Kubeflow cluster (the KFP API).

Both implement :class:`hfcast.monitoring.retraining.RetrainStarter` and are registered as entry
points of group ``hfcast.starters`` (``local``, ``kubeflow``), so ``hfcast monitor run --starter
NAME`` finds them without the core importing kfp. Both record the retraining in
``<lake>/monitoring/<model>/retrain.json`` through the core's functions, so that no second one
starts on top of a running one; the new model passes the same champion/challenger gate either way.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from hfcast import storage
from hfcast.config import Settings, settings_from_param
from hfcast.lifecycle import retrain_archs
from hfcast.monitoring.retraining import DONE, FAILED, RUNNING, RetrainTarget, record_start, run_recorded
from hfcast.storage import Lake
from pipelines import local
from pipelines.names import LOCAL_TRAINING, compiled_path

log = logging.getLogger(__name__)

KFP_FINAL = {"SUCCEEDED": DONE, "FAILED": FAILED, "CANCELED": FAILED, "SKIPPED": DONE}  # KFP run state -> ours


def retrain_with_local_runner(settings: Settings, reason: str | None = None, drifted_dates: Sequence[str] | None = None,
                              **params: Any) -> dict[str, Any]:
    """Run the CPU training pipeline here with the kfp local runner for ``settings``.

    Args:
        reason, drifted_dates: why (recorded on the training runs as ``hfcast.trigger_reason`` /
            ``hfcast.drifted_dates``).
        params: other pipeline parameters (``gate_margin``, ...). ``archs`` defaults to
            :func:`hfcast.lifecycle.retrain_archs` (``retrain.archs``, else the champion's
            networks, else ``forecaster.archs``).

    Returns:
        ``{"status": "succeeded"|"failed", "new_version", "promoted", "gate", "error"}``: a failed
        run is reported to the monitor, not raised into it.
    """
    if "archs" not in params:
        params["archs"] = retrain_archs(settings)
    args = {"settings": settings.to_param(), "reason": reason or "manual",
            "drifted_dates": ",".join(drifted_dates or []), **params}
    try:
        out = local.run_local(LOCAL_TRAINING, **args)
    except Exception as exc:  # the failure is the result
        return {"status": "failed", "new_version": None, "promoted": False, "error": str(exc)[-2000:]}
    gate = out["gate"].metadata
    return {"status": "succeeded", "new_version": gate.get("version"), "promoted": bool(gate.get("promoted")),
            "gate": gate.get("summary"), "error": ""}


def retrain_in_subprocess(settings: Settings, reason: str, drifted_dates: Sequence[str],
                          params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`retrain_with_local_runner` in a fresh Python process.

    Why: inside a kfp step, kfp's executor has imported ``kfp.dsl`` in runtime-only mode
    (``_KFP_RUNTIME``), where ``dsl.component`` and ``dsl.pipeline`` do not exist, so the step cannot
    build a pipeline in its own process; and kfp's local runner is global state. Credentials reach
    the child through the inherited environment only, never the request file.
    """
    env = {k: v for k, v in os.environ.items() if k != "_KFP_RUNTIME"}
    with tempfile.TemporaryDirectory(prefix="hfcast-retrain-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps({"settings": settings.to_param(), "reason": reason,
                                   "drifted_dates": list(drifted_dates), "params": dict(params or {})}))
        proc = subprocess.run([sys.executable, "-m", "pipelines.starters", str(req), str(res)], env=env)
        if not res.exists():
            return {"status": "failed", "new_version": None, "promoted": False,
                    "error": f"retraining process exited with {proc.returncode} and no result"}
        return json.loads(res.read_text())


class LocalPipelineStarter:
    """Retrain on this machine: the CPU training pipeline with the kfp local runner, in a fresh process.

    Args:
        archs: architectures to choose from (empty = :func:`hfcast.lifecycle.retrain_archs`).
        params: other training pipeline parameters (e.g. ``{"gate_margin": 0.0}``).
    """

    kind = "local"

    def __init__(self, archs: Sequence[str] = (), params: Mapping[str, Any] | None = None) -> None:
        self.params = {**dict(params or {}), **({"archs": list(archs)} if archs else {})}

    def start(self, settings: Settings, model: str, reason: str, drifted_dates: Sequence[str]) -> dict[str, Any]:
        return run_recorded(settings, model, reason, drifted_dates,
                            lambda r, d: retrain_in_subprocess(settings, r, d, self.params), kind=self.kind)


class KubeflowStarter:
    """Start a run of the compiled training pipeline through the Kubeflow Pipelines API.

    Kubeflow has no event trigger, so the monitor starts the run and passes the reason and the
    drifted dates as run parameters; the run's own gate decides when it finishes (:meth:`poll`).

    Args:
        host: KFP API URL (None = params.yaml ``retrain.kubeflow_host``, else the in-cluster API).
        namespace: Kubeflow profile namespace (None = params.yaml ``retrain.kubeflow_namespace``).
        pipeline: which training pipeline (None = params.yaml ``retrain.pipeline``); see
            :mod:`pipelines.names`.
        experiment: the KFP experiment of the retraining runs.
        client: a ``kfp.Client`` (or anything with ``create_run_from_pipeline_package`` and
            ``get_run``); None = :func:`pipelines.submit.client` (ServiceAccount token credentials).
    """

    kind = "kubeflow"

    def __init__(self, host: str | None = None, namespace: str | None = None, pipeline: str | None = None,
                 experiment: str = "hfcast-retraining", client: Any = None) -> None:
        self.host, self.namespace, self.pipeline = host, namespace, pipeline
        self.experiment, self._client = experiment, client

    def client(self, host: str | None, namespace: str | None) -> Any:
        if self._client is None:
            from pipelines.submit import client

            self._client = client(host, namespace)
        return self._client

    def start(self, settings: Settings, model: str, reason: str, drifted_dates: Sequence[str]) -> dict[str, Any]:
        target = settings.section(RetrainTarget)
        host = self.host or target.kubeflow_host or None
        namespace = self.namespace or target.kubeflow_namespace or None
        pipeline = self.pipeline or target.pipeline
        package = str(compiled_path(pipeline))
        arguments = {"reason": reason, "drifted_dates": ",".join(drifted_dates)}
        started = datetime.now(timezone.utc)
        try:
            res = self.client(host, namespace).create_run_from_pipeline_package(
                package, arguments=arguments, run_name=f"retrain-{model}-{started.strftime('%Y%m%dT%H%M%S')}",
                experiment_name=self.experiment)
        except Exception as exc:  # the failure is the result: the monitor records it and goes on
            error = storage.redact(f"{type(exc).__name__}: {exc}")
            log.error("could not start the Kubeflow retraining: %s", error)
            return {"kind": self.kind, "run_id": "", "status": FAILED, "error": error,
                    "note": f"Kubeflow run not started ({error}); champion unchanged"}
        run_id = str(getattr(res, "run_id", "") or "")
        record_start(Lake.from_settings(settings), model, kind=self.kind, run_id=run_id, reason=reason,
                     drifted_dates=drifted_dates, started_at=started, host=host, namespace=namespace,
                     pipeline=pipeline, package=package)
        log.info("started Kubeflow run %s of %s (%s)", run_id, pipeline, reason)
        return {"kind": self.kind, "run_id": run_id, "status": RUNNING, "pipeline": pipeline, "arguments": arguments,
                "note": f"Kubeflow run {run_id} of {pipeline} started; the gate decides when it finishes"}

    def poll(self, state: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """``{status, kfp_state}`` once the recorded run finished on Kubeflow, else None."""
        run = self.client(self.host or state.get("host"), self.namespace or state.get("namespace")).get_run(
            state["run_id"])
        kfp_state = str(getattr(run, "state", "") or "").upper()
        return {"status": KFP_FINAL[kfp_state], "kfp_state": kfp_state} if kfp_state in KFP_FINAL else None


def _main(request: str, result: str) -> None:
    """The child of :func:`retrain_in_subprocess`: read the request, retrain, write the result."""
    req = json.loads(Path(request).read_text())
    out = retrain_with_local_runner(settings_from_param(req["settings"]), reason=req["reason"],
                                    drifted_dates=req["drifted_dates"], **req.get("params", {}))
    Path(result).write_text(json.dumps(out, default=str))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    _main(sys.argv[1], sys.argv[2])
