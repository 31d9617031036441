"""The pure parts of the lifecycle: params.yaml forecaster:, the retraining's architectures, publishing."""

from __future__ import annotations

import pytest

from hfcast.config import get_settings
from hfcast.lifecycle import default_archs, forecaster_section, retrain_archs, select_options


def _settings(tmp_path, params=None):
    return get_settings(env={"HFCAST_HOME": str(tmp_path)}, cwd=tmp_path).with_(params=params or {})


def test_forecaster_section_defaults_and_checks(tmp_path):
    s = _settings(tmp_path)
    assert default_archs(s) == ["transformer", "lstm"]
    assert select_options(s).kind == "auto" and select_options(s, kind="ensemble", ret="zero").ret == "zero"
    s2 = _settings(tmp_path, {"forecaster": {"archs": "tcn", "kind": "floor"}})
    assert default_archs(s2) == ["tcn"] and select_options(s2).kind == "floor"
    with pytest.raises(ValueError, match="unknown architecture"):
        forecaster_section(_settings(tmp_path, {"forecaster": {"archs": ["gru"]}}))
    with pytest.raises(ValueError, match="unknown forecaster parameter"):
        forecaster_section(_settings(tmp_path, {"forecaster": {"arch": "tcn"}}))
    with pytest.raises(ValueError, match="forecaster kind must be one of"):
        select_options(_settings(tmp_path, {"forecaster": {"kind": "best"}}))


def test_retrain_archs_without_a_registry_falls_back_to_the_configured_ones(tmp_path):
    assert retrain_archs(_settings(tmp_path, {"retrain": {"archs": "lstm"}})) == ["lstm"]
    assert retrain_archs(_settings(tmp_path, {"retrain": {"archs": ["lstm", "tcn"]}})) == ["lstm", "tcn"]
    assert retrain_archs(_settings(tmp_path, {"forecaster": {"archs": ["hybrid", "tcn"]}})) == ["hybrid", "tcn"]


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
