"""The retraining decision: a pure function over the decision history and today's checks.

Why a separate, pure module: the decision is where a monitor either wastes a cluster on
retraining every day or sleeps through a regime change, so it has no I/O and is tested over
whole sequences of dates (``tests/code/test_drift_decision.py``). The monitor (:mod:`hfcast.monitoring.drift`)
gathers the checks, calls :func:`decide`, and stores the record it returns.

Rule (thresholds in params.yaml ``monitor:``):

* a date is a **drift alarm** when the share of drifted features is >= ``drift_share``;
* a date is a **performance alarm** when live QLIKE > ``perf_qlike_ratio`` x the reference test
  QLIKE, or live IC < reference IC - ``perf_ic_drop`` (only once labels have matured);
* retrain when the drift alarm held on ``consecutive`` monitored dates in a row (today included), or
  the performance alarm on ``perf_consecutive`` dates in a row; streaks count only dates of the
  same model version (a new champion starts with a clean slate);
* but never when a retraining was decided less than ``cooldown_dates`` trading days BEFORE today
  (a later date's retraining never cools down an earlier date, except that a backfilled date
  whose alarm a later retraining already counted among its drifted dates is the same episode),
  and never while a retraining is running (the lease of :mod:`hfcast.monitoring.retraining`).

The history is kept per model as one object per decided date (:func:`history_url`), created
if absent, so concurrent monitors neither lose nor duplicate a record.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import numpy as np

from hfcast.config import checked_section
from hfcast.contracts import finite

log = logging.getLogger(__name__)

RETRAIN, NONE, SUPPRESSED = "retrain", "none", "suppressed"
EXPERIMENT = "hfcast-monitoring"
#: live scores beyond QLIKE and IC that the monitoring run also logs (see monitoring.reference.live_scores)
LIVE_EXTRA_METRICS = ("vol_qlike_har_tod", "vol_qlike_ratio_har_tod", "ret_coverage", "rv_coverage",
                      "rv_decile_ratio", "ret_decile_ratio")


@dataclass(frozen=True)
class MonitorConfig:
    """The ``monitor:`` section of params.yaml (defaults calibrated on the simulator, see README)."""

    drift_share: float = 0.3            # share of monitored features that must drift for a drift alarm
    column_method: str = "wasserstein"  # Evidently per-column test (normed Wasserstein: robust at large n)
    column_threshold: float = 0.4       # per-column drift threshold of that test
    consecutive: int = 2                # K: drift alarms in a row before retraining
    cooldown_dates: int = 10            # trading days between two retraining decisions
    perf_qlike_ratio: float = 1.5       # live vol QLIKE above this x the reference test QLIKE = degraded
    perf_ic_drop: float = 0.15          # live return IC below reference IC minus this = degraded
    perf_consecutive: int = 2           # performance alarms in a row before retraining
    min_labels: int = 500               # matured labels needed before live performance is scored
    current_rows: int = 5000            # rows of the date sampled for Evidently (seeded)
    reference_rows: int = 5000          # rows of the stored reference sampled for Evidently
    reference_sample_rows: int = 20000  # rows stored in reference.parquet by build_reference
    exclude_features: tuple[str, ...] = ("tod_sin", "tod_cos", "minutes_to_close", "bar_missing")
    retrain_timeout_hours: float = 24.0  # a "running" retraining older than this is considered lost
    seed: int = 0
    kubeflow_host: str | None = None     # KFP API URL for the Kubeflow starter (None = in-cluster default)
    kubeflow_namespace: str | None = None  # Kubeflow profile namespace of the Kubeflow starter (multi-user)
    retrain_pipeline: str = "training-gpu"  # which training pipeline a starter runs (names in pipelines/)
    retrain_arch: str | None = None      # architecture of the default local retrain (None = champion's)

    def __post_init__(self) -> None:
        for name in ("drift_share", "column_threshold"):
            if not 0.0 < float(getattr(self, name)):
                raise ValueError(f"monitor.{name} must be > 0, got {getattr(self, name)}")
        if self.drift_share > 1.0:
            raise ValueError(f"monitor.drift_share is a share of features (0, 1], got {self.drift_share}")
        for name in ("consecutive", "perf_consecutive", "cooldown_dates"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"monitor.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None) -> "MonitorConfig":
        """Build from params.yaml ``monitor:``; unknown keys are an error (a typo must not be ignored)."""
        section = checked_section(cls, section, "monitor parameter(s)")
        if "exclude_features" in section:
            section["exclude_features"] = tuple(section["exclude_features"] or ())
        return cls(**section)


@dataclass
class Checks:
    """What the monitor measured for one date (None = not measured, e.g. labels not matured)."""

    date: str
    version: str
    drift_share: float | None = None
    drifted_features: list[str] = field(default_factory=list)
    pred_drift_share: float | None = None
    drifted_predictions: list[str] = field(default_factory=list)
    live: dict[str, float] | None = None       # vol_qlike, ret_ic, n_labels... of the date (reference.live_scores)
    reference: dict[str, float] | None = None  # the reference spans' test scores
    perf_degraded: bool | None = None
    perf_reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def performance_alarm(live: Mapping[str, float] | None, reference: Mapping[str, float] | None,
                      cfg: MonitorConfig) -> tuple[bool | None, list[str]]:
    """Whether live scores are worse than the reference spans' test scores beyond the thresholds.

    Returns:
        (None when there is nothing to compare, else True/False; the reasons in words).
    """
    if not live or not reference or live.get("n_labels", 0) < cfg.min_labels:
        return None, []
    reasons = []
    q, rq = live.get("vol_qlike"), reference.get("vol_qlike")
    if finite(q) and finite(rq) and q > cfg.perf_qlike_ratio * rq:
        reasons.append(f"vol QLIKE {q:.4g} > {cfg.perf_qlike_ratio:g} x reference {rq:.4g}")
    ic, ric = live.get("ret_ic"), reference.get("ret_ic")
    # one day's IC is noisy: overlapping 60-minute returns leave about symbols x 6.5 independent
    # outcomes, so the drop must also exceed two standard errors of a day's IC (1 / sqrt(n_eff))
    drop = max(cfg.perf_ic_drop, 2.0 / np.sqrt(max(float(live.get("n_eff", live.get("n_labels", 0))) - 3.0, 1.0)))
    if finite(ic) and finite(ric) and ic < ric - drop:
        reasons.append(f"return IC {ic:.3f} < reference {ric:.3f} - {drop:.3g}")
    compared = (finite(q) and finite(rq)) or (finite(ic) and finite(ric))
    return (bool(reasons) if compared else None), reasons


def _latest_per_date(history: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for rec in history:  # later records (reruns) replace earlier ones of the same date
        out[str(rec["date"])] = rec
    return out


def _streak(prior: list[Mapping[str, Any]], key: str, today: bool) -> list[str]:
    """Dates of the run of ``key`` alarms that ends today (empty when today is no alarm)."""
    if not today:
        return []
    dates = []
    for rec in reversed(prior):
        if not rec.get(key):
            break
        dates.append(str(rec["date"]))
    return sorted(dates)


def _within(date: str, dates: Sequence[str]) -> bool:
    """Whether ``date`` falls in the span of a drift episode's dates (first..last, gaps included)."""
    return bool(dates) and min(dates) <= date <= max(dates)


def trading_days_between(a: str, b: str) -> int:
    """|trading days| from a to b (weekdays; holidays are not modelled, as in the simulator)."""
    lo, hi = sorted((a, b))
    return int(np.busday_count(lo, hi))


def decide(history: Sequence[Mapping[str, Any]], checks: Checks, cfg: MonitorConfig,
           running: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Decide whether today's checks call for a retraining.

    Args:
        history: earlier decision records of this model (any order, any version).
        checks: today's measurements.
        cfg: thresholds, K, cooldown.
        running: the retraining state when a retraining started by the monitor is still running
            (None otherwise).

    Returns:
        The decision record: ``action`` (retrain / none / suppressed), ``reasons`` and a one-line
        ``explanation``, the alarm flags and streaks, ``drifted_dates``, and today's checks.
    """
    by_date = _latest_per_date(history)
    prior = [by_date[d] for d in sorted(by_date) if d < checks.date
             and str(by_date[d].get("version")) == str(checks.version)]
    drift = checks.drift_share is not None and checks.drift_share >= cfg.drift_share
    perf = checks.perf_degraded is True
    drift_dates = [*_streak(prior, "drift_alarm", drift), checks.date] if drift else []
    perf_dates = [*_streak(prior, "perf_alarm", perf), checks.date] if perf else []
    wants, notes = _alarm_texts(checks, cfg, drift_dates, perf_dates)
    action, reasons = (_retrain_or_suppress(history, checks, cfg, running, wants) if wants else (NONE, notes))
    return {
        "id": uuid.uuid4().hex[:12], "date": checks.date, "version": str(checks.version), "action": action,
        "reasons": reasons, "explanation": f"{action}: " + "; ".join(reasons),
        "drift_alarm": drift, "drift_streak": len(drift_dates), "perf_alarm": perf, "perf_streak": len(perf_dates),
        "drifted_dates": sorted(set(drift_dates) | set(perf_dates)), "checks": checks.to_dict(),
        "trigger": None, "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _alarm_texts(checks: Checks, cfg: MonitorConfig, drift_dates: list[str], perf_dates: list[str]
                 ) -> tuple[list[str], list[str]]:
    """``(wants, notes)``: why today asks for a retraining (an alarm K dates in a row) and what
    was seen short of that. ``drift_dates`` / ``perf_dates``: today's alarm streak ([] = no alarm)."""
    wants: list[str] = []
    notes: list[str] = []
    if drift_dates and len(drift_dates) >= cfg.consecutive:
        wants.append(f"feature drift on {len(drift_dates)} consecutive date(s) >= K={cfg.consecutive} "
                     f"(share {checks.drift_share:.2f} >= {cfg.drift_share:g} today; "
                     f"e.g. {', '.join(checks.drifted_features[:5])})")
    elif drift_dates:
        notes.append(f"feature drift {checks.drift_share:.2f} >= {cfg.drift_share:g}, "
                     f"{len(drift_dates)}/{cfg.consecutive} consecutive date(s)")
    elif checks.drift_share is not None:
        notes.append(f"feature drift share {checks.drift_share:.2f} < {cfg.drift_share:g}")
    if perf_dates and len(perf_dates) >= cfg.perf_consecutive:
        wants.append(f"performance degraded on {len(perf_dates)} consecutive date(s): {'; '.join(checks.perf_reasons)}")
    elif perf_dates:
        notes.append(f"performance degraded ({'; '.join(checks.perf_reasons)}), "
                     f"{len(perf_dates)}/{cfg.perf_consecutive} consecutive date(s)")
    elif checks.perf_degraded is None:
        notes.append("live performance not scored (labels not matured or no reference scores)")
    else:
        notes.append("live performance within thresholds")
    return wants, notes


def _retrain_or_suppress(history: Sequence[Mapping[str, Any]], checks: Checks, cfg: MonitorConfig,
                         running: Mapping[str, Any] | None, wants: list[str]) -> tuple[str, list[str]]:
    """``(action, reasons)`` once an alarm wants a retraining: suppressed when an earlier retraining
    covered this drift episode, within the cooldown, or while the monitor's retraining runs."""
    earlier = [r for r in history if r.get("action") == RETRAIN and str(r["date"]) < checks.date]
    last = max(earlier, key=lambda r: str(r["date"]), default=None)  # the latest retraining BEFORE today
    gap = trading_days_between(str(last["date"]), checks.date) if last else None
    covering = next((r for r in history if r.get("action") == RETRAIN and str(r["date"]) >= checks.date
                     and _within(checks.date, r.get("drifted_dates") or [])), None)
    if covering is not None:  # a backfill: a later date's retraining already answered this alarm
        return SUPPRESSED, [*wants, f"same drift episode: the retraining decided for {covering['date']} covered "
                                    f"{checks.date} (drifted dates {', '.join(covering['drifted_dates'])})"]
    if last is not None and gap < cfg.cooldown_dates:
        return SUPPRESSED, [*wants, f"cooldown: a retraining was decided for {last['date']} ({gap} trading day(s) "
                                    f"away < cooldown {cfg.cooldown_dates})"]
    if running is not None:
        return SUPPRESSED, [*wants, f"a retraining started by the monitor is still running (run {running.get('run_id')}, "
                                    f"started {running.get('started_at')})"]
    return RETRAIN, wants


# --- the decision log (I/O; kept beside the pure rule so both read the same record format) -----
#
# One object per decided date, ``<lake>/monitoring/<model>/decisions/<date>.json``, created with
# create-if-absent (:func:`hfcast.storage.create_exclusive`): two monitors deciding the same date
# cannot both write it (the second reads the first's record), and no monitor ever rewrites a
# record of another date from a stale copy (the old single-file ``decisions.jsonl`` lost records
# that way). Only the monitor that created a record updates it afterwards (trigger result, MLflow
# run id). The old ``decisions.jsonl`` is still read (its dates yield to the new objects).

def history_url(lake: Any, model: str) -> str:
    """``<lake>/monitoring/<model>/decisions``: the folder with one JSON object per decided date."""
    from hfcast.storage import join

    return join(lake.url, "monitoring", model, "decisions")


def legacy_history_url(lake: Any, model: str) -> str:
    """The single-file log written before one object per date (read only)."""
    from hfcast.storage import join

    return join(lake.url, "monitoring", model, "decisions.jsonl")


def decision_url(lake: Any, model: str, date: str) -> str:
    from hfcast.storage import join

    return join(history_url(lake, model), f"{date}.json")


def _dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(dict(record), default=_json_default, sort_keys=True)


def load_history(lake: Any, model: str) -> list[dict[str, Any]]:
    """Decision records, one per date, oldest date first ([] when the monitor never ran)."""
    from hfcast import storage

    by_date: dict[str, dict[str, Any]] = {}
    legacy = legacy_history_url(lake, model)
    if storage.exists(legacy, lake.storage_options):
        for line in storage.read_text(legacy, lake.storage_options).splitlines():
            if line.strip():
                rec = json.loads(line)
                by_date[str(rec["date"])] = rec
    folder = history_url(lake, model)
    for name in storage.listdir(folder, lake.storage_options):
        if name.endswith(".json"):
            try:
                rec = json.loads(storage.read_text(storage.join(folder, name), lake.storage_options))
            except FileNotFoundError:  # listed, then removed by a test cleanup: not a record
                continue
            by_date[str(rec["date"])] = rec
    return [by_date[d] for d in sorted(by_date)]


def read_decision(lake: Any, model: str, date: str) -> dict[str, Any] | None:
    from hfcast import storage

    url = decision_url(lake, model, date)
    if not storage.exists(url, lake.storage_options):
        return None
    return json.loads(storage.read_text(url, lake.storage_options))


def claim(lake: Any, model: str, record: Mapping[str, Any]) -> bool:
    """Create the record of ``record['date']`` if no monitor has decided that date; True if created."""
    from hfcast import storage

    return storage.create_exclusive(decision_url(lake, model, str(record["date"])), _dumps(record).encode(),
                                    lake.storage_options)


def update(lake: Any, model: str, record: Mapping[str, Any]) -> None:
    """Rewrite a record this monitor created (:func:`claim`); never call it for another's record."""
    from hfcast import storage

    storage.write_text(decision_url(lake, model, str(record["date"])), _dumps(record), lake.storage_options)


def save_history(lake: Any, model: str, records: Sequence[Mapping[str, Any]]) -> None:
    """Write records (one object per date, overwriting): imports, migrations and tests, not monitors."""
    for rec in _latest_per_date(records).values():
        update(lake, model, rec)


def upsert(records: list[dict[str, Any]], record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The history with ``record`` replacing the one of the same id (or appended)."""
    out = [dict(r) for r in records if r.get("id") != record["id"]]
    out.append(dict(record))
    return out


def trigger_outcome(trigger: Mapping[str, Any] | None) -> str:
    """What happened to a retraining, in words: started, promoted vN, rejected (the gate's reasons), failed (error)."""
    t = dict(trigger or {})
    status = str(t.get("status") or "")
    if not t:
        return ""
    if status == "failed":
        return f"failed: {t.get('error')}"
    if status == "done" and t.get("promoted"):
        return f"promoted v{t.get('new_version')}"
    if status == "done":
        return f"rejected v{t.get('new_version')}: {t.get('gate')}"
    return f"{t.get('kind', '')} {status or 'started'} {t.get('run_id') or ''}".strip()


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    return str(o)


def _attach_reports(client: Any, run_id: str, folder: str, storage_options: Any) -> None:
    """Copy the date's report files (local or S3) into the run's ``evidently/`` artifacts."""
    import os
    import tempfile

    from hfcast import storage

    with tempfile.TemporaryDirectory(prefix="hfcast-mon-") as tmp:
        for fname in ("features_drift.html", "features_drift.json", "predictions_drift.html",
                      "predictions_drift.json", "summary.json"):
            url = storage.join(folder, fname)
            if storage.exists(url, storage_options):
                path = os.path.join(tmp, fname)
                with open(path, "wb") as fh:
                    fh.write(storage.read_bytes(url, storage_options))
                client.log_artifact(run_id, path, "evidently")


DECISION_TAG = "hfcast.decision_id"


def _decision_run(client: Any, exp_id: str, decision_id: str) -> str | None:
    """The FINISHED monitoring run of this decision, if one was logged; an unfinished one (its process
    was killed while logging) is closed as FAILED, with the reason, so that a new one replaces it."""
    if not decision_id:
        return None
    found = None
    for run in client.search_runs([exp_id], f"tags.`{DECISION_TAG}` = '{decision_id}'"):
        if run.info.status == "FINISHED":
            found = run.info.run_id
        elif run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "hfcast.interrupted", "interrupted: the monitor died while logging")
            client.set_terminated(run.info.run_id, "FAILED")
    return found


def log_to_mlflow(settings: Any, record: Mapping[str, Any], reports: tuple[str, Any] | None = None) -> str:
    """One MLflow run per monitored date in the ``hfcast-monitoring`` experiment (tags + metrics).

    ``reports``: (folder URL, storage options) of that date's monitoring outputs; its Evidently
    HTML/JSON and summary are attached under ``evidently/`` so the run carries its evidence.
    Once per decision (tag :data:`DECISION_TAG`): a decision logged before is not logged again.

    Returns:
        The run id.
    """
    import time

    from mlflow.entities import Metric, RunTag

    from hfcast import provenance
    from hfcast.registry import tracking

    checks = record.get("checks") or {}
    live = checks.get("live") or {}
    values = {"drift_share": checks.get("drift_share"), "pred_drift_share": checks.get("pred_drift_share"),
              "n_drifted_features": len(checks.get("drifted_features") or []),
              "live_vol_qlike": live.get("vol_qlike"), "live_ret_ic": live.get("ret_ic"),
              "drift_streak": record.get("drift_streak"), "retrain": float(record.get("action") == RETRAIN),
              **{f"live_{k}": live.get(k) for k in LIVE_EXTRA_METRICS}}
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if finite(v)]
    trig = record.get("trigger") or {}
    tags = {"date": record["date"], "model_version": str(record.get("version")), "action": record["action"],
            "explanation": record.get("explanation", "")[:4900], "drifted_dates": ",".join(record.get("drifted_dates", [])),
            "trigger.kind": str(trig.get("kind", "")), "trigger.status": str(trig.get("status", "")),
            "trigger.run_id": str(trig.get("run_id", "")), "hfcast.model_name": settings.model_name,
            **provenance.run_tags()}
    with tracking(settings) as t:
        exp = t.client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            loc = (t.home / "mlartifacts").resolve().as_uri() if t.uri.startswith(("sqlite:", "file:")) else None
            exp_id = t.client.create_experiment(EXPERIMENT, artifact_location=loc,
                                                tags={"mlflow.experimentKind": "custom_model_development"})
        else:
            exp_id = exp.experiment_id
        done = _decision_run(t.client, exp_id, str(record.get("id", "")))
        if done is not None:  # logged by a run of this process's predecessor, killed before it said so
            return done
        name = f"monitor {record['date']} v{record.get('version')}: {record['action']}"
        run = t.client.create_run(exp_id, run_name=name, tags={DECISION_TAG: str(record.get("id", ""))})
        t.client.log_batch(run.info.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        if reports is not None:
            _attach_reports(t.client, run.info.run_id, *reports)
        t.client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
