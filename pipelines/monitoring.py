"""The monitoring pipeline: monitor a date -> if retraining is decided -> start the training pipeline.

Scheduled as a KFP recurring run (``hfcast pipeline submit monitoring --recurring-cron ...``, or the
dev overlay's Job); each run checks one date, so the cooldown and the K-consecutive rule of
``hfcast.decision`` see one decision per date.
"""

from kfp import dsl

from components.monitor_date import monitor_date
from components.trigger_training import trigger_training

DESCRIPTION = (
    "hfcast monitoring: compare one date's features and predictions with the champion's training "
    "reference (Evidently drift, live QLIKE / IC once labels matured), decide with K consecutive alarms "
    "and a cooldown, and when retraining is decided start the training pipeline (a Kubeflow run through "
    "the API on a cluster, the local runner elsewhere); the new model passes the same gate. Reports are "
    "written to <lake>/monitoring/<model>/<version>/date=D/. Empty settings come from hfcast-config."
)


@dsl.pipeline(name="hfcast-monitoring", description=DESCRIPTION)
def monitoring_pipeline(
    date: str = "",
    model_ref: str = "hfcast@champion",
    kfp_host: str = "",
    home: str = "",
    lake_url: str = "",
    mlflow_uri: str = "",
    feast_repo: str = "",
    s3_endpoint: str = "",
    params_json: str = "",
):
    """Monitor ``date`` and start a retraining when the decision says so.

    Args:
        date: the date to check, YYYY-MM-DD ('' = the lake's latest date with features).
        model_ref: the model whose training reference is compared: NAME@alias or NAME/version.
        kfp_host: KFP API URL for the retraining run ('' = in-cluster API, or the local runner off-cluster).
        home: state folder of embedded defaults ('' = HFCAST_HOME).
        lake_url: lake URL ('' = HFCAST_LAKE).
        mlflow_uri: MLflow tracking URI ('' = MLFLOW_TRACKING_URI).
        feast_repo: Feast repository folder for the retraining ('' = HFCAST_FEAST_REPO).
        s3_endpoint: S3 endpoint URL ('' = HFCAST_S3_ENDPOINT or AWS).
        params_json: JSON overrides of params.yaml (monitor thresholds, and training settings of a retrain).
    """
    cfg = dict(home=home, lake_url=lake_url, mlflow_uri=mlflow_uri, s3_endpoint=s3_endpoint, params_json=params_json)
    mon = monitor_date(date=date, model_ref=model_ref, **cfg).set_display_name("Monitor date (drift, live performance)")
    mon.set_caching_options(False)
    with dsl.If(mon.outputs["Output"] == True, name="retrain-decided"):  # noqa: E712 (kfp condition)
        trig = trigger_training(decision=mon.outputs["checks"], kfp_host=kfp_host, feast_repo=feast_repo, **cfg)
        trig.set_display_name("Start retraining").set_caching_options(False)


if __name__ == "__main__":
    from pipelines.compile import compile_all

    compile_all(only=["monitoring"])
