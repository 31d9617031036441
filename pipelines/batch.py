"""The batch inference pipeline: pin the model, then one parallel step per shard of dates -> one CSV per date."""

from kfp import dsl

from components.backtest import backtest as backtest_op
from components.batch_predict import batch_predict
from components.plan_batch import plan_batch
from pipelines.names import PIPELINES
from pipelines.steps import MEDIUM, SMALL, TINY, step

PARALLELISM = 8  # pods predicting at once on the cluster (kfp compiles the limit in; each pod loads the model once)
DESCRIPTION = (
    "hfcast batch inference: expand the dates ('A..B' keeps dates with features, or 'D1,D2'), resolve the "
    "model reference (e.g. hfcast@champion) to one version for the whole run, then predict the dates in "
    "shards (one pod each, at most 8 at once; a pod predicts its dates one after another, so its memory is one "
    "date): one CSV (+ manifest) per date under <out>/predictions/<model>/<version>/date=D.csv. Reruns "
    "skip complete dates. With backtest=true, a last step backtests the run's predictions (params.yaml "
    "backtest:). Settings left empty come from the cluster's hfcast-config / the environment."
)


@dsl.pipeline(name=PIPELINES["batch"].display, description=DESCRIPTION)
def batch_pipeline(
    dates: str = "2024-01-02..2024-01-31",
    model_ref: str = "hfcast@champion",
    mode: str = "dense",
    out_url: str = "",
    runner: str = "auto",
    force: bool = False,
    backtest: bool = False,
    settings: str = "",
    max_dates_per_pod: int = 5,
):
    """Predict every date in ``dates``.

    Args:
        dates: 'YYYY-MM-DD..YYYY-MM-DD' (the lake's dates with features in that range) or 'D1,D2,...'.
        model_ref: registry reference: NAME@alias (champion, challenger) or NAME/version.
        mode: dense (every minute) | sparse (every 10th minute, forward-filled, flagged).
        out_url: output root, file:///... or s3://bucket/prefix ('' = the lake).
        runner: auto | onnxruntime | torch | torch-compiled | tensorrt.
        force: redo dates whose CSV is already complete.
        backtest: after the predictions, backtest them (economic value after costs; needs out_url '' = the lake).
        settings: Settings.to_param() JSON: home, lake_url, mlflow_uri, s3_endpoint, ... ('' = hfcast-config / the environment).
        max_dates_per_pod: dates one pod predicts in a row (a year: 51 pods of 4-5 dates, 8 at a time).
    """
    plan = step(plan_batch(dates=dates, model_ref=model_ref, settings=settings, parallelism=PARALLELISM,
                           max_dates_per_pod=max_dates_per_pod), "Plan date shards, pin model version", TINY)
    with dsl.ParallelFor(plan.outputs["Output"], parallelism=PARALLELISM, name="date shards") as shard:
        predicted = step(batch_predict(date=shard, plan=plan.outputs["plan"], out_url=out_url, mode=mode,
                                       runner=runner, force=force, settings=settings), "Predict a shard of dates", MEDIUM)
    with dsl.If(backtest == True, name="backtest requested"):  # noqa: E712 (a kfp condition, not a Python bool)
        step(backtest_op(plan=plan.outputs["plan"], csvs=dsl.Collected(predicted.outputs["Output"]),
                         dates=dates, settings=settings), "Backtest the predictions", SMALL)
