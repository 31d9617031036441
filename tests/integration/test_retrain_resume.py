"""A retraining cut off after it registered its version resumes that version: no second version.

Real training (tiny), real MLflow on SQLite; the interruption is an exception raised where a
SIGKILL would have stopped the process (after ``create_model_version``, before the gate's tags).
"""

from __future__ import annotations

import pytest

from hfcast import promotion, registry
from hfcast.data.schema import trading_days
from hfcast.data.simulator import SimConfig, write_synth
from hfcast.lifecycle import RETRAIN_KEY_TAG, recorded_decision, retrain
from hfcast.storage import Lake
from lake_settings import project_settings  # tests/: pytest puts it on sys.path

pytestmark = pytest.mark.integration
OVERRIDES = {
    "walkforward": {"train_days": 5, "val_days": 2, "test_days": 2, "step_days": 2, "embargo_days": 1,
                    "max_folds": 1, "train_stride": 5, "eval_stride": 5, "models": {"tcn": {"channels": 8}}},
    "train": {"epochs": 1, "max_train_windows": 2000, "max_val_windows": 1000, "num_threads": 1},
}


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no handler on the way up can swallow it."""


@pytest.fixture
def settings(tmp_path):
    s = project_settings(tmp_path, OVERRIDES)
    write_synth(SimConfig(n_symbols=4, n_days=11, seed=5), Lake.from_settings(s), progress=False)
    from hfcast.features.engine import run_featurize
    from hfcast.data.validate import run_validate

    run_validate(Lake.from_settings(s), progress=False)
    run_featurize(Lake.from_settings(s), progress=False)
    return s


def test_interrupted_retraining_resumes_its_registered_version(settings, monkeypatch):
    last = trading_days("2024-01-02", 11)[-1]
    args = dict(reason="drift: test", last_date=last, decision_date=last, dataset_version="abc.dir",
                force_reason="test: promote whatever trains")

    def killed(*a, **k):
        raise Killed()

    monkeypatch.setattr(promotion, "promote", killed)
    with pytest.raises(Killed):
        retrain(settings, ["tcn"], **args)
    monkeypatch.undo()
    cut = registry.list_versions(settings)
    assert [r["version"] for r in cut] == [1] and cut[0]["tags"][RETRAIN_KEY_TAG].startswith(last)
    assert not cut[0]["gate"]  # registered, never gated

    out = retrain(settings, ["tcn"], **args)
    assert out["resumed"] is True and out["new_version"] == 1 and out["promoted"] is True
    rows = registry.list_versions(settings)
    assert [r["version"] for r in rows] == [1] and rows[0]["gate"] == "forced" and "champion" in rows[0]["aliases"]

    again = retrain(settings, ["tcn"], **args)  # the same retraining once more: the recorded decision, no new version
    assert again["new_version"] == 1 and again["resumed"] is True
    assert [r["version"] for r in registry.list_versions(settings)] == [1]

    other = retrain(settings, ["tcn"], **{**args, "dataset_version": "other.dir"})  # other data: a new retraining
    assert other["new_version"] == 2 and "resumed" not in other


def test_recorded_decision_reads_what_promote_tags():
    assert recorded_decision({}) is None
    d = recorded_decision({"gate.decision": "reject", "gate.reasons": '["vol_qlike worse than champion"]'})
    assert d is not None and not d.promote and d.reasons == ["vol_qlike worse than champion"]
    f = recorded_decision({"gate.decision": "forced", "gate.reasons": '["forced: x"]'})
    assert f is not None and f.promote and f.forced
    cut = recorded_decision({"gate.decision": "promote", "gate.reasons": '["a very long reason cut at 5000'})
    assert cut is not None and cut.promote and cut.reasons[0].startswith('["a very long')
