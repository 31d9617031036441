"""The monitor end to end on the simulator: real Evidently, real MLflow, real retraining + gate.

Starting a retraining on Kubeflow is exercised with a fake starter that polls a fake client (no KFP
API server can run here); the real Kubeflow starter lives in ``pipelines.starters``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from hfcast import storage
from hfcast.config import get_settings
from hfcast.data.simulator import SimConfig, write_synth
from hfcast.monitoring.decision import RETRAIN, SUPPRESSED, MonitorConfig, load_history
from hfcast.monitoring.drift import run_monitor
from hfcast.monitoring.reference import build_reference
from hfcast.monitoring.retraining import InProcessStarter, RecordOnlyStarter, record_start
from hfcast.features.engine import load_features, read_feature_set, run_featurize
from hfcast.features.windows import build_windows
from hfcast.predict import run_predict
from hfcast.storage import Lake

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

N_SYM, N_REF, N_STATIONARY, N_SHIFTED = 12, 10, 22, 6
SHIFT = N_REF + N_STATIONARY  # index of the first shifted date


def tiny_forecaster(lake, train_dates, names):
    """A small TCN trained briefly (it tracks the volatility level, so live QLIKE means something)."""
    from hfcast.train import TrainConfig, train_forecaster

    wa = build_windows(load_features(lake, train_dates), names)
    cfg = TrainConfig(epochs=2, max_train_windows=6000, max_val_windows=2000, device="cpu", compile="off", seed=0)
    fc, _ = train_forecaster("tcn", wa.subset_dates(train_dates[:-2]), wa.subset_dates(train_dates[-2:]),
                             {"channels": 8, "n_levels": 2, "head_hidden": 8}, cfg, progress=False)
    fc.meta.update(model_name="hfcast", model_version="1")
    return fc


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A featurized simulator lake with a 1.8x vol regime shift, a tiny trained forecaster, its reference and
    its prediction CSVs (name hfcast, version 1)."""
    root = tmp_path_factory.mktemp("monitor")
    settings = get_settings(env={"HFCAST_HOME": str(root / ".hfcast"), "HFCAST_LAKE": (root / "lake").as_uri()}, cwd=root)
    lake = Lake.from_settings(settings)
    write_synth(SimConfig(n_symbols=N_SYM, n_days=SHIFT + N_SHIFTED, seed=11, regime_shift_day=SHIFT,
                          shift_vol_mult=1.8, shift_spread_mult=1.5), lake, progress=False)
    run_featurize(lake, progress=False)
    dates = lake.dates("features")
    names = read_feature_set(lake)["features"]
    fc = tiny_forecaster(lake, dates[:N_REF], names)
    bundle = root / "bundle"
    fc.save(str(bundle))
    doc = build_reference(settings, fc, dates[:N_REF], n_rows=6000, test_dates=dates[N_REF:N_REF + 3])
    run_predict(settings, dates[N_REF:], bundle_dir=str(bundle), runner="torch", progress=False)
    return settings, lake, dates, doc


@pytest.fixture
def clean(sim):
    """Each test starts with no decision history and no retraining state for the model."""
    folder = Path(storage.local_path(sim[1].url)) / "monitoring" / "hfcast"
    for name in ("decisions.jsonl", "retrain.json", "retrain.lease"):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "decisions", ignore_errors=True)
    return folder


def test_reference_is_stored_with_the_version(sim):
    settings, lake, dates, doc = sim
    ref = storage.read_parquet(storage.join(lake.url, "monitoring/hfcast/1/reference.parquet"))
    assert len(ref) == doc["rows"] == 6000
    assert set(doc["features"]) <= set(ref.columns) and "rv_10m_pred" in ref and "ret_60m_conf" in ref
    assert set(doc["train_dates"]) == set(dates[:N_REF]) and ref["ts"].dt.strftime("%Y-%m-%d").max() <= dates[N_REF - 1]
    assert doc["test_scores"]["vol_qlike"] > 0


def test_reports_html_json_and_mlflow(sim, clean, tmp_path):
    settings, lake, dates, _ = sim
    settings = settings.with_(home=tmp_path / "home", mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = MonitorConfig(consecutive=3)
    rec = run_monitor(settings, dates[SHIFT + 1], "hfcast/1", starter=RecordOnlyStarter(), cfg=cfg)
    out = Path(storage.local_path(lake.monitoring("hfcast", "1", dates[SHIFT + 1])))
    summary = json.loads((out / "summary.json").read_text())
    drifted = summary["features_drift"]["drifted"]
    assert summary["features_drift"]["share"] >= cfg.drift_share and len(drifted) >= 5
    html = (out / "features_drift.html").read_text()
    assert all(col in html for col in drifted[:5])  # the report names the drifted columns
    assert "rv_10m_pred" in (out / "predictions_drift.html").read_text()
    for name in ("features_drift.json", "predictions_drift.json"):
        doc = json.loads((out / name).read_text())
        assert any(m["metric_name"].startswith("DriftedColumnsCount") for m in doc["metrics"])
    live = summary["live"]  # labels of the date have matured: live scores vs the reference test scores
    assert live["n_labels"] > 500 and live["vol_qlike"] > 0 and summary["perf_degraded"] in (True, False)
    assert summary["reference_scores"]["vol_qlike"] > 0
    assert rec["action"] == "none" and rec["drift_streak"] == 1 and "1/3 consecutive" in rec["explanation"]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("hfcast-monitoring").experiment_id])
    assert runs[0].data.tags["action"] == "none" and runs[0].data.metrics["drift_share"] == pytest.approx(
        summary["features_drift"]["share"])


class FakeKfp:
    """Records create_run_from_pipeline_package calls and answers get_run with a settable state."""

    def __init__(self):
        self.calls, self.state = [], "RUNNING"

    def create_run_from_pipeline_package(self, pipeline_file, arguments=None, run_name=None, experiment_name=None):
        self.calls.append({"package": pipeline_file, "arguments": arguments, "run_name": run_name})
        return type("Result", (), {"run_id": f"kfp-run-{len(self.calls)}"})()

    def get_run(self, run_id):
        return type("Run", (), {"run_id": run_id, "state": self.state})()


class FakeKubeflowStarter:
    """A RetrainStarter over FakeKfp: starts a run of the package, polls its state (what a cluster starter does)."""

    kind = "kubeflow"

    def __init__(self, client, package):
        self.client, self.package = client, package

    def start(self, settings, model, reason, drifted_dates):
        arguments = {"reason": reason, "drifted_dates": ",".join(drifted_dates)}
        res = self.client.create_run_from_pipeline_package(self.package, arguments=arguments, run_name=f"retrain-{model}")
        record_start(Lake.from_settings(settings), model, kind=self.kind, run_id=res.run_id, reason=reason,
                     drifted_dates=drifted_dates, package=self.package)
        return {"kind": self.kind, "run_id": res.run_id, "status": "running", "arguments": arguments,
                "note": f"Kubeflow run {res.run_id} started; the gate decides when it finishes"}

    def poll(self, state):
        kfp_state = str(self.client.get_run(state["run_id"]).state).upper()
        return {"status": "done", "kfp_state": kfp_state} if kfp_state == "SUCCEEDED" else None


def test_kubeflow_trigger_with_fake_client(sim, clean, tmp_path):
    settings, lake, dates, _ = sim
    settings = settings.with_(home=tmp_path / "home", mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = MonitorConfig(consecutive=1, cooldown_dates=1)
    kfp = FakeKfp()
    starter = FakeKubeflowStarter(kfp, "pipelines/training.yaml")
    model = "hfcast"
    history_file = clean / "decisions.jsonl"
    first = run_monitor(settings, dates[SHIFT], "hfcast/1", starter=starter, cfg=cfg, log_mlflow=False)
    assert first["action"] == RETRAIN and len(kfp.calls) == 1
    assert kfp.calls[0]["package"] == "pipelines/training.yaml"
    assert kfp.calls[0]["arguments"]["drifted_dates"] == dates[SHIFT] and "feature drift" in kfp.calls[0]["arguments"]["reason"]
    state = json.loads((history_file.parent / "retrain.json").read_text())
    assert state["status"] == "running" and state["run_id"] == "kfp-run-1" and first["trigger"]["run_id"] == "kfp-run-1"
    # the cooldown (1 date) is over, but the Kubeflow run is still running: no second run
    second = run_monitor(settings, dates[SHIFT + 2], "hfcast/1", starter=starter, cfg=cfg, log_mlflow=False)
    assert second["action"] == SUPPRESSED and "still running" in second["explanation"] and len(kfp.calls) == 1
    kfp.state = "SUCCEEDED"  # once Kubeflow says it finished, the monitor may start another
    third = run_monitor(settings, dates[SHIFT + 4], "hfcast/1", starter=starter, cfg=cfg, log_mlflow=False)
    assert third["action"] == RETRAIN and len(kfp.calls) == 2
    assert [r["action"] for r in load_history(lake, model)] == [RETRAIN, SUPPRESSED, RETRAIN]


def test_kfp_is_not_imported_by_the_core_library():
    import subprocess
    import sys

    code = ("import sys, hfcast.monitoring.drift, hfcast.monitoring.decision, hfcast.monitoring.retraining, "
            "hfcast.lifecycle, hfcast.cli; print('kfp' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.slow
def test_simulator_no_false_alarm_then_one_retrain_after_shift(sim, clean, tmp_path):
    """22 stationary dates: no retraining; a 1.8x vol shift: caught within K dates, retrained once."""
    settings, lake, dates, _ = sim
    settings = settings.with_(home=tmp_path / "home", mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = MonitorConfig.from_params(settings.param("monitor", {}) or {})
    cfg = MonitorConfig(**{**cfg.__dict__, "cooldown_dates": 10})  # longer than the shifted run
    calls = []

    def retrain(reason, drifted_dates):
        calls.append((reason, list(drifted_dates)))
        return {"status": "done", "new_version": None, "promoted": False}

    recs = [run_monitor(settings, d, "hfcast/1", starter=InProcessStarter(retrain), cfg=cfg, log_mlflow=False)
            for d in dates[N_REF:]]
    stationary, shifted = recs[:N_STATIONARY], recs[N_STATIONARY:]
    false_alarms = sum(r["drift_alarm"] for r in stationary)
    log.warning("stationary dates: %d, drift alarms: %d, perf alarms: %d, retrains: %d", len(stationary),
                false_alarms, sum(r["perf_alarm"] for r in stationary), sum(r["action"] == RETRAIN for r in stationary))
    assert all(r["action"] != RETRAIN for r in stationary)
    actions = [r["action"] for r in shifted]
    assert actions.count(RETRAIN) == 1 and actions.index(RETRAIN) < cfg.consecutive  # within K dates
    assert all(a == SUPPRESSED for a in actions[actions.index(RETRAIN) + 1:])  # drift goes on, no 2nd retrain
    assert len(calls) == 1 and dates[SHIFT] in calls[0][1]
    # false performance alarms are rare on stationary dates (this tiny model: 0-2 of 22), and K
    # consecutive alarms are needed, so only the last K - 1 stationary dates can join the streak
    assert sum(r["perf_alarm"] for r in stationary) <= 0.15 * len(stationary)
    k = max(cfg.consecutive, cfg.perf_consecutive)
    assert all(d >= dates[SHIFT - (k - 1)] for d in calls[0][1])
    assert "not promoted" in shifted[actions.index(RETRAIN)]["explanation"]


# --- the local trigger, for real: walk-forward train -> MLflow -> register -> gate ---------------

SMALL_PARAMS = {
    "walkforward": {"mode": "expanding", "train_days": 3, "val_days": 1, "test_days": 1, "step_days": 1,
                    "embargo_days": 1, "models": {"tcn": {"channels": 8, "n_levels": 2, "head_hidden": 8}}},
    "train": {"epochs": 1, "max_train_windows": 3000, "max_val_windows": 1500},
    "monitor": {"consecutive": 1, "cooldown_dates": 5},
}


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """4 symbols x 12 dates (2x vol from date 9); champion v1 trained on dates up to 8 and registered."""
    import tempfile

    from hfcast import promotion, registry
    from hfcast.gate import GateDecision
    from hfcast.train import TrainConfig
    from hfcast.walkforward import WalkForwardConfig, log_result, model_configs, run_walkforward

    root = tmp_path_factory.mktemp("retrain")
    settings = get_settings(env={"HFCAST_HOME": str(root / ".hfcast"), "HFCAST_LAKE": (root / "lake").as_uri()},
                            cwd=root).with_(params=SMALL_PARAMS)
    lake = Lake.from_settings(settings)
    write_synth(SimConfig(n_symbols=4, n_days=12, seed=5, regime_shift_day=9, shift_vol_mult=2.0), lake, progress=False)
    run_featurize(lake, progress=False)
    dates = lake.dates("features")
    wf = WalkForwardConfig.from_params({**SMALL_PARAMS["walkforward"], "last_date": dates[8], "max_folds": 1})
    result = run_walkforward(lake, ["tcn"], wf, TrainConfig.from_params(SMALL_PARAMS["train"]), progress=False,
                             model_configs=model_configs(SMALL_PARAMS["walkforward"]))
    with tempfile.TemporaryDirectory() as tmp:
        run_id = log_result(settings, result, {"walkforward": SMALL_PARAMS["walkforward"]}, tmp)
    v1 = registry.register(settings, run_id)
    promotion.promote(settings, v1, GateDecision.force("bootstrap champion for the monitor test"))
    return settings, lake, dates, str(v1)


def _clean_small(lake):
    folder = Path(storage.local_path(lake.url)) / "monitoring" / "hfcast"
    for name in ("decisions.jsonl", "retrain.json", "retrain.lease"):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "decisions", ignore_errors=True)
    return folder


def _champion_version(settings) -> str:
    from hfcast.registry import resolve

    return str(resolve(settings, "hfcast@champion").version)


@pytest.mark.slow
def test_local_retrain_worse_model_keeps_champion(champion):
    from hfcast.lifecycle import retrain
    from hfcast.registry import resolve

    settings, lake, dates, v1 = champion
    folder = _clean_small(lake)
    # a gate no challenger can pass: whatever the retraining yields counts as "not better"
    strict = settings.with_(params={**SMALL_PARAMS, "registry": {"gate": {"primary": {
        "vol_qlike": {"direction": "min", "margin": 100.0}, "ret_ic": {"direction": "max", "margin": 100.0}}}}})
    rec = run_monitor(strict, dates[10], "hfcast@champion",
                      starter=InProcessStarter(lambda reason, dd: retrain(strict, [], reason=reason, drifted_dates=dd)))
    assert rec["action"] == RETRAIN and rec["version"] == v1  # reference auto-built from the registry run
    trig = rec["trigger"]
    assert trig["status"] == "done" and trig["promoted"] is False and trig["new_version"] == int(v1) + 1
    assert trig["champion_before"] == trig["champion_after"] == v1 == _champion_version(settings)
    assert resolve(settings, f"hfcast/{trig['new_version']}").tags["gate.decision"] == "reject"
    assert "not promoted by the gate; champion unchanged" in rec["explanation"]
    logged = load_history(lake, "hfcast")[-1]
    assert logged["trigger"]["promoted"] is False and "champion unchanged" in logged["explanation"]
    assert json.loads((folder / "retrain.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_local_retrain_failure_keeps_champion(champion):
    settings, lake, dates, v1 = champion
    folder = _clean_small(lake)

    def broken(reason, dd):
        raise RuntimeError("training pipeline crashed: disk full")

    rec = run_monitor(settings, dates[11], "hfcast@champion", starter=InProcessStarter(broken), log_mlflow=False)
    assert rec["action"] == RETRAIN and rec["trigger"]["status"] == "failed"
    assert "disk full" in rec["trigger"]["error"] and _champion_version(settings) == v1
    assert "retraining failed" in rec["explanation"] and "champion unchanged" in rec["explanation"]
    state = json.loads((folder / "retrain.json").read_text())
    assert state["status"] == "failed"  # not "running": the next monitor run is not blocked by it
    assert load_history(lake, "hfcast")[-1]["trigger"]["status"] == "failed"
