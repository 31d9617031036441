"""Start the retraining that the monitor decided, with a starter found by name (``hfcast.starters``)."""

from kfp.dsl import Artifact, Input, Metrics, Output

from components._image import hfcast_component


@hfcast_component
def trigger_training(
    decision: Input[Metrics],
    started: Output[Artifact],
    settings: str = "",
    starter: str = "auto",
    kfp_host: str = "",
) -> str:
    """Start the training pipeline for the model, reasons and drifted dates of ``decision`` (the
    monitor's ``checks`` artifact): ``hfcast.lifecycle.start_retraining(...)``, which finds the
    starter by name among the ``hfcast.starters`` entry points (the component does not import the
    pipelines package that provides them).

    Args:
        starter: ``kubeflow`` (a run of the compiled training pipeline through the KFP API; the
            pod's ServiceAccount needs the hfcast-pipeline Role), ``local`` (the kfp local runner on
            this machine, in a fresh process) or ``auto`` (kubeflow inside a cluster, else local).
            Both record the retraining in ``<lake>/monitoring/<model>/retrain.json``.
        kfp_host: the KFP API URL for ``kubeflow`` ('' = params.yaml ``retrain.kubeflow_host``, else in-cluster).

    Returns:
        The run id (Kubeflow run id, or ``local-<time>``).
    """
    import json
    from pathlib import Path

    from components._common import step_settings
    from hfcast.lifecycle import start_retraining

    res = start_retraining(step_settings(settings), starter, decision.metadata["model"], decision.metadata["reason"],
                           decision.metadata.get("drifted_dates", ""), host=kfp_host or None)
    started.metadata.update({k: v for k, v in res.items() if isinstance(v, (str, int, float, bool))})
    Path(started.path).write_text(json.dumps(res, indent=1, default=str))
    if res.get("status") == "failed":
        raise RuntimeError(f"retraining failed: {res.get('error')}")
    return str(res.get("run_id", ""))
