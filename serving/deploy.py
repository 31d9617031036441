"""Point serving at a model version: create or patch the KServe InferenceService on a cluster, or
write the marker file a local server polls on one machine.

Why here and not in a component: this is serving's knowledge (which InferenceService, which
namespace, how a new version becomes a new revision), tested without Kubeflow; the pipeline's
``deploy_model`` step only calls :func:`deploy`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only
    from hfcast.config import Settings

log = logging.getLogger(__name__)

TARGETS = ("local", "kserve-cpu", "kserve-gpu")
GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
VERSION_ANNOTATION = "hfcast/model-version"  # a changed annotation = a new revision per model version


def resolve_target(target: str) -> str:
    """``auto``: ``kserve-cpu`` inside a Kubernetes pod, ``local`` elsewhere; else ``target`` checked."""
    if target == "auto":
        return "kserve-cpu" if os.environ.get("KUBERNETES_SERVICE_HOST") else "local"
    if target not in TARGETS:
        raise ValueError(f"deploy target must be auto, {', '.join(TARGETS)}, got {target!r}")
    return target


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def deploy_local(settings: Settings, version: str) -> dict[str, Any]:
    """Write ``<home>/serving/deployed.json`` atomically (a polling server never reads half a file)."""
    marker = settings.home / "serving" / "deployed.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    info = {"model_ref": f"{settings.model_name}/{version}", "version": version, "deployed_at": _now(),
            "target": "local"}
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(marker)
    return {**info, "where": str(marker)}


def isvc_body(settings: Settings, version: str, target: str, namespace: str, triton_uri: str = "") -> dict[str, Any]:
    """The InferenceService for ``target`` (``serving.manifests``), in ``namespace``, tagged with the version."""
    from serving import manifests

    if target == "kserve-cpu":
        isvc = manifests.cpu_isvc(ref=f"{settings.model_name}/{version}")
    else:
        isvc = manifests.gpu_isvc(triton_uri or manifests.TRITON_URI)
    body = manifests.to_dict(isvc)
    body["metadata"]["namespace"] = namespace
    body["metadata"].setdefault("annotations", {})[VERSION_ANNOTATION] = str(version)
    return body


def apply_isvc(api: Any, body: dict[str, Any]) -> str:
    """Create the InferenceService, or patch it when it exists; returns ``created`` or ``patched``.

    ``api``: a ``kubernetes.client.CustomObjectsApi`` (or anything with its three methods).
    """
    from kubernetes.client.rest import ApiException

    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        return "created"
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body)
    return "patched"


def _in_cluster_api() -> Any:
    from kubernetes import client, config

    config.load_incluster_config()
    return client.CustomObjectsApi()


def deploy(settings: Settings, version: str, target: str = "auto", namespace: str = "hfcast", triton_uri: str = "",
           api: Any = None) -> dict[str, Any]:
    """Point serving at ``version``; returns what was deployed (``where``: marker path or namespace/name).

    Args:
        target: auto | local | kserve-cpu | kserve-gpu (see :func:`resolve_target`).
        namespace: the InferenceService's namespace (kserve targets).
        triton_uri: the Triton repository of ``kserve-gpu`` ('' = ``serving.manifests.TRITON_URI``).
        api: the Kubernetes custom-objects API (default: in-cluster configuration).
    """
    target = resolve_target(target)
    if target == "local":
        return deploy_local(settings, version)
    body = isvc_body(settings, version, target, namespace, triton_uri)
    action = apply_isvc(api or _in_cluster_api(), body)
    where = f"{namespace}/{body['metadata']['name']}"
    log.info("%s InferenceService %s on version %s", action, where, version)
    return {"isvc": where, "version": str(version), "deployed_at": _now(), "target": target, "action": action,
            "where": where}
