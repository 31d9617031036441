"""MLflow as its users know it, against a real `mlflow server` on 127.0.0.1.

One tiny walk-forward training (lstm, 2 folds, 3 epochs) through ``hfcast.lifecycle.train_and_log``
must leave: a parent run named for what it is with nested fold runs, per-epoch metric histories
(step = epoch), the training data as a dataset input, evaluation plots and report as artifacts,
and an MLflow pyfunc model that loads with ``mlflow.pyfunc.load_model`` and predicts exactly what
the bundle predicts from a real (float64) window, its input example; the logged model's page
links the run and the registered version and names the commit. A monitoring run carries its
Evidently reports.
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


def _lake_windows(settings, date: str, names: list[str]) -> np.ndarray:
    """Every complete window of the first symbol on ``date``, read from the lake independently."""
    from hfcast.features.windows import build_windows

    df = Lake.from_settings(settings).read("features", date, ["symbol", "ts", *names])
    df = df[df["symbol"] == df["symbol"].min()]
    wa = build_windows(df, names, label_cols=None)
    return wa.windows(np.arange(len(wa)))


def _pyfunc(settings, version):
    import mlflow

    with registry.tracking(settings):
        return mlflow.pyfunc.load_model(f"models:/hfcast/{version}")


def test_logged_model_loads_with_pyfunc_and_predicts_a_real_float64_window_as_the_bundle(trained, tmp_path):
    settings, run, version = trained
    mv = registry.resolve(settings, f"hfcast/{version}")
    assert mv.source.startswith("models:/m-")
    fc = registry.load_forecaster(settings, f"hfcast/{version}", dst=tmp_path / "bundle")
    model = _pyfunc(settings, version)
    example = np.asarray(model.input_example)
    window64 = example.astype(np.float64)  # numpy's default dtype, what a user has at hand
    got = model.predict(window64)
    np.testing.assert_array_equal(got.to_numpy(), fc.predict(example).to_numpy())
    np.testing.assert_allclose(fc.predict(example).to_numpy(), run.forecaster.predict(example).to_numpy(), atol=1e-6)
    for bad, what in ((window64[:, :29], "shape (2, 29,"), (window64.reshape(2, -1)[:, :-1], "shape (2,")):
        with pytest.raises(Exception) as err:
            model.predict(bad)
        text = str(err.value)
        assert "\n" not in text and what in text and f"expected windows [batch, 30, {len(fc.feature_names)}]" in text


def test_input_example_is_a_real_window_of_the_last_validation_day(trained):
    settings, run, version = trained
    example = np.asarray(_pyfunc(settings, version).input_example)
    names = run.forecaster.feature_names
    assert example.shape[1:] == (30, len(names)) and example.shape[0] >= 2 and np.isfinite(example).all()
    real = _lake_windows(settings, run.result.folds[-1].val[-1], names)
    for w in example:  # each one is a window the lake holds for that day, not noise
        assert np.isclose(real, w[None], rtol=1e-6, atol=0).all(axis=(1, 2)).any()


def test_signature_outputs_carry_the_informative_flags_and_the_metadata_the_units(trained):
    from hfcast.contracts import COLUMN_UNITS, INFO_COLUMNS, PRED_COLUMNS

    settings, run, version = trained
    meta = _pyfunc(settings, version).metadata
    assert meta.signature.outputs.input_names() == [*PRED_COLUMNS, *INFO_COLUMNS]
    assert meta.metadata["units"] == {c: COLUMN_UNITS[c] for c in (*PRED_COLUMNS, *INFO_COLUMNS)}
    assert meta.metadata["feature_names"] == run.forecaster.feature_names
    assert meta.metadata["input"]["shape"] == [-1, 30, len(run.forecaster.feature_names)]
    assert meta.metadata["forecaster"] == run.forecaster.kind


def test_the_model_page_links_run_logged_model_and_version_and_names_the_commit(trained):
    import json

    from hfcast import provenance

    settings, run, version = trained
    c = _client(settings)
    model_id = c.get_run(run.run_id).data.tags[registry.PYFUNC_ID_TAG]
    mv = c.get_model_version("hfcast", str(version))
    assert mv.source == f"models:/{model_id}" and mv.run_id == run.run_id
    assert mv.model_id in (None, model_id)  # MLflow 3.17's stores keep no model_id column: the source is the link
    lm = c.get_logged_model(model_id)  # what the logged model's page shows
    assert lm.source_run_id == run.run_id and lm.model_type == "hfcast-forecaster"
    assert json.loads(lm.tags["mlflow.modelVersions"]) == [{"name": "hfcast", "version": version}]
    assert lm.tags["mlflow.source.git.commit"] == provenance.git_commit() is not None
    assert lm.tags["hfcast.kind"] == run.forecaster.kind
    assert model_id in {o.model_id for o in c.get_run(run.run_id).outputs.model_outputs}


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
