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
    and record the decision: ``hfcast.monitoring.drift.run_monitor`` with the record-only starter
    (K consecutive alarms, cooldown and a running retraining are all honoured there). The pipeline
    starts the retraining itself, in a separate step, only when ``retrain`` is true.

    Returns:
        Whether to retrain (one plain output: the kfp local runner cannot evaluate a dsl.If on a
        NamedTuple field). The reasons, drifted dates and model name are in ``checks``' metadata.
    """
    from components._common import step_settings
    from hfcast import storage
    from hfcast.monitoring.decision import RETRAIN
    from hfcast.monitoring.drift import resolve_model, run_monitor
    from hfcast.monitoring.retraining import RecordOnlyStarter
    from hfcast.storage import Lake

    s = step_settings(settings)
    lake = Lake.from_settings(s)
    day = date or lake.dates("features")[-1]
    name, version = resolve_model(s, model_ref)
    record = run_monitor(s, day, model=f"{name}/{version}", starter=RecordOnlyStarter())
    html = storage.join(lake.monitoring(name, version, day), "features_drift.html")
    with open(report.path, "wb") as fh:  # shown in the Kubeflow UI
        fh.write(storage.read_bytes(html, lake.storage_options))
    c = record.get("checks") or {}
    for key in ("drift_share", "pred_drift_share"):
        if isinstance(c.get(key), (int, float)):
            checks.log_metric(key, float(c[key]))
    checks.log_metric("drift_streak", int(record["drift_streak"]))
    checks.log_metric("perf_streak", int(record["perf_streak"]))
    checks.metadata.update({"date": day, "model": name, "version": version, "action": record["action"],
                            "explanation": record["explanation"], "reason": "; ".join(record["reasons"])[:2000],
                            "drifted_dates": ",".join(record["drifted_dates"])})
    return record["action"] == RETRAIN
