"""Pipeline steps on a cluster: GPU steps tolerate the GPU nodes' taint through kfp-kubernetes, and the
platform spec the compiled pipelines carry parses as KFP's Kubernetes executor config (no unknown field)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2

from pipelines.steps import GPU_TOLERATION

COMPILED = Path(__file__).resolve().parents[2] / "pipelines" / "compiled"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((COMPILED / name).read_text()) if d]


def _gpu_executors(spec: dict) -> set[str]:
    return {n for n, ex in spec["deploymentSpec"]["executors"].items()
            if ex["container"].get("resources", {}).get("accelerator", {}).get("resourceType") == "nvidia.com/gpu"}


@pytest.mark.parametrize("name", sorted(p.name for p in COMPILED.glob("*.yaml")))
def test_every_gpu_step_and_no_other_tolerates_the_gpu_taint(name):
    docs = _docs(name)
    gpu = _gpu_executors(docs[0])
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    tolerating = set()
    for executor, config in platform.items():
        parsed = json_format.ParseDict(config, k8s_pb2.KubernetesExecutorConfig(), ignore_unknown_fields=False)
        if any(t.key == GPU_TOLERATION["key"] and t.operator == "Exists" and t.effect == "NoSchedule"
               for t in parsed.tolerations):
            tolerating.add(executor)
    assert tolerating == gpu, name
    if name == "training_gpu.yaml":
        assert gpu == {"exec-train-model", "exec-export-model"}
