"""The daily loop is crash-consistent: a replay SIGKILLed at a named step, then run again, ends in the
state of a replay that was never interrupted (real training, MLflow on SQLite, Evidently, the gate).

Each scenario kills the replay process with the test hook of :mod:`hfcast.journal`
(``HFCAST_TEST_KILL_AT=POINT@DATE``: the process SIGKILLs itself there), reruns the same command,
and compares decisions, versions and aliases, MLflow runs, references and prediction files with the
uninterrupted replay (ids and clocks left out). 2024-01-19 is the drifting date whose decision
retrains; 2024-01-22 is the next day, predicted by the new champion.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hfcast.data.simulator import SimConfig, write_synth
from hfcast.storage import Lake
from lake_settings import project_settings  # tests/: pytest puts it on sys.path

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent
FIRST, DRIFT, NEXT, LAST = "2024-01-18", "2024-01-19", "2024-01-22", "2024-01-22"
OVERRIDES = {
    "walkforward": {"train_days": 5, "val_days": 2, "test_days": 2, "step_days": 2, "embargo_days": 1,
                    "max_folds": 1, "train_stride": 5, "eval_stride": 5, "models": {"tcn": {"channels": 8}}},
    "train": {"epochs": 2, "max_train_windows": 2000, "max_val_windows": 1000, "num_threads": 1},
    "monitor": {"consecutive": 2, "cooldown_dates": 10, "current_rows": 1500, "reference_rows": 1500,
                "reference_sample_rows": 3000, "min_labels": 100},
}
# the named steps of the drifting date and of the next day's prediction (POINT@DATE of hfcast.journal)
KILL_POINTS = [f"after-decide@{DRIFT}", f"train-epoch@{DRIFT}", f"before-register@{DRIFT}", f"after-register@{DRIFT}",
               f"after-gate@{DRIFT}", f"after-promote@{DRIFT}", f"after-retrain@{DRIFT}", f"after-monitor@{DRIFT}",
               f"predict-csv@{NEXT}"]


def _project(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    settings = project_settings(root, OVERRIDES)
    write_synth(SimConfig(n_symbols=4, n_days=14, seed=3, regime_shift_day=12, shift_vol_mult=1.8,
                          shift_spread_mult=1.5), Lake.from_settings(settings), progress=False)
    return settings


def _env(kill_at: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HFCAST_TEST_KILL_AT"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), *sys.path])
    return {**env, "HFCAST_TEST_KILL_AT": kill_at} if kill_at else env


def _replay(root: Path, last: str = LAST, kill_at: str | None = None) -> subprocess.CompletedProcess:
    with open(root / "replay.log", "ab") as out:
        return subprocess.run([sys.executable, str(HERE / "replay_driver.py"), "run", str(root), FIRST, last],
                              env=_env(kill_at), cwd=root, stdout=out, stderr=subprocess.STDOUT, timeout=900)


def _state(root: Path) -> dict:
    """The end state (:func:`replay_driver.state`), read by a fresh process."""
    res = subprocess.run([sys.executable, str(HERE / "replay_driver.py"), "state", str(root)], env=_env(), cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def _journal(root: Path, date: str) -> dict:
    return json.loads((root / "lake" / "replay" / "hfcast" / "journal" / f"{date}.json").read_text())


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted replay's end state, and a snapshot of a replay stopped cleanly after its first day."""
    base = tmp_path_factory.mktemp("kill")
    _project(base / "straight")
    assert _replay(base / "straight").returncode == 0, (base / "straight" / "replay.log").read_text()[-3000:]
    want = _state(base / "straight")
    assert not want["runs"]["interrupted"] and not want["runs"]["running"] and not want["unfinished_steps"]
    retrains = [r for r in want["decisions"] if r["action"] == "retrain"]
    assert [r["date"] for r in retrains] == [DRIFT] and retrains[0]["trigger"]["promoted"], want["decisions"]
    _project(base / "snapshot")
    assert _replay(base / "snapshot", last=FIRST).returncode == 0
    return base, want


def _restore(base: Path) -> Path:
    """A fresh copy of the snapshot at one fixed path (MLflow stores absolute artifact paths)."""
    work = base / "work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base / "snapshot", work)
    return work


def _same_end_state(got: dict, want: dict, killed_training: bool) -> None:
    for key in ("versions", "decisions", "files", "manifests", "lease", "retrain_state", "unfinished_steps"):
        assert got[key] == want[key], key
    assert got["runs"]["kept"] == want["runs"]["kept"] and got["runs"]["running"] == []
    if killed_training:  # the killed attempt's runs (parent and fold) were closed FAILED with the reason
        assert got["runs"]["interrupted"] and {r[2] for r in got["runs"]["interrupted"]} == {"FAILED"}
    else:
        assert got["runs"]["interrupted"] == []


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_replay_killed_at_a_step_reaches_the_uninterrupted_state(straight, kill_at):
    base, want = straight
    work = _restore(base)
    killed = _replay(work, kill_at=kill_at)
    assert killed.returncode == -9, f"the hook did not fire at {kill_at}: {(work / 'replay.log').read_text()[-2000:]}"
    point, date = kill_at.split("@")
    if point.startswith("after-"):  # written down before the kill
        assert _journal(work, date)["steps"][point.removeprefix("after-")].get("finished_at")
    else:  # killed inside or just as it began: the journal shows a step started, not finished
        assert [s for s, e in _journal(work, date)["steps"].items() if not e.get("finished_at")]

    assert _replay(work).returncode == 0, (work / "replay.log").read_text()[-3000:]
    got = _state(work)
    _same_end_state(got, want, killed_training=point in ("train-epoch", "before-register"))
    if point != "after-monitor":  # the day's interrupted or repeated steps are on record
        assert got["attempts"].get(date), got["attempts"]


@pytest.mark.slow
def test_replay_killed_while_training_its_first_champion(straight, tmp_path):
    base, want = straight
    _project(tmp_path / "boot")
    assert _replay(tmp_path / "boot", kill_at="train-epoch@bootstrap").returncode == -9
    assert _replay(tmp_path / "boot").returncode == 0, (tmp_path / "boot" / "replay.log").read_text()[-3000:]
    _same_end_state(_state(tmp_path / "boot"), want, killed_training=True)
