"""Start the retraining that the monitor decided: a Kubeflow run on a cluster, a local run otherwise."""

from kfp.dsl import Artifact, Input, Metrics, Output

from components._image import hfcast_component


@hfcast_component
def trigger_training(
    decision: Input[Metrics],
    started: Output[Artifact],
    kfp_host: str = "",
    home: str = "",
    lake_url: str = "",
    mlflow_uri: str = "",
    feast_repo: str = "",
    s3_endpoint: str = "",
    params_json: str = "",
) -> str:
    """Start the training pipeline for the model, reasons and drifted dates of ``decision``
    (the monitor's ``checks`` artifact).

    ``kfp_host`` set (or running inside a cluster): ``hfcast.trigger.trigger_kubeflow`` starts a run
    of the compiled training pipeline through the KFP API (Kubeflow has no event trigger); the
    pod's ServiceAccount needs the hfcast-pipeline Role. Otherwise ``hfcast.trigger.trigger_local``
    runs it on this machine with the kfp local runner (``pipelines.training.run_local`` in a fresh
    process, ``pipelines.local.retrain_subprocess``). Both record the
    retraining in ``<lake>/monitoring/<model>/retrain.json`` so that no second one starts on top.

    Returns:
        The run id (Kubeflow run id, or ``local-<time>``).
    """
    import json
    import logging
    import os
    from pathlib import Path

    from components._settings import make_settings
    from hfcast import trigger
    from hfcast.storage import Lake

    logging.basicConfig(level=logging.INFO)
    s = make_settings(home, lake_url, mlflow_uri, feast_repo, s3_endpoint, params_json)
    lake = Lake.from_settings(s)
    model, reason = decision.metadata["model"], decision.metadata["reason"]
    dates = [d for d in decision.metadata.get("drifted_dates", "").split(",") if d]
    if kfp_host or os.environ.get("KUBERNETES_SERVICE_HOST"):
        from pipelines.compile import COMPILED

        res = trigger.trigger_kubeflow(lake, model, reason, dates, kfp_host or None, str(COMPILED / "training.yaml"))
    else:
        from pipelines.local import retrain_subprocess  # a fresh process: kfp steps cannot build pipelines

        res = trigger.trigger_local(s, lake, model, reason, dates, lambda r, d: retrain_subprocess(s, r, d))
    started.metadata.update({k: v for k, v in res.items() if isinstance(v, (str, int, float, bool))})
    Path(started.path).write_text(json.dumps(res, indent=1, default=str))
    if res.get("status") == "failed":
        raise RuntimeError(f"retraining failed: {res.get('error')}")
    return str(res.get("run_id", ""))
