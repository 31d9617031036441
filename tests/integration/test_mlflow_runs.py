"""MLflow as its users know it, against a real `mlflow server` on 127.0.0.1.

One tiny walk-forward training (lstm, 2 folds, 3 epochs) through ``hfcast.lifecycle.train_and_log``
must leave: a parent run named for what it is with nested fold runs, per-epoch metric histories
(step = epoch), the training data as a dataset input, evaluation plots and report as artifacts,
and an MLflow pyfunc model that loads with ``mlflow.pyfunc.load_model`` and predicts exactly what
the bundle predicts. A monitoring run carries its Evidently reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hfcast import lifecycle, registry
from hfcast.config import deep_merge
from hfcast.data.simulator import SimConfig, write_synth
from hfcast.features.engine import run_featurize
from hfcast.storage import Lake
from hfcast.testing.servers import MlflowServer

pytestmark = pytest.mark.integration

EPOCHS = 3
PARAMS = {"walkforward": {"train_days": 4, "val_days": 2, "test_days": 2, "step_days": 2, "embargo_days": 1,
                          "max_folds": 2, "train_stride": 5, "eval_stride": 5,
                          "models": {"lstm": {"hidden": 8, "n_layers": 1}}},
          "train": {"epochs": EPOCHS, "patience": 10, "max_train_windows": 2000, "max_val_windows": 1000,
                    "num_threads": 1}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A server, a small lake, one training logged and registered: (settings, TrainedRun, version)."""
    from hfcast.config import get_settings

    tmp = tmp_path_factory.mktemp("mlruns")
    base = get_settings(env={"HFCAST_HOME": str(tmp / ".hfcast")}, cwd=tmp)
    with MlflowServer(tmp / "server") as server:
        settings = base.with_(mlflow_uri=server.uri, params=deep_merge(base.params, PARAMS))
        lake = Lake.from_settings(settings)
        write_synth(SimConfig(n_symbols=3, n_days=12, seed=3), lake, progress=False)
        run_featurize(lake, progress=False)
        run = lifecycle.train_and_log(settings, "lstm", dataset_version="md5:0123456789abcdef")
        version = registry.register(settings, run.run_id)
        yield settings, run, version


def _client(settings):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


def test_parent_and_nested_fold_runs_have_names_and_epoch_histories(trained):
    settings, run, _ = trained
    c = _client(settings)
    parent = c.get_run(run.run_id)
    first, last = run.result.folds[0].train[0], run.result.folds[-1].test[-1]
    assert parent.info.run_name == f"forecaster {first}..{last}"
    assert parent.info.status == "FINISHED"
    kids = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run.run_id}'")
    assert len(kids) == len(run.result.folds) == 2
    for kid in kids:
        fold = run.result.folds[int(kid.data.tags["fold"])]
        assert kid.info.run_name == f"lstm fold {fold.index} test {fold.test[0]}..{fold.test[-1]}"
        hist = c.get_metric_history(kid.info.run_id, "train_loss")
        n_epochs = len(run.result.histories["lstm"][fold.index]["epochs"])
        assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(n_epochs))
        assert "test_vol_qlike" in kid.data.metrics
        assert kid.data.params["test_first"] == fold.test[0]
    exp = c.get_experiment(parent.info.experiment_id)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"


def test_parent_holds_summary_metrics_only_and_every_run_names_its_code_and_fold_data(trained):
    from hfcast import provenance

    settings, run, _ = trained
    c = _client(settings)
    parent = c.get_run(run.run_id)
    keys = set(parent.data.metrics)
    assert {"vol_qlike", "ret_ic"} <= keys and len(keys) < 60, sorted(keys)
    assert not [k for k in keys if k.startswith(("fold", "baseline/", "epoch/"))]  # those live on fold runs / scores.json
    kids = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run.run_id}'")
    for r in [parent, *kids]:
        assert r.data.tags["mlflow.source.git.commit"] == provenance.git_commit()
        assert r.data.tags["mlflow.source.name"] and "executor_main" not in r.data.tags["mlflow.source.name"]
    for kid in kids:
        fold = run.result.folds[int(kid.data.tags["fold"])]
        got = {({t.key: t.value for t in d.tags}["mlflow.data.context"], d.dataset.name)
               for d in kid.inputs.dataset_inputs}
        assert got == {("training", f"features {fold.train[0]}..{fold.train[-1]}"),
                       ("validation", f"features {fold.val[0]}..{fold.val[-1]}"),
                       ("test", f"features {fold.test[0]}..{fold.test[-1]}")}
        assert all(d.dataset.source.endswith('/features"}') for d in kid.inputs.dataset_inputs)


def test_training_data_is_a_dataset_input(trained):
    settings, run, _ = trained
    inputs = _client(settings).get_run(run.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    days = sorted({d for f in run.result.folds for d in f.all_dates})
    assert ds.name == f"features {days[0]}..{days[-1]}"
    assert ds.digest.startswith("md5:0123")
    assert "features" in ds.source and '"rows"' in ds.profile
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"


def test_plots_and_evaluation_report_are_artifacts(trained, tmp_path):
    settings, run, _ = trained
    c = _client(settings)
    plots = {Path(f.path).name for f in c.list_artifacts(run.run_id, "plots")}
    assert {"forecast_vs_realized.png", "calibration.png", "error_by_decile.png"} <= plots
    evals = {Path(f.path).name for f in c.list_artifacts(run.run_id, "eval")}
    assert {"evaluation.html", "scores.json"} <= evals
    got = c.download_artifacts(run.run_id, "plots/calibration.png", str(tmp_path))
    assert Path(got).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logged_model_loads_with_pyfunc_and_predicts_as_the_bundle(trained, tmp_path):
    import mlflow

    settings, run, version = trained
    mv = registry.resolve(settings, f"hfcast/{version}")
    assert mv.source.startswith("models:/m-")
    fc = registry.load_forecaster(settings, f"hfcast/{version}", dst=tmp_path / "bundle")
    windows = np.random.default_rng(1).normal(size=(5, 30, len(fc.feature_names))).astype(np.float32)
    with registry.tracking(settings):
        model = mlflow.pyfunc.load_model(f"models:/hfcast/{version}")
        assert model.metadata.signature is not None
        got = model.predict(windows)
    np.testing.assert_allclose(got.to_numpy(), fc.predict(windows).to_numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(fc.predict(windows).to_numpy(), run.forecaster.predict(windows).to_numpy(), atol=1e-6)


def test_monitoring_run_carries_its_reports(trained, tmp_path):
    from hfcast.monitoring.decision import log_to_mlflow

    settings, _, version = trained
    folder = tmp_path / "mon"
    folder.mkdir()
    (folder / "features_drift.html").write_text("<html><title>feature drift</title></html>")
    (folder / "features_drift.json").write_text("{}")
    (folder / "summary.json").write_text("{}")
    rec = {"date": "2024-01-20", "version": str(version), "action": "none", "checks": {"drift_share": 0.1}}
    rid = log_to_mlflow(settings, rec, reports=(folder.as_uri(), None))
    c = _client(settings)
    names = {Path(f.path).name for f in c.list_artifacts(rid, "evidently")}
    assert names == {"features_drift.html", "features_drift.json", "summary.json"}
    assert c.get_run(rid).info.run_name == f"monitor 2024-01-20 v{version}: none"
    from hfcast import provenance

    assert c.get_run(rid).data.tags["mlflow.source.git.commit"] == provenance.git_commit()


def test_report_reads_the_registry_scores_and_train_dates(trained, tmp_path):
    from hfcast import report

    settings, run, version = trained
    index = report.write(settings, tmp_path / "report")
    text = index.read_text()
    scores = registry.run_scores(settings, run.run_id)
    label = registry.resolve(settings, f"hfcast/{version}").tags["arch"]  # what the forecaster serves
    assert label == run.forecaster.arch and f"<th>v{version} {label}</th>" in text
    assert f"<td>{report.fmt(scores['model']['vol_qlike'])}</td>" in text
    for name, s in scores["baselines"].items():
        assert f"<th>{name}</th>" in text and f"<td>{report.fmt(s['vol_qlike'])}</td>" in text
    tags = registry.resolve(settings, f"hfcast/{version}").tags  # lineage of time (hfcast.lifecycle)
    first, last = run.result.folds[0].train[0], run.result.folds[-1].train[-1]
    assert (tags["hfcast.train_first"], tags["hfcast.train_last"]) == (first, last)
    assert f"{first} .. {last}" in text  # the dates v1 trained on, from those tags
