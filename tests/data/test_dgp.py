"""The robustness generators (hfcast.data.dgp): the data contract, clean bars, truth that matches
the realized variance where it should (and not where noise is planted), determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hfcast.data import schema
from hfcast.data.dgp import KINDS, DGPConfig, iter_days
from hfcast.data.validate import validate_bars


def _sample(kind: str, n_symbols: int = 6, n_days: int = 3):
    return list(iter_days(DGPConfig(kind=kind, n_symbols=n_symbols, n_days=n_days, seed=5)))


def _mid_r2(bars: pd.DataFrame) -> pd.Series:
    mid = np.log((bars["bid"] + bars["ask"]) / 2)
    return (mid.groupby(bars["symbol"]).diff() ** 2).groupby(bars["symbol"]).mean()


@pytest.mark.parametrize("kind", KINDS)
def test_contract_and_clean(kind):
    days = _sample(kind)
    for date, bars, truth in days:
        assert list(bars.columns) == schema.BAR_COLUMNS
        assert list(truth.columns) == ["symbol", "ts", *schema.TRUTH_COLUMNS]
        assert len(bars) == 6 * schema.MINUTES_PER_SESSION
        clean, quarantine = validate_bars(bars, date)
        assert len(quarantine) == 0, quarantine["reason"].value_counts().to_dict()
        m = schema.minute_of_session(truth["ts"])
        assert truth.loc[m >= 380, "true_var_10m"].isna().all() and truth.loc[m < 380, "true_var_10m"].notna().all()
        assert truth.loc[m >= 330, "true_ret_60m"].isna().all()


def test_garch_truth_matches_realized_variance():
    days = _sample("garch_t", n_symbols=20, n_days=4)
    r2 = np.mean([_mid_r2(b).mean() for _, b, _ in days])
    tv = np.mean([np.nanmean(t["true_var_10m"]) / 10 for _, _, t in days])
    assert 0.8 < r2 / tv < 1.4  # tick rounding and spread noise add a little


def test_noise_grows_across_symbols():
    days = _sample("cir_noise", n_symbols=8, n_days=3)
    ratio = np.mean([_mid_r2(b).to_numpy() / (t.groupby("symbol")["true_var_10m"].mean().to_numpy() / 10)
                     for _, b, t in days], axis=0)
    assert ratio[0] < 1.5 and ratio[-1] > 4  # none -> heavy microstructure noise on the mid


def test_deterministic():
    a, b = _sample("garch_t", 3, 2), _sample("garch_t", 3, 2)
    pd.testing.assert_frame_equal(a[1][1], b[1][1])


def test_cli_generator_takes_the_seed_of_params_yaml(tmp_path, monkeypatch):
    """``hfcast synth --generator`` reads params.yaml synth.seed (its --seed help says so), as the
    simulator does; --seed still wins."""
    import yaml
    from typer.testing import CliRunner

    from hfcast.cli import app
    from hfcast.storage import Lake

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HFCAST_HOME", str(tmp_path / ".hfcast"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"synth": {"n_symbols": 2, "n_days": 1, "seed": 5}}))
    monkeypatch.setenv("HFCAST_PARAMS", str(tmp_path / "params.yaml"))
    want = next(iter_days(DGPConfig(kind="cir_noise", n_symbols=2, n_days=1, seed=5)))
    for args, seed in ((["--lake", (tmp_path / "a").as_uri()], 5), (["--seed", "6", "--lake", (tmp_path / "b").as_uri()], 6)):
        res = CliRunner().invoke(app, ["synth", "--generator", "cir_noise", *args])
        assert res.exit_code == 0, res.output
        assert f"(seed {seed})" in res.output
    got = Lake((tmp_path / "a").as_uri()).read("raw", want[0])
    np.testing.assert_array_equal(got["bid"].to_numpy(), want[1]["bid"].to_numpy())
    other = Lake((tmp_path / "b").as_uri()).read("raw", want[0])
    assert not np.array_equal(other["bid"].to_numpy(), want[1]["bid"].to_numpy())
