"""The replay in honest time on a simulated universe with a regime shift (real training, MLflow, gate)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from hfcast import registry
from hfcast.data.schema import trading_days
from hfcast.data.simulator import SimConfig, write_synth
from hfcast.monitoring.decision import RETRAIN, load_history
from hfcast.replay import load_progress, run_replay
from hfcast.storage import Lake, local_path
from lake_settings import project_settings  # tests/: pytest puts it on sys.path

pytestmark = pytest.mark.integration
OVERRIDES = {
    "walkforward": {"train_days": 6, "val_days": 2, "test_days": 2, "step_days": 2, "embargo_days": 1,
                    "max_folds": 1, "train_stride": 3, "eval_stride": 3, "models": {"tcn": {"channels": 16}}},
    "train": {"epochs": 2, "max_train_windows": 8000, "max_val_windows": 3000, "num_threads": 1},
    "monitor": {"consecutive": 2, "cooldown_dates": 10, "current_rows": 2000, "reference_rows": 2000,
                "reference_sample_rows": 4000, "min_labels": 200},
}


def _settings(root: Path, n_days: int, shift_day: int | None):
    settings = project_settings(root, OVERRIDES)
    write_synth(SimConfig(n_symbols=8, n_days=n_days, seed=3, regime_shift_day=shift_day, shift_vol_mult=1.8,
                          shift_spread_mult=1.5), Lake.from_settings(settings), progress=False)
    return settings


@pytest.mark.slow
def test_shifted_universe_retrains_once_without_look_ahead(tmp_path):
    from hfcast.lifecycle import retrain
    from hfcast.monitoring.retraining import InProcessStarter

    def forced(d, version):  # tiny training rarely beats the EWMA baseline: force the promotion (the
        # decision-date refusal still applies to a forced promotion) so the days after it show the switch
        return InProcessStarter(lambda reason, drifted: retrain(
            settings, ["tcn"], reason=reason, drifted_dates=drifted, last_date=d, decision_date=d,
            dataset_version=version, force_reason="test: follow the new champion"))

    days = trading_days("2024-01-02", 20)
    settings = _settings(tmp_path, 20, shift_day=14)
    run_replay(settings, days[12], days[-1], archs=["tcn"], starter_for=forced)
    lake = Lake.from_settings(settings)
    history = load_history(lake, "hfcast")
    retrains = [r for r in history if r["action"] == RETRAIN]
    assert len(retrains) == 1, [(r["date"], r["action"]) for r in history]
    decided = retrains[0]["date"]
    new = retrains[0]["trigger"]["new_version"]
    tags = registry.resolve(settings, f"hfcast/{new}").tags
    assert tags["hfcast.train_last"] <= decided and tags["hfcast.test_last"] <= decided  # no look-ahead
    assert tags["hfcast.test_last"] == decided  # the most recent data up to the decision was used
    progress = load_progress(lake, "hfcast")["days"]
    after = [d for d in days[12:] if d > decided]
    assert retrains[0]["trigger"]["promoted"] and after
    for d in after:  # the champion after the decision predicts the next days, and is scored for it
        want = str(new)
        assert progress[d]["predict"]["version"] == want
        csv = pd.read_csv(io.BytesIO(local_path(lake.predictions("hfcast", want, d)).read_bytes()))
        assert set(csv["model_version"].astype(str)) == {want}
        rec = next(r for r in history if r["date"] == d)
        assert rec["version"] == want and (rec["checks"]["live"] or {}).get("n_labels", 0) > 0


@pytest.mark.slow
def test_stationary_universe_never_retrains_over_twenty_days(tmp_path):
    days = trading_days("2024-01-02", 32)
    settings = _settings(tmp_path, 32, shift_day=None)
    out = run_replay(settings, days[12], days[-1], archs=["tcn"])
    history = load_history(Lake.from_settings(settings), "hfcast")
    assert len([d for d in out["days"] if d >= days[12]]) >= 20
    assert [r["date"] for r in history if r["action"] == RETRAIN] == []
    assert {r["version"] for r in history} == {out["bootstrap"]}


@pytest.mark.slow
def test_registered_version_restores_its_training_features_from_dvc(tmp_path, s3, s3_bucket):
    """Each replayed day is `dvc add`-ed and pushed to SeaweedFS; the version's dataset_version alone
    brings its training partitions back, byte-identical, in a fresh clone."""
    from hfcast.versioning import FeatureVersions, restore_features

    days = trading_days("2024-01-02", 13)
    settings = _settings(tmp_path, 13, shift_day=None)
    lake_dir = local_path(settings.lake_url)
    versions = FeatureVersions(lake_dir, remote=f"{s3_bucket}/dvc", endpoint_url=s3.endpoint, env=s3.env()).init()
    run_replay(settings, days[12], days[12], archs=["tcn"], versions=versions)
    tags = registry.resolve(settings, "hfcast/1").tags
    restored = restore_features(lake_dir, tags["dataset_version"], tmp_path / "clone", env=s3.env())
    train = [d for d in days if tags["hfcast.train_first"] <= d <= tags["hfcast.train_last"]]
    assert len(train) >= 5
    for d in train:
        part = f"date={d}"
        original = sorted((lake_dir / "features" / part).rglob("*.parquet"))
        assert original, f"no parquet for {d}"
        for f in original:
            assert (restored / part / f.relative_to(lake_dir / "features" / part)).read_bytes() == f.read_bytes()


def _cli_replay(root: Path, first: str, last: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HFCAST_HOME": str(root / ".hfcast"), "HFCAST_LAKE": (root / "lake").as_uri(),
           "HFCAST_PARAMS": str(root / "params.yaml"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", "from hfcast.cli import main; main()", "replay", "--from", first,
                             "--to", last, "--arch", "tcn"], env=env, cwd=root, start_new_session=True,
                            stdout=open(root / "replay.log", "ab"), stderr=subprocess.STDOUT)


def _state(settings) -> dict:
    """What must not depend on an interruption: registry, CSV bytes, decisions (ids and clocks left out)."""
    lake = Lake.from_settings(settings)
    versions = [{k: v.get(k) for k in ("version", "aliases", "arch")} | {
        k: registry.resolve(settings, f"hfcast/{v['version']}").tags.get(k)
        for k in ("hfcast.train_last", "hfcast.test_last", "gate.decision")} for v in registry.list_versions(settings)]
    root = local_path(lake.url) / "predictions"
    csvs = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.csv"))}
    decisions = [(r["date"], r["version"], r["action"], round(r["checks"]["drift_share"], 6),
                  (r.get("trigger") or {}).get("new_version")) for r in load_history(lake, "hfcast")]
    return {"versions": versions, "csvs": csvs, "decisions": decisions}


@pytest.mark.slow
def test_replay_killed_mid_day_resumes_to_the_same_end_state(tmp_path):
    import os
    import signal
    import time

    from hfcast.replay import journal_url

    days = trading_days("2024-01-02", 18)
    runs = {}
    for name in ("straight", "killed"):
        root = tmp_path / name
        root.mkdir()
        runs[name] = _settings(root, 18, shift_day=14)
    assert _cli_replay(tmp_path / "straight", days[12], days[-1]).wait(1500) == 0
    proc = _cli_replay(tmp_path / "killed", days[12], days[-1])
    folder = local_path(journal_url(Lake.from_settings(runs["killed"]), "hfcast"))
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:  # kill mid-day: arrived, not yet predicted
        steps = {p.stem: json.loads(p.read_text())["steps"] for p in folder.glob("2*.json")} if folder.exists() else {}
        if any(e.get("arrive", {}).get("finished_at") and "predict" not in e for d, e in steps.items() if d > days[13]):
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert _cli_replay(tmp_path / "killed", days[12], days[-1]).wait(1500) == 0
    assert _state(runs["killed"]) == _state(runs["straight"])


@pytest.mark.slow
def test_a_server_started_after_a_replay_answers_by_symbol_with_the_last_replayed_minute(tmp_path):
    """Each replayed day goes into the online store as it arrives (the journal's materialize step),
    so `hfcast serve` started afterwards answers by symbol with the last minute of the last day."""
    import os

    import httpx

    from hfcast import journal
    from serving_fixtures import start_serve, stop_serve

    days = trading_days("2024-01-02", 15)
    settings = _settings(tmp_path, 15, shift_day=None)
    run_replay(settings, days[12], days[14], archs=["tcn"])
    lake = Lake.from_settings(settings)
    for d in days[12:]:  # each day was materialized when it arrived, before it was predicted
        steps = journal.Journal(lake, "hfcast", d).doc["steps"]
        assert steps["materialize"]["finished_at"] <= steps["predict"]["started_at"]
        assert steps["materialize"]["last_ts"].startswith(d)
    last = lake.read("features", days[14], ["symbol", "ts"])
    want = last.groupby("symbol", observed=True)["ts"].max()

    env = {**os.environ, "HFCAST_HOME": str(settings.home), "HFCAST_LAKE": settings.lake_url,
           "HFCAST_PARAMS": str(tmp_path / "params.yaml"), "MLFLOW_TRACKING_URI": settings.mlflow_uri}
    # a replayed past is older than any staleness limit measured against the wall clock
    proc, base, _ = start_serve(["--model", "hfcast@champion", "--max-staleness-s", "-1"], env, tmp_path,
                                tmp_path / "serve.log")
    try:
        symbols = ["S0000", "S0003"]
        r = httpx.post(f"{base}/v1/models/hfcast:predict", timeout=60,
                       json={"instances": [{"symbol": s} for s in symbols]})
        assert r.status_code == 200, r.text
    finally:
        stop_serve(proc)
    rows = r.json()["predictions"]
    assert [row["symbol"] for row in rows] == symbols
    assert [row["feature_ts"] for row in rows] == [want[s].isoformat() for s in symbols]
    assert all(row["feature_ts"] == f"{days[14]}T20:59:00+00:00" for row in rows)  # the session's last minute
