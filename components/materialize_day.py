"""Bring the Feast online store up to one day as it arrives: that day's features only."""

from kfp.dsl import Metrics, Output

from components._image import hfcast_component


@hfcast_component
def materialize_day(
    online: Output[Metrics],
    date: str = "",
    settings: str = "",
) -> str:
    """Load ``date``'s minute features and each symbol's latest window into the online store
    (``hfcast.feature_store.materialize_day``: incremental, idempotent), so that predictors answer
    requests by symbol with the day's last minute. ``date`` '' = the lake's latest features date.

    Returns:
        The newest feature minute now online (ISO UTC), '' when the day held no complete window.
    """
    from components._common import step_settings
    from hfcast import feature_store
    from hfcast.storage import Lake

    s = step_settings(settings)
    day = date or Lake.from_settings(s).dates("features")[-1]
    out = feature_store.materialize_day(s, day)
    online.log_metric("windows", out["windows"])
    online.metadata.update({"date": day, "last_ts": out["last_ts"] or "", "feast_repo": str(s.feast_repo)})
    return out["last_ts"] or ""
