"""The retraining decision: a pure function over the decision history and today's checks.

Why a separate, pure module: the decision is where a monitor either wastes a cluster on
retraining every day or sleeps through a regime change, so the rule has no I/O and is tested over
whole sequences of dates (``tests/code/test_drift_decision.py``). The monitor (:mod:`hfcast.monitoring.drift`)
gathers the checks, calls :func:`decide`, and stores the record it returns; the decision log
(one object per date) is kept in the second half of this module, beside the record format it reads.

Rule (thresholds in params.yaml ``monitor:``):

* every alarm rule of :mod:`hfcast.monitoring.rules` judges the date: by default a **drift alarm**
  when the share of drifted features is >= ``drift_share``, and a **performance alarm** when live
  QLIKE > ``perf_qlike_ratio`` x the reference test QLIKE, or live IC < reference IC - ``perf_ic_drop``
  (only once labels have matured);
* retrain when one rule's alarm held on its K monitored dates in a row (today included:
  ``consecutive`` for drift, ``perf_consecutive`` for performance); streaks count only dates of
  the same model version (a new champion starts with a clean slate);
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
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from hfcast import provenance, storage
from hfcast.config import Settings, checked_section
from hfcast.contracts import finite
from hfcast.monitoring.checks import Checks
from hfcast.monitoring.rules import MonitorRule, Verdict, all_rules
from hfcast.registry import tracking
from hfcast.storage import Lake

log = logging.getLogger(__name__)

RETRAIN, NONE, SUPPRESSED = "retrain", "none", "suppressed"
EXPERIMENT = "hfcast-monitoring"
#: ``monitor:`` keys that moved to the ``retrain:`` section (hfcast.monitoring.retraining.RetrainTarget)
MOVED_TO_RETRAIN = {"kubeflow_host": "kubeflow_host", "kubeflow_namespace": "kubeflow_namespace",
                    "retrain_pipeline": "pipeline", "retrain_arch": "archs"}

__all__ = ["Checks", "MonitorConfig", "Verdict", "decide"]  # Checks is defined in hfcast.monitoring.checks


def _default_rules() -> tuple[MonitorRule, ...]:
    return tuple(cls() for cls in all_rules())


@dataclass(frozen=True)
class MonitorConfig:
    """The ``monitor:`` section of params.yaml (defaults calibrated on the simulator, see README):
    how the monitor measures, the cooldown, and one object per alarm rule with its thresholds."""

    SECTION: ClassVar[str] = "monitor"

    column_method: str = "wasserstein"  # Evidently per-column test (normed Wasserstein: robust at large n)
    column_threshold: float = 0.4       # per-column drift threshold of that test
    cooldown_dates: int = 10            # trading days between two retraining decisions
    current_rows: int = 5000            # rows of the date sampled for Evidently (seeded)
    reference_rows: int = 5000          # rows of the stored reference sampled for Evidently
    reference_sample_rows: int = 20000  # rows stored in reference.parquet by build_reference
    exclude_features: tuple[str, ...] = ("tod_sin", "tod_cos", "minutes_to_close", "bar_missing")
    retrain_timeout_hours: float = 24.0  # a "running" retraining older than this is considered lost
    seed: int = 0
    rules: tuple[MonitorRule, ...] = field(default_factory=_default_rules)  # every registered rule

    def __post_init__(self) -> None:
        if not 0.0 < float(self.column_threshold):
            raise ValueError(f"monitor.column_threshold must be > 0, got {self.column_threshold}")
        if int(self.cooldown_dates) < 1:
            raise ValueError(f"monitor.cooldown_dates must be >= 1, got {self.cooldown_dates}")

    def rule(self, name: str) -> MonitorRule:
        """The configured rule called ``name`` (``drift``, ``perf``, ...)."""
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(f"no monitor rule {name!r} in this configuration; it has {[r.name for r in self.rules]}")

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None) -> "MonitorConfig":
        """Build from params.yaml ``monitor:``; unknown keys are an error (a typo must not be ignored).

        The section is flat: the general keys above, then each rule's keys (its dataclass fields).
        """
        section = dict(section or {})
        moved = sorted(set(section) & set(MOVED_TO_RETRAIN))
        if moved:
            raise ValueError(f"monitor: {moved} moved to the retrain: section (as "
                             f"{[MOVED_TO_RETRAIN[k] for k in moved]}): the retraining target is not a threshold")
        own = {f.name for f in fields(cls)} - {"rules"}
        rule_classes = all_rules()
        owner: dict[str, str] = {}
        for rc in rule_classes:
            for key in rc.keys():
                if key in own or key in owner:
                    raise ValueError(f"monitor rule {rc.name!r} reads the key {key!r}, which "
                                     f"{owner.get(key, 'the monitor itself')} reads too: rename the rule's field")
                owner[key] = rc.name
        unknown = sorted(set(section) - own - set(owner))
        if unknown:
            raise ValueError(f"unknown monitor parameter(s) {unknown}; known: {sorted(own | set(owner))}")
        general = checked_section(cls, {k: v for k, v in section.items() if k in own}, "monitor parameter(s)")
        if "exclude_features" in general:
            general["exclude_features"] = tuple(general["exclude_features"] or ())
        rules = tuple(rc(**{k: section[k] for k in rc.keys() if k in section}) for rc in rule_classes)
        return cls(**general, rules=rules)

    @classmethod
    def of(cls, **flat: Any) -> "MonitorConfig":
        """``MonitorConfig.of(drift_share=0.3, cooldown_dates=5)``: flat keys as in params.yaml."""
        return cls.from_params(flat)


def evaluate(checks: Checks, cfg: MonitorConfig) -> dict[str, Verdict]:
    """Every rule's verdict on the date's checks, by rule name (for the date's summary)."""
    return {rule.name: rule.check(checks) for rule in cfg.rules}


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


def _touches(date: str, dates: Sequence[str]) -> bool:
    """Whether an alarm on ``date`` belongs to the drift episode ``dates``: inside its span, or the
    trading day right before it (the episode's monitor had not seen ``date`` decided yet: two
    monitors deciding dates out of order; today's streak ends at ``date``, so the two join)."""
    return _within(date, dates) or (bool(dates) and date < min(dates) and trading_days_between(date, min(dates)) <= 1)


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
    judged = []  # (rule, verdict, today's alarm streak: [] = no alarm)
    for rule in cfg.rules:
        verdict = rule.check(checks)
        alarm = verdict.alarm is True
        judged.append((rule, verdict, [*_streak(prior, f"{rule.name}_alarm", alarm), checks.date] if alarm else []))
    wants, notes = _alarm_texts(checks, judged)
    demote = _demotions(checks, judged)
    action, reasons = (_retrain_or_suppress(history, checks, cfg, running, wants) if wants else (NONE, notes))
    if demote and action != NONE:  # the demotion's words are among the notes, which are not the reasons then
        reasons = [*reasons, *dict.fromkeys(demote.values())]
    record: dict[str, Any] = {"id": uuid.uuid4().hex[:12], "date": checks.date, "version": str(checks.version),
                              "action": action, "reasons": reasons, "explanation": f"{action}: " + "; ".join(reasons)}
    for rule, verdict, dates in judged:
        record[f"{rule.name}_alarm"], record[f"{rule.name}_streak"] = verdict.alarm is True, len(dates)
    record.update(drifted_dates=sorted({d for rule, _, dates in judged if rule.action == "retrain" for d in dates}),
                  checks=checks.to_dict(), trigger=None, decided_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if demote:  # the confidences the monitor demotes on the version (hfcast.monitoring.drift._act)
        record["demote"] = demote
    return record


def _demotions(checks: Checks, judged: list[tuple[MonitorRule, Verdict, list[str]]]) -> dict[str, str]:
    """``{target: why}`` of the "demote" rules whose alarm held on their K dates in a row."""
    out: dict[str, str] = {}
    for rule, verdict, dates in judged:
        if rule.action == "demote" and len(dates) >= rule.consecutive:
            out.update(dict.fromkeys(rule.targets(checks), rule.message(checks, verdict, len(dates)) or rule.name))
    return out


def _alarm_texts(checks: Checks, judged: list[tuple[MonitorRule, Verdict, list[str]]]) -> tuple[list[str], list[str]]:
    """``(wants, notes)``: why today asks for a retraining (an alarm K dates in a row) and what
    was seen short of that, in rule order."""
    wants: list[str] = []
    notes: list[str] = []
    for rule, verdict, dates in judged:
        text = rule.message(checks, verdict, len(dates))
        if text is not None:
            asks = rule.action == "retrain" and dates and len(dates) >= rule.consecutive
            (wants if asks else notes).append(text)
    return wants, notes


def _retrain_or_suppress(history: Sequence[Mapping[str, Any]], checks: Checks, cfg: MonitorConfig,
                         running: Mapping[str, Any] | None, wants: list[str]) -> tuple[str, list[str]]:
    """``(action, reasons)`` once an alarm wants a retraining: suppressed when an earlier retraining
    covered this drift episode, within the cooldown, or while the monitor's retraining runs."""
    earlier = [r for r in history if r.get("action") == RETRAIN and str(r["date"]) < checks.date]
    last = max(earlier, key=lambda r: str(r["date"]), default=None)  # the latest retraining BEFORE today
    gap = trading_days_between(str(last["date"]), checks.date) if last else None
    covering = next((r for r in history if r.get("action") == RETRAIN and str(r["date"]) >= checks.date
                     and _touches(checks.date, r.get("drifted_dates") or [])), None)
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

def history_url(lake: Lake, model: str) -> str:
    """``<lake>/monitoring/<model>/decisions``: the folder with one JSON object per decided date."""
    return storage.join(lake.url, "monitoring", model, "decisions")


def legacy_history_url(lake: Lake, model: str) -> str:
    """The single-file log written before one object per date (read only)."""
    return storage.join(lake.url, "monitoring", model, "decisions.jsonl")


def decision_url(lake: Lake, model: str, date: str) -> str:
    return storage.join(history_url(lake, model), f"{date}.json")


def _dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(dict(record), default=_json_default, sort_keys=True)


def load_history(lake: Lake, model: str) -> list[dict[str, Any]]:
    """Decision records, one per date, oldest date first ([] when the monitor never ran)."""
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


def read_decision(lake: Lake, model: str, date: str) -> dict[str, Any] | None:
    url = decision_url(lake, model, date)
    if not storage.exists(url, lake.storage_options):
        return None
    return json.loads(storage.read_text(url, lake.storage_options))


def claim(lake: Lake, model: str, record: Mapping[str, Any]) -> bool:
    """Create the record of ``record['date']`` if no monitor has decided that date; True if created."""
    return storage.create_exclusive(decision_url(lake, model, str(record["date"])), _dumps(record).encode(),
                                    lake.storage_options)


def update(lake: Lake, model: str, record: Mapping[str, Any]) -> None:
    """Rewrite a record this monitor created (:func:`claim`); never call it for another's record."""
    storage.write_text(decision_url(lake, model, str(record["date"])), _dumps(record), lake.storage_options)


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


def record_metrics(record: Mapping[str, Any], rules: Sequence[MonitorRule] | None = None) -> dict[str, float]:
    """The finite metrics of a decision record: every rule's (:meth:`MonitorRule.metrics`) and ``retrain``."""
    values: dict[str, Any] = {}
    for rule in rules if rules is not None else _default_rules():
        values.update(rule.metrics(record))
    values["retrain"] = float(record.get("action") == RETRAIN)
    return {k: float(v) for k, v in values.items() if finite(v)}


def log_to_mlflow(settings: Settings, record: Mapping[str, Any], reports: tuple[str, Any] | None = None,
                  rules: Sequence[MonitorRule] | None = None) -> str:
    """One MLflow run per monitored date in the ``hfcast-monitoring`` experiment (tags + metrics).

    ``reports``: (folder URL, storage options) of that date's monitoring outputs; its Evidently
    HTML/JSON and summary are attached under ``evidently/`` so the run carries its evidence.
    Once per decision (tag :data:`DECISION_TAG`): a decision logged before is not logged again.
    ``rules``: whose metrics are logged (default: every registered rule).

    Returns:
        The run id.
    """
    from mlflow.entities import Metric, RunTag  # mlflow: imported when a run is logged

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in record_metrics(record, rules).items()]
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
