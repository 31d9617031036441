"""The pure parts of the lifecycle: which trained run the gate judges, and publishing an export."""

from __future__ import annotations

import pytest

from hfcast.config import get_settings
from hfcast.lifecycle import best_run, rank_runs


def test_best_run_follows_the_gate_rules_in_order():
    runs = [{"arch": "lstm", "run_id": "a", "vol_qlike": 0.30, "ret_ic": 0.05},
            {"arch": "tcn", "run_id": "b", "vol_qlike": 0.25, "ret_ic": 0.01},
            {"arch": "hybrid", "run_id": "c", "ret_ic": 0.09}]  # no QLIKE: ranks last
    assert best_run(runs)["arch"] == "tcn"  # QLIKE (lower is better) is the main key
    assert [r["arch"] for r in rank_runs(runs)] == ["tcn", "lstm", "hybrid"]
    with pytest.raises(ValueError, match="no training results"):
        best_run([])


def test_best_run_reads_the_configured_primary_metrics(tmp_path):
    s = get_settings(env={"HFCAST_HOME": str(tmp_path)}, cwd=tmp_path).with_(
        params={"registry": {"gate": {"primary": {"ret_ic": {"direction": "max", "margin": 0.0}}}}})
    runs = [{"arch": "lstm", "run_id": "a", "vol_qlike": 0.30, "ret_ic": 0.05},
            {"arch": "tcn", "run_id": "b", "vol_qlike": 0.25, "ret_ic": 0.01}]
    assert best_run(runs, s)["arch"] == "lstm"


def test_publish_copies_every_file(tmp_path):
    from hfcast.export import publish

    src = tmp_path / "export"
    (src / "triton" / "hfcast" / "1").mkdir(parents=True)
    (src / "model.onnx").write_bytes(b"onnx")
    (src / "triton" / "hfcast" / "1" / "model.onnx").write_bytes(b"onnx1")
    dst = tmp_path / "published"
    written = publish(src, dst.as_uri())
    assert len(written) == 2
    assert (dst / "triton" / "hfcast" / "1" / "model.onnx").read_bytes() == b"onnx1"
    with pytest.raises(FileNotFoundError, match="not an export folder"):
        publish(tmp_path / "missing", dst.as_uri())
