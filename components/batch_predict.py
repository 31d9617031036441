"""Batch inference for a shard of dates: one CSV (+ manifest) per date under <out>/predictions/<model>/<version>/."""

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
    """Predict ``date`` - one date, or a shard 'D1,D2,...' from ``plan_batch`` - with the model version
    pinned in ``plan`` (``hfcast.predict.run_predict``, one date after another: the pod holds one
    date in the model while the next is read); resumable: a complete CSV for the same model and
    inputs is skipped unless ``force``.

    Args:
        out_url: output root (file:// or s3://); '' = the lake.
        mode: ``dense`` (every minute) or ``sparse`` (every 10th, forward-filled, flagged).

    Returns:
        The CSVs' URLs, one a line.
    """
    from components._common import step_settings
    from hfcast.predict import parse_dates, run_predict
    from hfcast.storage import Lake

    s = step_settings(settings)
    dates = parse_dates(date)
    summary = run_predict(s, dates, model_ref=plan.metadata["model_ref"], mode=mode, out=out_url or None, force=force,
                          runner=runner, progress=False)
    if summary.failed:
        raise RuntimeError("prediction failed: " + "; ".join(f"{r.date}: {r.reason}" for r in summary.failed))
    root = Lake((out_url or s.lake_url).rstrip("/"))
    urls = [root.predictions(summary.model_name, summary.model_version, d) for d in dates]
    predictions.metadata.update({"date": date, "dates": dates, "csv_url": urls[0], "csv_urls": urls,
                                 "model": summary.model_name, "version": str(summary.model_version), "mode": mode,
                                 "rows": summary.rows, "status": [r.status for r in summary.results]})
    with open(predictions.path, "w") as fh:
        fh.write("\n".join(urls) + "\n")
    return "\n".join(urls)
