"""Serving manifests: the committed YAML is what the typed KServe SDK models build, and is well-formed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from serving import manifests as m

ROOT = Path(__file__).resolve().parents[2]
SERVING = ROOT / "manifests" / "serving"


@pytest.mark.parametrize("name", sorted(m.build_all()))
def test_committed_yaml_equals_generated_and_round_trips(name):
    committed = yaml.safe_load((SERVING / name).read_text())
    generated = m.to_dict(m.build_all()[name])
    assert committed == generated, f"{name} is stale: run `python -m serving.manifests`"
    typed = m.from_dict(committed)
    assert m.to_dict(typed) == committed
    assert committed["apiVersion"] == "serving.kserve.io/v1beta1" and committed["kind"] == "InferenceService"


def test_unknown_field_is_refused():
    doc = m.to_dict(m.cpu_isvc())
    doc["spec"]["predictor"]["canaryPercent"] = 10  # a typo of canaryTrafficPercent
    with pytest.raises(ValueError, match="canaryPercent"):
        m.from_dict(doc)


def test_gpu_service_serves_the_tensorrt_plan_behind_the_transformer():
    isvc = m.gpu_isvc()
    model = isvc.spec.predictor.model
    assert model.runtime == m.RUNTIME and model.model_format.name == "tensorrt"
    assert model.protocol_version == "v2" and model.storage_uri == m.TRITON_URI
    assert model.storage_uri.endswith("/triton")  # the Triton repository root that `hfcast export` writes
    assert model.resources.limits["nvidia.com/gpu"] == "1"
    tr = isvc.spec.transformer.containers[0]
    assert tr.image == m.IMAGE and tr.command == ["python", "-m", "serving.feature_transformer"]
    assert "--predictor_protocol" in tr.args and tr.args[tr.args.index("--predictor_protocol") + 1] == "v2"
    assert "nvidia.com/gpu" not in tr.resources.limits


def test_cpu_service_runs_the_predictor_image_on_the_champion():
    c = m.cpu_isvc().spec.predictor.containers[0]
    assert c.image == m.IMAGE and c.command == ["python", "-m", "serving"]
    assert c.args[c.args.index("--model_ref") + 1] == "hfcast@champion"
    assert c.resources.limits == {"cpu": "2", "memory": "2Gi"}
    assert m.cpu_isvc().spec.predictor.canary_traffic_percent is None


def test_canary_is_serverless_and_splits_traffic():
    isvc = m.canary_isvc(percent=10)
    assert isvc.metadata.annotations["serving.kserve.io/deploymentMode"] == "Serverless"  # 0.15 and 0.16+
    assert isvc.metadata.name == m.cpu_isvc().metadata.name  # a canary updates the same service
    assert isvc.spec.predictor.canary_traffic_percent == 10
    c = isvc.spec.predictor.containers[0]
    assert c.args[c.args.index("--model_ref") + 1] == "hfcast@challenger"
    with pytest.raises(ValueError):
        m.canary_isvc(percent=100)


def test_image_is_pinned_and_dockerfile_matches():
    assert not m.IMAGE.endswith(":latest") and re.search(r":\d+\.\d+\.\d+$", m.IMAGE)
    dockerfile = (ROOT / "serving" / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.M).group(1)
    assert re.search(r"(@sha256:[0-9a-f]{64}|:\d+\.\d+\.\d+[-\w]*)$", base), base
    assert m.IMAGE in dockerfile  # the build command names the tag the manifests use
    assert 'ENTRYPOINT ["python", "-m", "serving"]' in dockerfile
