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
    items: shards of dates, each 'D1,D2,...' (``hfcast.sharding.shard_dates``: as many as
    ``parallelism`` pods, more when a shard would exceed ``max_dates_per_pod``). ``model_ref``
    (e.g. an alias) is resolved to ``NAME/VERSION`` in ``plan``'s metadata, so every date of the run
    uses the same model even if the champion moves meanwhile. (One plain output: the kfp local
    runner cannot loop over a NamedTuple field.)"""
    from components._common import step_settings
    from hfcast import registry
    from hfcast.predict import parse_dates
    from hfcast.sharding import shard_dates
    from hfcast.storage import Lake

    s = step_settings(settings)
    lake = Lake.from_settings(s)
    todo = parse_dates(dates, lake.dates("features"))
    if not todo:
        raise ValueError(f"no dates with features in {dates!r} under {lake.url}")
    mv = registry.resolve(s, model_ref)
    shards = [",".join(s) for s in shard_dates(todo, parallelism, max_dates_per_pod)]
    plan.metadata.update({"model_ref": f"{mv.name}/{mv.version}", "requested": model_ref, "dates": list(todo),
                          "shards": shards})
    with open(plan.path, "w") as fh:
        fh.write(f"{mv.name}/{mv.version}\n" + "\n".join(todo) + "\n")
    return shards
