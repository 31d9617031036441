"""Live performance: the date's scores, once its labels matured, against the reference spans' test
scores, K dates in a row."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from hfcast.contracts import finite
from hfcast.monitoring.checks import Checks
from hfcast.monitoring.rules import MonitorRule, Verdict

#: live scores beyond QLIKE and IC that the monitoring run also logs (see monitoring.reference.live_scores)
LIVE_EXTRA_METRICS = ("vol_qlike_har_tod", "vol_qlike_ratio_har_tod", "ret_coverage", "rv_coverage",
                      "rv_decile_ratio", "ret_decile_ratio")


@dataclass(frozen=True)
class LivePerformance(MonitorRule, name="perf"):
    """A date is an alarm when live QLIKE > ``perf_qlike_ratio`` x the reference test QLIKE, or live
    IC < reference IC - ``perf_ic_drop`` (beyond two standard errors of a day's IC); only once
    ``min_labels`` labels have matured."""

    order = 20
    k_field = "perf_consecutive"
    perf_qlike_ratio: float = 1.5  # live vol QLIKE above this x the reference test QLIKE = degraded
    perf_ic_drop: float = 0.15     # live return IC below reference IC minus this = degraded
    perf_consecutive: int = 2      # performance alarms in a row before retraining
    min_labels: int = 500          # matured labels needed before live performance is scored

    def check(self, checks: Checks) -> Verdict:
        live, reference = checks.live, checks.reference
        if not live or not reference or live.get("n_labels", 0) < self.min_labels:
            return Verdict(None)
        reasons = []
        q, rq = live.get("vol_qlike"), reference.get("vol_qlike")
        if finite(q) and finite(rq) and q > self.perf_qlike_ratio * rq:
            reasons.append(f"vol QLIKE {q:.4g} > {self.perf_qlike_ratio:g} x reference {rq:.4g}")
        ic, ric = live.get("ret_ic"), reference.get("ret_ic")
        # one day's IC is noisy: overlapping 60-minute returns leave about symbols x 6.5 independent
        # outcomes, so the drop must also exceed two standard errors of a day's IC (1 / sqrt(n_eff))
        n_eff = float(live.get("n_eff", live.get("n_labels", 0)))
        drop = max(self.perf_ic_drop, 2.0 / math.sqrt(max(n_eff - 3.0, 1.0)))
        if finite(ic) and finite(ric) and ic < ric - drop:
            reasons.append(f"return IC {ic:.3f} < reference {ric:.3f} - {drop:.3g}")
        compared = (finite(q) and finite(rq)) or (finite(ic) and finite(ric))
        return Verdict(bool(reasons) if compared else None, tuple(reasons))

    def message(self, checks: Checks, verdict: Verdict, streak: int) -> str | None:
        why = "; ".join(verdict.reasons)
        if streak >= self.consecutive:
            return f"performance degraded on {streak} consecutive date(s): {why}"
        if streak:
            return f"performance degraded ({why}), {streak}/{self.consecutive} consecutive date(s)"
        if verdict.alarm is None:
            return "live performance not scored (labels not matured or no reference scores)"
        return "live performance within thresholds"

    def metrics(self, record: Mapping[str, Any]) -> dict[str, Any]:
        live = (record.get("checks") or {}).get("live") or {}
        return {"live_vol_qlike": live.get("vol_qlike"), "live_ret_ic": live.get("ret_ic"),
                "perf_streak": record.get("perf_streak"), **{f"live_{k}": live.get(k) for k in LIVE_EXTRA_METRICS}}

    def columns(self, record: Mapping[str, Any]) -> dict[str, str]:
        live = (record.get("checks") or {}).get("live") or {}
        return {"QLIKE": f"{live['vol_qlike']:.4g}" if live.get("vol_qlike") is not None else "-",
                "IC": f"{live['ret_ic']:.3f}" if live.get("ret_ic") is not None else "-"}

    def summary(self, checks: Checks) -> str:
        live = checks.live or {}
        ratio = live.get("vol_qlike_ratio_har_tod")
        vs_floor = f" ({ratio:.3f}x har_tod)" if finite(ratio) else ""
        return (f"live QLIKE {live.get('vol_qlike', float('nan')):.4g}{vs_floor}, "
                f"IC {live.get('ret_ic', float('nan')):.3f}")
