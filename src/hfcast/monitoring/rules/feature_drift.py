"""Feature drift: the share of monitored features whose distribution moved (Evidently, measured by
the monitor), K dates in a row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from hfcast.monitoring.checks import Checks
from hfcast.monitoring.rules import MonitorRule, Verdict


@dataclass(frozen=True)
class FeatureDrift(MonitorRule, name="drift"):
    """A date is an alarm when the share of drifted features is >= ``drift_share``."""

    order = 10
    drift_share: float = 0.3  # share of monitored features that must drift for a drift alarm
    consecutive: int = 2      # K: drift alarms in a row before retraining

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < float(self.drift_share) <= 1.0:
            raise ValueError(f"monitor.drift_share is a share of features (0, 1], got {self.drift_share}")

    def check(self, checks: Checks) -> Verdict:
        if checks.drift_share is None:
            return Verdict(None)
        return Verdict(checks.drift_share >= self.drift_share, tuple(checks.drifted_features[:5]))

    def message(self, checks: Checks, verdict: Verdict, streak: int) -> str | None:
        share, k = checks.drift_share, self.consecutive
        if streak >= k:
            return (f"feature drift on {streak} consecutive date(s) >= K={k} (share {share:.2f} >= "
                    f"{self.drift_share:g} today; e.g. {', '.join(checks.drifted_features[:5])})")
        if streak:
            return f"feature drift {share:.2f} >= {self.drift_share:g}, {streak}/{k} consecutive date(s)"
        return None if share is None else f"feature drift share {share:.2f} < {self.drift_share:g}"

    def metrics(self, record: Mapping[str, Any]) -> dict[str, Any]:
        checks = record.get("checks") or {}
        return {"drift_share": checks.get("drift_share"), "pred_drift_share": checks.get("pred_drift_share"),
                "n_drifted_features": len(checks.get("drifted_features") or []),
                "drift_streak": record.get("drift_streak")}

    def columns(self, record: Mapping[str, Any]) -> dict[str, str]:
        share = (record.get("checks") or {}).get("drift_share")
        return {"drift": "-" if share is None else f"{share:.2f}", "streak": str(record.get("drift_streak", ""))}

    def summary(self, checks: Checks) -> str:
        pred = "-" if checks.pred_drift_share is None else format(checks.pred_drift_share, ".2f")
        return f"feature drift share {checks.drift_share:.2f}, prediction drift share {pred}"
