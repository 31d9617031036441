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


def test_train_register_gate_agrees_with_the_registry(tmp_path):
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
