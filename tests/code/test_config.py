"""Settings: environment parsing, absolute defaults, params lookup, secrets that never leak."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hfcast.config import Secret, Settings, get_settings, load_params, s3_storage_options

SECRET = "sUp3r-s3cret-VALUE"


def test_defaults_are_absolute_and_under_home(tmp_path: Path):
    s = get_settings(env={}, cwd=tmp_path)
    assert s.home == (tmp_path / ".hfcast").resolve()
    assert s.home.is_absolute() and s.feast_repo.is_absolute()
    assert s.lake_url == (s.home / "lake").as_uri()
    assert s.mlflow_uri == f"sqlite:///{s.home / 'mlflow.db'}"
    assert s.feast_repo == s.home / "feature_repo"
    assert s.s3_endpoint is None and s.s3_key == "" and s.s3_secret == ""
    assert s.model_name == "hfcast" and dict(s.params) == {}
    assert s.storage_options == {}


def test_relative_env_paths_resolve_against_cwd_not_process_dir(tmp_path: Path):
    s = get_settings(env={"HFCAST_HOME": "state", "HFCAST_LAKE": "data/lake", "HFCAST_FEAST_REPO": "fr"},
                     cwd=tmp_path)
    assert s.home == (tmp_path / "state").resolve()
    assert s.lake_url == (tmp_path / "data" / "lake").resolve().as_uri()
    assert s.feast_repo == (tmp_path / "fr").resolve()


def test_env_values_are_used(tmp_path: Path):
    env = {
        "HFCAST_HOME": str(tmp_path / "h"),
        "HFCAST_LAKE": "s3://bucket/prefix/",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "HFCAST_S3_ENDPOINT": "http://127.0.0.1:8333",
        "AWS_ACCESS_KEY_ID": "AKID",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "HFCAST_MODEL_NAME": "m2",
    }
    s = get_settings(env=env, cwd=tmp_path)
    assert s.lake_url == "s3://bucket/prefix"  # trailing slash stripped
    assert s.mlflow_uri == "http://127.0.0.1:5000"
    assert s.s3_endpoint == "http://127.0.0.1:8333"
    assert s.model_name == "m2"
    assert isinstance(s.s3_secret, Secret) and s.s3_secret.reveal() == SECRET
    opts = s.storage_options
    assert opts == {"key": "AKID", "secret": SECRET, "client_kwargs": {"endpoint_url": "http://127.0.0.1:8333"}}
    assert type(opts["secret"]) is str  # the revealed plain value, not the Secret wrapper


def test_aws_endpoint_url_is_a_fallback(tmp_path: Path):
    s = get_settings(env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, cwd=tmp_path)
    assert s.s3_endpoint == "http://127.0.0.1:9"


def test_params_dotted_lookup(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 3\n  opt:\n    lr: 0.001\nsynth: {n_symbols: 5}\n")
    s = get_settings(env={}, cwd=tmp_path)
    assert s.param("train.epochs") == 3
    assert s.param("train.opt.lr") == pytest.approx(0.001)
    assert s.param("synth.n_symbols", 99) == 5
    assert s.param("train.missing", "dflt") == "dflt"
    assert s.param("train.epochs.deeper", "dflt") == "dflt"  # walking into a scalar
    assert s.param("nope") is None


def test_params_path_from_env_and_bad_file(tmp_path: Path):
    other = tmp_path / "other.yaml"
    other.write_text("a: {b: 1}\n")
    assert get_settings(env={"HFCAST_PARAMS": str(other)}, cwd=tmp_path).param("a.b") == 1
    assert load_params(tmp_path / "missing.yaml") == {}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_params(bad)


def test_with_returns_a_modified_copy(tmp_path: Path):
    s = get_settings(env={}, cwd=tmp_path)
    t = s.with_(lake_url="s3://b/p")
    assert t.lake_url == "s3://b/p" and s.lake_url != t.lake_url
    with pytest.raises(Exception):
        s.lake_url = "x"  # frozen


@pytest.mark.parametrize("render", [
    repr, str, lambda v: f"{v}", lambda v: f"{v!r}", lambda v: f"{v:>40}", lambda v: "%s" % v,
    lambda v: "%r" % (v,), lambda v: "{}".format(v), lambda v: str([v]), lambda v: str({"k": v}),
])
def test_secret_never_revealed_by_rendering(render):
    out = render(Secret(SECRET))
    assert SECRET not in out
    assert "***" in out


def test_secret_reveal_and_equality():
    s = Secret(SECRET)
    assert s.reveal() == SECRET and s == SECRET  # usable where the value is needed
    assert str(Secret("")) == "" and repr(Secret("")) == "Secret('')"


def test_settings_repr_and_logging_hide_credentials(tmp_path: Path, caplog):
    s = get_settings(env={"AWS_ACCESS_KEY_ID": "AKIDXYZ", "AWS_SECRET_ACCESS_KEY": SECRET}, cwd=tmp_path)
    assert SECRET not in repr(s) and SECRET not in str(s) and "AKIDXYZ" not in repr(s)
    log = logging.getLogger("hfcast.test")
    with caplog.at_level(logging.DEBUG, logger="hfcast.test"):
        log.info("settings %s", s)
        log.info("secret %s / %r", s.s3_secret, s.s3_secret)
        log.info(f"fstring {s.s3_secret} {s}")
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert SECRET not in text and "AKIDXYZ" not in caplog.text
    assert "***" in caplog.text


def test_storage_options_helper_accepts_plain_strings():
    assert s3_storage_options(None, "", "") == {}
    assert s3_storage_options("http://e", "k", "s") == {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://e"}}


def test_settings_can_be_built_explicitly(tmp_path: Path):
    s = Settings(home=tmp_path, lake_url=tmp_path.as_uri(), mlflow_uri="sqlite:///x.db", feast_repo=tmp_path / "fr")
    assert s.s3_secret == "" and s.param("a.b", 1) == 1


def test_settings_param_round_trip_never_carries_credentials(tmp_path):
    from hfcast.config import settings_from_param

    env = {"HFCAST_HOME": str(tmp_path / "h"), "HFCAST_LAKE": "s3://b/lake", "AWS_ACCESS_KEY_ID": "key-id",
           "AWS_SECRET_ACCESS_KEY": "top-secret", "HFCAST_S3_ENDPOINT": "http://127.0.0.1:9"}
    s = get_settings(env=env, cwd=tmp_path).with_(params={"train": {"epochs": 3}}, model_name="m")
    text = s.to_param()
    assert "top-secret" not in text and "key-id" not in text
    back = settings_from_param(text, env={"AWS_ACCESS_KEY_ID": "k2", "AWS_SECRET_ACCESS_KEY": "s2"})
    assert (back.home, back.lake_url, back.mlflow_uri, back.feast_repo, back.s3_endpoint, back.model_name) == \
        (s.home, s.lake_url, s.mlflow_uri, s.feast_repo, s.s3_endpoint, "m")
    assert back.param("train.epochs") == 3 and back.s3_key.reveal() == "k2"
    assert settings_from_param("", env=env).lake_url == "s3://b/lake"
    with pytest.raises(ValueError, match="unknown field"):
        settings_from_param('{"s3_key": "x"}', env=env)
