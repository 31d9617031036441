"""Deploy a model version: the KServe InferenceService on a cluster, a marker file on one machine."""

from kfp.dsl import Artifact, Output

from components._image import hfcast_component


@hfcast_component
def deploy_model(
    version: str,
    deployment: Output[Artifact],
    target: str = "auto",
    home: str = "",
    namespace: str = "hfcast",
    triton_uri: str = "",
) -> str:
    """Point serving at model version ``version``.

    Args:
        target: ``auto`` (``kserve-cpu`` inside a Kubernetes pod, ``local`` elsewhere), ``local`` (embedded default: write ``<home>/serving/deployed.json``, which
            ``hfcast serve`` / the demo read to (re)start the local server on that version),
            ``kserve-cpu`` (the predictor image on CPU, onnxruntime) or ``kserve-gpu`` (Triton +
            TensorRT on one GPU behind the feature transformer). The InferenceService specs come
            from ``serving/manifests.py`` (committed as ``manifests/serving/*.yaml``); the pod's
            ServiceAccount needs the ``hfcast-pipeline`` Role (``manifests/base/rbac.yaml``).
        namespace: where the InferenceService lives.
        triton_uri: the Triton repository for ``kserve-gpu`` ('' = the manifests' default URI).

    Returns:
        What was deployed: the marker path or ``namespace/name`` of the InferenceService.
    """
    import datetime as dt
    import json
    import logging
    from pathlib import Path

    logging.basicConfig(level=logging.INFO)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if target == "auto":
        import os

        target = "kserve-cpu" if os.environ.get("KUBERNETES_SERVICE_HOST") else "local"
    if target == "local":
        from components._settings import make_settings

        s = make_settings(home=home)
        marker = s.home / "serving" / "deployed.json"
        marker.parent.mkdir(parents=True, exist_ok=True)
        info = {"model_ref": f"{s.model_name}/{version}", "version": version, "deployed_at": now, "target": target}
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        tmp.replace(marker)  # atomic: a server polling the marker never reads half a file
        where = str(marker)
    elif target in ("kserve-cpu", "kserve-gpu"):
        from kubernetes import client, config
        from kubernetes.client.rest import ApiException

        from serving import manifests

        if target == "kserve-cpu":
            isvc = manifests.cpu_isvc(ref=f"hfcast/{version}")
        else:
            isvc = manifests.gpu_isvc(triton_uri or manifests.TRITON_URI)
        body = manifests.to_dict(isvc)
        body["metadata"]["namespace"] = namespace
        body["metadata"].setdefault("annotations", {})["hfcast/model-version"] = version  # new revision per version
        name = body["metadata"]["name"]
        config.load_incluster_config()
        api = client.CustomObjectsApi()
        group, ver, plural = "serving.kserve.io", "v1beta1", "inferenceservices"
        try:
            api.get_namespaced_custom_object(group, ver, namespace, plural, name)
            api.patch_namespaced_custom_object(group, ver, namespace, plural, name, body)
            logging.info("patched InferenceService %s/%s to version %s", namespace, name, version)
        except ApiException as exc:
            if exc.status != 404:
                raise
            api.create_namespaced_custom_object(group, ver, namespace, plural, body)
            logging.info("created InferenceService %s/%s on version %s", namespace, name, version)
        info = {"isvc": f"{namespace}/{name}", "version": version, "deployed_at": now, "target": target}
        where = f"{namespace}/{name}"
    else:
        raise ValueError(f"deploy target must be local, kserve-cpu or kserve-gpu, got {target!r}")
    deployment.metadata.update(info)
    Path(deployment.path).write_text(json.dumps(info, indent=1))
    return where
