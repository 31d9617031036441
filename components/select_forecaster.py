"""Choose, per fold on validation, the forecaster to serve from every architecture's networks and the baselines."""

from typing import List, NamedTuple

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._image import hfcast_component


@hfcast_component
def select_forecaster(
    results: Input[List[Metrics]],
    features: Input[Dataset],
    forecaster: Output[Model],
    comparison: Output[Metrics],
    settings: str = "",
    reason: str = "",
    drifted_dates: str = "",
) -> NamedTuple("Selected", [("run_id", str), ("kind", str)]):
    """``hfcast.lifecycle.select_and_log``: the networks every parallel train step logged (one
    member run per architecture, same folds) and the baselines compete on each fold's validation
    span; the chosen forecaster (a network, a floored network, an ensemble or a baseline for the
    volatility; a return head only with validated skill) is scored on the test spans and logged as
    ONE MLflow run, which the gate then judges. Its test scores and every candidate's are in
    ``comparison``.
    """
    from collections import namedtuple

    from components._common import step_settings
    from hfcast.contracts import finite
    from hfcast.lifecycle import select_and_log

    s = step_settings(settings, lake_url=features.metadata["lake_url"])
    run = select_and_log(s, [m.metadata["run_id"] for m in results],
                         dataset_version=features.metadata.get("dataset_version", ""), reason=reason,
                         drifted_dates=tuple(d for d in drifted_dates.split(",") if d))
    run.forecaster.save(forecaster.path)
    forecaster.metadata.update({"run_id": run.run_id, "kind": run.kind, "members": list(run.forecaster.members),
                                "format": "hfcast forecaster bundle (safetensors + json)"})
    agg = run.result.aggregate
    for model, row in agg.iterrows():
        for name, value in row.items():
            if finite(value):
                comparison.log_metric(f"{model}/{name}", float(value))
    comparison.metadata.update({"run_id": run.run_id, "kind": run.kind,
                                "choices": [c.describe() for c in run.result.choices]})
    return namedtuple("Selected", ["run_id", "kind"])(run.run_id, run.kind)
