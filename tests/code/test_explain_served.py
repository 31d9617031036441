"""Explanations of a composed forecaster explain the forecast it serves, whatever it is made of.

For every kind walk-forward can choose (a bare network, a floored network, an ensemble, a baseline,
with a network return head or the zero return): the explanation's ``forecast`` is the number
``predict`` serves, its parts add up to the explained quantity (log rv for the volatility), the
attributions add up to the networks' part (completeness), and where no network computes a target
the explanation says so instead of attributing something else.
"""

from __future__ import annotations

import numpy as np
import pytest

from hfcast.explain import BASELINE_INPUT_UNITS, attribute, explain_forecasts, network_terms
from hfcast.features.windows import build_windows, synthetic_feature_frame
from serving_fixtures import tiny_composite

CASES = [("net", ("tcn",), "tcn"), ("floor", ("tcn",), "tcn"), ("floor", ("tcn",), "zero"),
         ("ensemble", ("tcn", "lstm"), "lstm"), ("har_tod", ("tcn",), "zero")]


def _windows(fc, idx=(1, 20, 40)):
    frame = synthetic_feature_frame(n_symbols=2, n_days=2, n_features=4, seed=9)
    return build_windows(frame, fc.feature_names, stride=7, label_cols=None).windows(np.array(idx))


@pytest.mark.parametrize("kind,archs,ret", CASES)
def test_the_explained_forecast_is_the_served_one_and_its_parts_add_up(kind, archs, ret):
    fc = tiny_composite(kind, archs=archs, ret=ret)
    w = _windows(fc)
    served = fc.predict(w)
    rows = explain_forecasts(fc, w, n_steps=32)
    for i, row in enumerate(rows):
        for t, col in (("ret", "ret_60m_pred"), ("vol", "rv_10m_pred")):
            e = row[t]
            assert e["forecast"] == served[col].iloc[i]  # the same number, not one near it
            assert sum(e["parts"].values()) == pytest.approx(e["value"], rel=1e-9, abs=1e-12)
            if "network" in e["parts"]:
                gap = e["parts"]["network"] - e["reference"]
                assert abs(e["total"] - gap) <= 0.02 * abs(gap) + 1e-5, (kind, t, e["total"], gap)
            else:
                assert e["attributions"] is None and ("nothing to attribute" in e["note"] or "no network" in e["note"])
        assert row["vol"]["value"] == pytest.approx(np.log(row["vol"]["forecast"]), rel=1e-12)


def test_a_floored_volatility_states_the_network_and_har_tod_shares():
    fc = tiny_composite("floor", ret="tcn")  # the fixture's floor: w = 0.5 of the log variance from the network
    e = explain_forecasts(fc, _windows(fc, (5,)), n_steps=32)[0]["vol"]
    assert e["weights"] == {"tcn": 0.5, "har_tod": 0.5} and e["network_share"] == 0.5
    assert set(e["parts"]) == {"network", "har_tod", "scale"}
    assert e["parts"]["scale"] == pytest.approx(0.5 * np.log(fc.choice.scale))
    assert set(e["baseline_inputs"]) <= set(BASELINE_INPUT_UNITS) and e["baseline_input_units"]["tod"]


def test_an_ensemble_attributes_every_member_weighted_as_served():
    fc = tiny_composite("ensemble", archs=("tcn", "lstm"), ret="lstm")
    assert network_terms(fc, "vol") == [("tcn", 0, 0.25), ("lstm", 1, 0.25)]
    assert network_terms(fc, "ret") == [("lstm", 1, 1.0)]
    X = fc.scaler.transform(_windows(fc, (3,)))
    a = attribute(fc, X, "vol", n_steps=64)
    nat = fc.member_natural(fc.predict_raw(X))
    want = 0.25 * np.log(nat["tcn"]["rv_hat"]) + 0.25 * np.log(nat["lstm"]["rv_hat"])
    np.testing.assert_allclose(a.forecast, want, rtol=1e-5)


def test_a_baseline_or_a_zero_return_has_nothing_to_attribute():
    fc = tiny_composite("har_tod")
    e = explain_forecasts(fc, _windows(fc, (2,)))[0]
    assert e["vol"]["attributions"] is None and "har_tod baseline" in e["vol"]["note"]
    assert e["vol"]["weights"] == {"har_tod": 1.0} and e["vol"]["network_share"] == 0.0
    assert set(e["vol"]["baseline_inputs"]) == set(BASELINE_INPUT_UNITS)
    assert e["ret"]["parts"] == {"zero": 0.0, "centring": 0.0} and "zero forecast" in e["ret"]["note"]
    with pytest.raises(ValueError, match="runs no network"):
        attribute(fc, fc.scaler.transform(_windows(fc, (2,))), "vol")


def test_explain_forecast_command_prints_the_served_forecast_its_parts_and_units(tmp_path, monkeypatch):
    """`hfcast explain forecast` on a lake day: the numbers of explain_forecast, which are the served ones."""
    from typer.testing import CliRunner

    from hfcast.cli import app
    from hfcast.explain import EXPLAINED, explain_forecast
    from hfcast.storage import Lake

    fc = tiny_composite("floor", ret="tcn")
    fc.save(str(tmp_path / "bundle"))
    df = synthetic_feature_frame(n_symbols=2, n_days=2, n_features=4, seed=3)
    df = df.assign(ts=df["ts"].astype("datetime64[us, UTC]"))
    lake = Lake((tmp_path / "lake").as_uri())
    day = df["ts"].dt.tz_convert("America/New_York").dt.date.astype(str)
    for d, g in df.groupby(day):
        lake.write("features", d, g.reset_index(drop=True))
    sym = df["symbol"].iloc[0]
    rows = df[(df["symbol"] == sym) & (day == day.iloc[-1])].reset_index(drop=True)
    ts = rows["ts"].iloc[-100]
    res = explain_forecast(lake, fc, sym, ts.isoformat(), n_steps=16, top=3)
    window = rows.loc[len(rows) - 100 - 29: len(rows) - 100, fc.feature_names].to_numpy(np.float32)[None]
    served = fc.predict(window)
    assert res["ret"]["forecast"] == served["ret_60m_pred"].iloc[0]
    assert res["vol"]["forecast"] == served["rv_10m_pred"].iloc[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HFCAST_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(app, ["explain", "forecast", "--bundle", str(tmp_path / "bundle"), "--lake", lake.url,
                                 "--symbol", sym, "--ts", ts.isoformat(), "--top", "3"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert f"rv_10m_pred {res['vol']['forecast']:+.4g}; log rv_10m_pred {res['vol']['value']:+.4g} = network" in text
    assert " ".join(EXPLAINED["vol"][1].split()) in text and "har_tod" in text and "completeness gap" in text


def test_a_served_har_x_shows_its_covariates():
    from hfcast.explain import HARX_INPUT_UNITS

    fc = tiny_composite("har_x")
    e = explain_forecasts(fc, _windows(fc, (2,)))[0]["vol"]
    assert e["weights"] == {"har_x": 1.0} and e["attributions"] is None
    assert {"ac1", "x_rv_5m"} <= set(e["baseline_inputs"]) <= set(BASELINE_INPUT_UNITS) | set(HARX_INPUT_UNITS)
    assert e["baseline_input_units"]["ac1"].startswith("first-order autocorrelation")
