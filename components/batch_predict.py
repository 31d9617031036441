"""Batch inference for one date: one CSV (+ manifest) under <out>/predictions/<model>/<version>/."""

from kfp.dsl import Artifact, Dataset, Input, Output

from components._image import hfcast_component


@hfcast_component
def batch_predict(
    date: str,
    plan: Input[Artifact],
    predictions: Output[Dataset],
    settings: str = "",
    out_url: str = "",
    mode: str = "dense",
    runner: str = "auto",
    force: bool = False,
) -> str:
    """Predict ``date`` with the model version pinned in ``plan`` (``hfcast.predict.run_predict``);
    resumable: a complete CSV for the same model and inputs is skipped unless ``force``.

    Args:
        out_url: output root (file:// or s3://); '' = the lake.
        mode: ``dense`` (every minute) or ``sparse`` (every 10th, forward-filled, flagged).

    Returns:
        The CSV's URL.
    """
    from components._common import step_settings
    from hfcast.predict import run_predict
    from hfcast.storage import Lake

    s = step_settings(settings)
    summary = run_predict(s, [date], model_ref=plan.metadata["model_ref"], mode=mode, out=out_url or None, force=force,
                          runner=runner, progress=False)
    if summary.failed:
        raise RuntimeError(f"prediction for {date} failed: {summary.failed[0].reason}")
    url = Lake((out_url or s.lake_url).rstrip("/")).predictions(summary.model_name, summary.model_version, date)
    predictions.metadata.update({"date": date, "csv_url": url, "model": summary.model_name,
                                 "version": str(summary.model_version), "mode": mode, "rows": summary.rows,
                                 "status": summary.results[0].status})
    with open(predictions.path, "w") as fh:
        fh.write(url + "\n")
    return url
