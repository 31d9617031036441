"""Feast on a real Redis server (the cluster's online store), as the predictor pods use it.

A Redis server (Debian's ``redis-server``) runs on 127.0.0.1 with the cluster's authentication (the
ACL file of manifests/secrets/hfcast-redis.template.yaml); clients name the password as the
ConfigMap does, ``redis://:${REDIS_PASSWORD}@host``, and get it from the environment, as the pods
get it from the Secret: it is never written into the rendered repository. The "materialize step" applies the
repository and materializes minute features and windows into Redis; a "fresh pod" (an empty
folder for HFCAST_FEAST_REPO, as in a new predictor replica) renders and registers the
repository at start-up and reads the same windows; a predictor with the feature store on serves a
request by symbol from them. The SQLite default is covered by test_feast.py.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
import yaml

from hfcast import feature_store as fst
from hfcast.config import get_settings
from serving_fixtures import feast_repo, tiny_bundle
from _servers import RedisServer

pytestmark = pytest.mark.integration

F = 8


@pytest.fixture(scope="module")
def redis_server():
    password = secrets.token_hex(16)
    before = os.environ.get("REDIS_PASSWORD")
    os.environ["REDIS_PASSWORD"] = password  # what the pod's env gets from the hfcast-redis Secret
    try:
        with RedisServer(password=password) as server:
            yield server
    finally:
        if before is None:
            os.environ.pop("REDIS_PASSWORD", None)
        else:
            os.environ["REDIS_PASSWORD"] = before


@pytest.fixture(scope="module")
def materialized(tmp_path_factory, redis_server):
    """The materialize step (once): lake features, apply, minute features and windows into Redis."""
    tmp_path = tmp_path_factory.mktemp("cluster-redis")
    env = {"HFCAST_HOME": str(tmp_path / "step"), "HFCAST_LAKE": (tmp_path / "lake").as_uri(),
           "HFCAST_FEAST_ONLINE": f"redis://:${{REDIS_PASSWORD}}@127.0.0.1:{redis_server.port}"}
    settings = get_settings(env=env, cwd=tmp_path)
    windows = feast_repo(settings, F, n_symbols=3)
    day = windows["event_timestamp"].max()
    fst.materialize(settings, day - pd.Timedelta(hours=8), day + pd.Timedelta(minutes=1))
    return env, settings, windows


def test_rendered_repo_uses_redis_and_redis_holds_the_features(materialized, redis_server):
    _, settings, windows = materialized
    doc = yaml.safe_load((Path(settings.feast_repo) / "feature_store.yaml").read_text())
    assert doc["online_store"] == {"type": "redis", "redis_type": "redis",
                                   "connection_string": f"127.0.0.1:{redis_server.port},password=${{REDIS_PASSWORD}}"}
    rendered = "".join(p.read_text(errors="replace") for p in Path(settings.feast_repo).rglob("*") if p.is_file()
                       and p.suffix in (".yaml", ".json", ".py"))
    assert redis_server.password not in rendered  # the secret stays in the environment
    assert not (Path(settings.feast_repo) / "data" / "online_store.db").exists()
    assert redis.Redis(host="127.0.0.1", port=redis_server.port, password=redis_server.password).dbsize() >= len(windows)


def test_a_fresh_pod_renders_registers_and_reads_windows_from_redis(materialized, tmp_path):
    env, _, windows = materialized
    pod = get_settings(env={**env, "HFCAST_FEAST_REPO": str(tmp_path / "pod" / "feature_repo")}, cwd=tmp_path)
    assert not Path(pod.feast_repo).exists()
    symbols = list(windows["symbol"])
    x, ts, names = fst.OnlineWindows(pod)(symbols)
    assert names == [f"f{j}" for j in range(F)] and x.shape == (len(symbols), 30, F)
    for i, row in enumerate(windows.itertuples()):
        np.testing.assert_array_equal(x[i].reshape(-1), np.asarray(row.window, dtype=np.float32))
        assert pd.Timestamp(ts[i], tz="UTC") == row.event_timestamp
    with pytest.raises(KeyError, match="NOPE"):
        fst.OnlineWindows(pod)(["NOPE"])


def test_minute_features_are_online_in_redis(materialized):
    _, settings, windows = materialized
    sym = windows["symbol"].iloc[0]
    resp = fst.store(settings).get_online_features(features=["minute_features:f0"],
                                                   entity_rows=[{"symbol": sym}]).to_dict()
    last = np.asarray(windows["window"].iloc[0], dtype=np.float32).reshape(30, F)[-1, 0]
    assert resp["f0"][0] == pytest.approx(float(last))


@pytest.mark.slow  # loads and exports a model (~25 s on a loaded machine); the HTTP variant: test_cluster_containers.py
def test_predictor_serves_a_request_by_symbol_from_redis(materialized, tmp_path):
    from serving.core import Limits
    from serving.predictor import HfcastPredictor

    env, _, windows = materialized
    pod = get_settings(env={**env, "HFCAST_FEAST_REPO": str(tmp_path / "pred" / "feature_repo")}, cwd=tmp_path)
    bundle = tiny_bundle(tmp_path / "bundle", "tcn", F)
    model = HfcastPredictor("hfcast", bundle=bundle, runner="onnxruntime", settings=pod,
                            limits=Limits(max_staleness_s=None))
    assert model.load()
    symbols = list(windows["symbol"])[:2]
    out = model.predict({"instances": [{"symbol": s} for s in symbols]})["predictions"]
    fc = model.service.forecaster
    direct = fc.predict(np.stack([np.asarray(w, dtype=np.float32).reshape(30, F) for w in windows["window"].iloc[:2]]))
    for i, row in enumerate(out):
        for col, values in direct.items():
            if col not in row:
                continue
            if isinstance(values.iloc[i], (bool, np.bool_, str)):
                assert row[col] == values.iloc[i]
                continue
            assert row[col] == pytest.approx(float(values.iloc[i]), rel=1e-3, abs=1e-6)
        assert row["feature_ts"] == windows["event_timestamp"].iloc[i].isoformat()


def test_switching_the_setting_rerenders_an_existing_sqlite_repo(materialized, tmp_path):
    env, settings, _ = materialized
    sqlite = get_settings(env={k: v for k, v in env.items() if k != "HFCAST_FEAST_ONLINE"}, cwd=tmp_path)
    fst.store(sqlite)
    doc = yaml.safe_load((Path(sqlite.feast_repo) / "feature_store.yaml").read_text())
    assert doc["online_store"]["type"] == "sqlite"
    fst.store(settings)
    doc = yaml.safe_load((Path(settings.feast_repo) / "feature_store.yaml").read_text())
    assert doc["online_store"]["type"] == "redis"
