"""The monitor's alarm rules: one object per rule, registered where it is defined.

The shape of :mod:`hfcast.gate`: a rule is a small frozen dataclass whose fields are its thresholds
(flat keys of params.yaml ``monitor:``, e.g. ``drift_share``, ``consecutive``), with a pure
:meth:`MonitorRule.check` over the date's measurements (:class:`hfcast.monitoring.checks.Checks`).
Everything that used to list the rules by hand iterates :func:`all_rules` instead:

* :class:`hfcast.monitoring.decision.MonitorConfig` parses each rule's keys out of ``monitor:``
  (an unknown key names every known one);
* the monitor (:func:`hfcast.monitoring.drift.check_date`) asks each rule for its own measurements
  (:meth:`MonitorRule.measure`) and writes each verdict into the date's ``summary.json``;
* :func:`hfcast.monitoring.decision.decide` keeps one streak per rule (``<name>_alarm`` and
  ``<name>_streak`` in the decision record) and writes the rule's :meth:`MonitorRule.message`;
* the decision's MLflow run logs :meth:`MonitorRule.metrics`, ``hfcast monitor history`` shows
  :meth:`MonitorRule.columns` and ``hfcast monitor run`` prints :meth:`MonitorRule.summary`.

**Adding a rule** is one module in this package (it is found by :func:`all_rules`, nothing imports
it by name) and one test::

    @dataclass(frozen=True)
    class FlagRule(MonitorRule, name="flags"):   # the class line registers it
        k_field: ClassVar[str] = "flag_consecutive"
        flag_share: float = 0.5                   # monitor.flag_share in params.yaml
        flag_consecutive: int = 2

        def check(self, checks): ...              # -> Verdict(alarm, reasons)
        def message(self, checks, verdict, streak): ...

A rule defined elsewhere (a test, another package) registers the same way once its module is
imported; :func:`unregister` removes it. Rule modules stay light (no pandas at import): the
command line lists them for ``--help``.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping

from hfcast.monitoring.checks import Checks, DayData

_REGISTRY: dict[str, type["MonitorRule"]] = {}
_DISCOVERED: list[bool] = []


@dataclass(frozen=True)
class Verdict:
    """A rule's answer for one date: ``alarm`` None when it had nothing to judge (not measured)."""

    alarm: bool | None
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"alarm": self.alarm, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class MonitorRule:
    """Base of every alarm rule; a subclass names itself in its class line (``name=...``).

    Class attributes: ``name`` (the record keys ``<name>_alarm`` / ``<name>_streak``), ``order``
    (position in explanations; the built-in rules are 10 and 20) and ``k_field`` (the field that
    holds K, the alarm dates in a row that ask for a retraining).
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 100
    k_field: ClassVar[str] = "consecutive"
    #: what K alarm dates in a row ask for: "retrain" (a retraining, through the cooldown and the
    #: lease), or "demote" (the monitor demotes the confidence flags of :meth:`targets` on the served
    #: version, hfcast.registry.demote_confidences; no retraining)
    action: ClassVar[str] = "retrain"

    def __init_subclass__(cls, name: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name:
            cls.name = name
            _REGISTRY[name] = cls

    def __post_init__(self) -> None:
        if int(self.consecutive) < 1:
            raise ValueError(f"monitor.{self.k_field} must be >= 1, got {self.consecutive}")

    @property
    def consecutive(self) -> int:
        """K: alarm dates in a row (today included) before this rule asks for a retraining."""
        return int(getattr(self, self.k_field))

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The params.yaml ``monitor:`` keys this rule reads (its dataclass fields)."""
        return tuple(f.name for f in fields(cls))

    def check(self, checks: Checks) -> Verdict:
        """Whether the date's measurements are an alarm (pure: no I/O)."""
        raise NotImplementedError

    def message(self, checks: Checks, verdict: Verdict, streak: int) -> str | None:
        """The words for the decision: ``streak`` >= K asks for a retraining (the message is a
        reason), 1..K-1 is an alarm short of it, 0 is no alarm (None = nothing to say)."""
        raise NotImplementedError

    def targets(self, checks: Checks) -> tuple[str, ...]:
        """For a "demote" rule: the confidences (``ret``, ``rv``) today's alarm is about."""
        return ()

    def measure(self, day: DayData) -> dict[str, Any]:
        """Measurements of the date beyond the monitor's own (Evidently drift, live scores), kept in
        ``checks.measures[name]``; the built-in rules need none."""
        return {}

    def metrics(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """MLflow metrics of a decision record (non-finite values are not logged)."""
        return {f"{self.name}_streak": record.get(f"{self.name}_streak")}

    def columns(self, record: Mapping[str, Any]) -> dict[str, str]:
        """Cells of ``hfcast monitor history`` for a decision record."""
        return {self.name: f"alarm {record.get(f'{self.name}_streak')}" if record.get(f"{self.name}_alarm") else "-"}

    def summary(self, checks: Checks) -> str:
        """A few words for ``hfcast monitor run``."""
        v = self.check(checks)
        return f"{self.name} {'not measured' if v.alarm is None else 'alarm' if v.alarm else 'ok'}"


def _discover() -> None:
    """Import every module of this package once: each registers the rules it defines."""
    if _DISCOVERED:
        return
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")
    _DISCOVERED.append(True)


def all_rules() -> list[type[MonitorRule]]:
    """Every registered rule class, in ``order`` (then name)."""
    _discover()
    return sorted(_REGISTRY.values(), key=lambda c: (c.order, c.name))


def rule_class(name: str) -> type[MonitorRule]:
    _discover()
    if name not in _REGISTRY:
        raise KeyError(f"no monitor rule {name!r}; registered: {', '.join(r.name for r in all_rules())}")
    return _REGISTRY[name]


def unregister(name: str) -> None:
    """Remove a rule (a test's, once it is done); an unknown name is ignored."""
    _REGISTRY.pop(name, None)
