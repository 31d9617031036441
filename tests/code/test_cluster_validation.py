"""What a Kubernetes API server, KServe and Kubeflow Pipelines would reject, checked without them.

- core kinds: kubernetes-validate's strict JSON schemas of a recent Kubernetes (an unknown field
  fails, as server-side field validation does), also after the dev overlay's patches;
- KServe kinds (InferenceService, ServingRuntime): a strict schema derived from the typed KServe
  SDK models' attribute maps (an unknown field at any depth fails), and every container inside
  validated as a core Pod container;
- Kubeflow's PodDefault: its spec's fields, with env/volumes/mounts validated as a Pod's;
- Istio's PeerAuthentication and AuthorizationPolicy: the fields of their security.istio.io API;
- compiled pipelines: the IR parsed into ``PipelineSpec`` (and each executor into
  ``ExecutorSpec``) with unknown fields rejected.
The overlays as kustomize renders them (patches applied) are validated in test_cluster_render.py,
RBAC in test_cluster_rbac.py, Secrets and KServe's S3 annotations in test_cluster_secrets.py.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import kubernetes.client
import kserve.models
import kubernetes_validate
import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
K8S_VERSION = "1.37"  # the newest schemas kubernetes-validate ships; 1.30 is checked too (older clusters)
CORE_GROUPS = ("v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1", "networking.k8s.io/v1", "policy/v1")
KSERVE_KINDS = {"InferenceService": "V1beta1InferenceService", "ServingRuntime": "V1alpha1ServingRuntime"}
# Istio's security.istio.io fields (istio.io/latest/docs/reference/config/security/): what its API
# server validation accepts for the two kinds the manifests use, down to rules, sources and operations.
ISTIO_FIELDS = {
    "PeerAuthentication": {"spec": {"selector", "mtls", "portLevelMtls"}},
    "AuthorizationPolicy": {"spec": {"selector", "targetRef", "targetRefs", "action", "provider", "rules"},
                            "rule": {"from", "to", "when"},
                            "source": {"principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
                                       "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks",
                                       "notRemoteIpBlocks"},
                            "operation": {"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths",
                                          "notPaths"}},
}
MTLS_MODES = {"UNSET", "DISABLE", "PERMISSIVE", "STRICT"}
PODDEFAULT_FIELDS = {"desc", "selector", "env", "envFrom", "volumes", "volumeMounts", "serviceAccountName",
                     "automountServiceAccountToken", "annotations", "labels", "tolerations", "imagePullSecrets",
                     "initContainers", "sidecars", "command", "args"}


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _patch_files() -> set[Path]:
    """Files kustomizations use as patches (partial objects: checked once rendered, not alone)."""
    out = set()
    for k in MANIFESTS.rglob("kustomization.yaml"):
        out |= {(k.parent / p["path"]).resolve() for p in yaml.safe_load(k.read_text()).get("patches", [])}
    return out


def _objects() -> list[tuple[str, dict]]:
    """(file, object) of every Kubernetes object in manifests/ (kustomizations and patches excluded)."""
    out = []
    patches = _patch_files()
    for p in sorted(MANIFESTS.rglob("*.yaml")):
        if p.resolve() in patches:
            continue
        for d in _docs(p):
            if isinstance(d, dict) and "kind" in d and d.get("kind") != "Kustomization":
                out.append((str(p.relative_to(MANIFESTS)), d))
    return out


OBJECTS = _objects()
CORE = [(f, d) for f, d in OBJECTS if d["apiVersion"] in CORE_GROUPS]
KSERVE = [(f, d) for f, d in OBJECTS if d["kind"] in KSERVE_KINDS]


def _id(item) -> str:
    f, d = item
    return f"{f}:{d['kind']}/{d['metadata']['name']}"


def test_every_object_is_checked_by_one_schema():
    kinds = {d["kind"] for f, d in OBJECTS if (f, d) not in CORE and (f, d) not in KSERVE}
    assert kinds <= {"PodDefault", "Profile", *ISTIO_FIELDS}, f"objects no test validates: {kinds}"
    assert len(CORE) >= 15 and len(KSERVE) == 4


@pytest.mark.parametrize("item", CORE, ids=_id)
@pytest.mark.parametrize("version", ["1.30", K8S_VERSION])
def test_core_kinds_are_valid_strictly(item, version):
    _, doc = item
    kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_a_field_that_does_not_exist():
    deployment = copy.deepcopy(next(d for f, d in CORE if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"))
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"cpu": "1"}}  # typo: resources
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# --- KServe: a strict schema from the typed SDK models ------------------------------------------------

def _strict(data, klass: str, where: str = ""):
    """Walk ``data`` along the SDK model ``klass``; an unknown key anywhere raises ValueError."""
    if data is None:
        return
    m = re.fullmatch(r"list\[(.*)\]", klass)
    if m:
        assert isinstance(data, list), f"{where}: expected a list"
        for i, v in enumerate(data):
            _strict(v, m.group(1), f"{where}[{i}]")
        return
    m = re.fullmatch(r"dict\(([^,]*), (.*)\)", klass)
    if m:
        for k, v in data.items():
            _strict(v, m.group(2), f"{where}.{k}")
        return
    if klass in ("str", "int", "float", "bool", "object", "date", "datetime"):
        return
    cls = getattr(kserve.models, klass, None) or getattr(kubernetes.client, klass)
    assert isinstance(data, dict), f"{where}: {klass} must be an object"
    unknown = set(data) - set(cls.attribute_map.values())
    if unknown:
        raise ValueError(f"{where or klass}: {klass} has no field(s) {sorted(unknown)}")
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    for key, value in data.items():
        _strict(value, cls.openapi_types[by_key[key]], f"{where}.{key}")


def _containers(node):
    """Every container-like object (has ``name`` and ``image`` or ``args``) inside an object."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for v in node:
            yield from _containers(v)


def _as_pod(spec_part: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": spec_part}


@pytest.mark.parametrize("item", KSERVE, ids=_id)
def test_kserve_objects_match_the_sdk_schema_and_their_containers_are_valid_pods(item):
    _, doc = item
    _strict(doc, KSERVE_KINDS[doc["kind"]])
    containers = list(_containers(doc["spec"]))
    assert containers, "no container found"
    for c in containers:
        c = {**c, "image": c.get("image", "triton-from-the-runtime")}
        kubernetes_validate.validate(_as_pod({"containers": [c]}), K8S_VERSION, strict=True)
    for part in ("predictor", "transformer"):  # pod-level fields inlined in a component spec
        comp = doc["spec"].get(part) or {}
        if comp.get("volumes") or comp.get("tolerations"):
            pod = {"containers": [{"name": "c", "image": "i"}], "volumes": comp.get("volumes", []),
                   "tolerations": comp.get("tolerations", [])}
            kubernetes_validate.validate(_as_pod(pod), K8S_VERSION, strict=True)


def test_kserve_schema_rejects_unknown_fields():
    isvc = copy.deepcopy(next(d for f, d in KSERVE if d["metadata"]["name"] == "hfcast-gpu"))
    _strict(isvc, "V1beta1InferenceService")
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["model"]["storageURI"] = "s3://x"  # KServe spells it storageUri
    with pytest.raises(ValueError, match="storageURI"):
        _strict(bad, "V1beta1InferenceService")
    bad = copy.deepcopy(isvc)
    bad["spec"]["transformer"]["containers"][0]["env"][0]["valueFrom2"] = {}  # deep inside a core model
    with pytest.raises(ValueError, match="valueFrom2"):
        _strict(bad, "V1beta1InferenceService")


def test_poddefault_fields_and_injected_parts_are_valid():
    pds = [d for f, d in OBJECTS if d["kind"] == "PodDefault"]
    assert pds
    for pd in pds:
        assert pd["apiVersion"] == "kubeflow.org/v1alpha1"
        assert set(pd["spec"]) <= PODDEFAULT_FIELDS, set(pd["spec"]) - PODDEFAULT_FIELDS
        assert pd["spec"]["selector"]["matchLabels"]
        container = {"name": "step", "image": "i", "env": pd["spec"].get("env", []),
                     "envFrom": pd["spec"].get("envFrom", []), "volumeMounts": pd["spec"].get("volumeMounts", [])}
        kubernetes_validate.validate(_as_pod({"containers": [container], "volumes": pd["spec"].get("volumes", [])}),
                                     K8S_VERSION, strict=True)


def _istio_strict(doc: dict) -> None:
    """Unknown fields (at any level the manifests use) and unknown mTLS modes raise ValueError."""
    fields = ISTIO_FIELDS[doc["kind"]]

    def only(node: dict, allowed: set[str], where: str) -> None:
        unknown = set(node) - allowed
        if unknown:
            raise ValueError(f"{doc['kind']}/{doc['metadata']['name']} {where}: unknown field(s) {sorted(unknown)}")

    assert doc["apiVersion"] in ("security.istio.io/v1beta1", "security.istio.io/v1"), doc["apiVersion"]
    spec = doc["spec"]
    only(spec, fields["spec"], "spec")
    if doc["kind"] == "PeerAuthentication":
        for where, mtls in [("mtls", spec.get("mtls", {})), *((f"port {p}", m) for p, m in spec.get("portLevelMtls", {}).items())]:
            only(mtls, {"mode"}, where)
            if mtls.get("mode") not in MTLS_MODES:
                raise ValueError(f"{where}: mode {mtls.get('mode')!r} is not one of {sorted(MTLS_MODES)}")
        assert all(str(p).isdigit() for p in spec.get("portLevelMtls", {})), "portLevelMtls keys are port numbers"
        return
    assert spec.get("action", "ALLOW") in ("ALLOW", "DENY", "AUDIT", "CUSTOM")
    for i, rule in enumerate(spec.get("rules", [])):
        only(rule, fields["rule"], f"rules[{i}]")
        for f in rule.get("from", []):
            only(f, {"source"}, f"rules[{i}].from")
            only(f["source"], fields["source"], f"rules[{i}].from.source")
        for op in rule.get("to", []):
            only(op, {"operation"}, f"rules[{i}].to")
            only(op["operation"], fields["operation"], f"rules[{i}].to.operation")
            assert all(isinstance(p, str) for p in op["operation"].get("ports", [])), "Istio ports are strings"


ISTIO = [(f, d) for f, d in OBJECTS if d["kind"] in ISTIO_FIELDS]


@pytest.mark.parametrize("item", ISTIO, ids=_id)
def test_istio_objects_use_only_istio_fields(item):
    _istio_strict(item[1])


def test_istio_check_rejects_a_misspelt_field_and_mode():
    policy = copy.deepcopy(next(d for f, d in ISTIO if d["kind"] == "AuthorizationPolicy"))
    policy["spec"]["rules"][0]["from"][0]["source"]["principal"] = ["x"]  # Istio spells it principals
    with pytest.raises(ValueError, match="principal"):
        _istio_strict(policy)
    peer = copy.deepcopy(next(d for f, d in ISTIO if d["kind"] == "PeerAuthentication"))
    peer["spec"]["mtls"]["mode"] = "STRICTER"
    with pytest.raises(ValueError, match="STRICTER"):
        _istio_strict(peer)


# --- Kubeflow: profile namespace, the KFP token ---------------------------------------------------------

def _obj(kind: str, name: str) -> dict:
    return next(d for f, d in OBJECTS if d["kind"] == kind and d["metadata"]["name"] == name and not f.startswith("overlays"))


def test_namespace_is_a_kubeflow_profile_namespace():
    labels = _obj("Namespace", "hfcast")["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "kubeflow-profile"  # the PodDefault webhook acts only here
    assert labels["pipelines.kubeflow.org/enabled"] == "true"
    profile = _obj("Profile", "hfcast")
    assert profile["apiVersion"] == "kubeflow.org/v1" and profile["spec"]["owner"]["kind"] == "User"
    assert "namespace" not in profile["metadata"]  # cluster-scoped


def test_poddefault_injects_a_kfp_token_where_kfp_clients_look_for_it():
    pd = _obj("PodDefault", "hfcast-settings")["spec"]
    path = next(e["value"] for e in pd["env"] if e["name"] == "KF_PIPELINES_SA_TOKEN_PATH")
    mount = next(m for m in pd["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pd["volumes"] if v["name"] == mount["name"])
    token = volume["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org" and path == f"{mount['mountPath']}/{token['path']}"
    assert pd["selector"]["matchLabels"] == {"pipelines.kubeflow.org/v2_component": "true"}
    assert {"configMapRef": {"name": "hfcast-config"}} in pd["envFrom"]
    assert {"secretRef": {"name": "hfcast-s3-pipeline"}} in pd["envFrom"]  # the pipeline's own identity


# --- GPU serving: one pin for Triton and TensorRT ---------------------------------------------------------

def _images_env() -> dict[str, str]:
    return dict(line.split("=", 1) for line in (ROOT / "docker" / "images.env").read_text().splitlines()
                if line and not line.startswith("#"))


def test_triton_and_tensorrt_are_pinned_together_in_one_place():
    env = _images_env()
    gpu_dockerfile = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    assert re.search(rf"^ARG TENSORRT_VERSION={re.escape(env['TENSORRT_VERSION'])}$", gpu_dockerfile, re.M)
    assert "tensorrt-cu12==${TENSORRT_VERSION}" in gpu_dockerfile
    runtime = _obj("ServingRuntime", "hfcast-triton")
    assert runtime["spec"]["containers"][0]["image"] == env["TRITON_IMAGE"]
    trt = next(f for f in runtime["spec"]["supportedModelFormats"] if f["name"] == "tensorrt")
    assert trt["version"] == env["TENSORRT_VERSION"].split(".")[0]
    isvc = _obj("InferenceService", "hfcast-gpu")
    assert isvc["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    cuda = re.search(r"cuda:(\d+\.\d+)", env["CUDA_BASE_IMAGE"]).group(1)
    assert cuda == "12.8" and env["TRITON_IMAGE"].endswith(":25.03-py3") and env["TENSORRT_VERSION"] == "10.9.0.34", \
        "bump CUDA base, TensorRT and Triton together (NVIDIA's Triton release notes list the pairs)"


def test_gpu_pods_tolerate_gpu_nodes():
    tolerations = _obj("InferenceService", "hfcast-gpu")["spec"]["predictor"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_serving_pods_render_the_feast_repo_into_a_writable_volume():
    for f, d in KSERVE:
        if d["kind"] != "InferenceService":
            continue
        for part in ("predictor", "transformer"):
            comp = d["spec"].get(part) or {}
            for c in comp.get("containers", []):
                env = {e["name"]: e.get("value") for e in c["env"]}
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                mount = next(p for p in mounts if env["HFCAST_FEAST_REPO"].startswith(p + "/"))
                vol = next(v for v in comp["volumes"] if v["name"] == mounts[mount])
                assert "emptyDir" in vol, f"{f} {part}: the Feast repo must live in a writable volume"
                assert {"configMapRef": {"name": "hfcast-config"}} in c["envFrom"], f
    assert _obj("ConfigMap", "hfcast-config")["data"]["HFCAST_FEAST_ONLINE"] == \
        "redis://:${REDIS_PASSWORD}@redis.hfcast.svc.cluster.local:6379"  # the password from the pod's env


# --- resources and build context ---------------------------------------------------------------------------

def _pod_containers(doc: dict) -> list[dict]:
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        return doc["spec"]["template"]["spec"]["containers"]
    if doc["kind"] in KSERVE_KINDS:
        return list(_containers(doc["spec"])) + [
            (doc["spec"].get("predictor") or {}).get("model", {})] * bool((doc["spec"].get("predictor") or {}).get("model"))
    return []


@pytest.mark.parametrize("item", [i for i in OBJECTS if _pod_containers(i[1])], ids=_id)
def test_every_workload_requests_and_limits_cpu_and_memory(item):
    f, doc = item
    for c in _pod_containers(doc):
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(kind) or {}), f"{f} {c.get('name')}: {kind} cpu+memory missing"
        if "nvidia.com/gpu" in (res.get("limits") or {}):
            assert doc["kind"] == "InferenceService"


def test_dockerignore_keeps_the_venv_and_state_out_but_not_what_images_copy():
    ignored = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert ".venv/" in ignored and ".hfcast/" in ignored and ".git/" in ignored
    copied = set()
    for df in ("docker/Dockerfile", "docker/Dockerfile.gpu", "serving/Dockerfile"):
        for line in (ROOT / df).read_text().splitlines():
            if line.startswith("COPY "):
                copied |= set(line.split()[1:-1])
    for src in copied:
        assert not any(src.rstrip("/") == pat.rstrip("/") or src.startswith(pat) for pat in ignored), f"{src} is ignored"


# --- compiled pipelines: the IR as Kubeflow Pipelines parses it ------------------------------------------

COMPILED = sorted((ROOT / "pipelines" / "compiled").glob("*.yaml"))


@pytest.mark.parametrize("path", COMPILED, ids=lambda p: p.name)
def test_compiled_pipeline_parses_into_pipeline_spec_with_no_unknown_field(path):
    docs = _docs(path)
    assert 1 <= len(docs) <= 2
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    assert spec.pipeline_info.name and spec.root.dag.tasks
    executors = docs[0]["deploymentSpec"]["executors"]  # a Struct in PipelineSpec: parse each strictly
    for name, executor in executors.items():
        parsed = json_format.ParseDict(executor, pipeline_spec_pb2.PipelineDeploymentConfig.ExecutorSpec(),
                                       ignore_unknown_fields=False)
        assert parsed.container.image.startswith("ghcr.io/hfcast/"), name
    if len(docs) == 2:  # platformSpec: Kubernetes-specific settings of the run
        json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec(), ignore_unknown_fields=False)


def test_pipeline_spec_parse_rejects_an_unknown_field():
    doc = _docs(COMPILED[0])[0]
    bad = copy.deepcopy(doc)
    bad["pipelineInfo"]["nmae"] = "typo"
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(bad, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    name, executor = next(iter(doc["deploymentSpec"]["executors"].items()))
    bad_exec = copy.deepcopy(executor)
    bad_exec["container"]["imagee"] = "x"
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(bad_exec, pipeline_spec_pb2.PipelineDeploymentConfig.ExecutorSpec(),
                              ignore_unknown_fields=False)


def test_gpu_training_exports_in_the_gpu_image_cpu_training_in_the_cpu_image():
    from components._image import GPU_IMAGE, IMAGE

    for name, image, gpu in (("training_gpu.yaml", GPU_IMAGE, True), ("training_cpu.yaml", IMAGE, False)):
        container = _docs(ROOT / "pipelines" / "compiled" / name)[0]["deploymentSpec"]["executors"]["exec-export-model"]["container"]
        assert container["image"] == image, name
        assert (container.get("resources", {}).get("accelerator", {}).get("resourceType") == "nvidia.com/gpu") == gpu, name


def test_recurring_run_job_passes_only_parameters_the_monitoring_pipeline_has():
    job = next(d for f, d in OBJECTS if d["kind"] == "Job" and d["metadata"]["name"] == "hfcast-monitoring-schedule")
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    params = {cmd[i + 1].split("=", 1)[0] for i, a in enumerate(cmd) if a in ("--param", "-p")}
    inputs = _docs(ROOT / "pipelines" / "compiled" / "monitoring.yaml")[0]["root"]["inputDefinitions"]["parameters"]
    assert params and params <= set(inputs), params - set(inputs)
