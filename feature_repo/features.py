"""Feast definitions for hfcast: the ``symbol`` entity, the minute features and the 30-minute window.

This file is copied by ``hfcast.feature_store.init_repo`` into the rendered repository, beside
``hfcast_repo.json`` which carries what must not be hard-coded here: the ABSOLUTE source paths
(the DuckDB offline store resolves relative ones against the current directory) and the feature
names, taken from the features engine's ``_feature_set.json`` so the views cannot drift from it.
"""

import json
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Int64

_CONFIG = json.loads((Path(__file__).resolve().parent / "hfcast_repo.json").read_text())

symbol = Entity(name="symbol", join_keys=["symbol"], value_type=ValueType.STRING,
                description="Ticker; one row per symbol per minute.")

minute_features_source = FileSource(
    name="lake_features",
    path=_CONFIG["features_path"],  # the lake's date partitions (glob) or a consolidated copy
    timestamp_field="ts",  # minute START, datetime64[us, UTC], as in the lake
)

# One row per symbol-minute. TTL one day: a lookup never reaches back into an earlier session
# more than a day old (weekend Mondays get NaN until the first row of the day).
minute_features = FeatureView(
    name="minute_features",
    entities=[symbol],
    ttl=timedelta(days=1),
    schema=[Field(name=name, dtype=Float32) for name in _CONFIG["feature_names"]],
    source=minute_features_source,
    online=True,
)

window_source = FileSource(
    name="latest_windows",
    path=_CONFIG["windows_path"],  # written by hfcast.feature_store.materialize_windows
    timestamp_field="event_timestamp",  # ts of the window's last minute
)

# The latest 30-minute window of each symbol, flattened row-major ([30, F] -> 30*F floats):
# Feast has no sequence type, so a window is one array feature. No TTL: staleness is judged by
# the caller from the returned timestamp.
symbol_window = FeatureView(
    name="symbol_window",
    entities=[symbol],
    ttl=timedelta(0),
    schema=[Field(name="window", dtype=Array(Float32)), Field(name="n_features", dtype=Int64)],
    source=window_source,
    online=True,
)
