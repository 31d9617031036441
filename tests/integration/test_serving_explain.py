"""The explain verb on the real server, V1 and V2: 200 with attributions for good windows, 4xx for bad input."""

from __future__ import annotations

import json
import os

import httpx
import numpy as np
import pytest

from hfcast.config import get_settings
from hfcast.models import PRED_COLUMNS
from serving_fixtures import tiny_bundle
from test_serving import start_server, stop_server  # same folder: pytest puts it on sys.path

pytestmark = pytest.mark.integration
F = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    env = {**os.environ, "HFCAST_HOME": str(tmp / ".hfcast")}
    get_settings(env=env, cwd=tmp)
    bundle = tiny_bundle(tmp / "bundle", "transformer", F)
    proc, base, log = start_server(tmp, env, ["--bundle", str(bundle), "--no-feature-store"])
    from hfcast.forecaster import Forecaster

    try:
        yield {"base": base, "fc": Forecaster.load(str(bundle))}
    finally:
        stop_server(proc, log)


def post(server, verb: str, body) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{server['base']}/v1/models/hfcast:{verb}", content=data,
                      headers={"content-type": "application/json"}, timeout=60)


def windows(b: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, 30, F)).astype(np.float32)


def test_explain_answers_attributions_that_add_up(server):
    x = windows(2)
    r = post(server, "explain", {"instances": [{"window": w} for w in x.tolist()]})
    assert r.status_code == 200, r.text
    rows = r.json()["explanations"]
    ref = server["fc"].predict(x)
    assert len(rows) == 2
    for i, row in enumerate(rows):
        np.testing.assert_allclose([row[c] for c in PRED_COLUMNS], ref[list(PRED_COLUMNS)].iloc[i].to_numpy(), rtol=2e-4, atol=1e-7)
        for target in ("ret", "vol"):
            e = row["explanation"][target]
            assert len(e["by_minute"]) == 30 and e["top"] and set(e["by_group"]) == {f"f{j}" for j in range(F)}
            gap = e["forecast"] - e["baseline_forecast"]
            assert abs(e["total"] - gap) <= 0.02 * abs(gap) + 1e-6, e
    # the explained return forecast is the served one up to the calibrator's constant offset
    offset = server["fc"].calibrator.ret_offset
    assert rows[0]["explanation"]["ret"]["forecast"] - offset == pytest.approx(rows[0]["ret_60m_pred"], rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("body,match", [
    ({"instances": [{"window": [[0.0] * F] * 29}]}, "wrong window shape"),
    ({"instances": [{"window": [[0.0] * F] * 29 + [[1e39] * F]}]}, "NaN or inf"),
    ({"instances": [{"window": [[0.1] * F] * 30}] * 17}, "exceeds the maximum batch size of 16"),
    ({"instances": [{"symbol": "S000"}]}, "feature store"),
    ({"inputs": []}, "instances"),
    (b'{"instances": [', "malformed JSON body"),
])
def test_explain_refuses_bad_input_with_4xx(server, body, match):
    r = post(server, "explain", body)
    assert 400 <= r.status_code < 500, r.text
    assert match in r.text, r.text
    ok = post(server, "predict", {"instances": [{"window": windows(1, 3)[0].tolist()}]})
    assert ok.status_code == 200 and "explanation" not in ok.json()["predictions"][0]


def test_v2_explain_answers_the_infer_outputs_and_one_explanation_a_row(server):
    x = windows(2, seed=8)
    body = {"inputs": [{"name": "window", "datatype": "FP32", "shape": [2, 30, F], "data": x.ravel().tolist()}]}
    r = httpx.post(f"{server['base']}/v2/models/hfcast/explain", json=body, timeout=60)
    assert r.status_code == 200, r.text
    doc = r.json()
    outs = {o["name"]: o["data"] for o in doc["outputs"]}
    ref = server["fc"].predict(x)
    for c in PRED_COLUMNS:
        np.testing.assert_allclose(outs[c], ref[c], rtol=2e-4, atol=1e-7)
    expl = [json.loads(e) for e in outs["explanation"]]
    assert len(expl) == 2 and set(expl[0]) == {"ret", "vol"} and len(expl[0]["vol"]["by_minute"]) == 30
    assert doc["parameters"]["method"] == "integrated_gradients"
    v1 = post(server, "explain", {"instances": [{"window": w} for w in x.tolist()]}).json()["explanations"]
    for got, want in zip(expl, v1):  # the same attributions as V1's
        assert got["vol"]["total"] == pytest.approx(want["explanation"]["vol"]["total"], rel=1e-5, abs=1e-9)
    bad = httpx.post(f"{server['base']}/v2/models/hfcast/explain",
                     json={"inputs": [{"name": "window", "datatype": "FP32", "shape": [17, 30, F],
                                       "data": [0.0] * 17 * 30 * F}]})
    assert bad.status_code == 400 and "maximum batch size of 16" in bad.json()["error"]
    assert httpx.post(f"{server['base']}/v2/models/hfcast/versions/1/explain", json=body).status_code == 404
