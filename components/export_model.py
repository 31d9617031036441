"""Export a registered version: ONNX (parity-checked), TensorRT where available, Triton repository."""

from kfp.dsl import Model, Output

from components._image import hfcast_component


@hfcast_component
def export_model(
    version: str,
    onnx_model: Output[Model],
    settings: str = "",
    publish_url: str = "",
    max_batch: int = 1024,
) -> str:
    """Export model version ``version`` (``hfcast.export.export_all``) and attach the files to its
    MLflow run (``export/``); ``publish_url`` (e.g. ``s3://hfcast-models/hfcast/champion``) also
    gets a copy (``hfcast.export.publish``): the GPU InferenceService reads its ``triton/``.

    TensorRT is built only where it is installed (the GPU image on a GPU node); elsewhere the
    Triton repository serves the ONNX model.

    Returns:
        The MLflow artifact URI of the export.
    """
    from components._common import step_settings
    from hfcast import export, registry, storage
    from hfcast.config import s3_storage_options

    s = step_settings(settings)
    report = export.export_all(registry.load_forecaster(s, f"{s.model_name}/{version}"), onnx_model.path,
                               max_batch=max_batch)
    uri = export.log_export_to_mlflow(report, s)
    if publish_url:
        remote = storage.is_remote(publish_url)
        export.publish(onnx_model.path, publish_url,
                       s3_storage_options(s.s3_endpoint, s.s3_key, s.s3_secret) if remote else None)
    onnx = ({"onnx_skipped": report.onnx["skipped"]} if "skipped" in report.onnx else  # a forecaster with no network
            {"onnx_opset": report.onnx.get("opset"), "exporter": report.onnx.get("exporter"),
             "parity_max_rel_err": report.onnx["parity"]["max_rel_err"]})
    onnx_model.metadata.update({"model_name": s.model_name, "version": version, "mlflow_uri": uri, **onnx,
                                "tensorrt": report.tensorrt if isinstance(report.tensorrt, str) else "built",
                                "published_to": publish_url})
    return uri
