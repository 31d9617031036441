"""The daily loop in honest time: trading days replayed one by one, with no look-ahead.

Why: a story told with every date featurized and predicted up front lets a retraining decided on
day D train on later days and lets the old champion predict dates after its successor was
promoted. Here each day D goes through, in order:

1. **arrive**: D's bars are validated and featurized (D only; the feature engine warms its state
   on earlier days, never later ones);
2. **predict**: D is batch-predicted by the champion of that moment (CSV ``model_version``);
3. **monitor**: D is monitored with the version that predicted it (labels of D are intraday,
   so they have matured at D's close);
4. **decide** and, on a retraining, **retrain** with walk-forward ``last_date`` = D (training,
   validation and test spans end on or before D, checked again by the gate from the version's
   lineage tags, :func:`hfcast.lifecycle.check_decision_date`);
5. D+1 is predicted by whoever is champion after step 4.

``<lake>/replay/<model>/progress.json`` records each finished step of each day (rewritten
atomically after every step), so an interrupted replay resumes where it stopped. A retraining
cut off mid-way leaves its decision record in status ``starting`` and its lease: the replay (the
only writer of its lake) removes both and decides the day again.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Sequence

from hfcast import storage
from hfcast.storage import Lake

log = logging.getLogger(__name__)

STEPS = ("arrive", "predict", "monitor")


def progress_url(lake: Lake, model: str) -> str:
    return storage.join(lake.url, "replay", model, "progress.json")


def load_progress(lake: Lake, model: str) -> dict[str, Any]:
    url = progress_url(lake, model)
    if not storage.exists(url, lake.storage_options):
        return {"days": {}}
    return json.loads(storage.read_text(url, lake.storage_options))


def _save_progress(lake: Lake, model: str, progress: dict[str, Any]) -> None:
    storage.write_text(progress_url(lake, model), json.dumps(progress, indent=1, sort_keys=True, default=str),
                       lake.storage_options)


def champion_version(settings: Any) -> str | None:
    from hfcast.monitoring.retraining import _champion

    return _champion(settings)


def _arrive(settings: Any, lake: Lake, dates: Sequence[str], versions: Any = None) -> str:
    """Validate and featurize these dates only; the features' dataset version afterwards.

    The version comes from :func:`hfcast.versioning.features_version` (``versions`` = a
    :class:`hfcast.versioning.FeatureVersions` of the lake, else what the settings configure).
    """
    from hfcast.data.validate import DEFAULT_JUMP_LIMIT, run_validate
    from hfcast.features.engine import run_featurize

    run_validate(lake, dates=list(dates), progress=False,
                 jump_limit=float(settings.param("validate.jump_limit", DEFAULT_JUMP_LIMIT)))
    run_featurize(lake, dates=list(dates), progress=False)
    return _version(settings, max(dates), versions)


def _version(settings: Any, last: str, versions: Any = None) -> str:
    """The features' dataset version now (DVC add + push of the day, :mod:`hfcast.versioning`)."""
    from hfcast import versioning

    return versioning.features_version(settings, versions, message=f"features up to {last}")


def _bootstrap(settings: Any, lake: Lake, first: str, archs: Sequence[str], versions: Any = None) -> str:
    """The first champion, trained on the days before ``first`` only (forced past the gate if it
    has no champion to beat and fails a baseline: the reason is recorded on the version)."""
    from hfcast.lifecycle import retrain

    history = [d for d in lake.dates("raw") if d < first]
    if not history:
        raise ValueError(f"no champion and no raw dates before {first} to train a first one on")
    missing = [d for d in history if not lake.exists("features", d)]
    version = _arrive(settings, lake, missing, versions) if missing else _version(settings, history[-1], versions)
    out = retrain(settings, list(archs), reason=f"replay bootstrap: days before {first}", last_date=history[-1],
                  decision_date=history[-1], dataset_version=version)
    if not out["promoted"]:
        log.warning("first model v%s rejected by the gate (%s): promoting it as the bootstrap champion",
                    out["new_version"], out["gate"])
        from hfcast import promotion
        from hfcast.gate import GateDecision

        promotion.promote(settings, out["new_version"], GateDecision.force("replay bootstrap: first model"))
    return str(out["new_version"])


def _clean_interrupted(lake: Lake, model: str, date: str) -> None:
    """Remove what a monitor step cut off mid-retraining left: its ``starting`` record and its lease."""
    from hfcast.monitoring import decision as D
    from hfcast.monitoring import retraining as R

    rec = D.read_decision(lake, model, date)
    if rec and (rec.get("trigger") or {}).get("status") == "starting":
        log.warning("%s: the retraining decided on this day was interrupted; deciding the day again", date)
        storage.remove(D.decision_url(lake, model, date), lake.storage_options)
    held = R.lease_holder(lake, model)
    if held and held.get("date") == date:
        storage.remove(R.lease_url(lake, model), lake.storage_options)


def _monitor(settings: Any, date: str, model: str, version: str, starter: Any) -> dict[str, Any]:
    from hfcast.monitoring.drift import run_monitor

    rec = run_monitor(settings, date, model=f"{model}/{version}", starter=starter)
    trig = rec.get("trigger") or {}
    return {"action": rec["action"], "version": version, "trigger": {k: trig.get(k) for k in
            ("kind", "status", "new_version", "promoted", "gate", "error", "note") if k in trig} or None}


def _refuse_look_ahead(settings: Any, model: str, version: str, date: str) -> None:
    """A champion promoted on ``date`` must have seen no data after it (checked again, from its tags)."""
    from hfcast import registry
    from hfcast.lifecycle import check_decision_date

    why = check_decision_date(registry.resolve(settings, f"{model}/{version}").tags, date)
    if why:
        raise RuntimeError(f"{date}: champion v{version} was promoted but {why}; roll back with "
                           f"`hfcast registry rollback` before replaying further")


def replay_day(settings: Any, lake: Lake, date: str, progress: dict[str, Any], *, model: str, mode: str,
               starter_for: Callable[[str, str], Any], versions: Any = None) -> dict[str, Any]:
    """Run the steps of one day that are not in ``progress`` yet (saved after each)."""
    from hfcast.predict import run_predict

    day = progress["days"].setdefault(date, {})
    if "arrive" not in day:
        day["arrive"] = {"dataset_version": _arrive(settings, lake, [date], versions)}
        _save_progress(lake, model, progress)
    if "predict" not in day:
        version = champion_version(settings)
        if version is None:
            raise RuntimeError(f"{date}: no champion to predict with (alias {model}@champion is not set)")
        run_predict(settings, [date], model_ref=f"{model}/{version}", mode=mode, progress=False)
        day["predict"] = {"version": version}
        _save_progress(lake, model, progress)
    if "monitor" not in day:
        _clean_interrupted(lake, model, date)
        starter = starter_for(date, day["arrive"]["dataset_version"])
        day["monitor"] = _monitor(settings, date, model, day["predict"]["version"], starter)
        day["champion_after"] = champion_version(settings)
        if day["champion_after"] != day["predict"]["version"]:
            _refuse_look_ahead(settings, model, day["champion_after"], date)
        _save_progress(lake, model, progress)
    return day


def run_replay(settings: Any, first: str, last: str, *, archs: Sequence[str] = (), mode: str = "dense",
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
        on_day: called after each day with its progress entry (the demo prints it).

    Returns:
        ``{days: {date: {predict: {version}, monitor: {action, version, trigger}, champion_after}},
        first, last, bootstrap}``.
    """
    from hfcast.monitoring.retraining import InProcessStarter

    lake = Lake.from_settings(settings)
    model = settings.model_name
    days = [d for d in lake.dates("raw") if first <= d <= last]
    if not days:
        raise ValueError(f"no raw dates between {first} and {last} in {lake.url}")
    starter_for = starter_for or (lambda d, v: InProcessStarter(archs=archs, last_date=d, dataset_version=v))
    progress = load_progress(lake, model)
    if champion_version(settings) is None:
        progress["bootstrap"] = _bootstrap(settings, lake, days[0], archs, versions)
        _save_progress(lake, model, progress)
    for d in days:
        entry = replay_day(settings, lake, d, progress, model=model, mode=mode, starter_for=starter_for,
                           versions=versions)
        log.info("%s: predicted by v%s -> %s; champion v%s", d, entry["predict"]["version"],
                 entry["monitor"]["action"], entry.get("champion_after"))
        if on_day is not None:
            on_day(d, entry)
    return {"first": days[0], "last": days[-1], **progress}


def versions_seen(settings: Any) -> list[dict[str, Any]]:
    """Each registered version with the dates of its data (lineage tags) and its gate decision."""
    from hfcast import registry
    from hfcast.lifecycle import LINEAGE_TAGS

    out = []
    for v in registry.list_versions(settings):
        tags = dict(registry.resolve(settings, f"{settings.model_name}/{v['version']}").tags)
        out.append({"version": v.get("version"), "aliases": v.get("aliases"), "arch": v.get("arch"),
                    **{k.split(".", 1)[1]: tags.get(k) for k in LINEAGE_TAGS}, "gate": tags.get("gate.decision"),
                    "dataset_version": tags.get("dataset_version")})
    return out
