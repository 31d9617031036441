"""The explain verb on the real server, V1 and V2, for a bare network and a floored forecaster.

``:explain`` must state the forecast the server SERVES for the same window (the number ``:predict``
answers, from the same runner), split into parts in a stated unit whose network part the
attributions add up to; where no network computes a target (the floor's zero return) it says so.
Bad input gets a 4xx and the server keeps answering.
"""

from __future__ import annotations

import json
import os

import httpx
import numpy as np
import pytest

from hfcast.config import get_settings
from hfcast.contracts import COLUMN_UNITS
from hfcast.explain import EXPLAINED, feature_groups
from hfcast.features.windows import build_windows, synthetic_feature_frame
from hfcast.models import PRED_COLUMNS
from serving_fixtures import tiny_composite, tiny_forecaster
from test_serving import start_server, stop_server  # same folder: pytest puts it on sys.path

pytestmark = pytest.mark.integration
TARGET_COLUMN = {"ret": "ret_60m_pred", "vol": "rv_10m_pred"}


def _served(kind: str):
    """A bare transformer (net kind, on f0..f7) or a floored tcn with the zero return (on the
    synthetic frame's features, which the floor's baseline reads)."""
    if kind == "net":
        return tiny_forecaster("transformer", 8), synthetic_feature_frame(n_symbols=2, n_days=1, n_features=8, seed=4)
    # two days: the first day's windows lack the previous day's volatility (NaN, which the server refuses)
    return tiny_composite("floor", ret="zero"), synthetic_feature_frame(n_symbols=2, n_days=2, n_features=4, seed=4)


@pytest.fixture(scope="module", params=["net", "floor"])
def server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"explain-{request.param}")
    env = {**os.environ, "HFCAST_HOME": str(tmp / ".hfcast")}
    get_settings(env=env, cwd=tmp)
    fc, frame = _served(request.param)
    fc.save(str(tmp / "bundle"))
    wa = build_windows(frame, fc.feature_names, stride=7, label_cols=None)
    windows = wa.windows(np.arange(len(wa)))
    windows = windows[np.isfinite(windows).all(axis=(1, 2))].astype(np.float32)
    proc, base, log = start_server(tmp, env, ["--bundle", str(tmp / "bundle"), "--no-feature-store"])
    try:
        yield {"base": base, "fc": fc, "kind": request.param, "windows": windows, "F": len(fc.feature_names)}
    finally:
        stop_server(proc, log)


def post(server, verb: str, body) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{server['base']}/v1/models/hfcast:{verb}", content=data,
                      headers={"content-type": "application/json"}, timeout=60)


def v1_body(x: np.ndarray) -> dict:
    return {"instances": [{"window": w} for w in x.tolist()]}


def test_explain_states_the_served_forecast_and_attributions_that_add_up_to_its_network_part(server):
    x = server["windows"][[3, 11]]
    r = post(server, "explain", v1_body(x))
    assert r.status_code == 200, r.text
    doc = r.json()
    rows = doc["explanations"]
    served = post(server, "predict", v1_body(x)).json()["predictions"]  # the same runner, another request
    ref = server["fc"].predict(x)
    assert len(rows) == 2 and doc["units"] == {t: EXPLAINED[t][1] for t in EXPLAINED}
    for i, row in enumerate(rows):
        np.testing.assert_allclose([row[c] for c in PRED_COLUMNS], ref[list(PRED_COLUMNS)].iloc[i].to_numpy(),
                                   rtol=2e-4, atol=1e-7)
        for target, col in TARGET_COLUMN.items():
            e = row["explanation"][target]
            assert e["forecast"] == served[i][col] == row[col]  # :explain says what :predict serves
            assert e["column"] == col and e["unit"] == COLUMN_UNITS[col] and e["explained_unit"] == EXPLAINED[target][1]
            assert sum(e["parts"].values()) == pytest.approx(e["value"], rel=1e-9, abs=1e-12)
            if e.get("attributions", True) is None:  # nothing a network computes
                assert "network" not in e["parts"] and e["note"]
                continue
            assert len(e["by_minute"]) == 30 and e["top"]
            assert set(e["by_group"]) == set(feature_groups(server["fc"].feature_names))
            gap = e["parts"]["network"] - e["reference"]
            assert abs(e["total"] - gap) <= 0.02 * abs(gap) + 1e-5, e
        assert row["explanation"]["vol"]["value"] == pytest.approx(np.log(row["rv_10m_pred"]), rel=1e-12)


def test_the_kind_decides_what_is_attributed(server):
    e = post(server, "explain", v1_body(server["windows"][[5]])).json()["explanations"][0]["explanation"]
    if server["kind"] == "net":
        assert e["ret"]["network_share"] == e["vol"]["network_share"] == 1.0
        assert e["ret"]["parts"]["centring"] == pytest.approx(-server["fc"].calibrator.ret_offset, abs=1e-15)
    else:  # a floored volatility: half of the log variance from the network, half from har_tod
        assert e["vol"]["weights"] == {"tcn": 0.5, "har_tod": 0.5} and e["vol"]["baseline_inputs"]
        assert e["ret"]["attributions"] is None and "zero forecast" in e["ret"]["note"]


@pytest.mark.parametrize("case,match", [
    ("short", "wrong window shape"), ("huge", "NaN or inf"), ("batch", "exceeds the maximum batch size of 16"),
    ("symbol", "feature store"), ("v2_form", "instances"), ("broken", "malformed JSON body"),
])
def test_explain_refuses_bad_input_with_4xx(server, case, match):
    F = server["F"]
    body = {"short": {"instances": [{"window": [[0.0] * F] * 29}]},
            "huge": {"instances": [{"window": [[0.0] * F] * 29 + [[1e39] * F]}]},
            "batch": v1_body(np.repeat(server["windows"][:1], 17, axis=0)),
            "symbol": {"instances": [{"symbol": "S000"}]}, "v2_form": {"inputs": []},
            "broken": b'{"instances": ['}[case]
    r = post(server, "explain", body)
    assert 400 <= r.status_code < 500, r.text
    assert match in r.text, r.text
    ok = post(server, "predict", v1_body(server["windows"][:1]))
    assert ok.status_code == 200 and "explanation" not in ok.json()["predictions"][0]


def test_v2_explain_answers_the_infer_outputs_and_one_explanation_a_row(server):
    x = server["windows"][[2, 8]]
    F = server["F"]
    body = {"inputs": [{"name": "window", "datatype": "FP32", "shape": [2, 30, F], "data": x.ravel().tolist()}]}
    r = httpx.post(f"{server['base']}/v2/models/hfcast/explain", json=body, timeout=60)
    assert r.status_code == 200, r.text
    doc = r.json()
    outs = {o["name"]: o["data"] for o in doc["outputs"]}
    infer = httpx.post(f"{server['base']}/v2/models/hfcast/infer", json=body, timeout=60).json()
    served = {o["name"]: o["data"] for o in infer["outputs"]}
    for c in PRED_COLUMNS:
        assert outs[c] == served[c]
    expl = [json.loads(e) for e in outs["explanation"]]
    assert len(expl) == 2 and set(expl[0]) == {"ret", "vol"}
    for i, e in enumerate(expl):  # FP32 outputs: the explanation holds the float64 the FP32 was cast from
        for target, col in TARGET_COLUMN.items():
            assert np.float32(e[target]["forecast"]) == np.float32(served[col][i])
    assert doc["parameters"]["method"] == "integrated_gradients" and doc["parameters"]["units"]["vol"] == EXPLAINED["vol"][1]
    v1 = post(server, "explain", v1_body(x)).json()["explanations"]
    for got, want in zip(expl, v1):  # the same explanation as V1's
        assert got["vol"]["forecast"] == want["explanation"]["vol"]["forecast"]
        if "total" in want["explanation"]["vol"]:
            assert got["vol"]["total"] == pytest.approx(want["explanation"]["vol"]["total"], rel=1e-5, abs=1e-9)
    bad = httpx.post(f"{server['base']}/v2/models/hfcast/explain",
                     json={"inputs": [{"name": "window", "datatype": "FP32", "shape": [17, 30, F],
                                       "data": [0.0] * 17 * 30 * F}]})
    assert bad.status_code == 400 and "maximum batch size of 16" in bad.json()["error"]
    assert httpx.post(f"{server['base']}/v2/models/hfcast/versions/1/explain", json=body).status_code == 404
