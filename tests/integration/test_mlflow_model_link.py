"""The embedded default (a sqlite MLflow store, no server) links a registered version to its logged model.

MLflow's server does it in its handler; ``MlflowClient.create_model_version`` against a local store
does not, so the logged model's page listed no version (``hfcast.registry.link_logged_model``).
A real synthetic window is the input example; the pyfunc takes float64 and refuses a bad input in
one line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hfcast import registry
from hfcast.features.windows import build_windows, synthetic_feature_frame
from serving_fixtures import tiny_composite

pytestmark = pytest.mark.integration


def _log(settings, fc, folder, example):
    fc.save(str(folder))
    return registry.log_training_run(settings, registry.TrainingRecord(
        folder, arch=fc.arch, params={}, fold_metrics=[], aggregate_metrics={"vol_qlike": 0.3},
        test_spans=[("2024-01-03", "2024-01-03")], feature_names=fc.feature_names, input_example=example))


def test_local_store_lists_each_version_on_its_logged_model(settings, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    fc = tiny_composite("floor", ret="tcn")
    wa = build_windows(synthetic_feature_frame(n_symbols=2, n_days=2, n_features=4, seed=2), fc.feature_names,
                       stride=7, label_cols=None)
    example = wa.windows(np.array([60, 90]))
    run_id = _log(settings, fc, tmp_path / "b", example)
    first, second = registry.register(settings, run_id), registry.register(settings, run_id)  # the same run twice
    c = MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    model_id = c.get_run(run_id).data.tags[registry.PYFUNC_ID_TAG]
    lm = c.get_logged_model(model_id)
    assert json.loads(lm.tags["mlflow.modelVersions"]) == [{"name": "hfcast", "version": first},
                                                           {"name": "hfcast", "version": second}]
    registry.link_logged_model(c, model_id, "hfcast", second)  # idempotent (a server has already linked it)
    assert len(json.loads(c.get_logged_model(model_id).tags["mlflow.modelVersions"])) == 2
    with registry.tracking(settings):
        model = mlflow.pyfunc.load_model(f"models:/hfcast/{first}")
    np.testing.assert_array_equal(np.asarray(model.input_example), example)
    np.testing.assert_array_equal(model.predict(example.astype(np.float64)).to_numpy(), fc.predict(example).to_numpy())
    with pytest.raises(Exception, match=r"must be numbers, got dtype <U"):
        model.predict(np.full((1, 30, len(fc.feature_names)), "x"))
