"""A TensorRT plan runs only on the GPU model (and TensorRT) it was built for: the build records them
beside the plan and the runner refuses another, with a message that says what to do. Checked without
TensorRT or a GPU (the device is given; a stand-in module proves the check runs before the plan loads)."""

from __future__ import annotations

import json
import sys
import types

import pytest

from hfcast import runners
from hfcast.errors import UserError
from hfcast.runners import TensorRTRunner

H100 = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "10.9.0.34"}


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "model.plan"
    path.write_bytes(b"plan bytes")
    return path


def test_the_record_lies_beside_the_plan_and_matches_on_the_same_gpu(plan):
    record = TensorRTRunner.record_device(plan, H100)
    assert record == plan.with_name("model.plan.device.json")
    assert json.loads(record.read_text()) == H100
    assert TensorRTRunner.check_device(plan, dict(H100)) == H100


@pytest.mark.parametrize("key, other", [("gpu", "NVIDIA A100-SXM4-80GB"), ("compute_capability", "8.0"),
                                        ("tensorrt", "10.3.0.26")])
def test_a_plan_from_another_gpu_or_tensorrt_is_refused_with_both_named(plan, key, other):
    TensorRTRunner.record_device(plan, H100)
    with pytest.raises(UserError) as err:
        TensorRTRunner.check_device(plan, {**H100, key: other})
    assert repr(H100[key]) in err.value.problem and repr(other) in err.value.problem
    assert "rebuild the plan" in err.value.fix


def test_a_plan_without_a_record_loads_with_a_warning(plan, caplog):
    assert TensorRTRunner.check_device(plan, H100) is None
    assert "no .device.json record" in caplog.text


def test_an_unreadable_record_is_refused(plan):
    TensorRTRunner.device_file(plan).write_text("{not json")
    with pytest.raises(UserError, match="not a readable device record"):
        TensorRTRunner.check_device(plan, H100)


def test_an_incomplete_record_is_not_written(plan):
    with pytest.raises(ValueError, match="compute_capability"):
        TensorRTRunner.record_device(plan, {"gpu": "x", "tensorrt": "10"})


def test_the_runner_checks_before_it_deserializes(plan, monkeypatch):
    """TensorRT is never asked to load a plan from another GPU model."""
    TensorRTRunner.record_device(plan, H100)
    loaded = []

    class Logger:
        WARNING = 0

        def __init__(self, level):
            pass

    fake_trt = types.SimpleNamespace(Runtime=lambda logger: loaded.append(True), Logger=Logger,
                                     __version__=H100["tensorrt"])
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setattr(runners, "tensorrt_available", lambda: True)
    monkeypatch.setattr(TensorRTRunner, "current_device", staticmethod(lambda: {**H100, "gpu": "NVIDIA L4"}))
    with pytest.raises(UserError, match="NVIDIA L4"):
        TensorRTRunner(plan)
    assert not loaded
