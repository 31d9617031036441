"""KServe's explain verb on the real server: 200 with attributions for good windows, 4xx for bad input."""

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
    (b'{"instances": [', "Unrecognized request format"),
])
def test_explain_refuses_bad_input_with_4xx(server, body, match):
    r = post(server, "explain", body)
    assert 400 <= r.status_code < 500, r.text
    assert match in r.text, r.text
    ok = post(server, "predict", {"instances": [{"window": windows(1, 3)[0].tolist()}]})
    assert ok.status_code == 200 and "explanation" not in ok.json()["predictions"][0]
