"""Data-parallel training (gloo, CPU): 2 processes under torchrun reach the validation loss and
QLIKE of 1 process at the same global batch and seed, from memory and from the stream.

The issue asks for 1%; with dropout off (each rank draws its own dropout masks, so with dropout
the runs agree in distribution only) they agree to float rounding, which is what is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hfcast.testing.servers import free_port

WORKER = Path(__file__).resolve().parents[1] / "_ddp_train.py"


def _run(tmp_path: Path, kind: str, nproc: int) -> dict:
    out = tmp_path / f"{kind}-{nproc}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out), kind]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(WORKER), str(out), kind]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FutureWarning" not in proc.stderr, proc.stderr[-3000:]  # torch 2.13 deprecated broadcast_buffers
    return json.loads(out.read_text())


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_two_processes_match_one(tmp_path, kind):
    one, two = _run(tmp_path, kind, 1), _run(tmp_path, kind, 2)
    assert (one["world"], two["world"]) == (1, 2)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)
    assert two["qlike"] == pytest.approx(one["qlike"], rel=1e-4)
    # the trajectories, not only the end point: every epoch's validation loss agrees
    assert two["val_losses"] == pytest.approx(one["val_losses"], rel=1e-4)
