"""Deploy a model version: the KServe InferenceService on a cluster, a marker file on one machine."""

from kfp.dsl import Artifact, Output

from components._image import hfcast_component


@hfcast_component
def deploy_model(
    version: str,
    deployment: Output[Artifact],
    settings: str = "",
    target: str = "auto",
    namespace: str = "hfcast",
    triton_uri: str = "",
) -> str:
    """Point serving at model version ``version`` (``serving.deploy.deploy``).

    Args:
        target: ``auto`` (``kserve-cpu`` inside a Kubernetes pod, ``local`` elsewhere), ``local``
            (``<home>/serving/deployed.json``, which a local server polls), ``kserve-cpu`` or
            ``kserve-gpu`` (create or patch the InferenceService of ``serving/manifests.py``; the
            pod's ServiceAccount needs the ``hfcast-pipeline`` Role of ``manifests/base/rbac.yaml``).
        namespace: where the InferenceService lives.
        triton_uri: the Triton repository for ``kserve-gpu`` ('' = the manifests' default URI).

    Returns:
        What was deployed: the marker path or ``namespace/name`` of the InferenceService.
    """
    import json
    from pathlib import Path

    from components._common import step_settings
    from serving.deploy import deploy

    info = deploy(step_settings(settings), version, target=target, namespace=namespace, triton_uri=triton_uri)
    deployment.metadata.update(info)
    Path(deployment.path).write_text(json.dumps(info, indent=1))
    return info["where"]
