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
    """Export model version ``version`` (``hfcast.export.export_version``: ``export_all``) and attach the
    files to its MLflow run (``export/``); ``publish_url`` (e.g. ``s3://hfcast-models/hfcast/champion``)
    also gets a copy: the GPU InferenceService reads its ``triton/``.

    TensorRT is built only where it is installed (the GPU image on a GPU node); elsewhere the
    Triton repository serves the ONNX model.

    Returns:
        The MLflow artifact URI of the export.
    """
    from components._common import step_settings
    from hfcast.export import export_version

    s = step_settings(settings)
    report, uri = export_version(s, version, onnx_model.path, max_batch=max_batch, publish_url=publish_url)
    onnx = ({"onnx_skipped": report.onnx["skipped"]} if "skipped" in report.onnx else  # a forecaster with no network
            {"onnx_opset": report.onnx.get("opset"), "exporter": report.onnx.get("exporter"),
             "parity_max_rel_err": report.onnx["parity"]["max_rel_err"]})
    onnx_model.metadata.update({"model_name": s.model_name, "version": version, "mlflow_uri": uri, **onnx,
                                "tensorrt": report.tensorrt if isinstance(report.tensorrt, str) else "built",
                                "published_to": publish_url})
    return uri
