"""Starting a retraining: the monitor decides, a starter passed in from outside starts it.

Why it looks like this:

* The core never imports Kubeflow (nor the pipelines built on it), and the monitor does not import
  the training it starts. What starts a retraining is an object implementing :class:`RetrainStarter`,
  handed to :func:`hfcast.monitoring.drift.run_monitor`: the outer ``pipelines`` package provides one
  that runs the training pipeline with the kfp local runner and one that calls the Kubeflow API
  (entry point group ``hfcast.starters``); :class:`InProcessStarter` runs the function it is given
  (:class:`hfcast.lifecycle.RetrainHere` gives it :func:`hfcast.lifecycle.retrain`: the embedded
  fallback); :func:`hfcast.lifecycle.load_starter` finds a starter by name.
* Where a retraining goes (Kubeflow host, namespace, pipeline, architectures) is the ``retrain:``
  section of params.yaml (:class:`RetrainTarget`), apart from the monitor's thresholds.
* Whatever runs, the new model goes through the same champion/challenger gate: a retraining never
  replaces a champion by a worse model.
* ``<lake>/monitoring/<model>/retrain.json`` records whether a retraining started by the monitor is
  running (status, started_at, run id), so a second one is never started on top of it. Starters
  write it through :func:`record_start` / :func:`run_recorded`.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

from hfcast import journal, storage
from hfcast.config import Settings, checked_section
from hfcast.registry import champion
from hfcast.storage import Lake

log = logging.getLogger(__name__)

RetrainFn = Callable[[str, Sequence[str]], Mapping[str, Any]]
RUNNING, DONE, FAILED = "running", "done", "failed"
STARTERS_GROUP = "hfcast.starters"


@dataclass(frozen=True)
class RetrainTarget:
    """The ``retrain:`` section of params.yaml: where a retraining the monitor decided runs."""

    SECTION: ClassVar[str] = "retrain"

    kubeflow_host: str | None = None       # KFP API URL for the Kubeflow starter (None = the in-cluster API)
    kubeflow_namespace: str | None = None  # Kubeflow profile namespace of the retraining run (multi-user)
    pipeline: str = "training-gpu"          # the training pipeline a Kubeflow retraining runs (pipelines/names.py)
    archs: tuple[str, ...] = ()             # architectures of a retraining (empty = the champion's)

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None) -> "RetrainTarget":
        """Build from params.yaml ``retrain:``; ``archs`` may be one name or a list."""
        section = checked_section(cls, section, "retrain parameter(s)")
        archs = section.get("archs") or ()
        section["archs"] = (archs,) if isinstance(archs, str) else tuple(str(a) for a in archs)
        return cls(**section)


@runtime_checkable
class RetrainStarter(Protocol):
    """Starts a retraining; ``kind`` names it in the decision log (``local``, ``kubeflow``...).

    ``start`` returns ``{kind, run_id, status, new_version?, promoted?, error?, note}``; it records
    the run in the state file (:func:`record_start`) and never raises for a failed retraining
    (the failure is the result).
    """

    kind: str

    def start(self, settings: Settings, model: str, reason: str, drifted_dates: Sequence[str]) -> dict[str, Any]: ...


@runtime_checkable
class PollingStarter(Protocol):
    """A starter whose runs finish elsewhere (a cluster): it can say whether one has finished."""

    kind: str

    def poll(self, state: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """``{"status": "done"|"failed", ...}`` once the run in ``state`` finished, else None."""
        ...


def _now() -> datetime:
    return datetime.now(timezone.utc)


def state_url(lake: Lake, model: str) -> str:
    return storage.join(lake.url, "monitoring", model, "retrain.json")


def read_state(lake: Lake, model: str) -> dict[str, Any] | None:
    url = state_url(lake, model)
    if not storage.exists(url, lake.storage_options):
        return None
    return json.loads(storage.read_text(url, lake.storage_options))


def write_state(lake: Lake, model: str, state: Mapping[str, Any]) -> None:
    storage.write_text(state_url(lake, model), json.dumps(dict(state), indent=1, default=str), lake.storage_options)


def record_start(lake: Lake, model: str, *, kind: str, run_id: str, reason: str, drifted_dates: Sequence[str],
                 started_at: datetime | None = None, **extra: Any) -> dict[str, Any]:
    """Write "running" into the state file (so no second retraining starts on top) and return it."""
    state = {"status": RUNNING, "kind": kind, "run_id": run_id, "started_at": (started_at or _now()).isoformat(),
             "reason": reason, "drifted_dates": list(drifted_dates), **extra}
    write_state(lake, model, state)
    return state


def running_state(lake: Lake, model: str, timeout_hours: float, starter: RetrainStarter | None = None) -> dict[str, Any] | None:
    """The retraining state if one started by the monitor is still running, else None.

    A starter that can poll (:class:`PollingStarter`, same ``kind`` as the recorded run) is asked
    whether the run ended (and the file updated when it did). A "running" entry older than
    ``timeout_hours`` is treated as lost (the process that held it died) and marked failed, so the
    monitor cannot be blocked forever.
    """
    state = read_state(lake, model)
    if not state or state.get("status") != RUNNING:
        return None
    if isinstance(starter, PollingStarter) and state.get("kind") == starter.kind and state.get("run_id"):
        ended = starter.poll(state)
        if ended and ended.get("status") in (DONE, FAILED):
            state.update(finished_at=_now().isoformat(), **ended)
            write_state(lake, model, state)
            return None
    started = datetime.fromisoformat(state["started_at"])
    if _now() - started > timedelta(hours=timeout_hours):
        log.warning("retraining %s started %s is older than %.1f h: treating it as lost", state.get("run_id"),
                    state["started_at"], timeout_hours)
        state.update(status=FAILED, finished_at=_now().isoformat(), error="timed out (no completion recorded)")
        write_state(lake, model, state)
        return None
    return state


def lease_url(lake: Lake, model: str) -> str:
    return storage.join(lake.url, "monitoring", model, "retrain.lease")


def lease_holder(lake: Lake, model: str) -> dict[str, Any] | None:
    """The lease document of the retraining in progress, or None."""
    url = lease_url(lake, model)
    try:
        return json.loads(storage.read_text(url, lake.storage_options))
    except FileNotFoundError:
        return None


def acquire_lease(lake: Lake, model: str, date: str, timeout_hours: float) -> dict[str, Any] | None:
    """Take the "retraining in progress" lease (create-if-absent); the lease, or None if another holds it.

    Why a lease object and not the state file: two monitors that read "not running" at the same
    moment would both start; the conditional create lets exactly one of them win, on a local file
    system (hard link) and on S3 (``If-None-Match: *``). A lease older than ``timeout_hours`` was
    left by a dead process: it is removed once and the create retried.
    """
    now = _now().isoformat()
    doc = {"token": uuid.uuid4().hex, "date": str(date), "acquired_at": now,
           "run_id": f"lease of the retraining decided for {date}", "started_at": now}  # read by decide()
    body = json.dumps(doc).encode()
    for _ in range(2):
        if storage.create_exclusive(lease_url(lake, model), body, lake.storage_options):
            held = lease_holder(lake, model)  # read-after-write: the object says it is ours
            return doc if held and held.get("token") == doc["token"] else None
        held = lease_holder(lake, model)
        if held is None:
            continue  # released between our create and our read: try once more
        if _now() - datetime.fromisoformat(held["acquired_at"]) <= timedelta(hours=timeout_hours):
            return None
        log.warning("retraining lease of %s (token %s, %s) is older than %.1f h: breaking it", held.get("date"),
                    held.get("token"), held["acquired_at"], timeout_hours)
        release_lease(lake, model, held)
    return None


def take_over_lease(lake: Lake, model: str, date: str, timeout_hours: float) -> dict[str, Any] | None:
    """The lease for the retraining decided on ``date``, taken over from a dead holder of that same date.

    Only for a caller that knows the holder is dead (the replay, its lake's only writer, resuming a
    decision its killed run recorded); a lease of another date is left alone (None if it is held).
    """
    held = lease_holder(lake, model)
    if held and held.get("date") == str(date):
        release_lease(lake, model, held)
    return acquire_lease(lake, model, date, timeout_hours)


def release_lease(lake: Lake, model: str, lease: Mapping[str, Any]) -> None:
    """Remove the lease if it is still the one given (same token): never another monitor's."""
    held = lease_holder(lake, model)
    if held and held.get("token") == lease.get("token"):
        storage.remove(lease_url(lake, model), lake.storage_options)


def champion_version(settings: Settings) -> str | None:
    """The champion version now, or None when the registry says there is none (an outage raises:
    a retraining must not record "no champion before" because the registry did not answer)."""
    mv = champion(settings)
    return None if mv is None else str(mv.version)


def _note(out: Mapping[str, Any], before: str | None, after: str | None) -> str:
    if out["status"] == FAILED:
        return f"retraining failed ({out['error']}); champion unchanged (v{before or '-'} -> v{after or '-'})"
    if not out["promoted"]:
        return f"challenger v{out['new_version']} not promoted by the gate; champion unchanged (v{before or '-'})"
    return f"challenger v{out['new_version']} promoted: champion v{before or '-'} -> v{after or '-'}"


def _unfinished_start(lake: Lake, model: str, kind: str, reason: str, drifted_dates: Sequence[str]
                      ) -> dict[str, Any] | None:
    """The state file's "running" record when it is this very retraining (same kind, reason and
    drifted dates) that a killed process left, else None."""
    state = read_state(lake, model)
    if state and state.get("status") == RUNNING and state.get("kind") == kind and state.get("reason") == reason \
            and list(state.get("drifted_dates") or []) == list(drifted_dates):
        return state
    return None


def run_recorded(settings: Settings, model: str, reason: str, drifted_dates: Sequence[str], retrain_fn: RetrainFn,
                 kind: str = "local") -> dict[str, Any]:
    """Run ``retrain_fn(reason, drifted_dates)`` here and now; the state file says running, then done or failed.

    A retraining that raises or reports failure leaves the champion as it was (the gate never
    ran, or rejected): the returned dict says so, with the champion before and after.
    """
    lake = Lake.from_settings(settings)
    state = _unfinished_start(lake, model, kind, reason, drifted_dates)
    if state is not None:  # the same retraining, cut off: resume its record (run id, champion before)
        log.warning("%s retraining %s was interrupted (started %s); resuming it", kind, state["run_id"],
                    state["started_at"])
        before = state.get("champion_before")
    else:
        before = champion_version(settings)
        state = record_start(lake, model, kind=kind, run_id=f"{kind}-{_now().strftime('%Y%m%dT%H%M%S')}",
                             reason=reason, drifted_dates=drifted_dates, champion_before=before)
    try:
        with journal.step("retrain", run_id=state["run_id"]) as rec:
            result = dict(retrain_fn(reason, list(drifted_dates)) or {})
            rec.update(new_version=result.get("new_version"), promoted=bool(result.get("promoted", False)))
        status = DONE if str(result.get("status", DONE)) in (DONE, "ok", "succeeded") else FAILED
        error = result.get("error")
    except Exception as exc:  # the failure is the result: recorded, never propagated into the monitor
        log.exception("%s retraining failed", kind)
        result, status, error = {}, FAILED, storage.redact(f"{type(exc).__name__}: {exc}")
    after = champion_version(settings)
    out = {"kind": kind, "run_id": state["run_id"], "status": status, "new_version": result.get("new_version"),
           "promoted": bool(result.get("promoted", False)), "champion_before": before, "champion_after": after,
           "gate": result.get("gate"), "error": error}
    out["note"] = _note(out, before, after)
    state.update(status=status, finished_at=_now().isoformat(), result=out)
    write_state(lake, model, state)
    log.info("%s retraining %s: %s", kind, status, out["note"])
    return out


class InProcessStarter:
    """Retrain in this process with the function it is given, recorded by :func:`run_recorded`.

    Args:
        retrain_fn: ``f(reason, drifted_dates) -> {status, new_version, promoted, gate?}``
            (:class:`hfcast.lifecycle.RetrainHere` is the one that trains with the lifecycle).
    """

    kind = "local"

    def __init__(self, retrain_fn: RetrainFn) -> None:
        self.retrain_fn = retrain_fn

    def start(self, settings: Settings, model: str, reason: str, drifted_dates: Sequence[str]) -> dict[str, Any]:
        return run_recorded(settings, model, reason, drifted_dates, self.retrain_fn, kind=self.kind)


class RecordOnlyStarter:
    """Starts nothing: the decision is recorded only (``--starter none``; a pipeline step that decides)."""

    kind = "none"

    def start(self, settings: Settings, model: str, reason: str, drifted_dates: Sequence[str]) -> dict[str, Any]:
        return {"kind": self.kind, "status": "not started (trigger=none)"}
