"""The columnar prediction CSV writer: byte-identical to the pandas reference, same parsed values."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from hfcast import csvout, predict
from hfcast.contracts import INFO_COLUMNS, PRED_COLUMNS

FLOAT_COLUMNS = (*PRED_COLUMNS, *INFO_COLUMNS)


def _frame(n_symbols: int = 5, minutes: int = 390, seed: int = 0, tz: str = "UTC") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_symbols * minutes
    ts = pd.Timestamp("2024-03-08 14:30", tz="UTC") + pd.to_timedelta(np.tile(np.arange(minutes), n_symbols), "min")
    df = pd.DataFrame({"symbol": np.repeat([f"S{i:03d}" for i in range(n_symbols)], minutes),
                       "ts": ts.tz_convert(tz)})
    scales = np.array([1e-3, 1.0, 1e-2, 1e-2, 1e-4, 1.0, 1e-5, 3e3])  # exponent and positional forms
    for c, s in zip(PRED_COLUMNS, scales):
        df[c] = rng.standard_normal(n) * s * 10.0 ** rng.integers(-3, 4, n)
    for c in INFO_COLUMNS:  # one flag per model version, NaN where there is no forecast
        df[c] = 1.0 if c.startswith("rv") else 0.0
    df.loc[np.arange(n) % minutes < 29, list(FLOAT_COLUMNS)] = np.nan  # no full window yet
    df.loc[7, "ret_60m_conf"] = np.nan  # one missing value alone in a row
    specials = [0.0, -0.0, 1.0, 1e9, 123456789.0, 1e-5, 9.999999999e-5, 0.5, np.inf, -np.inf, 2.5e-300, 1e300]
    df.loc[100:100 + len(specials) - 1, "rv_10m_lo"] = specials
    df["filled"] = np.arange(n) % 3 == 0
    return df


def _pandas(frame: pd.DataFrame, monkeypatch, *args) -> bytes:
    with monkeypatch.context() as m:
        m.setattr(csvout, "prediction_csv", lambda *a, **k: None)
        return predict.to_csv_bytes(frame, *args)


@pytest.mark.parametrize("tz", ["UTC", "America/New_York"])
def test_byte_identical_to_pandas(monkeypatch, tz):
    frame = _frame(tz=tz)
    args = ("hfcast", "12", "dense")
    fast = predict.to_csv_bytes(frame, *args)
    assert fast == csvout.prediction_csv(frame, FLOAT_COLUMNS, dict(zip(("model_name", "model_version", "mode"), args)),
                                         predict.CSV_FLOAT_FORMAT)  # the fast path is the one taken
    assert fast == _pandas(frame, monkeypatch, *args)


def test_same_parsed_values(monkeypatch):
    frame = _frame(seed=3)
    fast = pd.read_csv(io.BytesIO(predict.to_csv_bytes(frame, "m", "1", "sparse")))
    ref = pd.read_csv(io.BytesIO(_pandas(frame, monkeypatch, "m", "1", "sparse")))
    pd.testing.assert_frame_equal(fast, ref, check_exact=True)
    np.testing.assert_allclose(fast["ret_60m_pred"], frame["ret_60m_pred"], rtol=1e-8)  # 9 significant digits
    assert fast["filled"].dtype == bool and fast["mode"].eq("sparse").all()


def test_values_csv_would_quote_fall_back_to_pandas(monkeypatch):
    frame = _frame(n_symbols=3, minutes=60)
    frame.loc[frame["symbol"] == "S002", "symbol"] = 'BRK,"B"'
    assert csvout.prediction_csv(frame, FLOAT_COLUMNS, {"model_name": "m"}, "%.9g") is None
    body = predict.to_csv_bytes(frame, "m", "1", "dense")
    assert body == _pandas(frame, monkeypatch, "m", "1", "dense")
    assert pd.read_csv(io.BytesIO(body))["symbol"].iloc[-1] == 'BRK,"B"'


def test_empty_frame(monkeypatch):
    frame = _frame().iloc[:0]
    assert predict.to_csv_bytes(frame, "m", "1", "dense") == _pandas(frame, monkeypatch, "m", "1", "dense")
