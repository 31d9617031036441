"""Two monitors deciding overlapping dates at the same moment: no lost record, one retraining.

Each trial starts two processes on a fresh decision log (local folder or a real SeaweedFS bucket);
the drift checks are given (no Evidently, no registry) and the retraining is a fake starter that
sleeps, so the monitors overlap while it "runs". Counted: one record per date, one retraining.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
import uuid

import pytest

from hfcast.monitoring import decision as D

DATES = ["2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07"]
ORDERS = (DATES[1:], [DATES[2], DATES[3], DATES[1]])  # overlapping dates, different orders
TRIALS = 20


class SleepyStarter:
    """Counts its starts as create-if-absent objects (one per start) and sleeps like a retraining."""

    kind = "fake"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def start(self, settings, model, reason, drifted_dates):
        from hfcast import storage
        from hfcast.storage import Lake

        lake = Lake.from_settings(settings)
        storage.create_exclusive(storage.join(lake.url, "starts", uuid.uuid4().hex), reason.encode(),
                                 lake.storage_options)
        time.sleep(self.seconds)
        return {"kind": self.kind, "status": "done", "new_version": 2, "promoted": False, "note": "fake"}


def _monitor(settings_param: str, dates, barrier_at: float, seconds: float) -> None:
    from hfcast.config import settings_from_param
    from hfcast.monitoring.drift import run_monitor

    settings = settings_from_param(settings_param)
    cfg = D.MonitorConfig.of(consecutive=2, cooldown_dates=10)
    time.sleep(max(0.0, barrier_at - time.time()))  # both start deciding at the same moment
    for d in dates:
        checks = D.Checks(date=d, version="1", drift_share=0.8, drifted_features=["spread"])
        run_monitor(settings, d, model="hfcast/1", starter=SleepyStarter(seconds), log_mlflow=False, cfg=cfg,
                    checks=checks)


def _trials(settings, seconds: float = 1.5) -> list[tuple[int, int, int]]:
    from hfcast import storage
    from hfcast.storage import Lake

    ctx = mp.get_context("spawn")
    out = []
    for k in range(TRIALS):
        s = settings.with_(lake_url=storage.join(settings.lake_url, f"trial{k}"))
        lake = Lake.from_settings(s)
        seed = D.decide([], D.Checks(date=DATES[0], version="1", drift_share=0.8), D.MonitorConfig.of(consecutive=2))
        D.claim(lake, "hfcast", seed)  # one alarm on record: the next alarm reaches K=2
        at = time.time() + 2.5
        procs = [ctx.Process(target=_monitor, args=(s.to_param(), order, at, seconds)) for order in ORDERS]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0, f"trial {k}: a monitor process failed (exit {p.exitcode})"
        history = D.load_history(lake, "hfcast")
        starts = storage.listdir(storage.join(lake.url, "starts"), lake.storage_options)
        retrains = [r["date"] for r in history if r["action"] == D.RETRAIN]
        out.append((len(history), len(starts), len(retrains)))
        assert [r["date"] for r in history] == DATES, f"trial {k}: lost record(s): {json.dumps(history)[:500]}"
    return out


def _check(results) -> None:
    lost = sum(len(DATES) - n for n, _, _ in results)
    double = sum(1 for _, s, r in results if s != 1 or r != 1)
    assert (lost, double) == (0, 0), results


@pytest.mark.slow
def test_race_local_filesystem(settings, monkeypatch):
    monkeypatch.setenv("HFCAST_HOME", str(settings.home))
    _check(_trials(settings))


@pytest.mark.slow
def test_race_seaweedfs_s3(s3_settings, s3, monkeypatch):
    for k, v in s3.env().items():  # credentials reach the monitor processes through the environment only
        monkeypatch.setenv(k, v)
    _check(_trials(s3_settings))


def test_a_date_whose_lease_another_monitor_holds_is_left_to_it(settings, monkeypatch):
    """The lease holder decides its date again on a fresh log, then records it; a monitor deciding
    the same date in that moment used to record "suppressed: a retraining is running" first, and the
    holder's retraining record then lost the create-if-absent: no retraining for the episode."""
    import threading

    from hfcast.monitoring import retraining as R
    from hfcast.monitoring.drift import run_monitor
    from hfcast.storage import Lake

    monkeypatch.setenv("HFCAST_HOME", str(settings.home))
    lake = Lake.from_settings(settings)
    cfg = D.MonitorConfig.of(consecutive=2, cooldown_dates=10)
    D.claim(lake, "hfcast", D.decide([], D.Checks(date=DATES[0], version="1", drift_share=0.8), cfg))
    lease = R.acquire_lease(lake, "hfcast", DATES[1], 1.0)
    assert lease is not None
    checks = D.Checks(date=DATES[1], version="1", drift_share=0.8, drifted_features=["spread"])
    holders = D.decide(D.load_history(lake, "hfcast"), checks, cfg)
    assert holders["action"] == D.RETRAIN
    holders["model"] = "hfcast"
    threading.Timer(0.5, D.claim, args=(lake, "hfcast", holders)).start()  # the holder records a moment later
    got = run_monitor(settings, DATES[1], model="hfcast/1", starter=SleepyStarter(0.0), log_mlflow=False, cfg=cfg,
                      checks=checks)
    assert got["action"] == D.RETRAIN and D.read_decision(lake, "hfcast", DATES[1])["action"] == D.RETRAIN
    R.release_lease(lake, "hfcast", lease)
    # without a lease for the date, the same call decides it itself (and a lease for another date
    # is still "a retraining is running")
    other = R.acquire_lease(lake, "hfcast", DATES[3], 1.0)
    got = run_monitor(settings, DATES[2], model="hfcast/1", starter=SleepyStarter(0.0), log_mlflow=False, cfg=cfg,
                      checks=D.Checks(date=DATES[2], version="1", drift_share=0.8, drifted_features=["spread"]))
    assert got["date"] == DATES[2] and got["action"] == D.SUPPRESSED
    R.release_lease(lake, "hfcast", other)
