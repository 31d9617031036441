"""The deployment mode, as each supported KServe reads it (cluster_reference/kserve.yaml, from KServe's
GetDeploymentMode): every InferenceService must land in serverless (Knative) mode on KServe 0.15
(Kubeflow 1.10.2) and on 0.16+, or canary traffic silently does nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving import manifests as m

MODE = yaml.safe_load((Path(__file__).parent / "cluster_reference" / "kserve.yaml").read_text())["deployment_mode"]
DEFAULT = "RawDeployment"  # a cluster whose default is not serverless: where a wrong value shows


def resolved_mode(annotations: dict[str, str], kserve: str, cluster_default: str = DEFAULT) -> str:
    """The mode KServe ``kserve`` (0.15 | 0.16) gives an InferenceService with these annotations."""
    value = annotations.get(MODE["annotation"])
    if value not in MODE["accepted"][kserve]:
        return MODE["normalized"][kserve].get(cluster_default, cluster_default)
    return MODE["normalized"][kserve].get(value, value)


@pytest.mark.parametrize("kserve", sorted(MODE["accepted"]))
@pytest.mark.parametrize("name", sorted(m.build_all()))
def test_every_inference_service_is_serverless_on_each_supported_kserve(name, kserve):
    annotations = m.build_all()[name].metadata.annotations
    assert resolved_mode(annotations, kserve) == MODE["serverless"][kserve], (name, kserve)


def test_the_knative_value_would_fall_back_to_the_cluster_default_on_kserve_015():
    """What the manifests carried before: honoured from 0.16 only."""
    knative = {MODE["annotation"]: "Knative"}
    assert resolved_mode(knative, "0.16") == "Knative"
    assert resolved_mode(knative, "0.15") == DEFAULT


def test_the_canary_is_the_cpu_service_with_a_traffic_split():
    canary = m.canary_isvc(percent=10)
    assert canary.metadata.name == m.cpu_isvc().metadata.name
    assert canary.spec.predictor.canary_traffic_percent == 10
    assert resolved_mode(canary.metadata.annotations, "0.15") == "Serverless"
