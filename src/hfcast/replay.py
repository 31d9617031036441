"""The daily loop in honest time: trading days replayed one by one, with no look-ahead.

Why: a story told with every date featurized and predicted up front lets a retraining decided on
day D train on later days and lets the old champion predict dates after its successor was
promoted. Here each day D goes through, in order:

1. **arrive**: D's bars are validated and featurized (D only; the feature engine warms its state
   on earlier days, never later ones);
   **materialize**: D's minute features and each symbol's latest window go into the Feast online
   store (D only, :func:`hfcast.feature_store.materialize_day`), so a server started after the
   replay answers by symbol with D's last minute (serve a replayed past with
   ``--max-staleness-s -1``: staleness is measured against the wall clock, in trading time);
2. **predict**: D is batch-predicted by the champion of that moment (CSV ``model_version``);
3. **monitor**: D is monitored with the version that predicted it (labels of D are intraday,
   so they have matured at D's close);
4. **decide** and, on a retraining, **retrain** with walk-forward ``last_date`` = D (training,
   validation and test spans end on or before D, checked again by the gate from the version's
   lineage tags, :func:`hfcast.lifecycle.check_decision_date`);
5. D+1 is predicted by whoever is champion after step 4.

Each step of each day is written down before and after it runs in the day's journal
(:mod:`hfcast.journal`, ``<lake>/replay/<model>/journal/<date>.json``), so a replay killed at any
point resumes where it stopped and reaches the state an uninterrupted replay reaches: finished
steps are skipped; a day whose decision was recorded is never decided again (a retraining it
started and that was cut off is resumed, :func:`hfcast.monitoring.drift.complete_decision`); a
retraining resumes from what the registry holds (:func:`hfcast.lifecycle.retrain`: the version
registered under its retrain key, its gate tags, the champion alias), and the MLflow runs a killed
training left RUNNING are closed as FAILED with the reason.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from hfcast import journal, promotion, registry, storage, versioning
from hfcast.config import Settings
from hfcast.errors import UserError
from hfcast.gate import GateDecision
from hfcast.lifecycle import LINEAGE_TAGS, RetrainHere, check_decision_date, retrain
from hfcast.monitoring import retraining as R
from hfcast.registry import champion
from hfcast.storage import Lake

log = logging.getLogger(__name__)

STEPS = ("arrive", "materialize", "predict", "monitor")
BOOTSTRAP = "bootstrap"  # the journal of the first champion's training


def journal_url(lake: Lake, model: str) -> str:
    """The folder of the replay's journals, one object per date (:mod:`hfcast.journal`)."""
    return storage.join(lake.url, "replay", model, "journal")


def load_progress(lake: Lake, model: str) -> dict[str, Any]:
    """``{days: {date: {arrive, predict, monitor, champion_after}}, bootstrap}``: the finished steps,
    read from the journals."""
    days: dict[str, Any] = {}
    for name in storage.listdir(journal_url(lake, model), lake.storage_options):
        if name.endswith(".json") and name != f"{BOOTSTRAP}.json":
            days[name[:-5]] = _day_view(journal.Journal(lake, model, name[:-5]))
    boot = journal.Journal(lake, model, BOOTSTRAP).result("champion")
    return {"days": days, **({"bootstrap": boot["version"]} if boot else {})}


def _day_view(j: journal.Journal) -> dict[str, Any]:
    out: dict[str, Any] = {s: j.result(s) for s in STEPS if j.result(s)}
    if "monitor" in out:
        out["champion_after"] = out["monitor"].get("champion_after")
    return out


def champion_version(settings: Settings) -> str | None:
    """The champion now; None only when the registry says there is none (an outage raises)."""
    mv = champion(settings)
    return None if mv is None else str(mv.version)


def _arrive(settings: Settings, lake: Lake, dates: Sequence[str], versions: Any = None) -> str:
    """Validate and featurize these dates only; the features' dataset version afterwards.

    The version comes from :func:`hfcast.versioning.features_version` (``versions`` = a
    :class:`hfcast.versioning.FeatureVersions` of the lake, else what the settings configure).
    """
    from hfcast.data.validate import ValidateConfig, run_validate
    from hfcast.features.engine import run_featurize

    run_validate(lake, dates=list(dates), progress=False,
                 jump_limit=settings.section(ValidateConfig).jump_limit)
    run_featurize(lake, dates=list(dates), progress=False)
    return _version(settings, max(dates), versions)


def _version(settings: Settings, last: str, versions: Any = None) -> str:
    """The features' dataset version now (DVC add + push of the day, :mod:`hfcast.versioning`)."""
    return versioning.features_version(settings, versions, message=f"features up to {last}")


def _bootstrap(settings: Settings, lake: Lake, first: str, archs: Sequence[str], versions: Any = None) -> str:
    """The first champion, trained on the days before ``first`` only (forced past the gate if it
    has no champion to beat and fails a baseline: the reason is recorded on the version).

    Journaled as the date ``bootstrap``; a rerun after a kill resumes the same retraining (same
    retrain key), so it never registers a second first model."""
    history = [d for d in lake.dates("raw") if d < first]
    if not history:
        raise UserError(f"no champion and no raw dates before {first} to train a first one on",
                        "ingest (or synth) the days before --from, or register and promote a champion first")
    with journal.opened(journal.Journal(lake, settings.model_name, BOOTSTRAP)), journal.step("champion") as rec:
        missing = [d for d in history if not lake.exists("features", d)]
        version = _arrive(settings, lake, missing, versions) if missing else _version(settings, history[-1], versions)
        out = retrain(settings, list(archs), reason=f"replay bootstrap: days before {first}", last_date=history[-1],
                      decision_date=history[-1], dataset_version=version)
        if not out["promoted"]:
            log.warning("first model v%s rejected by the gate (%s): promoting it as the bootstrap champion",
                        out["new_version"], out["gate"])
            promotion.promote(settings, out["new_version"], GateDecision.force("replay bootstrap: first model"))
        rec["version"] = str(out["new_version"])
    return rec["version"]


def _release_dead_lease(lake: Lake, model: str, date: str) -> None:
    """Remove the retraining lease a killed run of this date left (the replay is its lake's only writer):
    taken before the decision was recorded, it has no record to resume."""
    held = R.lease_holder(lake, model)
    if held and held.get("date") == date:
        log.warning("%s: removing the retraining lease a killed run left before recording its decision", date)
        R.release_lease(lake, model, held)


def _monitor(settings: Settings, lake: Lake, date: str, model: str, version: str, starter: Any) -> dict[str, Any]:
    """Monitor and decide the day, or finish what a killed run recorded for it (never decided twice)."""
    from hfcast.monitoring import decision as D
    from hfcast.monitoring.drift import complete_decision, run_monitor

    rec = D.read_decision(lake, model, date)
    if rec is None:
        _release_dead_lease(lake, model, date)
        rec = run_monitor(settings, date, model=f"{model}/{version}", starter=starter)
    else:
        log.warning("%s: decided before an interruption (%s); finishing that decision", date, rec["action"])
        rec = complete_decision(settings, rec, starter)
    trig = rec.get("trigger") or {}
    after = champion_version(settings)
    if after != version:
        _refuse_look_ahead(settings, model, after, date)
    return {"action": rec["action"], "version": version, "champion_after": after,
            "trigger": {k: trig.get(k) for k in ("kind", "status", "new_version", "promoted", "gate", "error", "note")
                        if k in trig} or None}


def _refuse_look_ahead(settings: Settings, model: str, version: str | None, date: str) -> None:
    """A champion promoted on ``date`` must have seen no data after it (checked again, from its tags)."""
    if version is None:
        raise UserError(f"{date}: the champion alias of {model} disappeared during the day",
                        "promote a version (`hfcast registry promote`) and run the replay again")
    why = check_decision_date(registry.resolve(settings, f"{model}/{version}").tags, date)
    if why:
        raise UserError(f"{date}: champion v{version} was promoted but {why}",
                        "roll back with `hfcast registry rollback` before replaying further")


def _materialize(settings: Settings, date: str) -> dict[str, Any]:
    """The day's features into the online store (incremental: this date only); what was loaded."""
    from hfcast.feature_store import materialize_day

    return materialize_day(settings, date)


def _predict(settings: Settings, model: str, date: str, mode: str) -> str:
    """Batch-predict ``date`` with the champion of this moment; the version that predicted it."""
    from hfcast.predict import run_predict

    version = champion_version(settings)
    if version is None:
        raise UserError(f"{date}: no champion to predict with (alias {model}@champion is not set)",
                        "promote a version (`hfcast registry promote`) and run the replay again")
    summary = run_predict(settings, [date], model_ref=f"{model}/{version}", mode=mode, progress=False)
    if summary.failed:
        raise UserError(f"{date}: prediction with v{version} failed: {summary.failed[0].reason}",
                        "fix what the reason names and run the replay again (it resumes at this day)")
    return version


def replay_day(settings: Settings, lake: Lake, date: str, *, model: str, mode: str,
               starter_for: Callable[[str, str], Any], versions: Any = None) -> dict[str, Any]:
    """Run the steps of one day that its journal does not show finished; the day's finished steps."""
    with journal.opened(journal.Journal(lake, model, date)) as j:
        for name in j.interrupted():
            log.warning("%s: step %s was interrupted (started %s); resuming it", date, name,
                        j.doc["steps"][name]["started_at"])
        if not j.result("arrive"):
            with journal.step("arrive") as out:
                out["dataset_version"] = _arrive(settings, lake, [date], versions)
        if not j.result("materialize"):
            with journal.step("materialize") as out:
                out.update(_materialize(settings, date))
        if not j.result("predict"):
            with journal.step("predict") as out:
                out["version"] = _predict(settings, model, date, mode)
        if not j.result("monitor"):
            with journal.step("monitor") as out:
                starter = starter_for(date, j.result("arrive")["dataset_version"])
                out.update(_monitor(settings, lake, date, model, j.result("predict")["version"], starter))
        return _day_view(j)


def run_replay(settings: Settings, first: str, last: str, *, archs: Sequence[str] = (), mode: str = "dense",
               starter_for: Callable[[str, str], Any] | None = None, versions: Any = None,
               on_day: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Replay the raw trading days in ``[first, last]`` in order (see the module docstring).

    Args:
        archs: architectures of a retraining (and of the first champion when there is none).
        starter_for: ``f(decision_date, dataset_version) -> RetrainStarter``; default an
            in-process retraining that uses data up to the decision date only.
        versions: a :class:`hfcast.versioning.FeatureVersions` (DVC add + push after each day);
            None = as the settings say (:func:`hfcast.versioning.features_version`: pushed to
            ``dvc.remote`` when set, an object-store lake through its local mirror).
        on_day: called after each day with its finished steps (the demo prints it).

    Returns:
        ``{days: {date: {arrive, predict: {version}, monitor: {action, version, trigger}, champion_after}},
        first, last, bootstrap}``.
    """
    lake = Lake.from_settings(settings)
    model = settings.model_name
    days = [d for d in lake.dates("raw") if first <= d <= last]
    if not days:
        raise UserError(f"no raw dates between {first} and {last} in {lake.url}",
                        "ingest (or synth) those days first, or pick --from/--to among the raw dates")
    starter_for = starter_for or (lambda d, v: RetrainHere(archs=archs, last_date=d, dataset_version=v))
    if champion_version(settings) is None or journal.Journal(lake, model, BOOTSTRAP).interrupted():
        _bootstrap(settings, lake, days[0], archs, versions)
    for d in days:
        entry = replay_day(settings, lake, d, model=model, mode=mode, starter_for=starter_for, versions=versions)
        log.info("%s: predicted by v%s -> %s; champion v%s", d, entry["predict"]["version"],
                 entry["monitor"]["action"], entry.get("champion_after"))
        if on_day is not None:
            on_day(d, entry)
    return {"first": days[0], "last": days[-1], **load_progress(lake, model)}


def versions_seen(settings: Settings) -> list[dict[str, Any]]:
    """Each registered version with the dates of its data (lineage tags) and its gate decision."""
    out = []
    for v in registry.list_versions(settings):
        tags = dict(registry.resolve(settings, f"{settings.model_name}/{v['version']}").tags)
        out.append({"version": v.get("version"), "aliases": v.get("aliases"), "arch": v.get("arch"),
                    **{k.split(".", 1)[1]: tags.get(k) for k in LINEAGE_TAGS}, "gate": tags.get("gate.decision"),
                    "dataset_version": tags.get("dataset_version")})
    return out
