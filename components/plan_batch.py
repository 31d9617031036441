"""Expand a date specification into shards of dates (one pod each) and pin the model version once
for a whole batch run."""

from typing import List

from kfp.dsl import Artifact, Output

from components._image import hfcast_component


@hfcast_component
def plan_batch(
    dates: str,
    plan: Output[Artifact],
    model_ref: str = "hfcast@champion",
    settings: str = "",
    parallelism: int = 8,
    max_dates_per_pod: int = 5,
) -> List[str]:
    """``dates`` ('A..B' = lake dates with features in the range, or 'D1,D2') -> the ParallelFor's
    items: shards of dates, each 'D1,D2,...' (``hfcast.predict.plan_batch``: as many as
    ``parallelism`` pods, more when a shard would exceed ``max_dates_per_pod``). ``model_ref``
    (e.g. an alias) is resolved to ``NAME/VERSION`` in ``plan``'s metadata, so every date of the run
    uses the same model even if the champion moves meanwhile. (One plain output: the kfp local
    runner cannot loop over a NamedTuple field.)"""
    from components._common import step_settings
    from hfcast.predict import plan_batch as make_plan

    out = make_plan(step_settings(settings), dates, model_ref, parallelism, max_dates_per_pod)
    plan.metadata.update(out.metadata())
    with open(plan.path, "w") as fh:
        fh.write(out.model_ref + "\n" + "\n".join(out.dates) + "\n")
    return out.shards
