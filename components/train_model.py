"""Train one architecture on the walk-forward folds and log it to MLflow (one ParallelFor item)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._image import hfcast_component


@hfcast_component
def train_model(
    arch: str,
    features: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    settings: str = "",
    reason: str = "",
    drifted_dates: str = "",
) -> str:
    """Walk-forward train ``arch``, score it and the baselines on the same test spans and log the
    run (bundle, scores, lineage) to MLflow: ``hfcast.lifecycle.train_and_log``.

    The GPU training pipeline runs this on the CUDA image with one GPU; it also runs on CPU. The
    lake is the one ``features`` points at. ``reason`` (manual, drift: ...) and ``drifted_dates``
    (comma-separated) are recorded on the run.

    Returns:
        The MLflow run id (also in the metrics' metadata with the architecture).
    """
    from components._common import step_settings
    from hfcast.contracts import finite
    from hfcast.lifecycle import train_and_log

    s = step_settings(settings, lake_url=features.metadata["lake_url"])
    version = features.metadata.get("dataset_version", "")
    run = train_and_log(s, arch, dataset_version=version, reason=reason,
                        drifted_dates=tuple(d for d in drifted_dates.split(",") if d))
    run.forecaster.save(model.path)
    model.metadata.update({"arch": arch, "run_id": run.run_id, "dataset_version": version, "framework": "pytorch",
                           "format": "hfcast-bundle (safetensors + json)"})
    for name, value in run.aggregate.items():
        if finite(value):
            metrics.log_metric(str(name), float(value))
    metrics.metadata.update({"arch": arch, "run_id": run.run_id, "test_spans": [list(p) for p in run.test_spans]})
    return run.run_id
