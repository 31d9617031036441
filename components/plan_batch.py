"""Expand a date specification and pin the model version once for a whole batch run."""

from typing import List, NamedTuple


from components._image import hfcast_component


@hfcast_component
def plan_batch(
    dates: str,
    model_ref: str = "hfcast@champion",
    home: str = "",
    lake_url: str = "",
    mlflow_uri: str = "",
    s3_endpoint: str = "",
) -> NamedTuple("Plan", [("dates", List[str]), ("model_ref", str)]):
    """``dates`` ('A..B' = lake dates with features in the range, or 'D1,D2') -> a list for the
    ParallelFor, and ``model_ref`` (e.g. an alias) resolved to ``NAME/VERSION`` so that every date of
    the run uses the same model even if the champion moves meanwhile."""
    import logging
    from collections import namedtuple

    from components._settings import make_settings
    from hfcast import registry
    from hfcast.predict import parse_dates
    from hfcast.storage import Lake

    logging.basicConfig(level=logging.INFO)
    s = make_settings(home, lake_url, mlflow_uri, "", s3_endpoint)
    lake = Lake.from_settings(s)
    todo = parse_dates(dates, lake.dates("features"))
    if not todo:
        raise ValueError(f"no dates with features in {dates!r} under {lake.url}")
    mv = registry.resolve(s, model_ref)
    return namedtuple("Plan", ["dates", "model_ref"])(list(todo), f"{mv.name}/{mv.version}")
