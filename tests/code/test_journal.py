"""The step journal of the daily loop (hfcast.journal): written before and after each step, an
interrupted step visible to the rerun, the test hook kills only at the named point and date."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from hfcast import journal
from hfcast.storage import Lake


def test_a_step_is_on_record_before_and_after_it_runs(tmp_path):
    lake = Lake(tmp_path.as_uri())
    j = journal.Journal(lake, "hfcast", "2024-01-19")
    with journal.opened(j):
        with journal.step("predict") as out:
            on_disk = json.loads((tmp_path / "replay" / "hfcast" / "journal" / "2024-01-19.json").read_text())
            assert "started_at" in on_disk["steps"]["predict"] and "finished_at" not in on_disk["steps"]["predict"]
            out["version"] = "3"
        with pytest.raises(ValueError):
            with journal.step("monitor"):
                raise ValueError("no reference")
        j2 = journal.Journal(lake, "hfcast", "2024-01-19")
        j2.start("retrain")  # then the process dies: never finished
    again = journal.Journal(lake, "hfcast", "2024-01-19")
    assert again.result("predict")["version"] == "3"
    assert again.result("monitor") is None and "no reference" in again.doc["steps"]["monitor"]["error"]
    assert again.interrupted() == ["retrain"]
    again.start("retrain")
    again.finish("retrain", new_version=2)
    assert again.interrupted() == [] and [a["outcome"] for a in again.doc["attempts"]] == ["interrupted"]
    assert journal.current() is None


def test_without_an_open_journal_a_step_records_nothing(monkeypatch):
    def no_write(*a, **k):
        raise AssertionError("a step outside a replay wrote a journal")

    monkeypatch.setattr(journal.storage, "write_text", no_write)
    with journal.step("register") as out:
        out["version"] = 1
    assert out == {"version": 1}


@pytest.mark.parametrize("spec, killed", [("after-predict@2024-01-19", True), ("after-predict@2024-01-22", False),
                                          ("after-predict", True), ("before-monitor@2024-01-19", False)])
def test_the_kill_hook_fires_only_at_its_point_and_date(tmp_path, spec, killed):
    code = ("from hfcast import journal; from hfcast.storage import Lake; import sys\n"
            f"j = journal.Journal(Lake({tmp_path.as_uri()!r}), 'hfcast', '2024-01-19')\n"
            "with journal.opened(j):\n"
            "    with journal.step('predict'):\n"
            "        pass\n"
            "print('survived')\n")
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, journal.KILL_ENV: spec},
                         capture_output=True, text=True, timeout=120)
    assert (res.returncode == -signal.SIGKILL) is killed, res.stderr
    assert ("survived" in res.stdout) is not killed
