"""The prepared GPU check: without a GPU it says so, runs the same code paths tiny on CPU, exits 0."""

from __future__ import annotations

import json
import logging

import pytest

from bench import device_check


def test_cpu_dry_run_writes_every_section(tmp_path, caplog):
    out = tmp_path / "dc.json"
    with caplog.at_level(logging.WARNING, logger="device_check"):
        assert device_check.main(["--cpu", "--out", str(out)]) == 0
    assert "no CUDA GPU" in caplog.text
    doc = json.loads(out.read_text())
    assert doc["dry_run"] is True and doc["device"]["cuda"] is False and doc["device"]["name"]
    archs = {k.split("/")[0] for k in doc["training"]}
    assert archs == set(device_check.ARCHITECTURES)
    results = {**doc["training"], **{k: v for k, v in doc["inference"].items() if k != "tensorrt"}}
    failed = {k: v for k, v in results.items() if "items_per_s" not in v}
    assert not failed, failed  # every CPU-runnable path actually ran
    assert {k.split("/")[0] for k in doc["inference"]} >= {"eager_fp32", "eager_amp", "compiled_amp"}
    assert "skipped" in doc["inference"]["tensorrt"] or "error" not in doc["inference"]["tensorrt"]
    assert doc["best_inference"]["with_host_copies"]["items_per_s"] > 0
    ddp = doc["ddp"]  # the data-parallel step ran (gloo here, NCCL on a GPU) beside the plain one
    assert ddp["backend"] == "gloo" and "error" not in ddp
    for arch in device_check.ARCHITECTURES:
        assert ddp[arch]["ddp_amp"]["items_per_s"] > 0 and ddp[arch]["ddp_over_plain"] > 0, ddp[arch]
    year = doc["dense_year_1000_symbols"]
    assert year["stock_minutes"] == 98_280_000
    assert year["model_seconds"] == pytest.approx(98_280_000 / year["windows_per_s"], rel=1e-3)


def test_budget_skips_instead_of_failing():
    spent = device_check.Budget(-1.0)
    res = device_check._guarded(lambda: {"items_per_s": 1.0}, "x", spent)
    assert res == {"skipped": "skipped x: time budget spent"}
    broken = device_check._guarded(lambda: 1 / 0, "y", device_check.Budget(60))
    assert broken["error"].startswith("ZeroDivisionError")


def test_best_variant_picks_the_fastest():
    inf = {"eager_fp32/batch_4": {"items_per_s": 10.0}, "compiled_amp/batch_16": {"items_per_s": 30.0},
           "cuda_graph_amp/batch_16": {"error": "x"}, "tensorrt": {"skipped": "absent"}}
    assert device_check.best_variant(inf) == ("compiled_amp", 16, 30.0)
    assert device_check.best_variant({}) is None
