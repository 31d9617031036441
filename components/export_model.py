"""Export a registered version: ONNX (parity-checked), TensorRT where available, Triton repository."""

from kfp.dsl import Model, Output

from components._image import hfcast_component


@hfcast_component
def export_model(
    version: str,
    onnx_model: Output[Model],
    home: str = "",
    mlflow_uri: str = "",
    s3_endpoint: str = "",
    params_json: str = "",
    publish_url: str = "",
    max_batch: int = 1024,
) -> str:
    """Export model version ``version`` and attach the files to its MLflow run (``export/``).

    TensorRT is built only where it is installed (the GPU image on a GPU node); elsewhere the
    Triton repository serves the ONNX model. ``publish_url`` (e.g. ``s3://hfcast-models/hfcast/champion``)
    also copies the export folder there, where the GPU InferenceService reads ``triton/``.

    Returns:
        The MLflow artifact URI of the export.
    """
    import logging
    from pathlib import Path

    from components._settings import make_settings
    from hfcast import export, registry, storage

    logging.basicConfig(level=logging.INFO)
    s = make_settings(home=home, mlflow_uri=mlflow_uri, s3_endpoint=s3_endpoint, params_json=params_json)
    fc = registry.load_forecaster(s, f"{s.model_name}/{version}")
    report = export.export_all(fc, onnx_model.path, max_batch=max_batch)
    uri = export.log_export_to_mlflow(report, s)
    if publish_url:
        from hfcast.config import s3_storage_options

        opts = s3_storage_options(s.s3_endpoint, s.s3_key, s.s3_secret) if storage.is_remote(publish_url) else None
        root = Path(onnx_model.path)
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            storage.write_bytes(storage.join(publish_url, f.relative_to(root).as_posix()), f.read_bytes(), opts)
    onnx_model.metadata.update({"model_name": s.model_name, "version": version, "mlflow_uri": uri,
                                "onnx_opset": report.onnx.get("opset"), "exporter": report.onnx.get("exporter"),
                                "parity_max_rel_err": report.onnx["parity"]["max_rel_err"],
                                "tensorrt": report.tensorrt if isinstance(report.tensorrt, str) else "built",
                                "published_to": publish_url})
    return uri
