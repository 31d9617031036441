"""Train one architecture on the walk-forward folds and log it to MLflow (one ParallelFor item)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._image import hfcast_component


@hfcast_component
def train_model(
    arch: str,
    features: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    home: str = "",
    mlflow_uri: str = "",
    feast_repo: str = "",
    s3_endpoint: str = "",
    params_json: str = "",
    reason: str = "",
    drifted_dates: str = "",
) -> str:
    """Walk-forward train ``arch`` (params.yaml ``walkforward`` + ``train``), score it and the
    baselines on the same test spans, log the run (bundle, scores, lineage) to MLflow.

    The training pipeline runs this on the GPU image with one GPU; it also runs on CPU.
    ``reason`` (manual, drift: ...) and ``drifted_dates`` are recorded as the run's
    ``hfcast.trigger_reason`` / ``hfcast.drifted_dates`` tags.

    Returns:
        The MLflow run id (also in the metrics' metadata with the architecture).
    """
    import logging
    import math
    import tempfile

    from components._settings import make_settings
    from hfcast import registry
    from hfcast.storage import Lake
    from hfcast.train import TrainConfig
    from hfcast.walkforward import WalkForwardConfig, log_result, model_configs, run_walkforward

    logging.basicConfig(level=logging.INFO)
    s = make_settings(home, features.metadata["lake_url"], mlflow_uri, feast_repo, s3_endpoint, params_json)
    section = s.param("walkforward", {})
    result = run_walkforward(Lake.from_settings(s), [arch], WalkForwardConfig.from_params(section),
                             TrainConfig.from_params(s.param("train", {})), progress=False,
                             model_configs=model_configs(section))
    version = features.metadata.get("dataset_version", "")
    params = {"walkforward": dict(section), "train": dict(s.param("train", {}) or {})}
    with tempfile.TemporaryDirectory(prefix=f"hfcast-{arch}-") as tmp:
        run_id = log_result(s, result, arch, params, tmp)
    with registry.tracking(s) as t:
        if version:  # lineage: register() copies the run's dataset_version tag onto the model version
            t.client.set_tag(run_id, "dataset_version", version)
        if reason:
            t.client.set_tag(run_id, "hfcast.trigger_reason", reason[:5000])
        if drifted_dates:
            t.client.set_tag(run_id, "hfcast.drifted_dates", drifted_dates[:5000])
    result.forecasters[arch].save(model.path)
    model.metadata.update({"arch": arch, "run_id": run_id, "dataset_version": version, "framework": "pytorch",
                           "format": "hfcast-bundle (safetensors + json)"})
    for name, value in result.aggregate.loc[arch].items():
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            metrics.log_metric(str(name), float(value))
    metrics.metadata.update({"arch": arch, "run_id": run_id, "test_spans": [list(p) for p in result.test_spans()]})
    return run_id
