"""The monitoring pipeline: the date into the online store, and monitor it -> if retraining is decided ->
start the training pipeline.

Scheduled as a KFP recurring run (``hfcast pipeline submit monitoring --recurring-cron ...``, or the
dev overlay's Job); each run checks one date, so the cooldown and the K-consecutive rule of
``hfcast.monitoring.decision`` see one decision per date.
"""

from kfp import dsl

from components.materialize_day import materialize_day
from components.monitor_date import monitor_date
from components.trigger_training import trigger_training
from pipelines.names import PIPELINES
from pipelines.steps import SMALL, TINY, step

DESCRIPTION = (
    "hfcast monitoring: load one date's features into the Feast online store (that date only, so predictors "
    "answer by symbol with its last minute); compare its features and predictions with the champion's training "
    "reference (Evidently drift, live QLIKE / IC once labels matured), decide with K consecutive alarms "
    "and a cooldown, and when retraining is decided start the training pipeline (a Kubeflow run through "
    "the API on a cluster, the local runner elsewhere); the new model passes the same gate. Reports are "
    "written to <lake>/monitoring/<model>/<version>/date=D/. Empty settings come from hfcast-config."
)


@dsl.pipeline(name=PIPELINES["monitoring"].display, description=DESCRIPTION)
def monitoring_pipeline(
    date: str = "",
    model_ref: str = "hfcast@champion",
    starter: str = "auto",
    kfp_host: str = "",
    settings: str = "",
):
    """Load ``date`` into the online store, monitor it, and start a retraining when the decision says so.

    Args:
        date: the date to check, YYYY-MM-DD ('' = the lake's latest date with features).
        model_ref: the model whose training reference is compared: NAME@alias or NAME/version.
        starter: what starts the retraining: auto (kubeflow inside a cluster, local elsewhere) | kubeflow | local.
        kfp_host: KFP API URL for a kubeflow retraining ('' = params.yaml monitor.kubeflow_host, else the in-cluster API).
        settings: Settings.to_param() JSON (monitor thresholds and the retraining's settings in params; '' = hfcast-config).
    """
    step(materialize_day(date=date, settings=settings), "Materialize the date online (Feast)", SMALL)
    mon = step(monitor_date(date=date, model_ref=model_ref, settings=settings),
               "Monitor date (drift, live performance)", SMALL)
    with dsl.If(mon.outputs["Output"] == True, name="retrain-decided"):  # noqa: E712 (kfp condition)
        step(trigger_training(decision=mon.outputs["checks"], starter=starter, kfp_host=kfp_host, settings=settings),
             "Start retraining", TINY)
