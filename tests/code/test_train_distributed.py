"""The distributed training step: the PyTorchJob it renders validates strictly against the Training
Operator's CRD, the step waits for the job and fails with the operator's reason (a fake
CustomObjectsApi with scripted statuses: no API server runs here), and the job's own container
command (torchrun with the variables the operator sets) trains with 2 processes on CPU."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from components import _pytorchjob as pj

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "tests" / "vendor" / "kubeflow.org_pytorchjobs.excerpt.yaml").read_text())
K8S = ("1.32", "1.37")  # Kubeflow 1.10 was validated on 1.32; the newest schemas kubernetes-validate ships


def _strict(node):
    """The CRD's OpenAPI schema as a strict JSON Schema: an object with ``properties`` takes no other
    field (what server-side field validation does with ``kubectl apply --validate=strict``)."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes") and k != "x-hfcast-pod-spec"}
        if node.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
        if "properties" in node and "additionalProperties" not in node:
            out["additionalProperties"] = False
        if node.get("x-hfcast-pod-spec"):
            out["x-pod-spec"] = True
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


SCHEMA = _strict(CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def validate_job(job: dict) -> None:
    """The job against the CRD, and each replica's pod spec against Kubernetes' strict PodSpec."""
    jsonschema.validate(job, SCHEMA)
    assert job["apiVersion"] == f"{CRD['spec']['group']}/v1" and job["kind"] == CRD["spec"]["names"]["kind"]
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": replica["template"]["spec"]}
        for version in K8S:
            kubernetes_validate.validate(pod, version, strict=True)


def _spec(**kw) -> pj.JobSpec:
    base = {"name": pj.job_name("lstm", "6f1c2a9e-0b7d-4b5e-9a55-4e3c1f0d2b11"), "arch": "lstm", "workers": 3,
            "gpus_per_worker": 2, "settings": '{"lake_url": "s3://lake/x"}', "image": "ghcr.io/hfcast/hfcast-gpu:0.1.0"}
    return pj.JobSpec(**{**base, **kw})


def test_the_rendered_job_validates_strictly_against_the_operators_crd():
    job = pj.manifest(_spec())
    validate_job(job)
    reps = job["spec"]["pytorchReplicaSpecs"]
    assert reps["Master"]["replicas"] == 1 and reps["Worker"]["replicas"] == 2  # 3 workers = Master + 2
    pod = reps["Worker"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["name"] == pj.CONTAINER and c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert job["spec"]["nprocPerNode"] == "2" and pj.GPU_TOLERATION in pod["tolerations"]
    assert "elasticPolicy" not in job["spec"]  # the part of the CRD the excerpt reduces
    assert c["command"] == ["torchrun"] and c["args"][-4:] == ["--settings", "$(HFCAST_SETTINGS)", "--tag",
                                                               f"{pj.JOB_TAG}={job['metadata']['name']}"]
    cpu = pj.manifest(_spec(workers=1, gpus_per_worker=0))
    validate_job(cpu)
    assert set(cpu["spec"]["pytorchReplicaSpecs"]) == {"Master"} and "tolerations" not in \
        cpu["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert len(pj.job_name("transformer", "x" * 80)) <= 50


@pytest.mark.parametrize("where", ["spec.runPolicy", "template.spec", "container", "spec.nprocPerNode"])
def test_strict_validation_rejects_what_the_api_server_would(where):
    job = copy.deepcopy(pj.manifest(_spec()))
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]
    if where == "spec.runPolicy":
        job["spec"]["runPolicy"]["cleanupPolicy"] = "All"  # misspelt field
    elif where == "template.spec":
        master["template"]["spec"]["tolerationz"] = []
    elif where == "container":
        master["template"]["spec"]["containers"][0]["gpus"] = 1
    else:
        job["spec"]["nprocPerNode"] = 2  # an int where the CRD says string
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate_job(job)


class FakeApi:
    """Records calls; ``statuses`` are returned by successive gets (the last one repeats)."""

    def __init__(self, statuses, create_error=None):
        self.statuses, self.calls, self.create_error = list(statuses), [], create_error

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append(("create", group, version, namespace, plural, body["metadata"]["name"]))
        if self.create_error is not None:
            raise self.create_error

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("get", group, version, namespace, plural, name))
        return {"status": self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]}


def _cond(kind, **kw):
    return {"conditions": [{"type": "Created", "status": "True"}, {"type": kind, "status": "True", **kw}]}


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_the_step_creates_the_job_and_waits_for_success():
    api, clock = FakeApi([{}, _cond("Running"), _cond("Running"), _cond("Succeeded")]), Clock()
    status = pj.run(api, "team", _spec(), timeout_s=600, poll_s=10, sleep=clock.sleep, clock=clock)
    assert status["conditions"][-1]["type"] == "Succeeded"
    assert api.calls[0] == ("create", "kubeflow.org", "v1", "team", "pytorchjobs", _spec().name)
    assert [c[0] for c in api.calls[1:]] == ["get"] * 4 and clock.t == 30


def test_the_step_fails_with_the_operators_reason():
    api = FakeApi([_cond("Running"), _cond("Failed", reason="PyTorchJobFailed", message="master-0 exited with 1")])
    clock = Clock()
    with pytest.raises(pj.JobFailed, match="PyTorchJobFailed: master-0 exited with 1"):
        pj.run(api, "team", _spec(), timeout_s=600, poll_s=10, sleep=clock.sleep, clock=clock)


def test_a_retried_step_waits_for_the_existing_job_and_a_hung_job_times_out():
    exists = type("ApiException", (Exception,), {"status": 409})()
    api, clock = FakeApi([_cond("Succeeded")], create_error=exists), Clock()
    pj.run(api, "team", _spec(), timeout_s=60, sleep=clock.sleep, clock=clock)
    forbidden = type("ApiException", (Exception,), {"status": 403})()
    with pytest.raises(Exception) as err:
        pj.run(FakeApi([{}], create_error=forbidden), "team", _spec(), timeout_s=60, sleep=clock.sleep, clock=clock)
    assert err.value is forbidden  # RBAC problems surface as they are (manifests/base/rbac.yaml)
    with pytest.raises(TimeoutError, match="did not finish"):
        pj.run(FakeApi([_cond("Running")]), "team", _spec(), timeout_s=60, poll_s=25, sleep=clock.sleep, clock=clock)


def test_rbac_lets_the_step_create_and_poll_pytorchjobs():
    """The pipeline's Role (manifests/base/rbac.yaml; tests/code/test_cluster_rbac.py checks it grants
    nothing else than the code calls) lets the step create and poll its job."""
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "base" / "rbac.yaml").read_text()) if d]
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "hfcast-pipeline")
    granted = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert {"create", "get"} <= granted[("kubeflow.org", "pytorchjobs")]
    binding = next(d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == "hfcast-pipeline")
    assert {"hfcast-pipeline", "default-editor"} <= {s["name"] for s in binding["subjects"]}


# --- the job's container command, run here with the variables the operator sets ---------------------

PARAMS = {
    "walkforward": {"mode": "expanding", "train_days": 3, "val_days": 1, "test_days": 1, "step_days": 1,
                    "embargo_days": 1, "max_folds": 1, "models": {"lstm": {"hidden": 8, "n_layers": 1, "head_hidden": 8}}},
    "train": {"epochs": 2, "max_train_windows": 1500, "max_val_windows": 600, "device": "cpu", "num_threads": 1},
}


def _expand(arg: str, env: dict) -> str:
    """Kubernetes' $(VAR) expansion of command and args."""
    return re.sub(r"\$\(([A-Z_][A-Z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def _pods(job: dict, settings_json: str, port: int, extra_env: dict) -> list[subprocess.Popen]:
    """One process per pod of the job, each with the env the operator sets (envvar.go) and the job's own."""
    reps = job["spec"]["pytorchReplicaSpecs"]
    n = sum(r["replicas"] for r in reps.values())
    procs = []
    for rank in range(n):
        (c,) = (reps["Master"] if rank == 0 else reps["Worker"])["template"]["spec"]["containers"]
        env = {**os.environ, **{e["name"]: e["value"] for e in c["env"]}, "HFCAST_SETTINGS": settings_json,
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(n), "RANK": str(rank),
               "PET_NNODES": str(n), "PET_NPROC_PER_NODE": job["spec"]["nprocPerNode"], "PET_NODE_RANK": str(rank),
               "PYTHONUNBUFFERED": "0", **extra_env}
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        cmd = [torchrun if c["command"] == ["torchrun"] else c["command"][0], *[_expand(a, env) for a in c["args"]]]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _finish(procs) -> list[tuple[int, str]]:
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outs)]


@pytest.mark.slow
def test_the_jobs_container_command_trains_with_two_processes_and_resumes_after_a_kill(tmp_path):
    from hfcast.data.simulator import SimConfig, write_synth
    from hfcast.features.engine import run_featurize
    from hfcast.storage import Lake
    from hfcast.testing.servers import free_port
    from tests.lake_settings import project_settings

    settings = project_settings(tmp_path, PARAMS)
    lake = Lake.from_settings(settings)
    write_synth(SimConfig(n_symbols=3, n_days=7, seed=3), lake, progress=False)
    run_featurize(lake, progress=False)
    spec = _spec(workers=2, gpus_per_worker=0, settings=settings.to_param(), image="hfcast:test")
    job = pj.manifest(spec)
    validate_job(job)

    killed = _finish(_pods(job, settings.to_param(), free_port(), {"HFCAST_TRAIN_EXIT_AFTER_EPOCH": "0"}))
    assert any(code != 0 for code, _ in killed), "the injected kill after epoch 0 must fail the job"
    done = _finish(_pods(job, settings.to_param(), free_port(), {}))
    assert all(code == 0 for code, _ in done), [(code, out[-2500:]) for code, out in done if code]
    assert "resumed from the checkpoint of epoch 0" in done[0][1]  # epoch 1 only, not from scratch
    run_id, _ = pj.logged_run(settings, spec.name)
    from mlflow import MlflowClient

    from hfcast.lifecycle import MEMBERS_ARTIFACT

    # the member run holds the fold's network and a history of BOTH epochs (0 from the checkpoint)
    client = MlflowClient(settings.mlflow_uri)
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, MEMBERS_ARTIFACT)}
    assert {"fold0", "history.json"} <= logged, logged
    hist = json.loads(Path(client.download_artifacts(run_id, f"{MEMBERS_ARTIFACT}/history.json", str(tmp_path))).read_text())
    assert [len(h.get("epochs", [])) for h in hist["histories"]] == [2], hist

    runs = MlflowClient(settings.mlflow_uri).search_runs(
        [MlflowClient(settings.mlflow_uri).get_experiment_by_name("hfcast").experiment_id],
        f"tags.`{pj.JOB_TAG}` = '{spec.name}'")
    summary = [(r.info.run_id, r.info.status, r.data.tags.get("mlflow.parentRunId")) for r in runs]
    members = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(members) == 2, summary  # one per attempt (killed, resumed): rank 1 logged nothing
    assert client.get_run(run_id).info.status == "FINISHED", summary
