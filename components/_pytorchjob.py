"""A data-parallel training as a Kubeflow ``PyTorchJob``: the manifest, creating it, waiting for it.

Why PyTorchJob (Training Operator v1, ``kubeflow.org/v1``) and not Trainer v2's ``TrainJob``: the
Kubeflow release docs/CLUSTER.md targets, 1.10, ships the Training Operator v1.9.2 (the component
table of the 1.10 release page, kubeflow/website ``content/en/docs/releases/kubeflow-1.10.md``);
Kubeflow Trainer v2 (``TrainJob``, ``trainer.kubeflow.org``) was released after it (v2.0, July
2025) and is not among 1.10's components, so a 1.10 cluster has the PyTorchJob CRD and not TrainJob.

Every pod runs the same command: ``torchrun`` started from the variables the operator sets on the
job's containers (``MASTER_ADDR``, ``MASTER_PORT``, and ``PET_NNODES``, ``PET_NPROC_PER_NODE``,
``PET_NODE_RANK`` - training-operator ``pkg/controller.v1/pytorch/envvar.go``), expanded by
Kubernetes in ``args`` (``$(VAR)``), then ``-m hfcast train``: one MLflow run, written by rank 0 and
tagged with the job's name so the step can find it. A job needs a ``Master`` replica for the
operator to set ``MASTER_ADDR``: N workers = 1 Master + N-1 Workers.

The Kubernetes API is reached through an object with the ``CustomObjectsApi`` methods
(``kubernetes.client.CustomObjectsApi`` in a pod); tests hand it a fake.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # annotations only
    from hfcast.config import Settings

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
CONTAINER = "pytorch"          # the container name the operator looks for (PytorchJobDefaultContainerName)
PORT_NAME, PORT = "pytorchjob-port", 23456  # its default port name and number
JOB_TAG = "hfcast.train_job"   # MLflow run tag: the job whose rank 0 logged the run
GPU = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}
TORCHRUN_ARGS = ["--nnodes=$(PET_NNODES)", "--nproc-per-node=$(PET_NPROC_PER_NODE)", "--node-rank=$(PET_NODE_RANK)",
                 "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)"]


class JobFailed(RuntimeError):
    """The PyTorchJob ended Failed (the message carries the operator's reason and message)."""


@dataclass(frozen=True)
class JobSpec:
    """What the pipeline asks of one distributed training.

    Attributes:
        name: the job's name (a DNS label; :func:`job_name` makes one).
        arch: the architecture ``hfcast train --model`` trains.
        workers: pods (nodes); 1 Master + (workers - 1) Workers.
        gpus_per_worker: GPUs (and torchrun processes) per pod; 0 = CPU pods with one process each.
        settings: ``Settings.to_param()`` JSON for ``hfcast train --settings`` (no credentials).
        image: the training image (the CUDA image for GPU pods).
        cpu, memory: requests per pod (limits: 2x CPU, the same memory).
        tolerations: extra tolerations (the ``nvidia.com/gpu`` taint is tolerated with GPUs).
        service_account: what the pods run as (the PodDefault gives them settings and S3 secrets).
        backoff_limit: pod restarts before the job fails (a restarted job resumes from its checkpoint).
        active_deadline_s: the job's time limit.
        labels: extra pod labels (``pipelines.kubeflow.org/v2_component`` selects the PodDefault).
    """

    name: str
    arch: str
    workers: int
    gpus_per_worker: int = 1
    settings: str = ""
    image: str = ""
    cpu: str = "4"
    memory: str = "16Gi"
    tolerations: tuple[dict[str, Any], ...] = ()
    service_account: str = "hfcast-pipeline"
    backoff_limit: int = 3
    active_deadline_s: int = 24 * 3600
    labels: dict[str, str] = field(default_factory=dict)


def job_name(arch: str, run_id: str) -> str:
    """``hfcast-train-<arch>-<run>``: a DNS-1035 label (<= 50 characters: the operator appends
    ``-master-0`` / ``-worker-N`` for pods and services)."""
    raw = f"hfcast-train-{arch}-{run_id}".lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")[:50].rstrip("-")
    if not re.match(r"^[a-z]", name):
        raise ValueError(f"cannot make a job name from {raw!r}")
    return name


def container_args(spec: JobSpec) -> list[str]:
    """The torchrun line each pod runs (``command: [torchrun]``)."""
    return [*TORCHRUN_ARGS, "-m", "hfcast", "train", "--model", spec.arch, "--members-only",
            "--settings", "$(HFCAST_SETTINGS)", "--tag", f"{JOB_TAG}={spec.name}"]


def manifest(spec: JobSpec) -> dict[str, Any]:
    """The PyTorchJob object (validated against the operator's CRD by the tests)."""
    if spec.workers < 1:
        raise ValueError(f"distributed_workers must be >= 1, got {spec.workers}")
    gpus = int(spec.gpus_per_worker)
    limits: dict[str, Any] = {"cpu": str(_double(spec.cpu)), "memory": spec.memory}
    if gpus:
        limits[GPU] = gpus
    container = {
        "name": CONTAINER, "image": spec.image, "imagePullPolicy": "IfNotPresent",
        "command": ["torchrun"], "args": container_args(spec),
        "env": [{"name": "HFCAST_SETTINGS", "value": spec.settings}, {"name": "OMP_NUM_THREADS", "value": "1"}],
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": spec.cpu, "memory": spec.memory}, "limits": limits},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],  # NCCL and DataLoader workers use shared memory
    }
    tolerations = [*([GPU_TOLERATION] if gpus else []), *spec.tolerations]
    pod_spec: dict[str, Any] = {"containers": [container], "serviceAccountName": spec.service_account,
                                "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}]}
    if tolerations:
        pod_spec["tolerations"] = tolerations
    labels = {"app.kubernetes.io/part-of": "hfcast", "app.kubernetes.io/component": "training",
              "pipelines.kubeflow.org/v2_component": "true", **spec.labels}
    template = {"metadata": {"labels": labels, "annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": pod_spec}
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if spec.workers > 1:
        replicas["Worker"] = {"replicas": spec.workers - 1, "restartPolicy": "OnFailure", "template": template}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": spec.name, "labels": {"app.kubernetes.io/part-of": "hfcast"}},
            "spec": {"nprocPerNode": str(max(1, gpus)), "pytorchReplicaSpecs": replicas,
                     "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": spec.backoff_limit,
                                   "activeDeadlineSeconds": spec.active_deadline_s}}}


def _double(cpu: str) -> str:
    """A CPU quantity times two ("4" -> "8", "500m" -> "1000m")."""
    return f"{int(cpu[:-1]) * 2}m" if cpu.endswith("m") else str(float(cpu) * 2).removesuffix(".0")


def _status(api: Any, namespace: str, name: str) -> dict[str, Any]:
    return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind and c.get("status") == "True"), None)


def create(api: Any, namespace: str, job: dict[str, Any]) -> bool:
    """Create the job; False when one of that name exists already (a retried step waits for it)."""
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
        return True
    except Exception as exc:  # kubernetes.client.ApiException; 409 = AlreadyExists
        if getattr(exc, "status", None) == 409:
            log.warning("PyTorchJob %s/%s exists already: waiting for it", namespace, job["metadata"]["name"])
            return False
        raise


def wait(api: Any, namespace: str, name: str, timeout_s: float, poll_s: float = 30.0,
         sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Poll the job until it succeeds (its status is returned) or fails (:class:`JobFailed` with the
    operator's reason) or ``timeout_s`` passes (TimeoutError; the job is left for inspection)."""
    deadline = clock() + timeout_s
    last = ""
    while True:
        status = _status(api, namespace, name)
        if _condition(status, "Succeeded"):
            log.info("PyTorchJob %s succeeded", name)
            return status
        failed = _condition(status, "Failed")
        if failed:
            raise JobFailed(f"PyTorchJob {namespace}/{name} failed: {failed.get('reason', 'unknown reason')}: "
                            f"{failed.get('message', '')} (kubectl -n {namespace} logs {name}-master-0)")
        state = ",".join(c.get("type", "") for c in status.get("conditions") or [] if c.get("status") == "True")
        if state != last:
            log.info("PyTorchJob %s: %s", name, state or "pending")
            last = state
        if clock() >= deadline:
            raise TimeoutError(f"PyTorchJob {namespace}/{name} did not finish in {timeout_s:.0f} s (state: "
                               f"{state or 'pending'}); it is left running: kubectl -n {namespace} get pytorchjob {name}")
        sleep(poll_s)


def run(api: Any, namespace: str, spec: JobSpec, timeout_s: float, poll_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Create (or find) the job and wait for it; the final status."""
    create(api, namespace, manifest(spec))
    return wait(api, namespace, spec.name, timeout_s, poll_s, sleep, clock)


def logged_run(settings: Settings, job: str) -> tuple[str, dict[str, float]]:
    """(run id, metrics) of the member run that rank 0 of ``job`` logged (tagged :data:`JOB_TAG`)."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow_uri)
    exp = client.get_experiment_by_name(str(settings.param("registry.experiment", "hfcast")))
    runs = client.search_runs([exp.experiment_id], f"tags.`{JOB_TAG}` = '{job}'",
                              order_by=["attributes.start_time DESC"], max_results=100) if exp else []
    runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # the member run, not its fold runs
    if not runs:
        raise RuntimeError(f"PyTorchJob {job} succeeded but no MLflow run carries the tag {JOB_TAG}={job} "
                           f"in {settings.mlflow_uri}: did rank 0 reach the tracking server?")
    return runs[0].info.run_id, dict(runs[0].data.metrics)
