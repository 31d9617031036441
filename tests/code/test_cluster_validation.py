"""What a Kubernetes API server, KServe and Kubeflow Pipelines would reject, checked without them.

- core kinds: kubernetes-validate's strict JSON schemas of a recent Kubernetes (an unknown field
  fails, as server-side field validation does), also after the dev overlay's patches;
- KServe kinds (InferenceService, ServingRuntime): a strict schema derived from the typed KServe
  SDK models' attribute maps (an unknown field at any depth fails), and every container inside
  validated as a core Pod container;
- Kubeflow's PodDefault: its spec's fields, with env/volumes/mounts validated as a Pod's;
- compiled pipelines: the IR parsed into ``PipelineSpec`` (and each executor into
  ``ExecutorSpec``) with unknown fields rejected;
- RBAC: the verbs Argo's executor and the KFP launcher need, for every account steps run as.
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
PODDEFAULT_FIELDS = {"desc", "selector", "env", "envFrom", "volumes", "volumeMounts", "serviceAccountName",
                     "automountServiceAccountToken", "annotations", "labels", "tolerations", "imagePullSecrets",
                     "initContainers", "sidecars", "command", "args"}


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _objects() -> list[tuple[str, dict]]:
    """(file, object) of every Kubernetes object in manifests/ (kustomizations and patches excluded)."""
    out = []
    for p in sorted(MANIFESTS.rglob("*.yaml")):
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
    assert kinds <= {"PodDefault", "Profile"}, f"objects no test validates: {kinds}"
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


def _apply_json6902(doc: dict, ops: list) -> dict:
    """The subset kustomize applies here: ``replace`` and ``add`` on existing parents."""
    out = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] in ("replace", "add"), op
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].strip("/").split("/")]
        node = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = op["value"]
        else:
            assert op["op"] == "add" or last in node, f"{op['path']} does not exist in {doc['metadata']['name']}"
            node[last] = op["value"]
    return out


def test_dev_overlay_patched_objects_stay_valid():
    kdir = MANIFESTS / "overlays" / "dev"
    kust = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    checked = 0
    for patch in kust["patches"]:
        target = next(d for f, d in OBJECTS if (d["kind"], d["metadata"]["name"]) == (patch["target"]["kind"], patch["target"]["name"])
                      and not f.startswith("overlays"))
        body = yaml.safe_load((kdir / patch["path"]).read_text())
        if isinstance(body, list):
            patched = _apply_json6902(target, body)
        else:  # strategic merge of a ConfigMap: data keys override
            patched = {**copy.deepcopy(target), "data": {**target.get("data", {}), **body.get("data", {})}}
        kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
        checked += 1
    assert checked == len(kust["patches"]) >= 4


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


# --- Kubeflow: profile namespace, the KFP token, RBAC ---------------------------------------------------

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
    assert {"configMapRef": {"name": "hfcast-config"}} in pd["envFrom"] and {"secretRef": {"name": "hfcast-s3"}} in pd["envFrom"]


def _granted(role: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                out.setdefault((g, r), set()).update(rule["verbs"])
    return out


NEEDED = {  # what each party in a step pod calls on the Kubernetes API
    "argo executor": {("argoproj.io", "workflowtaskresults"): {"create", "patch"}, ("", "pods"): {"get", "patch"}},
    "kfp launcher": {("", "configmaps"): {"get"}, ("", "secrets"): {"get"}},
    "hfcast trigger": {("pipelines.kubeflow.org", "runs"): {"create", "get"},
                       ("pipelines.kubeflow.org", "recurringruns"): {"create", "get"}},
    "hfcast deploy": {("serving.kserve.io", "inferenceservices"): {"get", "create", "patch"}},
}


@pytest.mark.parametrize("party", sorted(NEEDED))
def test_rbac_grants_what_pipeline_steps_call(party):
    role = _obj("Role", "hfcast-pipeline")
    granted = _granted(role)
    for key, verbs in NEEDED[party].items():
        assert verbs <= granted.get(key, set()), f"{party}: {key} needs {verbs - granted.get(key, set())}"
    binding = _obj("RoleBinding", "hfcast-pipeline")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "hfcast-pipeline"}
    subjects = {s["name"] for s in binding["subjects"] if s["kind"] == "ServiceAccount"}
    assert {"hfcast-pipeline", "default-editor"} <= subjects
    job = next(
        d for f, d in OBJECTS if d["kind"] == "Job" and d["metadata"]["name"] == "hfcast-monitoring-schedule")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] in subjects


# --- GPU serving: one pin for Triton and TensorRT; S3 for the storage initializer ------------------------

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


def test_storage_initializer_gets_s3_credentials_endpoint_and_region():
    isvc = _obj("InferenceService", "hfcast-gpu")
    sa = _obj("ServiceAccount", isvc["spec"]["predictor"]["serviceAccountName"])
    ann = sa["metadata"]["annotations"]
    assert {"serving.kserve.io/s3-endpoint", "serving.kserve.io/s3-usehttps", "serving.kserve.io/s3-region"} <= set(ann)
    assert "://" not in ann["serving.kserve.io/s3-endpoint"]  # host[:port]: KServe adds the scheme
    assert {"name": "hfcast-s3"} in sa["secrets"]
    secret = _docs(MANIFESTS / "secrets" / "hfcast-s3.template.yaml")[0]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])
    dev = yaml.safe_load((MANIFESTS / "overlays" / "dev" / "models-sa-dev.yaml").read_text())
    patched = _apply_json6902(sa, dev)["metadata"]["annotations"]
    assert patched["serving.kserve.io/s3-endpoint"].startswith("minio.") and patched["serving.kserve.io/s3-usehttps"] == "0"


def test_inference_services_use_knative_and_gpu_pods_tolerate_gpu_nodes():
    for f, d in KSERVE:
        if d["kind"] == "InferenceService":
            assert d["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative", f
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
    assert _obj("ConfigMap", "hfcast-config")["data"]["HFCAST_FEAST_ONLINE"].startswith("redis://redis.")


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
