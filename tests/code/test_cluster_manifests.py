"""Cluster manifests and Dockerfiles: they parse, kustomize references resolve, images are pinned,
GPUs are requested exactly where GPU work runs. (No API server here: structure is what is checked.)"""

import inspect
import re
from pathlib import Path

import pytest
import yaml

from components._image import GPU_IMAGE, IMAGE
from pipelines.names import pipeline_function

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
ALL_YAML = sorted(p for p in MANIFESTS.rglob("*.yaml"))
KUSTOMIZATIONS = sorted(MANIFESTS.rglob("kustomization.yaml"))
PINNED = re.compile(r"^[\w./-]+(:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})$")


def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _images(node):
    """Every value of an ``image`` key anywhere in a document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "image" and isinstance(v, str):
                yield v
            else:
                yield from _images(v)
    elif isinstance(node, list):
        for v in node:
            yield from _images(v)


def _pinned(image):
    return bool(PINNED.match(image)) and not image.endswith(":latest") and (":" in image.split("/")[-1] or "@" in image)


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_manifest_parses(path):
    docs = _docs(path)
    assert docs, f"{path} is empty"
    for d in docs:
        if isinstance(d, dict) and "kind" in d and path.name != "kustomization.yaml":
            assert d.get("apiVersion") and d.get("metadata", {}).get("name"), path


def _resources(kdir):
    """(kind, name) of every object a kustomization builds, following directory resources."""
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    out = set()
    for r in k.get("resources", []):
        target = (kdir / r).resolve()
        if target.is_dir():
            out |= _resources(target)
        else:
            out |= {(d["kind"], d["metadata"]["name"]) for d in _docs(target)}
    return out


@pytest.mark.parametrize("kfile", KUSTOMIZATIONS, ids=lambda p: str(p.parent.relative_to(MANIFESTS)))
def test_kustomize_references_resolve(kfile):
    k = yaml.safe_load(kfile.read_text())
    kdir = kfile.parent
    for r in k.get("resources", []):
        target = (kdir / r).resolve()
        assert target.exists(), f"{kfile}: resource {r} does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), f"{kfile}: {r} is a folder without kustomization.yaml"
    built = _resources(kdir)
    for p in k.get("patches", []):
        assert (kdir / p["path"]).exists(), f"{kfile}: patch file {p['path']} missing"
        t = p["target"]
        assert (t["kind"], t["name"]) in built, f"{kfile}: patch targets {t} which the kustomization does not build"
        patch = yaml.safe_load((kdir / p["path"]).read_text())
        if isinstance(patch, list):  # JSON 6902: the paths it replaces exist in the target
            doc = next(d for f in _files(kdir) for d in _docs(f) if (d["kind"], d["metadata"]["name"]) == (t["kind"], t["name"]))
            for op in patch:
                node = doc
                for part in op["path"].strip("/").split("/"):
                    part = part.replace("~1", "/").replace("~0", "~")  # JSON pointer escapes
                    node = node[int(part)] if isinstance(node, list) else node[part]
        else:
            assert (patch["kind"], patch["metadata"]["name"]) == (t["kind"], t["name"])


def _files(kdir):
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    for r in k.get("resources", []):
        target = (kdir / r).resolve()
        yield from (_files(target) if target.is_dir() else [target])


def test_dev_overlay_builds_the_platform_services():
    built = _resources(MANIFESTS / "overlays" / "dev")
    for want in [("Deployment", "mlflow"), ("StatefulSet", "postgres"), ("Deployment", "redis"),
                 ("Deployment", "seaweedfs"), ("Service", "minio"), ("ServiceAccount", "hfcast-pipeline"),
                 ("Role", "hfcast-pipeline"), ("RoleBinding", "hfcast-pipeline"), ("PodDefault", "hfcast-settings"),
                 ("Job", "hfcast-monitoring-schedule"), ("ConfigMap", "hfcast-config")]:
        assert want in built, want
    assert not any(kind == "Secret" for kind, _ in built), "secrets are templates, never built"


def test_secret_templates_hold_no_secrets():
    for p in (MANIFESTS / "secrets").glob("*.yaml"):
        for d in _docs(p):
            assert d["kind"] == "Secret"
            assert d["metadata"]["name"] + ".template.yaml" == p.name
            for v in d.get("stringData", {}).values():
                assert "<" in v and ">" in v, f"{p.name}: a real-looking value; keep placeholders only"
    for p in ALL_YAML:
        for d in _docs(p):
            if isinstance(d, dict) and d.get("kind") == "Secret":
                assert "secrets" in p.parts, f"{p}: a Secret outside the templates folder"


def test_every_image_is_pinned():
    images = set()
    for p in ALL_YAML + sorted((ROOT / "pipelines" / "compiled").glob("*.yaml")):
        for d in _docs(p):
            images |= set(_images(d))
    assert IMAGE in images and GPU_IMAGE in images
    for image in images:
        assert _pinned(image), f"image {image!r} is not pinned to a tag or digest (or uses :latest)"


def _dockerfile_bases(path):
    text = path.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    return [args.get(m.strip("${}"), m) for m in re.findall(r"^FROM (\S+)", text, re.M)]


def test_dockerfiles_pin_their_base_images_in_one_place():
    env = dict(line.split("=", 1) for line in (ROOT / "docker" / "images.env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["HFCAST_IMAGE"] == IMAGE and env["HFCAST_GPU_IMAGE"] == GPU_IMAGE
    cpu, gpu = _dockerfile_bases(ROOT / "docker" / "Dockerfile"), _dockerfile_bases(ROOT / "docker" / "Dockerfile.gpu")
    assert cpu == [env["BASE_IMAGE"]] and gpu == [env["CUDA_BASE_IMAGE"]]
    for base in cpu + gpu + _dockerfile_bases(ROOT / "serving" / "Dockerfile"):
        assert _pinned(base), base
    assert "cuda" in gpu[0] and "cuda" not in cpu[0]
    cpu_text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "whl/cpu torch==" in cpu_text  # never the multi-GB CUDA torch in the CPU image
    assert "whl/cu" in (ROOT / "docker" / "Dockerfile.gpu").read_text()


def test_gpu_requested_only_where_gpu_work_runs():
    gpu_objects = []
    for p in ALL_YAML:
        for d in _docs(p):
            if not (isinstance(d, dict) and d.get("kind") == "Profile") and "nvidia.com/gpu" in yaml.safe_dump(d):  # a quota is no request
                gpu_objects.append((p.name, d.get("metadata", {}).get("name")))
    # the GPU InferenceService (Triton + TensorRT) only; platform services and the CPU service never
    assert gpu_objects == [("isvc-gpu-triton.yaml", "hfcast-gpu")]
    isvc = _docs(MANIFESTS / "serving" / "isvc-gpu-triton.yaml")[0]
    assert isvc["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in yaml.safe_dump(isvc["spec"]["transformer"])


def test_recurring_monitoring_job_submits_the_monitoring_pipeline_with_a_cron():
    job = _docs(MANIFESTS / "overlays" / "dev" / "platform" / "monitoring-recurring-run-job.yaml")[0]
    spec = job["spec"]["template"]["spec"]
    cmd = spec["containers"][0]["command"]
    assert cmd[:4] == ["hfcast", "pipeline", "submit", "monitoring"] and "--recurring-cron" in cmd
    assert len(cmd[cmd.index("--recurring-cron") + 1].split()) == 6  # KFP cron has a seconds field
    assert spec["serviceAccountName"] == "hfcast-pipeline"
    accepted = set(inspect.signature(pipeline_function("monitoring").pipeline_func).parameters)
    given = {cmd[i + 1].split("=", 1)[0] for i, arg in enumerate(cmd) if arg == "--param"}
    assert given and given <= accepted, given - accepted  # KFP refuses a run with an unknown parameter
