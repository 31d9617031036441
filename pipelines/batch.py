"""The batch inference pipeline: pin the model, then one parallel step per date -> one CSV per date."""

from kfp import dsl

from components.batch_predict import batch_predict
from components.plan_batch import plan_batch

PARALLELISM = 8  # dates predicted at once on the cluster (kfp compiles the limit in; each step loads the model once)
DESCRIPTION = (
    "hfcast batch inference: expand the dates ('A..B' keeps dates with features, or 'D1,D2'), resolve the "
    "model reference (e.g. hfcast@champion) to one version for the whole run, then predict every date in "
    "parallel: one CSV (+ manifest) per date under <out>/predictions/<model>/<version>/date=D.csv. Reruns "
    "skip complete dates. Settings left empty come from the cluster's hfcast-config / the environment."
)


@dsl.pipeline(name="hfcast-batch-inference", description=DESCRIPTION)
def batch_pipeline(
    dates: str = "2024-01-02..2024-01-31",
    model_ref: str = "hfcast@champion",
    mode: str = "dense",
    out_url: str = "",
    runner: str = "auto",
    force: bool = False,
    home: str = "",
    lake_url: str = "",
    mlflow_uri: str = "",
    s3_endpoint: str = "",
):
    """Predict every date in ``dates``.

    Args:
        dates: 'YYYY-MM-DD..YYYY-MM-DD' (the lake's dates with features in that range) or 'D1,D2,...'.
        model_ref: registry reference: NAME@alias (champion, challenger) or NAME/version.
        mode: dense (every minute) | sparse (every 10th minute, forward-filled, flagged).
        out_url: output root, file:///... or s3://bucket/prefix ('' = the lake).
        runner: auto | onnxruntime | torch | torch-compiled | tensorrt.
        force: redo dates whose CSV is already complete.
        home: state folder of embedded defaults ('' = HFCAST_HOME).
        lake_url: lake URL ('' = HFCAST_LAKE).
        mlflow_uri: MLflow tracking URI ('' = MLFLOW_TRACKING_URI).
        s3_endpoint: S3 endpoint URL ('' = HFCAST_S3_ENDPOINT or AWS).
    """
    cfg = dict(home=home, lake_url=lake_url, mlflow_uri=mlflow_uri, s3_endpoint=s3_endpoint)
    plan = plan_batch(dates=dates, model_ref=model_ref, **cfg).set_display_name("Plan dates, pin model version")
    plan.set_caching_options(False)
    with dsl.ParallelFor(plan.outputs["Output"], parallelism=PARALLELISM, name="dates") as date:
        task = batch_predict(date=date, plan=plan.outputs["plan"], out_url=out_url, mode=mode,
                             runner=runner, force=force, **cfg)
        task.set_display_name("Predict one date").set_caching_options(False)


if __name__ == "__main__":
    from pipelines.compile import compile_all

    compile_all(only=["batch"])
