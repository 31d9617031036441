"""Expand a date specification and pin the model version once for a whole batch run."""

from typing import List

from kfp.dsl import Artifact, Output

from components._image import hfcast_component


@hfcast_component
def plan_batch(
    dates: str,
    plan: Output[Artifact],
    model_ref: str = "hfcast@champion",
    settings: str = "",
) -> List[str]:
    """``dates`` ('A..B' = lake dates with features in the range, or 'D1,D2') -> the list for the
    ParallelFor; ``model_ref`` (e.g. an alias) resolved to ``NAME/VERSION`` in ``plan``'s metadata,
    so every date of the run uses the same model even if the champion moves meanwhile. (One plain
    output: the kfp local runner cannot loop over a NamedTuple field.)"""
    from components._common import step_settings
    from hfcast import registry
    from hfcast.predict import parse_dates
    from hfcast.storage import Lake

    s = step_settings(settings)
    lake = Lake.from_settings(s)
    todo = parse_dates(dates, lake.dates("features"))
    if not todo:
        raise ValueError(f"no dates with features in {dates!r} under {lake.url}")
    mv = registry.resolve(s, model_ref)
    plan.metadata.update({"model_ref": f"{mv.name}/{mv.version}", "requested": model_ref, "dates": list(todo)})
    with open(plan.path, "w") as fh:
        fh.write(f"{mv.name}/{mv.version}\n" + "\n".join(todo) + "\n")
    return list(todo)
