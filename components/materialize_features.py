"""Load the features into Feast: apply the repo, materialize the minute view and the latest windows."""

from kfp.dsl import Artifact, Dataset, Input, Output

from components._image import hfcast_component


@hfcast_component
def materialize_features(
    features: Input[Dataset],
    feature_store: Output[Artifact],
    settings: str = "",
    as_of_date: str = "",
) -> int:
    """Apply the Feast repository and materialize each symbol's latest 30-minute window online.

    The lake is the one the ``features`` artifact came from. ``as_of_date`` '' = its last date.

    Returns:
        The number of symbol windows now in the online store.
    """
    import datetime as dt
    import json
    from pathlib import Path

    from components._common import step_settings
    from hfcast import feature_store as fs
    from hfcast.storage import Lake

    s = step_settings(settings, lake_url=features.metadata["lake_url"])
    fs.apply(s)
    dates = Lake.from_settings(s).dates("features")
    if not dates:
        raise FileNotFoundError(f"no features partitions under {s.lake_url}: run prepare_data first")
    as_of = as_of_date or dates[-1]
    end = dt.datetime.fromisoformat(as_of).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
    fs.materialize(s, end - dt.timedelta(days=2), end)
    windows = fs.materialize_windows(s, as_of)
    info = {"feast_repo": str(s.feast_repo), "as_of_date": as_of, "n_windows": len(windows),
            "dataset_version": features.metadata.get("dataset_version", "")}
    feature_store.metadata.update(info)
    Path(feature_store.path).write_text(json.dumps(info, indent=1))
    return len(windows)
