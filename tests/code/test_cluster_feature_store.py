"""The Feast online-store setting (HFCAST_FEAST_ONLINE) rendered into feature_store.yaml (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfcast import feature_store as fst
from hfcast.config import get_settings


def _settings(tmp_path: Path, online: str | None):
    env = {"HFCAST_HOME": str(tmp_path / "home")}
    if online is not None:
        env["HFCAST_FEAST_ONLINE"] = online
    return get_settings(env=env, cwd=tmp_path)


def test_default_is_sqlite_inside_the_rendered_folder(tmp_path):
    s = _settings(tmp_path, None)
    assert s.feast_online == ""
    cfg = fst.online_store_config(s)
    assert cfg == {"type": "sqlite", "path": str(Path(s.feast_repo) / "data" / "online_store.db")}


@pytest.mark.parametrize("url, conn", [
    ("redis://redis.hfcast.svc.cluster.local:6379", "redis.hfcast.svc.cluster.local:6379"),
    ("redis://10.0.0.5", "10.0.0.5:6379"),
    ("redis://:s3cr%40t@r:6380/2", "r:6380,db=2,password=s3cr@t"),
    ("redis://:${REDIS_PASSWORD}@redis:6379", "redis:6379,password=${REDIS_PASSWORD}"),
    ("rediss://r:6379", "r:6379,ssl=true"),
])
def test_redis_urls_become_feast_connection_strings(tmp_path, monkeypatch, url, conn):
    monkeypatch.setenv("REDIS_PASSWORD", "not-written-anywhere")  # Feast expands ${VAR}; hfcast never does
    cfg = fst.online_store_config(_settings(tmp_path, url))
    assert cfg == {"type": "redis", "redis_type": "redis", "connection_string": conn}


def test_a_password_variable_that_is_not_set_is_refused_with_the_fix(tmp_path, monkeypatch):
    """Feast would send the literal ${REDIS_PASSWORD} and Redis would answer a bare WRONGPASS."""
    from hfcast.errors import UserError

    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    with pytest.raises(UserError, match=r"names \$\{REDIS_PASSWORD\}, which is not set") as err:
        fst.online_store_config(_settings(tmp_path, "redis://:${REDIS_PASSWORD}@redis:6379"))
    assert "hfcast-redis Secret" in err.value.fix


@pytest.mark.parametrize("url", ["postgres://db:5432", "redis://", "localhost:6379"])
def test_unknown_online_store_settings_are_refused_without_echoing_a_password(tmp_path, url):
    with pytest.raises(ValueError, match="HFCAST_FEAST_ONLINE"):
        fst.online_store_config(_settings(tmp_path, url))


def test_rendered_store_config_keeps_the_template_and_swaps_the_online_store(tmp_path):
    s = _settings(tmp_path, "redis://127.0.0.1:6379")
    doc = fst._store_config(s)
    assert doc["registry"]["path"] == f"{s.feast_repo}/data/registry.db"
    assert doc["offline_store"] == {"type": "duckdb"} and doc["project"] == "hfcast"
    assert doc["online_store"]["type"] == "redis"


def test_an_installed_hfcast_ships_the_feast_template():
    """Images `pip install .`: the template must travel as data files (the source tree is not there)."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    data_files = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped = set(data_files["share/hfcast/feature_repo"])
    assert {"feature_repo/feature_store.yaml", "feature_repo/features.py"} <= shipped
    assert all((root / f).exists() for f in shipped)
