"""The monitor: one date against what the champion learned from, then the retraining decision.

For a date D and a model version the monitor

1. loads the version's **reference** (``<lake>/monitoring/<model>/<version>/reference.parquet``:
   sampled training-span feature rows with the model's predictions on them, and
   ``reference.json`` with the reference spans' test scores), built once by
   :func:`hfcast.monitoring.reference.build_reference`;
2. runs **Evidently** ``DataDriftPreset`` (per-column tests) on the features of D and on the
   predictions of D (the batch CSV), each on a seeded sample (cost is dominated by Evidently's
   per-column rendering, not by the rows: 50k rows x 59 columns took about 10 s), and scores
   **live performance** once
   D's labels have matured in the features partition: vol QLIKE and its ratio to the floor
   ``har_tod`` (fitted on the dates before D), return IC, 80% interval coverage and the
   confidence decile ratios (:func:`hfcast.monitoring.reference.live_scores`);
3. writes ``features_drift.html/.json``, ``predictions_drift.html/.json`` and ``summary.json`` under
   ``<lake>/monitoring/<model>/<version>/date=D/``;
4. decides (:func:`hfcast.monitoring.decision.decide`), starts a retraining through the starter it is
   given (:mod:`hfcast.monitoring.retraining`), and records the
   decision in ``decisions/<date>.json`` and in the ``hfcast-monitoring`` MLflow experiment.

Why Evidently's normed Wasserstein per column (``monitor.column_method``): a day holds thousands
of autocorrelated rows, so p-value tests (KS) flag every column on every day; a distance with a
threshold measures *how far* the distribution moved. Thresholds were calibrated on the simulator.
"""

from __future__ import annotations

import html as H
import io
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from hfcast import journal, storage
from hfcast.config import Settings
from hfcast.contracts import LOOKBACK
from hfcast.data.schema import minute_of_session
from hfcast.monitoring import decision as D
from hfcast.monitoring.checks import Checks, DayData
from hfcast.monitoring.decision import MonitorConfig, evaluate
from hfcast.monitoring.retraining import RetrainStarter
from hfcast.monitoring import retraining as R
from hfcast.monitoring.reference import floor_scores, live_scores, load_reference, reference_from_registry, reference_urls
from hfcast.registry import demote_confidences, parse_ref, resolve
from hfcast.storage import Lake

log = logging.getLogger(__name__)

PRED_DRIFT_COLUMNS = ("ret_60m_pred", "rv_10m_pred", "ret_60m_conf", "rv_10m_conf")


def report_title(about: Mapping[str, Any]) -> str:
    """"feature drift 2024-02-05, hfcast v3 vs reference 2024-01-02..2024-01-19": what a report is about."""
    what = about.get("kind", "drift")
    ref = about.get("reference_span") or "?"
    return (f"{what} {about.get('date', '?')}, {about.get('model', 'hfcast')} v{about.get('model_version', '?')} "
            f"vs reference {ref}")


def _titled_html(path: str, title: str, about: Mapping[str, Any]) -> None:
    """Evidently's HTML carries no title of its own: put ours in <title> and a heading on top."""
    text = Path(path).read_text(encoding="utf-8")
    meta = " &middot; ".join(f"{H.escape(str(k))}: {H.escape(str(v))}" for k, v in about.items())
    head = (f'<div style="font-family:sans-serif;padding:8px 16px"><h2 style="margin:4px 0">{H.escape(title)}</h2>'
            f'<div style="color:#555;font-size:13px">{meta}</div></div>')
    # only in the document's own <head>: Evidently's inlined library holds an SVG <title> too, and
    # rewriting that one made every page's 7 MB library unique (the report shares one copy)
    cut = text.find("</head>")
    cut = cut if cut >= 0 else 0
    top = text[:cut]
    top = (re.sub(r"<title>.*?</title>", lambda m: f"<title>{H.escape(title)}</title>", top, count=1, flags=re.S)
           if "<title>" in top else top.replace("<head>", f"<head><title>{H.escape(title)}</title>", 1))
    text = top + re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + head, text[cut:], count=1)
    Path(path).write_text(text, encoding="utf-8")


def evidently_drift(current: pd.DataFrame, reference: pd.DataFrame, columns: Sequence[str], cfg: MonitorConfig,
                    html_url: str, json_url: str, storage_options: dict | None = None,
                    about: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run Evidently's DataDriftPreset (current FIRST), save HTML + JSON, return the parsed result.

    Evidently 0.7 has no boolean dataset-drift field: the share is the ``DriftedColumnsCount``
    metric's value, and the drifted columns are the failed per-column ``ValueDrift`` tests.
    ``about`` (date, model, model_version, reference_span, kind) names the report: its title and
    Evidently metadata, so a report opened on its own says what it is about.
    """
    from evidently import Report  # evidently: about a second to import, loaded when a report is made
    from evidently.presets import DataDriftPreset

    current, reference, cols, constant = _drift_frames(current, reference, columns)
    if not cols:
        raise ValueError(f"no column with a range to compare for drift (constant or empty: {constant})")
    preset = DataDriftPreset(columns=cols, drift_share=cfg.rule("drift").drift_share, num_method=cfg.column_method,
                             num_threshold=cfg.column_threshold)
    t0 = time.perf_counter()
    about = {k: str(v) for k, v in (about or {}).items()}
    title = report_title(about) if about else "hfcast drift"
    snap = Report([preset], include_tests=True, metadata=about, tags=["hfcast", about.get("kind", "drift")]).run(
        current, reference, name=title)
    seconds = time.perf_counter() - t0
    doc = snap.dict()
    share = next(m["value"]["share"] for m in doc["metrics"] if m["metric_name"].startswith("DriftedColumnsCount"))
    scores = {m["config"]["column"]: float(m["value"]) for m in doc["metrics"]
              if m["config"].get("type", "").endswith("ValueDrift") and m["value"] is not None}
    drifted = [t["metric_config"]["params"]["column"] for t in doc.get("tests", [])
               if t.get("status") == "FAIL" and "column" in t["metric_config"]["params"]]
    with tempfile.TemporaryDirectory(prefix="hfcast-drift-") as tmp:
        for url, save in ((html_url, snap.save_html), (json_url, snap.save_json)):
            path = os.path.join(tmp, url.rsplit("/", 1)[-1])
            save(path)
            if path.endswith(".html"):
                _titled_html(path, title, about)
            else:  # Evidently's JSON holds only the metrics: say what they are about beside them
                with open(path, encoding="utf-8") as fh:
                    doc = json.load(fh)
                with open(path, "w", encoding="utf-8") as fh:
                    json.dump({"title": title, "about": about, **doc}, fh)
            with open(path, "rb") as fh:
                storage.write_bytes(url, fh.read(), storage_options)
    drifted.sort(key=lambda c: -scores.get(c, 0.0))
    return {"share": float(share), "drifted": drifted, "n_columns": len(cols), "scores": scores,
            "method": cfg.column_method, "threshold": cfg.column_threshold, "seconds": round(seconds, 2),
            "constant_columns": constant,
            "rows": {"current": len(current), "reference": len(reference)}}


def _drift_frames(current: pd.DataFrame, reference: pd.DataFrame, columns: Sequence[str]):
    """Finite values only, and only columns with a range: a column that is constant in both frames
    cannot drift, and Evidently cannot bin it (it fails on a zero data range)."""
    cur = current[list(columns)].replace([np.inf, -np.inf], np.nan)
    ref = reference[list(columns)].replace([np.inf, -np.inf], np.nan)
    both = pd.concat([cur, ref], ignore_index=True)
    lo, hi = both.min(), both.max()
    keep = [c for c in columns if pd.notna(lo[c]) and hi[c] > lo[c]]
    constant = sorted(set(columns) - set(keep))
    if constant:
        log.info("drift: skipping %d constant or empty column(s): %s", len(constant), constant)
    cur, ref = cur[keep].copy(), ref[keep].copy()
    for frame in (cur, ref):
        # a range of a few ulps inside one frame makes numpy's histogram fail ("cannot create
        # finite-sized bins"): such a column is constant for all purposes, so make it exactly so
        f_lo, f_hi = frame.min(), frame.max()
        scale = np.maximum(np.abs(f_lo), np.abs(f_hi)).fillna(0.0) + 1e-300
        for c in [c for c in keep if pd.notna(f_lo[c]) and (f_hi[c] - f_lo[c]) <= 1e-9 * scale[c]]:
            frame[c] = frame[c].where(frame[c].isna(), float(frame[c].median()))
    return cur, ref, keep, constant


def _sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return df.sample(n, random_state=seed) if len(df) > n else df


def check_date(settings: Settings, date: str, model: str, version: str, cfg: MonitorConfig) -> Checks:
    """Feature drift, prediction drift, live performance and each rule's own measurements of one
    date; writes the reports and every rule's verdict (``summary.json``)."""
    lake = Lake.from_settings(settings)
    ref, ref_doc = load_reference(lake, model, version)
    out = lake.monitoring(model, version, date)
    features = [f for f in ref_doc["features"] if f not in cfg.exclude_features]
    if not lake.exists("features", date):
        raise FileNotFoundError(f"no features partition for {date} in {lake.url}: run `hfcast featurize` first")
    cur = lake.read("features", date, ["symbol", "ts", *features, "ret_60m", "rv_10m"])
    # the rows a full window ends on, as in the reference
    cur = cur[minute_of_session(cur["ts"], settings.market) >= LOOKBACK - 1]
    span = f"{ref_doc['train_dates'][0]}..{ref_doc['train_dates'][-1]}" if ref_doc.get("train_dates") else "?"
    about = {"date": date, "model": model, "model_version": str(version), "reference_span": span}
    fd = evidently_drift(_sample(cur, cfg.current_rows, cfg.seed), _sample(ref, cfg.reference_rows, cfg.seed),
                         features, cfg, storage.join(out, "features_drift.html"),
                         storage.join(out, "features_drift.json"), lake.storage_options,
                         about={**about, "kind": "feature drift"})
    checks = Checks(date=date, version=str(version), drift_share=fd["share"], drifted_features=fd["drifted"],
                    reference=ref_doc.get("test_scores") or None)
    pred_url = lake.predictions(model, version, date)
    pdrift: dict[str, Any] = {"status": "missing", "url": pred_url}
    pred = joined = None
    if storage.exists(pred_url, lake.storage_options):
        pred = pd.read_csv(io.BytesIO(storage.read_bytes(pred_url, lake.storage_options)))
        pred["ts"] = pd.to_datetime(pred["ts"], utc=True).astype(cur["ts"].dtype)
        pred = pred[pred["ret_60m_pred"].notna()]
        pdrift = evidently_drift(_sample(pred, cfg.current_rows, cfg.seed), _sample(ref, cfg.reference_rows, cfg.seed),
                                 PRED_DRIFT_COLUMNS, cfg, storage.join(out, "predictions_drift.html"),
                                 storage.join(out, "predictions_drift.json"), lake.storage_options,
                                 about={**about, "kind": "prediction drift"})
        checks.pred_drift_share, checks.drifted_predictions = pdrift["share"], pdrift["drifted"]
        joined = pred.merge(cur[["symbol", "ts", "ret_60m", "rv_10m"]], on=["symbol", "ts"], how="inner")
        checks.live = {**live_scores(joined), **floor_scores(lake, date, joined)}
    else:
        log.warning("%s: no prediction CSV at %s: prediction drift and live performance skipped", date, pred_url)
    day = DayData(date=date, model=model, version=str(version), lake=lake, features=cur, reference=ref,
                  reference_doc=ref_doc, predictions=pred, joined=joined)
    for rule in cfg.rules:
        measured = rule.measure(day)
        if measured:
            checks.measures[rule.name] = dict(measured)
    summary = {"date": date, "model": model, "version": str(version), "features_drift": fd,
               "predictions_drift": pdrift, "live": checks.live, "reference_scores": checks.reference,
               "measures": checks.measures,
               "alarms": {name: v.to_dict() for name, v in evaluate(checks, cfg).items()},
               "reference_train_dates": [ref_doc["train_dates"][0], ref_doc["train_dates"][-1]]}
    storage.write_text(storage.join(out, "summary.json"), json.dumps(summary, indent=1, default=float),
                       lake.storage_options)
    return checks


def resolve_model(settings: Settings, ref: str) -> tuple[str, str]:
    """(name, version) for "name/version" (no registry needed) or an alias such as "hfcast@champion"."""
    name, version, alias = parse_ref(ref, settings.model_name)
    if version is not None:
        return name, version
    mv = resolve(settings, ref)
    return str(mv.name), str(mv.version)


def run_monitor(settings: Settings, date: str, model: str = "hfcast@champion", *, starter: RetrainStarter,
                log_mlflow: bool = True, cfg: MonitorConfig | None = None, checks: Checks | None = None,
                rerun: bool = False) -> dict[str, Any]:
    """Monitor one date and act on the decision (the function behind ``hfcast monitor run``).

    Safe with other monitors running at the same time (see :mod:`hfcast.monitoring.decision`):
    the date's record is created if absent (a date decided by another monitor returns that
    monitor's record), and a retraining needs the lease of
    :func:`hfcast.monitoring.retraining.acquire_lease`, under which the decision is taken again on
    the fresh log, so one drift episode starts one retraining.

    Args:
        date: the date to check (its features partition and, when present, its prediction CSV).
        model: registry reference (``hfcast@champion``) or ``name/version`` (the version that predicted it).
        starter: what starts a retraining (:class:`hfcast.monitoring.retraining.RetrainStarter`, e.g.
            :class:`hfcast.lifecycle.RetrainHere`); given by the caller, so the monitor does not
            import the training; :class:`~hfcast.monitoring.retraining.RecordOnlyStarter` decides
            and records only.
        log_mlflow: also record the decision as a run in the ``hfcast-monitoring`` experiment.
        checks: measurements already taken (tests); None = :func:`check_date`.
        rerun: replace the date's record when it was decided before (a deliberate re-check by one
            operator; not for monitors running at the same time on the same date).

    Returns:
        The decision record (as stored in ``decisions/<date>.json``).
    """
    cfg = cfg or settings.section(MonitorConfig)
    date = pd.Timestamp(date).date().isoformat()
    name, version = resolve_model(settings, model)
    lake = Lake.from_settings(settings)
    if checks is None:
        checks = _check_with_reference(settings, lake, date, name, version, cfg)
    with journal.step("decide") as step:
        held = None if rerun else _lease_holders_record(lake, name, date)
        if held is not None:  # the monitor holding the retraining lease for this date decided it
            record, lease, claimed = held, None, False
        else:
            record, lease = _decide_with_lease(lake, name, checks, cfg, starter)
            claimed = D.claim(lake, name, record)
        if not claimed and rerun:
            D.update(lake, name, record)
            claimed = True
        step.update(action=record["action"], claimed=claimed)
    if not claimed:
        if lease is not None:
            R.release_lease(lake, name, lease)
        log.info("%s %s: already decided by another monitor; keeping its record", date, name)
        return D.read_decision(lake, name, date) or record
    return _act(settings, lake, name, record, lease, starter, log_mlflow)


def complete_decision(settings: Settings, record: dict[str, Any], starter: RetrainStarter, log_mlflow: bool = True,
                      cfg: MonitorConfig | None = None) -> dict[str, Any]:
    """Finish a recorded decision whose process died before acting on it; it is never decided again.

    A retraining recorded as ``starting`` is started (the retraining itself resumes from the
    registry, :func:`hfcast.lifecycle.retrain`); a record without its MLflow run gets one. Only for
    the single writer of a lake (a replay): the retraining lease of that date, held by the dead
    process, is taken over.
    """
    cfg = cfg or settings.section(MonitorConfig)
    lake = Lake.from_settings(settings)
    name, date = str(record["model"]), str(record["date"])
    lease = None
    if record["action"] == D.RETRAIN and (record.get("trigger") or {}).get("status") == "starting":
        log.warning("%s %s: resuming the retraining decided before an interruption", date, name)
        lease = R.take_over_lease(lake, name, date, cfg.retrain_timeout_hours)
        if lease is None:
            held = R.lease_holder(lake, name) or {}
            raise RuntimeError(f"{date}: cannot resume its retraining: the lease is held for {held.get('date')} "
                               f"since {held.get('acquired_at')}")
    return _act(settings, lake, name, record, lease, starter, log_mlflow and not record.get("mlflow_run_id"))


def _act(settings: Settings, lake: Lake, name: str, record: dict[str, Any], lease: Any, starter: RetrainStarter,
         log_mlflow: bool) -> dict[str, Any]:
    """What follows a claimed decision: the confidence flags it demotes, the retraining it started
    (with ``lease``), its MLflow run."""
    if record.get("demote"):
        demote_confidences(settings, name, record["version"], record["demote"])
    if lease is not None:
        _start_retraining(settings, lake, name, record, lease, starter)
    if log_mlflow:
        record["mlflow_run_id"] = D.log_to_mlflow(settings, record, reports=(
            lake.monitoring(name, record["version"], record["date"]), lake.storage_options))
        D.update(lake, name, record)
    log.info("%s %s v%s: %s", record["date"], name, record["version"], record["explanation"])
    return record


def _check_with_reference(settings: Settings, lake: Lake, date: str, name: str, version: str,
                          cfg: MonitorConfig) -> Checks:
    """:func:`check_date`, after building the version's reference from its registry run if it has none."""
    if not storage.exists(reference_urls(lake, name, version)[1], lake.storage_options):
        log.info("no reference for %s v%s yet: building it from the registry run", name, version)
        reference_from_registry(settings, f"{name}/{version}", cfg)
    return check_date(settings, date, name, version, cfg)


def _start_retraining(settings: Settings, lake: Lake, name: str, record: dict[str, Any], lease: Any,
                      starter: RetrainStarter) -> None:
    """Start the retraining the claimed ``record`` decided (the lease is released whatever happens)
    and store what the starter answered in the record."""
    try:
        record["trigger"] = starter.start(settings, name, "; ".join(record["reasons"]), record["drifted_dates"])
    finally:
        R.release_lease(lake, name, lease)
    if record["trigger"].get("note"):
        record["explanation"] += f" -> {record['trigger']['note']}"
    D.update(lake, name, record)


#: how long a monitor waits for the record of a date whose retraining lease another monitor holds
LEASE_RECORD_WAIT_S = 30.0


def _lease_holders_record(lake: Lake, name: str, date: str, wait_s: float = LEASE_RECORD_WAIT_S
                          ) -> dict[str, Any] | None:
    """The record of ``date`` written by the monitor that holds the retraining lease FOR ``date``
    (waiting up to ``wait_s`` for it), or None when no monitor holds the lease for that date.

    Why: the lease holder takes the lease, decides again on a fresh log, then records the date. A
    second monitor deciding the same date in that moment saw "a retraining is running" and recorded
    the date as suppressed first; the holder's record then lost the create-if-absent, so the drift
    episode ended with no retraining at all (1 trial in 20 of tests/integration/test_decision_race.py
    under load). The date is the holder's to record. A holder that died between its lease and its
    record leaves the date to this monitor after ``wait_s`` (decided as before)."""
    lease = R.lease_holder(lake, name)
    if lease is None or str(lease.get("date")) != date:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        record = D.read_decision(lake, name, date)
        if record is not None or time.monotonic() >= deadline:
            return record
        time.sleep(0.05)


def _decide_with_lease(lake: Lake, name: str, checks: Checks, cfg: MonitorConfig, starter: RetrainStarter):
    """(record, lease): the decision on the log of earlier dates; a retraining only with the lease held.

    The decision is taken again once the lease is held, on a fresh read of the log: a retraining
    that another monitor finished meanwhile is then on record and cools this one down.
    """
    def decide_now(running: Any) -> dict[str, Any]:
        record = D.decide(D.load_history(lake, name), checks, cfg, running)
        record["model"] = name
        return record

    running = R.running_state(lake, name, cfg.retrain_timeout_hours, starter) or R.lease_holder(lake, name)
    record = decide_now(running)
    if record["action"] != D.RETRAIN:
        return record, None
    lease = R.acquire_lease(lake, name, checks.date, cfg.retrain_timeout_hours)
    if lease is None:
        return decide_now(R.lease_holder(lake, name) or {"run_id": "unknown (lease held)", "started_at": "?"}), None
    record = decide_now(R.running_state(lake, name, cfg.retrain_timeout_hours, starter))
    if record["action"] != D.RETRAIN:
        R.release_lease(lake, name, lease)
        return record, None
    record["trigger"] = {"kind": starter.kind, "status": "starting"}
    return record, lease


def decide_date(settings: Settings, date: str = "", model: str = "hfcast@champion") -> dict[str, Any]:
    """The monitoring pipeline's step: monitor ``date`` ('' = the lake's last features date) for
    ``model`` and record the decision without starting anything (the pipeline starts a retraining
    in a step of its own).

    Returns:
        ``{"record", "retrain": bool, "html": the feature drift report's bytes, "metrics": the record's
        finite metrics (every rule's), "metadata": date, model, version, action, explanation, reason,
        drifted_dates}``.
    """
    lake = Lake.from_settings(settings)
    day = date or lake.dates("features")[-1]
    name, version = resolve_model(settings, model)
    record = run_monitor(settings, day, model=f"{name}/{version}", starter=R.RecordOnlyStarter())
    html = storage.read_bytes(storage.join(lake.monitoring(name, version, day), "features_drift.html"),
                              lake.storage_options)
    return {"record": record, "retrain": record["action"] == D.RETRAIN, "html": html,
            "metrics": D.record_metrics(record),
            "metadata": {"date": day, "model": name, "version": version, "action": record["action"],
                         "explanation": record["explanation"], "reason": "; ".join(record["reasons"])[:2000],
                         "drifted_dates": ",".join(record["drifted_dates"])}}
