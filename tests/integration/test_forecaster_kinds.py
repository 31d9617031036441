"""Every kind of served forecaster round-trips what a user does with it, with parity.

net (a bare network), floor (a network blended with har_tod), ensemble (two floored networks),
har_tod and har_x (baselines served on their own): register in MLflow -> load from the registry (checksums)
-> export (ONNX of its graph; none for a baseline) -> the server's service with the onnxruntime
runner, and with the runner a server starts with (the version's stored export) -> batch
prediction CSVs. Each must give the in-process forecaster's numbers.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hfcast import registry
from hfcast.contracts import FEATURE_SET_FILE, INFO_COLUMNS, PRED_COLUMNS
from hfcast.export import PARITY_TOL_CONF, PARITY_TOL_FORECAST, export_all
from hfcast.features.windows import build_windows, synthetic_feature_frame, synthetic_feature_names
from hfcast.storage import Lake
from serving_fixtures import register_forecaster, tiny_composite

pytestmark = pytest.mark.integration
KINDS = {"net": ("tcn",), "floor": ("lstm",), "ensemble": ("tcn", "lstm"), "har_tod": (), "har_x": ()}
DATE = "2024-01-09"


def _close(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Forecasts and intervals within PARITY_TOL_FORECAST of their column's scale, confidences within
    PARITY_TOL_CONF, flags equal (the definition of hfcast.export.forecast_parity)."""
    for c in PRED_COLUMNS:
        a, b = got[c].to_numpy(np.float64), want[c].to_numpy(np.float64)
        if c.endswith("_conf"):
            assert np.nanmax(np.abs(a - b)) <= PARITY_TOL_CONF, c
        else:
            scale = np.nanmax(np.abs(b))
            assert np.nanmax(np.abs(a - b)) <= PARITY_TOL_FORECAST * scale, c
    for c in INFO_COLUMNS:
        np.testing.assert_array_equal(got[c].to_numpy(), want[c].to_numpy())


@pytest.fixture(scope="module")
def day():
    """The second of two days (its windows carry the previous day's HAR terms: no NaN to refuse)."""
    two = synthetic_feature_frame(n_symbols=3, n_days=2, n_features=4, seed=9, start="2024-01-08")
    return two[two["ts"].dt.strftime("%Y-%m-%d") == DATE].reset_index(drop=True)


@pytest.mark.parametrize("kind", list(KINDS))
def test_register_export_serve_and_batch_give_the_same_forecasts(kind, settings, tmp_path, day):
    from serving.core import ForecastService
    from serving.validation import ParsedRequest

    fc = tiny_composite(kind, KINDS[kind] or ("tcn",), ret=KINDS[kind][0] if KINDS[kind] else "zero")
    _, version = register_forecaster(settings, fc, tmp_path / "bundle")
    mv = registry.resolve(settings, f"hfcast/{version}")
    assert mv.tags["arch"] == fc.arch
    served = registry.load_forecaster(settings, f"hfcast/{version}")  # checksums verified on the way
    assert served.kind == fc.kind and served.choice.to_dict() == fc.choice.to_dict()

    names = synthetic_feature_names(4)
    wa = build_windows(day, names)
    every = np.arange(0, len(wa), 7)
    pick = every[np.isfinite(wa.windows(every)).all(axis=(1, 2))]  # a request carries no NaN (the first minute)
    windows = wa.windows(pick)
    assert len(pick) > 100
    want = fc.predict(windows)
    pd.testing.assert_frame_equal(served.predict(windows), want)  # the registry gives back what was logged

    report = export_all(served, tmp_path / "export")
    runner = None
    if not KINDS[kind]:  # a baseline
        assert served.graph() is None and "skipped" in report.onnx  # nothing to compile: the post-step is all
    else:
        whole = report.onnx["parity"]["forecaster"]
        assert whole["max_rel_err"] <= PARITY_TOL_FORECAST and whole["max_conf_err"] <= PARITY_TOL_CONF
        from hfcast.runners import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(report.onnx["path"])
        assert runner.run(served.scaler.transform(windows)).shape == (len(windows), served.n_outputs)

    # the server's path: a V1 request by window, through the onnxruntime runner and the post-step
    svc = ForecastService(served, None)
    preds, ts = svc.forecast(ParsedRequest("v1", windows=windows), runner.run if runner else None)
    assert ts == [""] * len(windows)
    _close(pd.DataFrame(preds), want)

    # the runner `hfcast serve --model` starts with: the version's export, stored on first demand
    # (registered without one here) and fetched back through its checksums
    from hfcast.export import serving_runner
    from hfcast.integrity import expected_export

    started = serving_runner("onnxruntime", served, settings)
    stored = expected_export(registry.resolve(settings, f"hfcast/{version}").tags)
    if not KINDS[kind]:  # a baseline
        assert started is None and stored is None  # no network: nothing stored, the post-step serves it
    else:
        assert stored is not None and "model.onnx" in stored[1]
        preds, _ = svc.forecast(ParsedRequest("v1", windows=windows), started.run)
        _close(pd.DataFrame(preds), want)

    # batch prediction: the CSV of the date, through the default runner choice
    from hfcast.predict import run_predict

    lake = Lake.from_settings(settings)
    lake.write("features", DATE, day.assign(ts=day["ts"].astype("datetime64[us, UTC]")))
    from hfcast import storage

    storage.write_text(storage.join(lake.table("features"), FEATURE_SET_FILE),
                       json.dumps({"features": names, "quotes_available": True}), lake.storage_options)
    summary = run_predict(settings, DATE, model_ref=f"hfcast/{version}", progress=False)
    assert [r.status for r in summary.results] == ["done"], summary.results
    csv = pd.read_csv(lake.predictions("hfcast", str(version), DATE))
    csv["ts"] = pd.to_datetime(csv["ts"], utc=True)
    ends = day.iloc[wa.ends[pick]][["symbol", "ts"]].reset_index(drop=True)
    ends["symbol"] = ends["symbol"].astype(str)
    got = ends.merge(csv, on=["symbol", "ts"], how="left")
    assert got["ret_60m_pred"].notna().all()
    _close(got, want)
