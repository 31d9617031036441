"""Monitor one date: Evidently drift + live performance -> the retraining decision (not the start)."""

from kfp.dsl import HTML, Metrics, Output

from components._image import hfcast_component


@hfcast_component
def monitor_date(
    report: Output[HTML],
    checks: Output[Metrics],
    date: str = "",
    model_ref: str = "hfcast@champion",
    settings: str = "",
) -> bool:
    """Check ``date`` ('' = the lake's last features date) against the model's training reference
    and record the decision: ``hfcast.monitoring.drift.decide_date`` (``run_monitor`` with the
    record-only starter: K consecutive alarms, cooldown and a running retraining are all honoured there). The pipeline
    starts the retraining itself, in a separate step, only when ``retrain`` is true.

    Returns:
        Whether to retrain (one plain output: the kfp local runner cannot evaluate a dsl.If on a
        NamedTuple field). The reasons, drifted dates and model name are in ``checks``' metadata.
    """
    from components._common import step_settings
    from hfcast.monitoring.drift import decide_date

    out = decide_date(step_settings(settings), date, model_ref)
    with open(report.path, "wb") as fh:  # shown in the Kubeflow UI
        fh.write(out["html"])
    for key, value in out["metrics"].items():
        checks.log_metric(key, value)
    checks.metadata.update(out["metadata"])
    return out["retrain"]
