"""The retraining decision (hfcast.monitoring.decision): pure, over whole sequences of dates."""

from __future__ import annotations

import pandas as pd
import pytest

from hfcast.monitoring.decision import NONE, RETRAIN, SUPPRESSED, Checks, MonitorConfig, claim, decide, load_history, update
from hfcast.storage import Lake

CFG = MonitorConfig.of(drift_share=0.3, consecutive=2, cooldown_dates=5, perf_consecutive=2, min_labels=10)
DRIFT, PERF = CFG.rule("drift"), CFG.rule("perf")
DATES = [d.date().isoformat() for d in pd.bdate_range("2024-01-02", periods=30)]
REFERENCE = {"vol_qlike": 0.2, "ret_ic": 0.05}
DEGRADED = {"vol_qlike": 0.5, "ret_ic": 0.05, "n_labels": 50}  # QLIKE 2.5x the reference: a performance alarm
HEALTHY = {"vol_qlike": 0.21, "ret_ic": 0.05, "n_labels": 50}


def _run(shares, cfg=CFG, version="1", perf=None, running_on=()):
    """Feed a sequence of drift shares (and performance alarms) through decide(); returns the records."""
    history: list[dict] = []
    for i, s in enumerate(shares):
        live = None if perf is None else DEGRADED if perf[i] else HEALTHY
        c = Checks(date=DATES[i], version=version, drift_share=s,
                   drifted_features=["rv_5m"] if s >= cfg.rule("drift").drift_share else [],
                   live=live, reference=None if perf is None else REFERENCE)
        running = {"run_id": "r1", "started_at": "x"} if i in running_on else None
        history.append(decide(history, c, cfg, running))
    return history


def test_stationary_never_retrains():
    recs = _run([0.1, 0.29, 0.0, 0.25] * 6)
    assert all(r["action"] == NONE for r in recs)


def test_isolated_drift_days_do_not_trigger():
    recs = _run([0.1, 0.5, 0.1, 0.6, 0.0, 0.9, 0.1])  # never two in a row
    assert [r["action"] for r in recs] == [NONE] * 7
    assert recs[1]["drift_alarm"] and recs[1]["drift_streak"] == 1
    assert "1/2 consecutive" in recs[1]["explanation"]


def test_shift_triggers_once_within_k_then_cooldown_then_again():
    shares = [0.1] * 5 + [0.7] * 20  # shift on index 5, drift every later date
    recs = _run(shares)
    actions = [r["action"] for r in recs]
    first = actions.index(RETRAIN)
    assert first == 5 + DRIFT.consecutive - 1  # detected within K dates of the shift
    assert recs[first]["drifted_dates"] == DATES[5:7]
    # exactly one retraining within the cooldown although every later date drifts
    window = actions[first:first + CFG.cooldown_dates]
    assert window.count(RETRAIN) == 1 and set(window[1:]) == {SUPPRESSED}
    assert "cooldown" in recs[first + 1]["explanation"]
    # after the cooldown a persisting drift may retrain again (the gate may have rejected the first)
    assert actions[first + CFG.cooldown_dates] == RETRAIN


def test_running_retraining_suppresses_even_after_cooldown():
    shares = [0.7] * 12
    recs = _run(shares, running_on=set(range(6, 12)))
    actions = [r["action"] for r in recs]
    assert actions.count(RETRAIN) == 1 and actions[1] == RETRAIN
    assert all(a == SUPPRESSED for a in actions[6:])
    assert "still running" in recs[7]["explanation"]


def test_performance_alarm_needs_its_own_streak():
    perf = [False, True, False, True, True, False]
    recs = _run([0.0] * 6, perf=perf)
    assert [r["action"] for r in recs] == [NONE, NONE, NONE, NONE, RETRAIN, NONE]
    assert "performance degraded on 2" in recs[4]["explanation"] and "vol QLIKE 0.5 > 1.5 x" in recs[4]["explanation"]
    assert [r["perf_streak"] for r in recs] == [0, 1, 0, 1, 2, 0]


def test_streaks_reset_for_a_new_model_version():
    history = _run([0.7], version="1")  # one drift alarm under v1
    c = Checks(date=DATES[1], version="2", drift_share=0.7)
    rec = decide(history, c, CFG)
    assert rec["action"] == NONE and rec["drift_streak"] == 1


def test_rerun_of_a_retrain_date_does_not_retrain_twice():
    recs = _run([0.7, 0.7])
    assert recs[1]["action"] == RETRAIN
    again = decide(recs, Checks(date=DATES[1], version="1", drift_share=0.7), CFG)
    assert again["action"] == SUPPRESSED


def test_backfill_cooldown_looks_only_before_but_one_episode_retrains_once():
    recs = _run([0.1] * 8 + [0.7, 0.7])  # retrain on DATES[9] (drifted dates 8 and 9)
    assert recs[-1]["action"] == RETRAIN
    early = decide(recs, Checks(date=DATES[7], version="1", drift_share=0.9), CFG)
    # DATES[6] had no alarm, so the backfilled DATES[7] streak is 1 -> none
    assert early["action"] == NONE
    k1 = MonitorConfig.of(consecutive=1, cooldown_dates=5)
    # a later date's retraining does not cool down an earlier, separate alarm (DATES[6] and [7] calm
    # between them) ...
    assert decide(recs, Checks(date=DATES[5], version="1", drift_share=0.9), k1)["action"] == RETRAIN
    # ... but an alarm on the trading day right before the later episode joins it (a monitor that ran
    # ahead decided the later dates first): no second retraining
    joined = decide(recs, Checks(date=DATES[7], version="1", drift_share=0.9), k1)
    assert joined["action"] == SUPPRESSED and "same drift episode" in joined["explanation"]
    # but a date the later retraining already counted is the same episode: no second retraining
    same = decide(recs[:8], Checks(date=DATES[8], version="1", drift_share=0.9), k1)
    assert decide([*recs[:8], recs[9]], Checks(date=DATES[8], version="1", drift_share=0.9), k1)["action"] == SUPPRESSED
    assert same["action"] == RETRAIN  # without the later record it would retrain


def test_performance_alarm_thresholds():
    ref = {"vol_qlike": 0.2, "ret_ic": 0.05}

    def alarm(live, reference=ref):
        v = PERF.check(Checks(date=DATES[0], version="1", live=live, reference=reference))
        return v.alarm, list(v.reasons)

    assert alarm({"vol_qlike": 0.29, "ret_ic": 0.0, "n_labels": 50}) == (False, [])
    bad, why = alarm({"vol_qlike": 0.31, "ret_ic": 0.0, "n_labels": 50})
    assert bad and "QLIKE" in why[0]
    bad, why = alarm({"vol_qlike": 0.2, "ret_ic": -0.11, "n_labels": 50, "n_eff": 6000})
    assert bad and "IC" in why[0]
    # the same drop on a small universe is within a day's noise (2 standard errors > 0.15)
    assert alarm({"vol_qlike": 0.2, "ret_ic": -0.11, "n_labels": 4000, "n_eff": 70}) == (False, [])
    assert alarm({"vol_qlike": 9.0, "ret_ic": 0.0, "n_labels": 5}) == (None, [])  # immature
    assert alarm({"vol_qlike": 9.0, "n_labels": 50}, None) == (None, [])  # no reference


def test_config_from_params_rejects_typos_and_bad_values():
    assert MonitorConfig.from_params({"consecutive": 3}).rule("drift").consecutive == 3
    assert MonitorConfig.from_params({"perf_consecutive": 4}).rule("perf").consecutive == 4
    with pytest.raises(ValueError, match="unknown monitor parameter"):
        MonitorConfig.from_params({"consecutve": 3})
    with pytest.raises(ValueError, match="cooldown_dates"):
        MonitorConfig(cooldown_dates=0)
    with pytest.raises(ValueError, match="share of features"):
        MonitorConfig.of(drift_share=1.5)
    with pytest.raises(ValueError, match="perf_consecutive must be >= 1"):
        MonitorConfig.of(perf_consecutive=0)
    with pytest.raises(ValueError, match="moved to the retrain: section"):
        MonitorConfig.from_params({"retrain_pipeline": "training-cpu"})


def test_params_yaml_monitor_section_is_valid():
    import yaml
    from pathlib import Path

    params = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())
    cfg = MonitorConfig.from_params(params.get("monitor"))
    assert cfg.rule("drift").consecutive >= 1 and 0 < cfg.rule("drift").drift_share <= 1
    assert [r.name for r in cfg.rules][:2] == ["drift", "perf"]


def test_history_roundtrip_and_update(tmp_path):
    lake = Lake(tmp_path.as_uri())
    assert load_history(lake, "hfcast") == []
    recs = _run([0.7, 0.7, 0.1])
    assert all(claim(lake, "hfcast", r) for r in recs)
    back = load_history(lake, "hfcast")
    assert [r["action"] for r in back] == [r["action"] for r in recs]
    update(lake, "hfcast", {**back[1], "trigger": {"status": "done"}})
    back = load_history(lake, "hfcast")
    assert len(back) == 3 and back[1]["trigger"] == {"status": "done"}
    assert len(list((tmp_path / "monitoring" / "hfcast" / "decisions").glob("*.json"))) == 3


def test_history_reads_the_legacy_jsonl_and_claims_once(tmp_path):
    import json

    from hfcast.monitoring.decision import claim, read_decision

    lake = Lake(tmp_path.as_uri())
    recs = _run([0.7, 0.7, 0.1])
    legacy = tmp_path / "monitoring" / "hfcast" / "decisions.jsonl"
    legacy.parent.mkdir(parents=True)
    legacy.write_text("".join(json.dumps(r, default=str) + "\n" for r in recs[:2]))
    assert claim(lake, "hfcast", recs[2]) is True
    assert claim(lake, "hfcast", {**recs[2], "action": "other"}) is False  # the date is decided already
    assert read_decision(lake, "hfcast", recs[2]["date"])["action"] == recs[2]["action"]
    assert [r["date"] for r in load_history(lake, "hfcast")] == [r["date"] for r in recs]


# --- retraining state and triggers (hfcast.monitoring.retraining) without a registry or a KFP server ----------

def _settings(tmp_path):
    from hfcast.config import get_settings

    return get_settings(env={"HFCAST_HOME": str(tmp_path / "home"), "HFCAST_LAKE": (tmp_path / "lake").as_uri()},
                        cwd=tmp_path)


def test_local_trigger_records_failure_and_never_raises(tmp_path):
    from hfcast.monitoring import retraining as T

    s = _settings(tmp_path)
    lake = Lake.from_settings(s)

    def broken(reason, dates):
        assert T.read_state(lake, "hfcast")["status"] == T.RUNNING  # marked running while it runs
        raise RuntimeError("boom")

    out = T.run_recorded(s, "hfcast", "drift", ["2024-01-02"], broken)
    assert out["status"] == T.FAILED and "boom" in out["error"] and "champion unchanged" in out["note"]
    assert T.read_state(lake, "hfcast")["status"] == T.FAILED
    assert T.running_state(lake, "hfcast", 24.0) is None
    ok = T.run_recorded(s, "hfcast", "drift", [], lambda r, d: {"status": "done", "new_version": 3, "promoted": False})
    assert ok["status"] == T.DONE and "v3 not promoted" in ok["note"]


def test_cluster_run_state_polling_and_stale_timeout(tmp_path):
    """A run started elsewhere (Kubeflow) stays "running" until its starter's poll says it ended,
    or until it is older than the timeout (then it is considered lost)."""
    from hfcast.monitoring import retraining as T

    lake = Lake(tmp_path.as_uri())

    class Starter:  # what pipelines.starters.KubeflowStarter does, over a fake cluster
        kind, state = "kubeflow", "RUNNING"

        def start(self, settings, model, reason, drifted_dates):
            return T.record_start(lake, model, kind=self.kind, run_id="abc", reason=reason, drifted_dates=drifted_dates)

        def poll(self, state):
            return {"status": T.DONE, "kfp_state": self.state} if self.state == "SUCCEEDED" else None

    c = Starter()
    assert isinstance(c, T.RetrainStarter) and isinstance(c, T.PollingStarter)
    out = c.start(None, "hfcast", "why", ["2024-01-02", "2024-01-03"])
    assert out["run_id"] == "abc" and T.read_state(lake, "hfcast")["drifted_dates"] == ["2024-01-02", "2024-01-03"]
    assert T.running_state(lake, "hfcast", 24.0, c)["run_id"] == "abc"
    assert T.running_state(lake, "hfcast", 0.0) is None  # older than the timeout: considered lost
    assert T.read_state(lake, "hfcast")["status"] == T.FAILED
    c.start(None, "hfcast", "why", [])
    c.state = "SUCCEEDED"
    assert T.running_state(lake, "hfcast", 24.0, c) is None and T.read_state(lake, "hfcast")["status"] == T.DONE


def test_load_starter_names(monkeypatch):
    from hfcast.lifecycle import RetrainHere, load_starter
    from hfcast.monitoring import retraining as T

    assert isinstance(load_starter("none"), T.RecordOnlyStarter)
    assert isinstance(load_starter("inprocess"), RetrainHere)
    with pytest.raises(ValueError, match="unknown retraining starter"):
        load_starter("no-such-starter")
