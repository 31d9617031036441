"""The Kubeflow pipelines run end to end with the kfp local runner on a tiny universe.

Real services: SeaweedFS (S3 lake, prediction CSVs), MLflow (sqlite registry), Feast (duckdb /
sqlite). Each ``dsl.If`` is driven down both branches, because the local runner's condition
evaluation has been reported to take the false branch (kubeflow/pipelines PR 13313).
"""

import json
import time

import pandas as pd
import pytest

from hfcast import registry, storage
from hfcast.config import deep_merge
from hfcast.storage import Lake
from pipelines.local import run_local

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

# 6 symbols x 12 days: one walk-forward fold (train 4, val 2, test 3 days, 1-day embargoes), 1 epoch
TINY = {
    "walkforward": {"train_days": 4, "val_days": 2, "test_days": 3, "step_days": 3, "embargo_days": 1,
                    "max_folds": 1, "train_stride": 5,
                    "models": {"transformer": {"d_model": 16, "n_layers": 1}, "lstm": {"hidden": 16, "n_layers": 1}}},
    "train": {"epochs": 1, "max_train_windows": 3000, "max_val_windows": 2000},
}
TIMINGS: dict[str, float] = {}


def _timed(label, name, **params):
    t0 = time.perf_counter()
    out = run_local(name, **params)
    TIMINGS[label] = round(time.perf_counter() - t0, 1)
    print(f"[pipeline wall time] {label}: {TIMINGS[label]} s")
    return out


@pytest.fixture
def env(s3_settings, s3, monkeypatch):
    """Credentials reach the component subprocesses through the environment only."""
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    return s3_settings


def _settings_param(settings, overrides):
    """The pipelines' one settings parameter: ``settings`` with params.yaml overrides merged in."""
    return settings.with_(params=deep_merge(settings.params, overrides)).to_param()


def _training_args(settings, **extra):
    return {"settings": _settings_param(settings, TINY), "synth_symbols": 6, "synth_days": 12,
            "synth_seed": 3, "synth_shift_day": -2, **extra}


def _export_files(settings, version):
    mv = registry.resolve(settings, f"hfcast/{version}")
    with registry.tracking(settings) as t:
        return {f.path for f in t.client.list_artifacts(mv.run_id, "export")}


def test_training_then_batch_then_rejected_challenger(env, s3_bucket, tmp_path):
    # the prep pushes to the bucket; a fixed kind (floor: a network floored on har_tod) so that the
    # export step compiles a network (on auto, 1-epoch networks on 6 symbols lose to a baseline on
    # validation and a baseline is served, rightly: tests/integration/test_forecaster_kinds.py)
    s = env.with_(params=deep_merge(env.params, {"dvc": {"remote": f"{s3_bucket}/dvc"}, "forecaster": {"kind": "floor"}}))
    marker = s.home / "serving" / "deployed.json"

    # 1. promoted branch (forced: a 1-epoch model on 6 symbols does not beat HAR-RV, and must not)
    out = _timed("training (2 archs, promoted)", "training-cpu",
                 **_training_args(s, archs=["transformer", "lstm"], force_reason="integration test"))
    assert out["champion_version"] == "1" and out["gate"].metadata["promoted"] is True
    champion = registry.resolve(s, "hfcast@champion")
    assert str(champion.version) == "1"
    assert champion.tags["gate.decision"] == "forced"
    assert champion.tags["arch"] in ("floor:transformer", "floor:lstm"), champion.tags["arch"]
    _assert_restores(s, champion.tags["dataset_version"], tmp_path / "restored")
    assert "export/model.onnx" in _export_files(s, 1)
    deployed = json.loads(marker.read_text())
    assert deployed["model_ref"] == "hfcast/1" and deployed["target"] == "local"
    lake = Lake.from_settings(s)
    assert len(lake.dates("features")) == 12 and lake.url.startswith("s3://")

    # 2. batch inference: one CSV per date in S3, all from the pinned champion version
    dates = lake.dates("features")[-3:]
    _timed("batch (3 dates)", "batch", dates=f"{dates[0]}..{dates[-1]}", model_ref="hfcast@champion",
           settings=s.to_param())
    for d in dates:
        url = lake.predictions("hfcast", "1", d)
        assert storage.exists(url, s.storage_options), url
        df = pd.read_csv(url, storage_options=s.storage_options)
        assert len(df) > 0 and df["symbol"].nunique() == 6
        assert {"ret_60m_pred", "rv_10m_pred", "ret_60m_conf", "rv_10m_conf"} <= set(df.columns)
        assert (df["model_version"].astype(str) == "1").all()
    listed = storage.listdir(storage.join(lake.url, "predictions", "hfcast", "1"), s.storage_options)
    assert len([p for p in listed if p.endswith(".csv")]) == 3
    reports = lambda: sorted((s.home / "kfp-local").glob("**/report/backtest.json"))  # noqa: E731
    assert reports() == []  # backtest=False (default): the dsl.If's false branch ran no backtest
    _timed("batch + backtest (3 dates, predictions reused)", "batch", dates=f"{dates[0]}..{dates[-1]}",
           model_ref="hfcast@champion", backtest=True, settings=s.to_param())
    (report,) = reports()  # the true branch: one backtest of the pinned version's CSVs
    doc = json.loads(report.read_text())
    assert doc["model"] == "hfcast/1" and list(doc["dates"]) == list(dates)

    # 3. rejected branch: an impossible margin; the champion, its export and the deployment stay
    out = _timed("training (1 arch, rejected)", "training-cpu",
                 **_training_args(s, archs=["lstm"], gate_margin=1e6))
    assert out["champion_version"] == "" and out["gate"].metadata["version"] == "2"
    assert out["gate"].metadata["promoted"] is False and "margin" in out["gate"].metadata["summary"]
    assert str(registry.resolve(s, "hfcast@champion").version) == "1"
    v2 = registry.resolve(s, "hfcast/2")
    assert v2.tags["gate.decision"] == "reject"
    # the pipeline's export step never ran (registration stores only the serving export, export/serving/)
    assert _export_files(s, 2) <= {"export/serving"}
    assert json.loads(marker.read_text()) == deployed  # deploy never ran
    print(f"[pipeline wall times] {TIMINGS}")


def _assert_restores(settings, version, dest):
    """The registered dataset version brings back, from the DVC remote alone, the S3 lake's features."""
    from hfcast.versioning import DvcRemote, restore_features

    got = restore_features(DvcRemote.from_settings(settings), version, dest)
    fs, root = storage.filesystem(f"{settings.lake_url}/features", settings.storage_options)
    lake = {p[len(root):].lstrip("/"): fs.cat_file(p) for p in fs.find(root)}
    assert {p.relative_to(got).as_posix(): p.read_bytes() for p in got.rglob("*") if p.is_file()} == lake


def _decisions(lake):
    from hfcast.monitoring.decision import load_history

    return {r["date"]: r for r in load_history(lake, "hfcast")}


def test_monitoring_retrains_once_on_a_shift_and_never_on_stationary_dates(env):
    """15 days, regime shift from day 12; the champion learns from the first 8 days only. Stationary
    days 9-10: no retraining. Shifted days 12, 13, 14: the 2nd consecutive drift alarm (K=2) starts
    exactly one retraining (the monitoring pipeline's true branch); day 14 is held by the cooldown."""
    from hfcast.features.engine import run_featurize

    s = env
    from hfcast.data.schema import trading_days

    days = [str(d) for d in trading_days("2024-01-02", 15)]
    params = {**TINY, "featurize": {"dates": days[:8]},
              "walkforward": {**TINY["walkforward"], "train_days": 2, "val_days": 1, "test_days": 1, "step_days": 1}}
    out = _timed("training (monitoring setup)", "training-cpu",
                 **{**_training_args(s, archs=["lstm"], force_reason="monitoring test champion", synth_days=15,
                                     synth_shift_day=12), "settings": _settings_param(s, params)})
    assert out["champion_version"] == "1"
    lake = Lake.from_settings(s)
    assert lake.dates("features") == days[:8]
    run_featurize(lake, progress=False)  # the new dates arrive
    mon = {"settings": _settings_param(s, params), "starter": "local"}

    for d in days[9:11]:  # stationary: the false branch, nothing starts
        _timed(f"monitoring {d} (stationary)", "monitoring", date=d, **mon)
        assert _decisions(lake)[d]["action"] == "none", _decisions(lake)[d]["explanation"]
    assert trigger_state(lake) is None

    for d in days[12:15]:
        _timed(f"monitoring {d} (shifted)", "monitoring", date=d, **mon)
    dec = _decisions(lake)
    assert dec[days[12]]["drift_alarm"] and dec[days[12]]["action"] == "none"  # 1 of K=2
    assert dec[days[13]]["action"] == "retrain", dec[days[13]]["explanation"]
    assert [d for d, r in dec.items() if r["action"] == "retrain"] == [days[13]]
    state = trigger_state(lake)
    assert state["status"] == "done" and state["kind"] == "local"
    # day 14 starts no second retraining: a promoted challenger (trained up to day 13) starts its own
    # drift streak; a kept champion's third drifted date is held by the cooldown
    if str(registry.champion(s).version) == "2":
        assert dec[days[14]]["action"] == "none" and dec[days[14]]["version"] == "2"
        assert "1/2 consecutive" in dec[days[14]]["explanation"], dec[days[14]]["explanation"]
    else:
        assert dec[days[14]]["action"] == "suppressed" and "cooldown" in dec[days[14]]["explanation"]
    versions = registry.list_versions(s)
    assert [v["version"] for v in versions] == [1, 2]  # exactly one retraining registered a challenger
    with registry.tracking(s) as t:
        tags = t.client.get_run(versions[1]["run_id"]).data.tags
    assert "drift" in tags["hfcast.trigger_reason"] and days[13] in tags["hfcast.drifted_dates"]
    # the champion's network is among what the retraining chose from (lifecycle.retrain_archs: a
    # one-network champion is retrained against params.yaml forecaster.archs, so it can be replaced)
    with registry.tracking(s) as t:
        trained = {t.client.get_run(r).data.tags.get("arch") for r in tags["hfcast.member_runs"].split(",")}
    assert "lstm" in trained, trained
    print(f"[pipeline wall times] {TIMINGS}")


def trigger_state(lake):
    from hfcast.monitoring.retraining import read_state

    return read_state(lake, "hfcast")
