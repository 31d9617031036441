"""hfcast.metrics against hand-computed values."""

import math

import numpy as np
import pytest

from hfcast import metrics as M


def test_qlike_hand_value_and_zero_at_truth():
    # r/h = 2 -> 2 - log 2 - 1 ; r/h = 0.5 -> 0.5 - log 0.5 - 1
    expect = ((2 - math.log(2) - 1) + (0.5 - math.log(0.5) - 1)) / 2
    assert M.qlike([1.0, 2.0], [2.0, 1.0]) == pytest.approx(expect)
    assert M.qlike([1.0, 3.0], [1.0, 3.0]) == pytest.approx(0.0)
    # under-forecasting costs more than over-forecasting by the same factor
    assert M.qlike([0.5], [1.0]) > M.qlike([2.0], [1.0])


def test_nan_rows_dropped_not_zero_filled():
    assert M.mse([1.0, 2.0, 5.0], [1.0, np.nan, 3.0]) == pytest.approx(2.0)
    assert math.isnan(M.mse([np.nan], [1.0]))
    with pytest.raises(ValueError, match="same length"):
        M.mse([1.0, 2.0], [1.0])


def test_ic_rank_ic_hit_rate():
    p = np.array([1.0, 2.0, 3.0, 4.0])
    t = np.array([1.0, 4.0, 9.0, 16.0])
    assert M.ic(p, t) == pytest.approx(np.corrcoef(p, t)[0, 1])
    assert M.rank_ic(p, t) == pytest.approx(1.0)
    assert M.ic(np.zeros(4), t) == 0.0  # constant forecast: no information
    assert M.hit_rate([1.0, -1.0, 1.0, 0.5], [2.0, 1.0, -1.0, 0.0]) == pytest.approx(1 / 3)
    assert M.hit_rate([0.0, 0.0, 0.0], [1.0, 1.0, -1.0]) == pytest.approx(0.5)  # no call = coin flip


def test_cross_sectional_ic_is_mean_of_per_minute_correlations():
    g = np.array([0] * 5 + [1] * 5)
    p = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, 5], dtype=float)
    t = np.array([1, 2, 3, 4, 5, 5, 4, 3, 2, 1], dtype=float)
    assert M.cross_sectional_ic(p, t, g) == pytest.approx(0.0)
    t2 = t.copy(); t2[5:] = t2[5:][::-1]
    assert M.cross_sectional_ic(p, t2, g) == pytest.approx(1.0)


def test_coverage():
    assert M.coverage([0, 0, 0, 0], [1, 1, 1, 1], [0.5, 2.0, -1.0, 1.0]) == pytest.approx(0.5)


def test_ece_hand_value():
    # bin [0.2,0.3): conf 0.25 x2, outcomes 0,0 -> |0.25-0| ; bin [0.9,1): conf 0.95 x2, outcomes 1,1 -> 0.05
    conf = [0.25, 0.25, 0.95, 0.95]
    ok = [0, 0, 1, 1]
    assert M.ece(conf, ok) == pytest.approx(0.5 * 0.25 + 0.5 * 0.05)
    assert M.ece([0.5] * 4, [1, 0, 1, 0]) == pytest.approx(0.0)


def test_error_by_decile():
    conf = np.arange(100) / 100.0
    err = 1.0 - conf
    tab = M.error_by_decile(conf, err)
    assert list(tab["n"]) == [10] * 10
    assert tab["abs_err"].iloc[0] == pytest.approx(1 - 0.045)
    assert tab["abs_err"].is_monotonic_decreasing
    # a constant confidence ranks nothing: rows sorted by error in the file do not make its deciles
    flat = M.error_by_decile(np.full(10_000, 0.6), np.linspace(0, 1, 10_000))
    assert list(flat["n"]) == [1000] * 10
    assert flat["abs_err"].max() - flat["abs_err"].min() < 0.05


def _pred_frame(n=2000, seed=0):
    import pandas as pd

    from hfcast.calibration import Calibrator

    rng = np.random.default_rng(seed)
    sig = np.exp(rng.normal(0, 0.4, n)) * 1e-3
    mu = rng.normal(0, 0.5, n) * sig
    rv_hat = np.full(n, 1e-3)
    pred = {"ret_mu": mu, "ret_sigma": sig, "rv_hat": rv_hat, "lrv_sigma": np.full(n, 0.3)}
    y = mu + sig * rng.standard_normal(n)
    rv = rv_hat * np.exp(0.3 * rng.standard_normal(n))
    out = Calibrator().fit(pred, y, rv).apply(pred)
    df = pd.DataFrame(out)
    df["ret_60m"], df["rv_10m"], df["true_var_10m"], df["true_ret_60m"] = y, rv, rv_hat**2, mu
    df["fold"] = np.arange(n) % 2
    df["ts"] = pd.Timestamp("2024-01-02 15:00", tz="UTC") + pd.to_timedelta(np.arange(n) // 20, unit="min")
    df.loc[:9, "ret_60m"] = np.nan  # missing labels are dropped, not scored as zero
    return df


def test_evaluate_score_and_folds():
    from hfcast.evaluate import score, score_folds

    df = _pred_frame()
    s = score(df)
    assert s["n_ret"] == len(df) - 10
    assert s["ret_ic_truth"] == pytest.approx(1.0)
    assert s["vol_qlike_truth"] == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < s["ret_ic"] < 1.0 and s["ret_coverage"] == pytest.approx(0.8, abs=0.04)
    per, agg = score_folds(df)
    assert list(per["fold"]) == [0, 1] and agg["n"] == len(df)
    with pytest.raises(KeyError, match="rv_10m_conf"):
        score(df.drop(columns=["rv_10m_conf"]))


def test_evaluate_cli_writes_report(tmp_path):
    from typer.testing import CliRunner

    from hfcast.cli import app

    df = _pred_frame()
    path = tmp_path / "preds.parquet"
    df.to_parquet(path)
    res = CliRunner().invoke(app, ["evaluate", str(path), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ev" / "report.html").exists() and (tmp_path / "ev" / "calibration.png").exists()
    import json

    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["model"]["aggregate"]["ret_ic_truth"] == pytest.approx(1.0)
    bad = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nope.parquet")])
    assert bad.exit_code == 2 and "no such file" in " ".join(bad.output.split())


def test_qlike_leaves_out_flat_rows_instead_of_a_floor_constant():
    """A zero realized variance has no QLIKE; a floor would add -log(floor) per such row and pull
    every ratio of two forecasts towards 1."""
    h1, h2, r = np.array([1.0, 2.0, 1.0]), np.array([2.0, 2.0, 1.0]), np.array([1.0, 2.0, 0.0])
    assert M.qlike(h1, r) == pytest.approx(M.qlike(h1[:2], r[:2]))
    assert M.qlike(h1, r) / M.qlike(h2, r) == pytest.approx(M.qlike(h1[:2], r[:2]) / M.qlike(h2[:2], r[:2]))
    assert M.flat_share(np.array([1.0, 0.0, np.nan, 2.0])) == pytest.approx(1 / 3)
    assert math.isnan(M.qlike([1.0], [0.0]))
    rows = M.qlike_rows([1.0, np.nan, 2.0, 1.0], [2.0, 1.0, 0.0, 1.0])  # aligned: NaN where nothing is scored
    assert np.isnan(rows[1:3]).all() and rows[3] == 0.0 and rows[0] == pytest.approx(2 - math.log(2) - 1)
