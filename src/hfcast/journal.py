"""The step journal of the daily loop: each step of a date written down before and after it runs.

Why: a replay can be killed at any instant (SIGKILL, a node that vanishes), and its rerun must
reach the state an uninterrupted run reaches. Each step of a date (arrive, materialize, predict,
monitor, decide, retrain, register, export, gate, promote) opens its entry in
``<lake>/replay/<model>/journal/<date>.json`` before it runs and closes it after, with what it
produced; every write is one atomic object (:func:`hfcast.storage.write_text`). A rerun skips the
finished steps of the loop, sees which step was cut off (:meth:`Journal.interrupted`) and resumes
from the durable records that step leaves: the decision record for ``decide`` (never decided
again), the registry's retrain key, gate tags and aliases for ``register``, ``gate`` and
``promote``, the version's export tags for ``export`` (:mod:`hfcast.lifecycle`); ``materialize``
is idempotent and simply runs again.
Steps that run outside a replay (``hfcast monitor run``, a pipeline) have no open journal and
record nothing here.

One test hook lives here and nowhere else: with ``HFCAST_TEST_KILL_AT=POINT[@DATE]`` in the
environment the process SIGKILLs itself at the named point (``before-STEP``, ``after-STEP``,
``train-epoch`` inside a training, ``predict-csv`` between a prediction CSV and its manifest),
on the journal's date DATE only when one is given (``bootstrap`` for the first champion). It
lets a test cut the loop at an exact step (``tests/integration/test_replay_kill.py``); without
the variable :func:`killpoint` does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

from hfcast import storage

log = logging.getLogger(__name__)

KILL_ENV = "HFCAST_TEST_KILL_AT"
_active: list["Journal"] = []  # the open journal of this process (a replay runs one date at a time)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Journal:
    """The steps of one date (or ``bootstrap``) of a model's replay, as stored in the lake."""

    def __init__(self, lake: Any, model: str, date: str):
        self.lake, self.model, self.date = lake, model, str(date)
        self.url = storage.join(lake.url, "replay", model, "journal", f"{self.date}.json")
        self.doc = self._load()

    def _load(self) -> dict[str, Any]:
        if not storage.exists(self.url, self.lake.storage_options):
            return {"date": self.date, "steps": {}, "attempts": []}
        return json.loads(storage.read_text(self.url, self.lake.storage_options))

    def _save(self) -> None:
        storage.write_text(self.url, json.dumps(self.doc, indent=1, sort_keys=True, default=str),
                           self.lake.storage_options)

    def result(self, step: str) -> dict[str, Any] | None:
        """What a finished step produced (its entry), or None when it has not finished."""
        entry = self.doc["steps"].get(step)
        return entry if entry and entry.get("finished_at") else None

    def interrupted(self) -> list[str]:
        """Steps that started and never finished (the process died inside them)."""
        return [s for s, e in self.doc["steps"].items() if not e.get("finished_at") and not e.get("error")]

    def start(self, step: str, **info: Any) -> None:
        earlier = self.doc["steps"].get(step)
        if earlier is not None:  # a step run again (resumed after a kill, or repeated): keep the trail
            self.doc["attempts"].append({"step": step, **earlier,
                                         "outcome": "finished" if earlier.get("finished_at") else
                                         ("failed" if earlier.get("error") else "interrupted")})
        self.doc["steps"][step] = {"started_at": _now(), **info}
        self._save()

    def finish(self, step: str, **result: Any) -> None:
        self.doc["steps"][step].update(result, finished_at=_now())
        self._save()

    def fail(self, step: str, error: str) -> None:
        self.doc["steps"][step].update(error=storage.redact(error)[:2000], failed_at=_now())
        self._save()


@contextmanager
def opened(journal: Journal) -> Iterator[Journal]:
    """Make ``journal`` the one that :func:`step` writes to (and whose date :func:`killpoint` matches)."""
    _active.append(journal)
    try:
        yield journal
    finally:
        _active.remove(journal)


def current() -> Journal | None:
    return _active[-1] if _active else None


@contextmanager
def step(name: str, **info: Any) -> Iterator[dict[str, Any]]:
    """Record step ``name`` before and after it runs; the caller fills the yielded dict with its result.

    Without an open journal only the kill points run (a step outside a replay records nothing).
    """
    journal = current()
    if journal is not None:
        journal.start(name, **info)
    killpoint(f"before-{name}")
    out: dict[str, Any] = {}
    try:
        yield out
    except Exception as exc:
        if journal is not None:
            journal.fail(name, f"{type(exc).__name__}: {exc}")
        raise
    if journal is not None:
        journal.finish(name, **out)
    killpoint(f"after-{name}")


def killpoint(name: str) -> None:
    """The test hook (see the module docstring): SIGKILL this process at ``name`` when asked to."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    point, _, date = spec.partition("@")
    journal = current()
    if point == name and (not date or (journal is not None and journal.date == date)):
        log.warning("%s=%s: killing this process (pid %d) at %s", KILL_ENV, spec, os.getpid(), name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
