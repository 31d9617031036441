"""Confidence flags on live dates: a confidence the served version claims informative (its
``*_conf_informative`` flag, fitted on validation) must still rank errors on live dates. Where the
most confident decile's error is ``conf_ratio_max`` or more times the least confident decile's on
``conf_consecutive`` dates in a row, live data contradict the flag and the flag is DEMOTED: the
version's confidence for that target is served from then on as uninformative (constant, flag 0),
everywhere it is loaded (a registry tag read at load; :func:`hfcast.registry.demote_confidences`).

This rule demotes, it does not ask for a retraining (:attr:`MonitorRule.action`): a confidence
that stopped ranking errors says nothing about the forecast itself, which the drift and the
performance rules judge. One date's decile ratio is noisy (a session holds ~6 independent hours),
hence the streak and a ratio above 1 (the error rising with the confidence), not merely flat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from hfcast.contracts import finite
from hfcast.monitoring.checks import Checks, DayData
from hfcast.monitoring.rules import MonitorRule, Verdict

#: the prediction columns holding each target's flag (hfcast.contracts.INFO_COLUMNS)
FLAG_COLUMNS = {"ret": "ret_60m_conf_informative", "rv": "rv_10m_conf_informative"}


@dataclass(frozen=True)
class ConfidenceFlags(MonitorRule, name="conf"):
    """A date is an alarm when a confidence flagged informative has a live top/bottom-decile error
    ratio >= ``conf_ratio_max`` (only once ``conf_min_labels`` labels matured); K dates in a row
    demote the flag."""

    order = 30
    k_field = "conf_consecutive"
    action = "demote"
    conf_ratio_max: float = 1.1   # live error of the most / least confident decile at or above this contradicts the flag
    conf_consecutive: int = 3     # contradicted dates in a row before the flag is demoted
    conf_min_labels: int = 500    # matured labels needed before a date's deciles are judged

    def __post_init__(self) -> None:
        super().__post_init__()
        if not float(self.conf_ratio_max) > 0:
            raise ValueError(f"monitor.conf_ratio_max must be > 0, got {self.conf_ratio_max}")

    def measure(self, day: DayData) -> dict[str, Any]:
        """The flags the date's predictions carried (the share of rows flagged, per target)."""
        frame = day.joined if day.joined is not None else day.predictions
        if frame is None or not len(frame):
            return {}
        return {f"{t}_flag": float(frame[col].mean()) for t, col in FLAG_COLUMNS.items() if col in frame}

    def contradicted(self, checks: Checks) -> dict[str, str]:
        """``{target: why}`` for the flags the date contradicts (pure)."""
        live, flags = checks.live or {}, checks.measures.get(self.name) or {}
        if live.get("n_labels", 0) < self.conf_min_labels:
            return {}
        out = {}
        for target in FLAG_COLUMNS:
            ratio = live.get(f"{target}_decile_ratio")
            if flags.get(f"{target}_flag", 0.0) >= 0.5 and finite(ratio) and ratio >= self.conf_ratio_max:
                out[target] = (f"{target} confidence flagged informative, live top/bottom-decile error ratio "
                               f"{ratio:.3f} >= {self.conf_ratio_max:g}")
        return out

    def targets(self, checks: Checks) -> tuple[str, ...]:
        return tuple(sorted(self.contradicted(checks)))

    def check(self, checks: Checks) -> Verdict:
        flags = checks.measures.get(self.name) or {}
        live = checks.live or {}
        if not any(v >= 0.5 for v in flags.values()) or live.get("n_labels", 0) < self.conf_min_labels:
            return Verdict(None)  # nothing claimed, or nothing matured to judge it by
        why = self.contradicted(checks)
        return Verdict(bool(why), tuple(why.values()))

    def message(self, checks: Checks, verdict: Verdict, streak: int) -> str | None:
        why = "; ".join(verdict.reasons)
        if streak >= self.consecutive:
            return f"confidence flag demoted after {streak} contradicted date(s): {why}"
        if streak:
            return f"confidence flag contradicted ({why}), {streak}/{self.consecutive} consecutive date(s)"
        return None

    def metrics(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {"conf_streak": record.get("conf_streak")}

    def columns(self, record: Mapping[str, Any]) -> dict[str, str]:
        demoted = record.get("demote") or {}
        return {"conf": ("demoted " + ",".join(sorted(demoted))) if demoted
                else f"contradicted {record.get('conf_streak')}" if record.get("conf_alarm") else "-"}

    def summary(self, checks: Checks) -> str:
        v = self.check(checks)
        if v.alarm is None:
            flags = checks.measures.get(self.name) or {}
            why = ("none claims information" if not any(f >= 0.5 for f in flags.values()) else
                   f"fewer than {self.conf_min_labels} matured labels")
            return f"confidence flags not judged ({why})"
        return "confidence flags " + ("contradicted" if v.alarm else "hold")
