"""`hfcast train --register --gate` goes through the one training path (hfcast.lifecycle)."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from hfcast import registry
from hfcast.cli import build_app
from hfcast.config import get_settings
from hfcast.data.simulator import SimConfig, write_synth
from hfcast.features.engine import run_featurize
from hfcast.storage import Lake

PARAMS = {
    "walkforward": {"mode": "expanding", "train_days": 3, "val_days": 1, "test_days": 1, "step_days": 1,
                    "embargo_days": 1, "max_folds": 1,
                    "models": {"tcn": {"channels": 8, "n_levels": 2, "head_hidden": 8}}},
    "train": {"epochs": 1, "max_train_windows": 2000, "max_val_windows": 1000},
}


def test_train_register_gate_agrees_with_the_registry(tmp_path, capfd):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    env = {"HFCAST_HOME": str(tmp_path / ".hfcast"), "HFCAST_LAKE": (tmp_path / "lake").as_uri(),
           "HFCAST_PARAMS": str(tmp_path / "params.yaml")}
    settings = get_settings(env=env, cwd=tmp_path)
    lake = Lake.from_settings(settings)
    write_synth(SimConfig(n_symbols=3, n_days=7, seed=3, regime_shift_day=None), lake, progress=False)
    run_featurize(lake, progress=False)

    res = CliRunner().invoke(build_app(), ["train", "--model", "tcn", "--register", "--gate"], env=env,
                             terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "registered hfcast version 1" in res.output
    promoted = "promoted to champion" in res.output
    assert promoted or "not promoted (the gate rejected it)" in res.output
    champion = None
    try:
        champion = registry.resolve(settings, "hfcast@champion").version
    except Exception:  # no champion alias: the gate rejected the first model
        pass
    assert (str(champion) == "1") == promoted
    # MLflow's own handler printed "INFO mlflow.pyfunc: Validating input example against model
    # signature" into every `hfcast train`: nothing a user can act on
    printed = capfd.readouterr()
    assert "Validating input example" not in printed.out + printed.err + res.output


def test_a_tick_bound_market_with_mostly_flat_spans_trains_registers_and_covers(tmp_path):
    """A thinly traded, tick-bound market (a $3 stock, a 1-cent tick: about half the 10-minute spans
    see no quote move) through the default path: before, the volatility interval's conformal
    quantile was infinite and `hfcast train` stopped; now the interval starts at 0, the flat spans
    are left out of QLIKE and the forecaster is registered."""
    import numpy as np
    import pandas as pd

    from hfcast import metrics as M
    from hfcast.data.dgp import DGPConfig, write_dgp

    params = {**PARAMS, "walkforward": {**PARAMS["walkforward"], "train_days": 4, "val_days": 2, "test_days": 2,
                                        "step_days": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {"HFCAST_HOME": str(tmp_path / ".hfcast"), "HFCAST_LAKE": (tmp_path / "lake").as_uri(),
           "HFCAST_PARAMS": str(tmp_path / "params.yaml")}
    lake = Lake.from_settings(get_settings(env=env, cwd=tmp_path))
    write_dgp(DGPConfig(kind="garch_t", n_symbols=4, n_days=10, seed=5, price_median=3.0, daily_vol=0.012), lake)
    run_featurize(lake, progress=False)

    out = tmp_path / "report"
    res = CliRunner().invoke(build_app(), ["train", "--model", "tcn", "--out", str(out)], env=env, terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "registered hfcast version 1" in res.output
    P = pd.read_parquet(out / "predictions.parquet")
    served = P[P["model"] == "forecaster"]
    assert M.flat_share(served["rv_10m"]) > 0.2
    assert (served["rv_10m_lo"] == 0).all() and np.isfinite(served["rv_10m_hi"]).all()
    assert 0.65 < M.coverage(served["rv_10m_lo"], served["rv_10m_hi"], served["rv_10m"]) < 0.95
    assert np.isfinite(M.qlike(served["rv_10m_pred"] ** 2, served["rv_10m"] ** 2))
