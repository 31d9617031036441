"""Every overlay as ``kubectl kustomize`` renders it: what Kubeflow and KServe look for survives the
transformers, the ServingRuntime is part of it, the release pins every image by digest, and every
core object stays valid for the API server's strict field validation."""

from __future__ import annotations

import copy
import importlib.util
import shutil

import kubernetes_validate
import pytest

from _cluster import MANIFESTS, OVERLAYS, ROOT, find, render
from serving import manifests as serving_manifests

CORE_GROUPS = ("v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1", "networking.k8s.io/v1", "policy/v1")
PROFILE_LABELS = {"app.kubernetes.io/part-of": "kubeflow-profile", "pipelines.kubeflow.org/enabled": "true",
                  "istio-injection": "enabled"}


def _pin_release():
    spec = importlib.util.spec_from_file_location("pin_release", ROOT / "docker" / "pin_release.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_a_dev_and_a_release_overlay():
    assert {"dev", "release"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_namespace_keeps_kubeflows_profile_labels(overlay):
    """Kubeflow's PodDefault webhook acts only where part-of is kubeflow-profile; kustomize's label
    transformer would have rewritten it to hfcast (and the profile controller keeps an existing key)."""
    objects = render(overlay)
    namespace = find(objects, "Namespace", "hfcast")
    labels = namespace["metadata"]["labels"]
    assert {k: labels.get(k) for k in PROFILE_LABELS} == PROFILE_LABELS
    assert labels.get("pod-security.kubernetes.io/warn") == "restricted"
    others = [o for o in objects if o["kind"] != "Namespace"]
    unlabelled = [f"{o['kind']}/{o['metadata']['name']}" for o in others
                  if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/part-of") != "hfcast"]
    assert not unlabelled, f"not labelled part-of=hfcast: {unlabelled}"
    assert all(o["metadata"].get("namespace") == "hfcast" for o in others)


def test_the_label_check_fails_when_the_namespace_goes_through_the_transformer(tmp_path):
    """The failure this guards against, reproduced: the namespace inside the labelled base."""
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "labels:\n  - pairs: {app.kubernetes.io/part-of: hfcast}\nresources:\n  - namespace.yaml\n")
    (tmp_path / "namespace.yaml").write_text((MANIFESTS / "namespace" / "namespace.yaml").read_text())
    from _cluster import render_dir

    namespace = render_dir(tmp_path)[0]
    assert namespace["metadata"]["labels"]["app.kubernetes.io/part-of"] == "hfcast"  # what Kubeflow would ignore


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_serving_runtime_comes_with_every_overlay(overlay):
    runtime = find(render(overlay), "ServingRuntime", serving_manifests.RUNTIME)
    generated = serving_manifests.to_dict(serving_manifests.triton_runtime())
    image, want = runtime["spec"]["containers"][0].pop("image"), generated["spec"]["containers"][0].pop("image")
    assert image == want or image.startswith(want.split(":")[0] + "@sha256:")  # the release pins it by digest
    assert runtime["spec"] == generated["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_core_objects_are_valid_strictly(overlay):
    checked = 0
    for obj in render(overlay):
        if obj["apiVersion"] in CORE_GROUPS:
            kubernetes_validate.validate(obj, "1.37", strict=True)
            kubernetes_validate.validate(obj, "1.30", strict=True)
            checked += 1
    assert checked >= 20


def test_the_release_overlay_names_every_image_by_digest():
    pin = _pin_release()
    objects = render("release")
    images = pin.images(objects)
    assert len(images) >= 4
    assert not [i for i in images if not pin.DIGEST.search(i)], images
    planted = copy.deepcopy(find(objects, "Deployment", "redis"))
    planted["spec"]["template"]["spec"]["containers"][0]["image"] = "redis:7.4.1-bookworm"
    tag_only = [p for p in pin.problems([*objects, planted]) if "tag only" in p]
    assert tag_only == ["redis:7.4.1-bookworm: named by tag only (pin it by digest)"]


def test_the_release_gate_refuses_placeholders_and_passes_pinned_digests(tmp_path):
    """The repository holds the all-zero 'unreleased' digest until a release job pins real ones."""
    pin = _pin_release()
    kustomization = MANIFESTS / "overlays" / "release" / "kustomization.yaml"
    committed = pin.problems(render("release"))
    unreleased = [p for p in committed if "unreleased" in p]
    assert unreleased and len(unreleased) == len(committed)  # placeholders, never a tag
    names = [i.split("@")[0] for i in pin.images(render("release"))]
    digests = "\n".join(f"{n}:some-tag@sha256:{i:064x}" for i, n in enumerate(names, 1))
    copy_of_manifests = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy_of_manifests)
    overlay = copy_of_manifests / "overlays" / "release"
    (overlay / "kustomization.yaml").write_text(pin.pin(kustomization, pin.read_digests(digests)))
    assert pin.problems(pin.render(overlay)) == []
    with pytest.raises(ValueError, match="not images of"):
        pin.pin(kustomization, {"docker.io/unknown": "sha256:" + "1" * 64})
    with pytest.raises(ValueError, match="line 1"):
        pin.read_digests("redis:7.4.1-bookworm\n")
