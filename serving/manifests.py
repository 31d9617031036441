"""The serving InferenceServices, built with the KServe SDK's typed models and written as YAML.

Why typed models: no API server runs where this is developed, and ``kubectl --dry-run=client``
needs one, so the SDK's ``V1beta1InferenceService`` classes are the schema check; a test proves
the committed YAML equals what this module builds and survives a round trip through them.

``python -m serving.manifests`` rewrites ``manifests/serving/*.yaml``.
"""

from __future__ import annotations

import re
from pathlib import Path

import kserve.models
import kubernetes.client
import yaml
from kserve import (V1alpha1ServingRuntime, V1alpha1ServingRuntimeSpec, V1alpha1SupportedModelFormat,
                    V1beta1InferenceService, V1beta1InferenceServiceSpec, V1beta1ModelFormat, V1beta1ModelSpec,
                    V1beta1PredictorSpec, V1beta1TransformerSpec)
from kserve.api_client import ApiClient
from kubernetes.client import (V1Capabilities, V1ConfigMapEnvSource, V1Container, V1ContainerPort, V1EmptyDirVolumeSource,
                               V1EnvFromSource, V1EnvVar, V1EnvVarSource, V1HTTPGetAction, V1ObjectMeta, V1Probe,
                               V1ResourceRequirements, V1SeccompProfile, V1SecretEnvSource, V1SecretKeySelector,
                               V1SecurityContext, V1Toleration, V1Volume, V1VolumeMount)

API_VERSION = "serving.kserve.io/v1beta1"
NAMESPACE = "hfcast"
IMAGE = "ghcr.io/hfcast/hfcast-predictor:0.1.0"  # built from serving/Dockerfile; a tag, never :latest
TRITON_URI = "s3://hfcast-models/hfcast/champion/triton"  # `hfcast export` output, triton/ folder
MODEL_REF = "hfcast@champion"
# Knative (serverless) mode, needed for canary traffic. The annotation's value is "Serverless": KServe
# 0.15 (Kubeflow 1.10.2) accepts only Serverless / RawDeployment / ModelMesh there and silently takes
# the cluster default for anything else, "Knative" included; 0.16+ renamed the mode to "Knative" and
# still maps "Serverless" to it. Read from KServe's GetDeploymentMode:
# tests/code/cluster_reference/kserve.yaml, docs/CLUSTER.md "Support matrix".
SERVERLESS = {"serving.kserve.io/deploymentMode": "Serverless"}
OUT_DIR = Path(__file__).resolve().parents[1] / "manifests" / "serving"
IMAGES_ENV = Path(__file__).resolve().parents[1] / "docker" / "images.env"
RUNTIME_FILE = "servingruntime-triton.yaml"
RUNTIME = "hfcast-triton"  # the project's ServingRuntime: the Triton release built with the export's TensorRT
# What every InferenceService runs as: the read-only S3 identity (Secret hfcast-s3-serving, listed by
# this account, whose annotations KServe's storage initializer reads), no Kubernetes API token.
MODELS_SA = "hfcast-models"
# Settings as every hfcast pod gets them (manifests/base/config.yaml) and serving's own identities:
# S3 read-only, the MLflow user that reads models, the Redis password HFCAST_FEAST_ONLINE names.
# Environment variables, not files, because hfcast.config, boto3, MLflow's client and Feast read them
# there. The Feast repository is rendered at start-up into a writable emptyDir, HOME and /tmp are
# another (the root filesystem is read-only).
STATE_DIR = "/var/lib/hfcast"
TMP_DIR = "/tmp"
ENV = [V1EnvVar(name="HFCAST_HOME", value=STATE_DIR),
       V1EnvVar(name="HFCAST_FEAST_REPO", value=f"{STATE_DIR}/feature_repo"),
       V1EnvVar(name="HOME", value=TMP_DIR),
       V1EnvVar(name="REDIS_PASSWORD", value_from=V1EnvVarSource(
           secret_key_ref=V1SecretKeySelector(name="hfcast-redis", key="REDIS_PASSWORD")))]
ENV_FROM = [V1EnvFromSource(config_map_ref=V1ConfigMapEnvSource(name="hfcast-config")),
            V1EnvFromSource(secret_ref=V1SecretEnvSource(name="hfcast-s3-serving")),
            V1EnvFromSource(secret_ref=V1SecretEnvSource(name="hfcast-mlflow-serving"))]
STATE_MOUNT = [V1VolumeMount(name="hfcast-state", mount_path=STATE_DIR), V1VolumeMount(name="tmp", mount_path=TMP_DIR)]
STATE_VOLUME = [V1Volume(name="hfcast-state", empty_dir=V1EmptyDirVolumeSource(size_limit="1Gi")),
                V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource(size_limit="1Gi"))]
GPU_TOLERATION = [V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
HTTP_PORT = 8080  # KServe's and Triton's HTTP port (Knative requires probes on the container's one port)
IMAGE_UID = 10001  # USER of the hfcast images (docker/Dockerfile, serving/Dockerfile)
TRITON_UID = 1000  # the triton-server user of NVIDIA's Triton images


def restricted(uid: int) -> V1SecurityContext:
    """Pod security `restricted`, at the container level: Knative admits these container fields by
    default but only a subset of the pod-level ones (its kubernetes.podspec-securitycontext flag)."""
    return V1SecurityContext(run_as_non_root=True, run_as_user=uid, run_as_group=uid, allow_privilege_escalation=False,
                             read_only_root_filesystem=True, capabilities=V1Capabilities(drop=["ALL"]),
                             seccomp_profile=V1SeccompProfile(type="RuntimeDefault"))


def _probes(ready: str, live: str) -> dict:
    return {"ports": [V1ContainerPort(container_port=HTTP_PORT, protocol="TCP")],
            "readiness_probe": V1Probe(http_get=V1HTTPGetAction(path=ready, port=HTTP_PORT), period_seconds=10),
            "liveness_probe": V1Probe(http_get=V1HTTPGetAction(path=live, port=HTTP_PORT), period_seconds=20,
                                      initial_delay_seconds=60, failure_threshold=6)}


V2_PROBES = _probes("/v2/health/ready", "/v2/health/live")  # the V2 protocol's health: KServe's server and Triton
# pod annotations for Prometheus' kubernetes-pods job: the hfcast servers' /metrics (serving/metrics.py)
# on the HTTP port, Triton's own on its metrics port
SCRAPE = {"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}
TRITON_SCRAPE = {**SCRAPE, "prometheus.io/port": "8002"}


def images_env(path: Path = IMAGES_ENV) -> dict[str, str]:
    """docker/images.env: the one place that pins base images, Triton and TensorRT."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def _resources(cpu: str, memory: str, gpu: int = 0) -> V1ResourceRequirements:
    limits = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": str(gpu)} if gpu else {})}
    return V1ResourceRequirements(requests={"cpu": cpu, "memory": memory}, limits=limits)


def _isvc(name: str, spec: V1beta1InferenceServiceSpec) -> V1beta1InferenceService:
    return V1beta1InferenceService(api_version=API_VERSION, kind="InferenceService",
                                   metadata=V1ObjectMeta(name=name, namespace=NAMESPACE, annotations=dict(SERVERLESS)),
                                   spec=spec)


def gpu_isvc(triton_uri: str = TRITON_URI, image: str = IMAGE) -> V1beta1InferenceService:
    """Triton serving the TensorRT plan on one GPU, behind the Feast feature transformer."""
    predictor = V1beta1PredictorSpec(min_replicas=1, model=V1beta1ModelSpec(
        name="kserve-container", model_format=V1beta1ModelFormat(name="tensorrt"), runtime=RUNTIME, protocol_version="v2",
        storage_uri=triton_uri, resources=_resources("4", "8Gi", gpu=1), security_context=restricted(TRITON_UID),
        volume_mounts=[V1VolumeMount(name="tmp", mount_path=TMP_DIR)]),
        service_account_name=MODELS_SA, automount_service_account_token=False, tolerations=GPU_TOLERATION,
        volumes=[V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource(size_limit="1Gi"))],
        annotations=dict(TRITON_SCRAPE))
    transformer = V1beta1TransformerSpec(
        min_replicas=1, volumes=STATE_VOLUME, service_account_name=MODELS_SA, automount_service_account_token=False,
        annotations=dict(SCRAPE), containers=[V1Container(
            name="kserve-container", image=image, command=["python", "-m", "serving.feature_transformer"],
            args=["--model_name", "hfcast", "--predictor_protocol", "v2", "--model_ref", MODEL_REF],
            env=ENV, env_from=ENV_FROM, volume_mounts=STATE_MOUNT, resources=_resources("2", "2Gi"),
            security_context=restricted(IMAGE_UID), **V2_PROBES)])
    return _isvc("hfcast-gpu", V1beta1InferenceServiceSpec(predictor=predictor, transformer=transformer))


def _cpu_predictor(ref: str, image: str, canary_percent: int | None = None) -> V1beta1PredictorSpec:
    return V1beta1PredictorSpec(min_replicas=1, max_replicas=4, canary_traffic_percent=canary_percent,
                                service_account_name=MODELS_SA, automount_service_account_token=False,
                                annotations=dict(SCRAPE), volumes=STATE_VOLUME, containers=[V1Container(
                                    name="kserve-container", image=image, command=["python", "-m", "serving"],
                                    args=["--model_name", "hfcast", "--model_ref", ref, "--runner", "onnxruntime"],
                                    env=ENV, env_from=ENV_FROM, volume_mounts=STATE_MOUNT,
                                    resources=_resources("2", "2Gi"), security_context=restricted(IMAGE_UID),
                                    **V2_PROBES)])


def cpu_isvc(ref: str = MODEL_REF, image: str = IMAGE) -> V1beta1InferenceService:
    """The hfcast predictor image on CPU (onnxruntime), V1 + V2, Feast lookups in-process."""
    return _isvc("hfcast-cpu", V1beta1InferenceServiceSpec(predictor=_cpu_predictor(ref, image)))


def canary_isvc(ref: str = "hfcast@challenger", percent: int = 10, image: str = IMAGE) -> V1beta1InferenceService:
    """The CPU service updated to the challenger with ``percent`` of traffic; the rest stays on the
    previous revision until ``canaryTrafficPercent`` is removed (promote) or the spec is reverted."""
    if not 0 < percent < 100:
        raise ValueError(f"canary percent must be in 1..99, got {percent}")
    return _isvc("hfcast-cpu", V1beta1InferenceServiceSpec(predictor=_cpu_predictor(ref, image, percent)))


def triton_runtime(images: dict[str, str] | None = None) -> V1alpha1ServingRuntime:
    """Triton at the release docker/images.env names, built with the TensorRT the GPU image exports with
    (KServe's default kserve-tritonserver runtime pins an older Triton, built for TensorRT 8)."""
    env = images or images_env()
    container = V1Container(
        name="kserve-container", image=env["TRITON_IMAGE"],
        args=["tritonserver", "--model-store=/mnt/models", "--grpc-port=9000", f"--http-port={HTTP_PORT}",
              "--allow-grpc=true", "--allow-http=true"],
        resources=_resources("1", "2Gi"), security_context=restricted(TRITON_UID),
        **V2_PROBES)
    spec = V1alpha1ServingRuntimeSpec(
        supported_model_formats=[V1alpha1SupportedModelFormat(name="tensorrt", version=env["TENSORRT_VERSION"].split(".")[0],
                                                              auto_select=True, priority=1),
                                 V1alpha1SupportedModelFormat(name="onnx", version="1", auto_select=False)],
        protocol_versions=["v2", "grpc-v2"], containers=[container],
        annotations={"hfcast.io/tensorrt-version": env["TENSORRT_VERSION"]})
    return V1alpha1ServingRuntime(api_version="serving.kserve.io/v1alpha1", kind="ServingRuntime",
                                  metadata=V1ObjectMeta(name=RUNTIME, namespace=NAMESPACE), spec=spec)


def to_dict(isvc: V1beta1InferenceService) -> dict:
    """The YAML/JSON form Kubernetes reads (camelCase keys, no nulls)."""
    return ApiClient().sanitize_for_serialization(isvc)


def _typed(data, klass: str):
    """Deserialize into the KServe / Kubernetes model named ``klass`` (KServe's own client only
    knows its own models, and the InferenceService nests Kubernetes ones)."""
    if data is None:
        return None
    m = re.fullmatch(r"list\[(.*)\]", klass)
    if m:
        return [_typed(v, m.group(1)) for v in data]
    m = re.fullmatch(r"dict\(([^,]*), (.*)\)", klass)
    if m:
        return {k: _typed(v, m.group(2)) for k, v in data.items()}
    if klass in ("str", "int", "float", "bool", "object", "date", "datetime"):
        return data
    cls = getattr(kserve.models, klass, None) or getattr(kubernetes.client, klass)
    unknown = set(data) - set(cls.attribute_map.values())
    if unknown:
        raise ValueError(f"{klass} has no field(s) {sorted(unknown)}")
    return cls(**{attr: _typed(data[key], cls.openapi_types[attr])
                  for attr, key in cls.attribute_map.items() if key in data})


def from_dict(doc: dict) -> V1beta1InferenceService:
    """Parse back into the typed models; a field the schema does not know is an error."""
    return _typed(doc, "V1beta1InferenceService")


def build_all() -> dict[str, V1beta1InferenceService]:
    return {"isvc-gpu-triton.yaml": gpu_isvc(), "isvc-cpu.yaml": cpu_isvc(), "isvc-canary.yaml": canary_isvc()}


def write_all(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, isvc in {**build_all(), RUNTIME_FILE: triton_runtime()}.items():
        path = out_dir / name
        header = "# Generated by `python -m serving.manifests` (serving/manifests.py); do not edit by hand.\n"
        path.write_text(header + yaml.safe_dump(to_dict(isvc), sort_keys=False))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_all():
        print(p)
