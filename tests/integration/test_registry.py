"""Registry flow against real MLflow: a sqlite file and an `mlflow server` on 127.0.0.1.

Three real Forecaster bundles are logged and registered; the gate keeps a worse challenger out,
lets a better one in, and a rollback restores the previous champion, whose predictions after a
round trip through the registry are identical to the bundle that was logged.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hfcast import promotion, provenance, registry
from hfcast.calibration import Calibrator
from hfcast.features.windows import Scaler
from hfcast.models import build_model
from hfcast.forecaster import Forecaster
from hfcast.models.base import TrainedNet
from hfcast.testing.servers import MlflowServer

pytestmark = pytest.mark.integration

F = 5
NAMES = [f"f{i}" for i in range(F)]
SPANS = [("2024-02-01", "2024-02-05"), ("2024-02-06", "2024-02-09")]
BASELINES = {"har_rv": {"vol_qlike": 0.40, "ret_ic": None}, "persistence": {"vol_qlike": 0.50, "ret_ic": 0.01}}


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """An MLflow sqlite file with its schema migrated once (the migrations take seconds each time)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # creates the schema, no hfcast experiment
    return db


@pytest.fixture
def settings(settings, empty_db):
    """The conftest settings (sqlite under tmp_path), starting from a copy of the migrated, empty db."""
    settings.home.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_db, settings.home / "mlflow.db")
    return settings


def make_bundle(folder: Path, seed: int) -> tuple[Forecaster, np.ndarray]:
    """A tiny real Forecaster (LSTM, fitted scaler and calibrator) saved to ``folder``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_model("lstm", F, {"hidden": 8, "n_layers": 1, "head_hidden": 8, "dropout": 0.0})
    X = rng.normal(size=(400, F)).astype(np.float32)
    y = np.c_[rng.normal(0, 0.01, 400), np.exp(rng.normal(-6, 0.3, 400))]
    tn = TrainedNet(net, Scaler().fit(X, y, feature_names=NAMES), NAMES, meta={"seed": seed})
    windows = rng.normal(size=(64, 30, F)).astype(np.float32)
    raw = tn.predict_raw(tn.scaler.transform(windows))
    tn.calibrator = Calibrator().fit(tn.natural(raw), rng.normal(0, 0.01, 64), np.exp(rng.normal(-6, 0.3, 64)))
    fc = Forecaster.from_net(tn)
    fc.save(str(folder))
    return fc, windows


def log_run(settings, tmp: Path, seed: int, qlike: float, ic: float, spans=SPANS) -> str:
    bundle = tmp / f"bundle{seed}"
    make_bundle(bundle, seed)
    plot = tmp / f"loss{seed}.svg"
    plot.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    return registry.log_training_run(settings, registry.TrainingRecord(
        bundle, arch="lstm", params={"lr": 1e-3, "model": {"hidden": 8}, "seed": seed},
        epoch_metrics=[{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1)} for e in range(3)],
        fold_metrics=[{"fold": i, "vol_qlike": qlike + 0.01 * i, "ret_ic": ic, "test_start": a}
                      for i, (a, _) in enumerate(spans)],
        aggregate_metrics={"vol_qlike": qlike, "ret_ic": ic}, test_spans=spans,
        dataset_version=f"md5:{seed:032x}", feature_names=NAMES, plots=[plot],
        baseline_metrics=BASELINES, tags={"pipeline": "test"},
    ))


def champion(settings) -> int:
    return int(registry.resolve(settings, "hfcast@champion").version)


def gate_flow(settings, tmp: Path) -> None:
    """log -> register -> gate -> promote; worse rejected; better promoted; rollback; load."""
    run1 = log_run(settings, tmp, 1, qlike=0.30, ic=0.05)
    v1 = registry.register(settings, run1)
    assert int(registry.resolve(settings, "challenger").version) == v1
    d1 = promotion.run_gate(settings, v1)  # no champion yet: baselines only
    assert d1.promote, d1.reasons
    assert promotion.promote(settings, v1, d1) and champion(settings) == v1
    with pytest.raises(registry.RegistryError, match="no alias 'challenger'"):
        registry.resolve(settings, "hfcast@challenger")  # the promoted version is no longer a challenger

    run2 = log_run(settings, tmp, 2, qlike=0.33, ic=0.06)  # worse volatility forecast
    v2 = registry.register(settings, run2)
    d2 = promotion.run_gate(settings, v2)
    assert not d2.promote and any(r.startswith("vol_qlike") and "champion" in r for r in d2.reasons)
    assert promotion.promote(settings, v2, d2) is False
    assert champion(settings) == v1
    rows = {r["version"]: r for r in registry.list_versions(settings)}
    assert rows[v2]["gate"] == "reject" and "challenger" in rows[v2]["aliases"]
    assert rows[v2]["status"] == "rejected by the gate" and rows[v1]["status"] == "champion"
    assert "vol_qlike" in rows[v2]["tags"]["gate.reasons"]
    check_gate_record(settings, v1, v2, d2)

    run3 = log_run(settings, tmp, 3, qlike=0.25, ic=0.08)  # better on both
    v3 = registry.register(settings, run3)
    d3 = promotion.run_gate(settings, v3)
    assert d3.promote, d3.reasons
    assert promotion.promote(settings, v3, d3)
    rows = {r["version"]: r for r in registry.list_versions(settings)}
    assert rows[v3]["aliases"] == ["champion"] and rows[v1]["aliases"] == ["previous-champion"]
    assert rows[v3]["metrics"] == {"vol_qlike": 0.25, "ret_ic": 0.08}
    assert rows[v3]["arch"] == "lstm" and rows[v3]["dataset_version"] == f"md5:{3:032x}"

    assert promotion.rollback(settings, reason="live QLIKE degraded") == (v3, v1)
    assert champion(settings) == v1
    info = registry.describe(settings, v3)
    assert info["tags"]["rollback_reason"] == "live QLIKE degraded" and info["aliases"] == []
    with pytest.raises(registry.RegistryError, match="no previous champion"):
        promotion.rollback(settings)

    # the champion after the round trip predicts exactly what the logged bundle predicted
    original, windows = make_bundle(tmp / "again1", 1)
    loaded = registry.load_forecaster(settings, "models:/hfcast@champion")
    assert loaded.meta["model_version"] == str(v1) and loaded.meta["run_id"] == run1
    assert loaded.meta["model_name"] == "hfcast"
    pd_a, pd_b = original.predict(windows), loaded.predict(windows)
    assert np.array_equal(pd_a.to_numpy(), pd_b.to_numpy())
    assert not np.array_equal(pd_a.to_numpy(), registry.load_forecaster(settings, v3).predict(windows).to_numpy())

    # lineage and artifacts of a run; export files land beside the bundle, not in it
    onnx_dir = tmp / "onnx"
    onnx_dir.mkdir()
    (onnx_dir / "model.onnx").write_bytes(b"onnx")
    registry.log_artifacts_to_version(settings, "hfcast@champion", onnx_dir, "export/onnx")
    info = registry.describe(settings, "hfcast/1")
    assert {"model", "plots", "eval", "features.json", "export"} <= set(info["artifacts"])
    assert info["params"]["model.hidden"] == "8" and info["params"]["dataset_version"] == f"md5:{1:032x}"
    assert not any(k.startswith(("baseline/", "fold/")) for k in info["all_metrics"])  # summary metrics only
    assert registry.run_scores(settings, info["run_id"])["baselines"]["har_rv"]["vol_qlike"] == 0.40
    with pytest.raises(registry.RegistryError, match="bundle"):
        registry.log_artifacts_to_version(settings, v1, onnx_dir, "model")


def check_gate_record(settings, champion_version: int, rejected: int, decision) -> None:
    """The rejected version's description and tags hold the gate's decision, reasons and numbers;
    the registered model's description names the champion and says the latest version was rejected."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    mv = c.get_model_version("hfcast", str(rejected))
    assert mv.description.startswith("REJECTED by the gate") and "vol_qlike" in mv.description
    compared = json.loads(mv.tags["gate.comparisons"])
    assert {(r["metric"], r["reference"]) for r in compared} >= {("vol_qlike", "champion"), ("vol_qlike", "baseline har_rv")}
    champ_row = next(r for r in compared if r["metric"] == "vol_qlike" and r["reference"] == "champion")
    assert (champ_row["challenger"], champ_row["reference_value"], champ_row["passed"]) == (0.33, 0.30, False)
    assert "| vol_qlike | champion | 0.33 | 0.3 |" in mv.description
    model = c.get_registered_model("hfcast")
    assert f"Champion: v{champion_version}" in model.description
    assert f"latest version, v{rejected}, was rejected by the gate" in model.description
    assert model.tags["hfcast.champion"] == str(champion_version)
    assert model.tags["hfcast.latest_version"] == f"v{rejected}: rejected by the gate"  # in MLflow's model list
    assert c.get_model_version("hfcast", str(champion_version)).description.startswith("PROMOTED")


def check_history(settings, run_id: str) -> None:
    """Per-epoch and per-fold metrics keep their steps; features and scaler are in the run."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=settings.mlflow_uri)
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "epoch/train_loss")] == [
        (0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert c.get_metric_history(run_id, "fold/vol_qlike") == []  # per fold: scores.json (and fold runs)
    assert [f["vol_qlike"] for f in registry.run_scores(settings, run_id)["folds"]] == pytest.approx([0.30, 0.31])
    tags = c.get_run(run_id).data.tags  # which code made the run, though the client opened it
    assert tags["mlflow.source.git.commit"] == provenance.git_commit() and len(tags["mlflow.source.git.commit"]) == 40
    assert tags["mlflow.source.name"] and tags["hfcast.version"]
    assert {f.path for f in c.list_artifacts(run_id, "model")} >= {
        "model/model.json", "model/scaler.json", "model/calibration.json", "model/checksums.json", "model/members"}
    scores = registry.run_scores(settings, run_id)
    assert scores["test_spans"] == [list(s) for s in SPANS] and scores["baselines"]["har_rv"]["ret_ic"] is None
    assert json.loads(c.get_run(run_id).data.tags[registry.SPANS_TAG]) == [list(s) for s in SPANS]


def test_registry_flow_sqlite(settings, tmp_path):
    gate_flow(settings, tmp_path)
    assert Path(settings.mlflow_uri[len("sqlite:///"):]).is_file()
    assert (settings.home / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()
    check_history(settings, registry.resolve(settings, 1).run_id)


def test_registry_flow_mlflow_server(settings, tmp_path):
    (tmp_path / "server").mkdir()
    shutil.copy(settings.home / "mlflow.db", tmp_path / "server" / "mlflow.db")  # migrated, empty
    with MlflowServer(tmp_path / "server") as server:
        remote = settings.with_(mlflow_uri=server.uri)
        gate_flow(remote, tmp_path)
        check_history(remote, registry.resolve(remote, 1).run_id)
    assert (tmp_path / "server" / "artifacts").is_dir()
    assert not (settings.home / "mlartifacts").exists()  # the server stored the artifacts


def test_gate_refuses_scores_from_other_spans_and_uses_the_evaluation_hook(settings, tmp_path):
    v1 = registry.register(settings, log_run(settings, tmp_path, 1, qlike=0.30, ic=0.05))
    promotion.promote(settings, v1, promotion.run_gate(settings, v1))
    later = [("2024-03-01", "2024-03-08")]
    v2 = registry.register(settings, log_run(settings, tmp_path, 2, qlike=0.20, ic=0.09, spans=later))
    with pytest.raises(registry.RegistryError, match="other test spans"):
        promotion.run_gate(settings, v2)

    calls = []

    def evaluate_on_spans(model_uri, spans):
        calls.append((model_uri, spans))
        if model_uri == "models:/hfcast/1":
            return {"vol_qlike": 0.22, "ret_ic": 0.05}
        return {"vol_qlike": 0.21, "ret_ic": 0.09}

    d = promotion.run_gate(settings, v2, evaluate_on_spans)  # re-scored on the same spans: 0.21 vs 0.22
    assert [c[0] for c in calls] == ["models:/hfcast/2", "models:/hfcast/1"] and calls[0][1] == calls[1][1] == later
    assert d.promote and promotion.promote(settings, v2, d) and champion(settings) == v2
    d_margin = promotion.run_gate(settings, v1, lambda uri, spans: {"vol_qlike": 0.2, "ret_ic": 0.1}, margin=0.05)
    assert not d_margin.promote  # equal scores never pass
    with pytest.raises(registry.RegistryError, match="already the champion"):
        promotion.run_gate(settings, v2)


def test_a_gated_promotion_logs_its_reasons_once_and_a_forced_one_its_own(settings, tmp_path, caplog):
    from hfcast.gate import GateDecision

    v1 = registry.register(settings, log_run(settings, tmp_path, 1, qlike=0.30, ic=0.05))
    v2 = registry.register(settings, log_run(settings, tmp_path, 2, qlike=0.33, ic=0.06))
    with caplog.at_level("INFO", logger="hfcast.promotion"):
        d1 = promotion.run_gate(settings, v1)
        assert promotion.promote(settings, v1, d1)
        d2 = promotion.run_gate(settings, v2)
        assert not promotion.promote(settings, v2, d2)
        forced = GateDecision.force("desk override after review")
        assert promotion.promote(settings, v2, forced)
    text = [r.getMessage() for r in caplog.records if r.name == "hfcast.promotion"]
    for d in (d1, d2):  # the gate's own line says it; the promotion lines point to where it is kept
        assert sum(d.summary() in t for t in text) == 1, text
    assert any(t.startswith(f"hfcast v{v2} not promoted") and f"hfcast registry show {v2}" in t for t in text)
    assert any(t.startswith(f"hfcast v{v2} is the champion") and "desk override after review" in t for t in text)


def test_bad_bundles_and_refs_fail_clearly(settings, tmp_path):
    bundle = tmp_path / "b"
    make_bundle(bundle, 5)
    (bundle / "extra.pt").write_bytes(b"x")
    with pytest.raises(registry.RegistryError, match="pickle"):
        registry.log_training_run(settings, registry.TrainingRecord(
            bundle, arch="lstm", params={}, epoch_metrics=None, fold_metrics=[], aggregate_metrics={},
            test_spans=SPANS, dataset_version=None, feature_names=NAMES))
    (bundle / "extra.pt").unlink()
    (bundle / "scaler.json").unlink()
    with pytest.raises(registry.RegistryError, match="scaler.json"):
        registry.check_bundle(bundle)
    with pytest.raises(registry.RegistryError, match="no alias 'champion'"):
        registry.resolve(settings, "hfcast@champion")


def test_cli_promote_reject_force_rollback(settings, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hfcast import cli
    from hfcast.cli import app

    v1 = registry.register(settings, log_run(settings, tmp_path, 1, qlike=0.30, ic=0.05))
    v2 = registry.register(settings, log_run(settings, tmp_path, 2, qlike=0.31, ic=0.09))
    monkeypatch.chdir(tmp_path)  # no params.yaml here: default gate (QLIKE + IC, margin 0)
    monkeypatch.setattr(cli.console, "width", 200)  # tables unfolded, so the output can be searched
    cli = CliRunner()
    env = {"HFCAST_HOME": str(settings.home), "MLFLOW_TRACKING_URI": settings.mlflow_uri}

    def hf(*args):
        return cli.invoke(app, ["registry", *args], env=env, terminal_width=200)

    assert hf("promote", str(v1)).exit_code == 0
    r = hf("promote", str(v2))
    assert r.exit_code == 2 and "did not pass the gate" in r.output and "vol_qlike" in r.output
    assert champion(settings) == v1
    r = hf("list")  # the newest version is not the one in use: the listing says why
    assert r.exit_code == 0 and re.search(rf"^\S*\s*{v2}\s.*rejected by the gate", r.output, re.M), r.output
    assert hf("promote", str(v2), "--force").exit_code == 2  # a forced promotion needs a reason
    r = hf("promote", str(v2), "--force", "--reason", "desk asked for the new IC")
    assert r.exit_code == 0 and champion(settings) == v2
    r = hf("list")
    assert r.exit_code == 0 and "champion" in r.output and "previous-champion" in r.output
    r = hf("rollback", "--reason", "forced model misbehaved")
    assert r.exit_code == 0 and "v2 -> v1" in r.output and champion(settings) == v1
    r = hf("show", "hfcast/2")
    assert r.exit_code == 0 and "forced model misbehaved" in r.output and "forced: desk asked" in r.output
    r = hf("show", "hfcast/9")
    assert r.exit_code == 2 and "no version 9" in r.output


def test_a_new_projects_first_command_does_not_print_mlflows_schema_migration(tmp_path):
    """MLflow logs "Creating initial MLflow database tables..." / "Updating database tables" through
    its own handler when a project's tracking DB is made: two lines a new user can do nothing with."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HFCAST_", "MLFLOW_"))}
    env.update(HFCAST_HOME=str(tmp_path / ".hfcast"), HFCAST_LAKE=(tmp_path / "lake").as_uri())
    out = subprocess.run([sys.executable, "-m", "hfcast.cli", "registry", "list"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / ".hfcast" / "mlflow.db").exists() and "no versions of 'hfcast'" in out.stdout
    assert "database tables" not in out.stdout + out.stderr
