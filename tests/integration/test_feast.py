"""A real Feast repository in a temp folder: apply, materialize, point-in-time retrieval, online windows.

The lake holds a small features-like table (symbol, ts, three float32 features) written through
``Lake.write`` with a matching ``_feature_set.json``, the same layout the features engine writes.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hfcast import feature_store as fst
from hfcast import storage
from hfcast.config import Settings, get_settings
from hfcast.storage import Lake

pytestmark = pytest.mark.integration

NAMES = ["ret_1m", "spread_bps", "rv_5m"]
DATES = ["2024-01-02", "2024-01-03"]
SYMBOLS = ["AAA", "BBB", "CCC"]
N_MIN = 45  # minutes per day (14:30 .. 15:14 UTC)


def write_features_lake(lake: Lake, dates=DATES, symbols=SYMBOLS, n_min=N_MIN, seed=0, short: str | None = None):
    """Features partitions + _feature_set.json; ``short`` gets only 20 minutes on the last date."""
    rng = np.random.default_rng(seed)
    for d in dates:
        parts = []
        for s in symbols:
            n = 20 if (s == short and d == dates[-1]) else n_min
            ts = pd.date_range(f"{d} 14:30", periods=n, freq="min", tz="UTC").astype("datetime64[us, UTC]")
            f = {name: rng.standard_normal(n).astype(np.float32) for name in NAMES}
            f["ret_1m"][0] = np.nan  # lookback not yet available at the open
            parts.append(pd.DataFrame({"symbol": pd.array([s] * n, dtype="string"), "ts": ts, **f,
                                       "ret_60m": rng.standard_normal(n)}))
        lake.write("features", d, pd.concat(parts, ignore_index=True))
    storage.write_text(storage.join(lake.table("features"), "_feature_set.json"),
                       json.dumps({"features": NAMES, "quotes_available": True}), lake.storage_options)


@pytest.fixture
def fsettings(tmp_path: Path) -> Settings:
    s = get_settings(env={"HFCAST_HOME": str(tmp_path / "home")}, cwd=tmp_path)
    write_features_lake(Lake.from_settings(s), short="CCC")
    fst.apply(s)
    return s


def _lake_rows(s: Settings) -> pd.DataFrame:
    lake = Lake.from_settings(s)
    return pd.concat([lake.read("features", d) for d in DATES], ignore_index=True)


def test_init_repo_renders_absolute_paths_and_feature_names(fsettings):
    repo = Path(fsettings.feast_repo)
    yaml_text = (repo / "feature_store.yaml").read_text()
    assert "${REPO}" not in yaml_text and f"path: {repo}/data/registry.db" in yaml_text
    cfg = json.loads((repo / "hfcast_repo.json").read_text())
    assert cfg["feature_names"] == NAMES
    assert Path(cfg["features_path"]).is_absolute() and cfg["features_path"].endswith("date=*/part-0.parquet")
    views = {v.name: v for v in fst.store(fsettings).list_feature_views()}
    assert [f.name for f in views["minute_features"].features] == NAMES
    assert {f.name for f in views["symbol_window"].features} == {"window", "n_features"}


def test_init_repo_fails_clearly_without_feature_set(tmp_path):
    s = get_settings(env={"HFCAST_HOME": str(tmp_path / "h")}, cwd=tmp_path)
    with pytest.raises(FileNotFoundError, match="_feature_set.json"):
        fst.init_repo(s)


def test_historical_matches_parquet_exactly(fsettings):
    rows = _lake_rows(fsettings)
    ent = rows[["symbol", "ts"]].sample(frac=1.0, random_state=1).reset_index(drop=True)  # shuffled order
    out = fst.historical_features(fsettings, ent)
    assert len(out) == len(ent)
    assert (out["symbol"].to_numpy() == ent["symbol"].astype(str).to_numpy()).all()  # order kept
    expect = ent.merge(rows, on=["symbol", "ts"], how="left")
    for name in NAMES:
        assert out[name].dtype == np.float32
        np.testing.assert_array_equal(out[name].to_numpy(), expect[name].to_numpy())  # NaN == NaN here


def test_historical_is_point_in_time_correct(fsettings):
    rows = _lake_rows(fsettings).set_index(["symbol", "ts"])
    t = pd.Timestamp
    ent = pd.DataFrame({"symbol": ["AAA", "AAA", "AAA", "BBB", "AAA"], "event_timestamp": [
        t("2024-01-02 14:40:00", tz="UTC"),  # exactly a row
        t("2024-01-02 14:40:59", tz="UTC"),  # 59 s later: still that row, never the next (future) one
        t("2024-01-02 14:29:59", tz="UTC"),  # before any data
        t("2024-01-03 14:29:00", tz="UTC"),  # before the day's open: the previous session's last row
        t("2024-01-05 15:00:00", tz="UTC"),  # beyond the 1-day TTL: nothing
    ]})
    out = fst.historical_features(fsettings, ent)
    row = rows.loc[("AAA", t("2024-01-02 14:40", tz="UTC"))]
    for name in NAMES:
        assert out.loc[0, name] == row[name] and out.loc[1, name] == row[name]
    assert out.loc[2, NAMES].isna().all()
    prev = rows.loc[("BBB", t("2024-01-02 15:14", tz="UTC"))]
    assert out.loc[3, "spread_bps"] == prev["spread_bps"]
    assert out.loc[4, NAMES].isna().all()
    nxt = rows.loc[("AAA", t("2024-01-02 14:41", tz="UTC"))]
    assert out.loc[1, "spread_bps"] != nxt["spread_bps"]  # the crafted case can tell the two apart


def test_materialize_minute_features_online(fsettings):
    fst.materialize(fsettings, datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 1, 4, tzinfo=timezone.utc))
    got = fst.store(fsettings).get_online_features(
        features=[f"minute_features:{n}" for n in NAMES], entity_rows=[{"symbol": "AAA"}]).to_dict()
    last = Lake.from_settings(fsettings).read("features", DATES[-1]).query("symbol == 'AAA'").iloc[-1]
    assert np.float32(got["rv_5m"][0]) == last["rv_5m"]


def test_online_windows_are_the_latest_30_minutes(fsettings):
    win = fst.materialize_windows(fsettings)  # as of the last date
    assert sorted(win["symbol"]) == ["AAA", "BBB"]  # CCC has only 20 minutes that day: no window
    x, ts, names = fst.online_windows(fsettings, ["BBB", "AAA"])
    assert names == NAMES and x.shape == (2, 30, 3) and x.dtype == np.float32 and x.flags.c_contiguous
    day = Lake.from_settings(fsettings).read("features", DATES[-1])
    for i, sym in enumerate(["BBB", "AAA"]):
        expect = day[day.symbol == sym].tail(30)
        np.testing.assert_array_equal(x[i], expect[NAMES].to_numpy(np.float32))
        assert ts[i] == np.datetime64("2024-01-03T15:14:00", "us")
    assert ts.dtype == np.dtype("datetime64[us]")


def test_online_windows_name_unknown_symbols(fsettings):
    fst.materialize_windows(fsettings)
    with pytest.raises(KeyError, match=r"ZZZ.*|CCC") as info:
        fst.online_windows(fsettings, ["AAA", "ZZZ", "CCC"])
    assert "ZZZ" in str(info.value) and "CCC" in str(info.value) and "AAA" not in str(info.value)
    with pytest.raises(ValueError, match="no symbols"):
        fst.online_windows(fsettings, [])


def test_materialize_windows_as_of_an_earlier_date(fsettings):
    win = fst.materialize_windows(fsettings, "2024-01-02")
    assert sorted(win["symbol"]) == ["AAA", "BBB", "CCC"]
    reader = fst.OnlineWindows(fsettings)
    x, ts, _ = reader(["CCC"])
    day = Lake.from_settings(fsettings).read("features", "2024-01-02")
    np.testing.assert_array_equal(x[0], day[day.symbol == "CCC"].tail(30)[NAMES].to_numpy(np.float32))
    assert ts[0] == np.datetime64("2024-01-02T15:14:00", "us")
    with pytest.raises(ValueError, match="2024-02-01"):
        fst.materialize_windows(fsettings, "2024-02-01")


def test_window_with_a_gap_is_not_published():
    ts = pd.date_range("2024-01-02 14:30", periods=31, freq="min", tz="UTC").astype("datetime64[us, UTC]")
    df = pd.DataFrame({"symbol": ["A"] * 30, "ts": ts.delete(25), "f": np.arange(30, dtype=np.float32)})
    assert fst.latest_windows(df, ["f"]).empty
    ok = fst.latest_windows(df.assign(ts=ts[:30]), ["f"])
    assert ok["window"].iloc[0].tolist() == list(range(30))


def test_cli_materialize(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hfcast.cli import app

    home = tmp_path / "home"
    monkeypatch.setenv("HFCAST_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    write_features_lake(Lake((home / "lake").as_uri()))
    res = CliRunner().invoke(app, ["materialize", "--date", "2024-01-02"])
    assert res.exit_code == 0, res.output
    assert "3 symbol window(s) as of 2024-01-02" in res.output
    x, ts, _ = fst.OnlineWindows(get_settings(env={"HFCAST_HOME": str(home)}, cwd=tmp_path))(["AAA"])
    assert ts[0] == np.datetime64("2024-01-02T15:14:00", "us")


def test_s3_lake_goes_through_a_local_offline_copy(s3_settings):
    write_features_lake(Lake.from_settings(s3_settings), dates=DATES[:1], symbols=["AAA"])
    fst.apply(s3_settings)
    rows = Lake.from_settings(s3_settings).read("features", DATES[0])
    out = fst.historical_features(s3_settings, rows[["symbol", "ts"]])
    np.testing.assert_array_equal(out["rv_5m"].to_numpy(), rows["rv_5m"].to_numpy())
    fst.materialize_windows(s3_settings)
    x, _, _ = fst.online_windows(s3_settings, ["AAA"])
    np.testing.assert_array_equal(x[0], rows.tail(30)[NAMES].to_numpy(np.float32))


@pytest.mark.parametrize("n", [0, 1, 31, 32, 1770, 100_000])
def test_float_list_fast_path_matches_the_proto(n):
    from feast.protos.feast.types.Value_pb2 import FloatList

    v = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    if n:
        v[0] = np.nan
    np.testing.assert_array_equal(fst._float_list(FloatList(val=v.tolist())), v)


def test_duckdb_connection_is_closed_after_offline_reads(fsettings):
    """Left open, ibis's DuckDB connection dumps "nanobind: leaked ..." lines at interpreter exit."""
    import ibis

    fst.materialize(fsettings, datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 1, 4, tzinfo=timezone.utc))
    assert ibis.options.default_backend is None
    fst.historical_features(fsettings, _lake_rows(fsettings)[["symbol", "ts"]].head(5))
    assert ibis.options.default_backend is None


def test_materialize_day_brings_the_online_store_up_to_each_day_reading_that_day_only(tmp_path, monkeypatch):
    s = get_settings(env={"HFCAST_HOME": str(tmp_path / "home")}, cwd=tmp_path)
    lake = Lake.from_settings(s)
    write_features_lake(lake, short="CCC")  # CCC has only 20 minutes on the second day: no window then
    first = fst.materialize_day(s, DATES[0])  # a fresh repository: rendered and registered first
    assert first == {"date": DATES[0], "windows": 3, "symbols": 3, "last_ts": "2024-01-02T15:14:00+00:00"}

    read = []
    real = Lake.read
    monkeypatch.setattr(Lake, "read", lambda self, table, date, *a, **k: read.append((table, date)) or
                        real(self, table, date, *a, **k))
    assert fst.materialize_day(s, DATES[1])["last_ts"] == "2024-01-03T15:14:00+00:00"
    assert {d for t, d in read if t == "features"} == {DATES[1]}  # incremental: the new day only
    _, ts, _ = fst.online_windows(s, ["AAA", "BBB", "CCC"])
    assert ts.tolist() == [np.datetime64("2024-01-03T15:14", "us")] * 2 + [np.datetime64("2024-01-02T15:14", "us")]
    minute = fst.store(s).get_online_features(features=["minute_features:rv_5m"],
                                              entity_rows=[{"symbol": "AAA"}]).to_dict()
    last = real(lake, "features", DATES[1]).query("symbol == 'AAA'").iloc[-1]
    assert np.float32(minute["rv_5m"][0]) == last["rv_5m"]  # the day's last minute of AAA
    assert fst.materialize_day(s, DATES[1])["windows"] == 2  # again: the same rows (a resumed replay)
    with pytest.raises(ValueError, match="no features partition for 2024-01-04"):
        fst.materialize_day(s, "2024-01-04")


def test_materialize_day_on_an_s3_lake(s3_settings):
    write_features_lake(Lake.from_settings(s3_settings), dates=DATES, symbols=["AAA"])
    assert fst.materialize_day(s3_settings, DATES[1])["last_ts"] == "2024-01-03T15:14:00+00:00"
    x, _, _ = fst.online_windows(s3_settings, ["AAA"])
    rows = Lake.from_settings(s3_settings).read("features", DATES[1])
    np.testing.assert_array_equal(x[0], rows.tail(30)[NAMES].to_numpy(np.float32))
