"""Pod security `restricted` for every pod hfcast defines, checked on the rendered overlays and on the
InferenceServices / ServingRuntime serving/manifests.py builds (checkov does not read KServe kinds):
non-root, no privilege escalation, every capability dropped, seccomp RuntimeDefault, a read-only root
filesystem with a mounted writable volume for every folder the process writes (HOME, HFCAST_HOME,
/tmp), no Kubernetes API token, probes, secrets as files in the pods checkov scans."""

from __future__ import annotations

import pytest

from _cluster import OVERLAYS, pod_spec, render, workloads
from serving import manifests as m

HFCAST_IMAGES = ("ghcr.io/hfcast/",)
WRITABLE_ENV = ("HOME", "HFCAST_HOME", "HFCAST_FEAST_REPO")


def _containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def _restricted_container(c: dict, where: str) -> None:
    sc = c.get("securityContext") or {}
    assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
    assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
    assert (sc.get("capabilities") or {}).get("drop") == ["ALL"], f"{where}: capabilities.drop"
    assert not (sc.get("capabilities") or {}).get("add") and not sc.get("privileged"), where


def _writable(c: dict, volumes: list[dict], where: str) -> None:
    """Every folder the container is told to write to is a mounted emptyDir (or a volume claim)."""
    writable = {v["name"] for v in volumes if "emptyDir" in v or "persistentVolumeClaim" in v}
    mounts = {mt["mountPath"]: mt["name"] for mt in c.get("volumeMounts", []) if not mt.get("readOnly")}
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    paths = [env[k] for k in WRITABLE_ENV if env.get(k)]
    if c.get("image", "").startswith(HFCAST_IMAGES):
        assert "HOME" in env and "/tmp" in mounts, f"{where}: Python writes to HOME and /tmp; mount both"
        paths.append("/tmp")
    for path in paths:
        mount = max((p for p in mounts if path == p or path.startswith(p.rstrip("/") + "/")), key=len, default=None)
        assert mount and mounts[mount] in writable, f"{where}: {path} is not on a writable volume"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_is_restricted(overlay):
    checked = 0
    for obj in workloads(render(overlay)):
        where = f"{overlay} {obj['kind']}/{obj['metadata']['name']}"
        spec = pod_spec(obj)
        psc = spec.get("securityContext") or {}
        assert psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) > 0, f"{where}: non-root"
        assert psc.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{where}: seccomp"
        if psc["runAsUser"] < 10000:  # checkov CKV_K8S_40; allowed only with its reason on the object
            assert "CKV_K8S_40=" in " ".join((obj["metadata"].get("annotations") or {}).values()), where
        assert spec.get("automountServiceAccountToken") is False, f"{where}: no API token"
        for c in _containers(spec):
            _restricted_container(c, f"{where} {c['name']}")
            _writable(c, spec.get("volumes", []), f"{where} {c['name']}")
            if obj["kind"] != "Job":
                assert c.get("livenessProbe") and c.get("readinessProbe"), f"{where}: probes"
            secret_env = [e["name"] for e in c.get("env", []) if "secretKeyRef" in (e.get("valueFrom") or {})]
            assert not secret_env and not [s for s in c.get("envFrom", []) if "secretRef" in s], \
                f"{where}: secrets as environment variables; mount them as files"
        if obj["kind"] == "Job":  # a sidecar that outlives the Job's container keeps it from completing
            assert obj["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false", where
        checked += 1
    assert checked >= (7 if overlay == "dev" else 4)


def test_a_workload_with_a_writable_home_outside_its_volumes_is_caught():
    obj = next(o for o in workloads(render("dev")) if o["metadata"]["name"] == "mlflow")
    c = pod_spec(obj)["containers"][0]
    c["env"] = [e for e in c["env"] if e["name"] != "HOME"] + [{"name": "HOME", "value": "/home/hfcast"}]
    with pytest.raises(AssertionError, match="/home/hfcast is not on a writable volume"):
        _writable(c, pod_spec(obj)["volumes"], "mlflow")


def _isvc_components():
    for name, isvc in m.build_all().items():
        doc = m.to_dict(isvc)
        for part in ("predictor", "transformer"):
            if doc["spec"].get(part):
                yield f"{name} {part}", doc["spec"][part]


@pytest.mark.parametrize("where, comp", list(_isvc_components()), ids=[w for w, _ in _isvc_components()])
def test_inference_service_pods_are_restricted(where, comp):
    assert comp["serviceAccountName"] == m.MODELS_SA and comp["automountServiceAccountToken"] is False
    containers = comp.get("containers", []) + ([comp["model"]] if comp.get("model") else [])
    assert containers
    for c in containers:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, where
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        _restricted_container(c, where)
        _writable(c, comp.get("volumes", []), where)
        if "image" in c:  # a custom container (the Triton model gets its probes from the runtime)
            for probe in ("livenessProbe", "readinessProbe"):
                assert c[probe]["httpGet"]["port"] == c["ports"][0]["containerPort"] == m.HTTP_PORT, where


def test_the_triton_runtime_container_is_restricted_and_probed():
    c = m.to_dict(m.triton_runtime())["spec"]["containers"][0]
    _restricted_container(c, "triton")
    assert c["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["runAsUser"] == m.TRITON_UID
    assert f"--http-port={c['readinessProbe']['httpGet']['port']}" in c["args"]
