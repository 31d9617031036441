"""Start pipeline runs on a Kubeflow Pipelines cluster: one run, or a recurring (cron) run.

Used by ``hfcast pipeline submit`` and by :class:`pipelines.starters.KubeflowStarter` (Kubeflow has
no event trigger: the monitor starts the training run through the API). Recurring runs use
``max_concurrency=1`` so that a slow run is never overlapped by the next one.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from pipelines.compile import compile_to
from pipelines.names import get

log = logging.getLogger(__name__)

POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace(namespace: str | None = None, pod_file: Path = POD_NAMESPACE_FILE) -> str:
    """``namespace``, else the namespace of the pod this runs in, else ``kubeflow`` (kfp's default).

    Why the pod's: on a multi-user Kubeflow a step or the schedule Job runs in the profile namespace
    (``hfcast``) and its ServiceAccount may create runs there only; ``kubeflow`` would be refused.
    """
    if namespace:
        return namespace
    if pod_file.is_file():
        return pod_file.read_text().strip() or "kubeflow"
    return "kubeflow"


def client(host: str | None = None, namespace: str | None = None) -> Any:
    """A ``kfp.Client``; ``host`` None inside the cluster (the in-cluster KFP API service).

    Authentication: the projected ServiceAccount token (``KF_PIPELINES_SA_TOKEN_PATH``, or kfp's
    default path when it exists; ``manifests/base/rbac.yaml`` grants the pipeline runner the KFP
    API), else kfp's other sources (cookies, or a port-forward to ml-pipeline-ui). Namespace:
    :func:`default_namespace`. The one place that builds a client (``hfcast pipeline submit`` and
    :class:`pipelines.starters.KubeflowStarter` both come here).
    """
    import kfp
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH, ServiceAccountTokenVolumeCredentials

    token = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV) or KF_PIPELINES_SA_TOKEN_PATH
    credentials = ServiceAccountTokenVolumeCredentials(path=token) if Path(token).is_file() else None
    return kfp.Client(host=host or None, namespace=default_namespace(namespace), credentials=credentials)


def submit(name: str, host: str | None = None, params: dict[str, Any] | None = None,
           experiment: str = "hfcast", recurring_cron: str | None = None, run_name: str | None = None,
           namespace: str | None = None, service_account: str | None = None) -> dict[str, str]:
    """Compile pipeline ``name`` (:data:`pipelines.names.PIPELINES`) and start it once, or on
    ``recurring_cron`` (6-field cron, UTC).

    Returns:
        ``{"kind": "run"|"recurring_run", "id": ..., "experiment_id": ...}``.
    """
    spec = get(name)
    namespace = default_namespace(namespace)
    c = client(host, namespace)
    exp = c.create_experiment(experiment, namespace=namespace)  # returns the existing one when present
    with tempfile.TemporaryDirectory(prefix="hfcast-kfp-") as tmp:
        package = compile_to(spec.load(), Path(tmp) / spec.compiled)
        if recurring_cron:
            rr = c.create_recurring_run(experiment_id=exp.experiment_id, job_name=run_name or f"hfcast-{name}",
                                        cron_expression=recurring_cron, max_concurrency=1, no_catchup=True,
                                        params=params or {}, pipeline_package_path=str(package),
                                        service_account=service_account)
            log.info("recurring run %s of %s on '%s'", rr.recurring_run_id, name, recurring_cron)
            return {"kind": "recurring_run", "id": rr.recurring_run_id, "experiment_id": exp.experiment_id}
        run = c.create_run_from_pipeline_package(str(package), arguments=params or {},
                                                 run_name=run_name or f"hfcast-{name}",
                                                 experiment_id=exp.experiment_id, service_account=service_account)
        log.info("started run %s of %s", run.run_id, name)
        return {"kind": "run", "id": run.run_id, "experiment_id": exp.experiment_id}
