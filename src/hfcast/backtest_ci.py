"""How sure a backtest figure is: day-block bootstrap intervals and the small-sample note.

Periods of one session share the day's market moves (and a 60-minute forecast overlaps the next
rebalance), so they are not independent draws: the bootstrap resamples whole DAYS with
replacement (a block bootstrap with the session as the block; :func:`scipy.stats.bootstrap`, BCa),
and every figure is recomputed from the resampled days' sufficient statistics, which reproduce
empyrical's formulas exactly when each day is drawn once. Differences to a yardstick resample the
same days for both books (paired), so the common market noise cancels. ``cfg``: a
:class:`hfcast.backtest.BacktestConfig` (``sessions_per_year``, ``seed``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import numpy as np
import pandas as pd

MIN_INDEPENDENT_DAYS = 60  # fewer days than this behind a figure: the page and the table say so
BOOTSTRAP_RESAMPLES = 2000
CI_LEVEL = 0.95


def _day_sums(frame: pd.DataFrame, days: list[str], columns: Mapping[str, Any]) -> np.ndarray:
    """[D, k] per-day sums of derived columns (``columns``: name -> f(frame) -> values), in ``days`` order."""
    derived = pd.DataFrame({k: f(frame) for k, f in columns.items()})
    derived["date"] = frame["date"].to_numpy()
    return derived.groupby("date").sum().reindex(days).fillna(0.0).to_numpy(np.float64)


def _sharpe_from(S: np.ndarray, ppy: float) -> np.ndarray:
    """Sharpe from summed [n, sum r, sum r^2] (last axis), ddof=1 as in empyrical."""
    n, s1, s2 = S[..., 0], S[..., 1], S[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (s2 - s1 * s1 / n) / (n - 1.0)
        return np.where(var > 0, (s1 / n) / np.sqrt(np.maximum(var, 0.0)) * math.sqrt(ppy), np.nan)


def _cagr_from(S: np.ndarray, ppy: float) -> np.ndarray:
    """Compounded annual return from summed [n, sum log(1 + r)] (last axis), as empyrical's."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return np.expm1(S[..., 1] * ppy / S[..., 0])


def _te_from(S: np.ndarray) -> np.ndarray:
    """Tracking error sqrt(mean (ratio - 1)^2) from summed [n, sum (ratio - 1)^2]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(S[..., 1] / S[..., 0])


def day_block_ci(stat: Any, n_days: int, seed: int = 0, n_resamples: int = BOOTSTRAP_RESAMPLES,
                 level: float = CI_LEVEL) -> tuple[float, float]:
    """The ``level`` bias-corrected and accelerated (BCa) bootstrap interval of ``stat`` over days.

    ``stat(idx)`` takes day indices of shape [..., D] (a resample along the last axis) and returns
    the figure for each resample; :func:`scipy.stats.bootstrap` draws the resamples and the
    jackknife. (NaN, NaN) with fewer than 3 days or when the figure does not vary.
    """
    from scipy.stats import bootstrap

    if n_days < 3:
        return float("nan"), float("nan")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = bootstrap((np.arange(n_days),), lambda idx, axis=-1: stat(np.moveaxis(idx, axis, -1)),
                        vectorized=True, n_resamples=n_resamples, confidence_level=level, method="BCa",
                        rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) else (float("nan"), float("nan"))


def _ls_sums(p: pd.DataFrame, days: list[str]) -> dict[str, np.ndarray]:
    ones = lambda f: np.ones(len(f))  # noqa: E731
    return {"gross": _day_sums(p, days, {"n": ones, "s1": lambda f: f["gross"], "s2": lambda f: f["gross"] ** 2}),
            "net": _day_sums(p, days, {"n": ones, "s1": lambda f: f["net"], "s2": lambda f: f["net"] ** 2}),
            "log": _day_sums(p, days, {"n": ones, "l": lambda f: np.log1p(f["net"])})}


def long_short_uncertainty(periods: Mapping[str, pd.DataFrame], summaries: Mapping[str, Mapping[str, float]],
                           cfg: Any) -> tuple[dict[str, dict[str, list[float]]], list[dict[str, Any]]]:
    """95% day-block CIs of each book's Sharpe (gross, net) and net annual return, and of the model
    minus each yardstick (zero-skill, oracle) on the same resampled days.

    Returns:
        ``({method: {"net_sharpe_ci": [lo, hi], ...}}, [difference rows])``.
    """
    books = {m: p for m, p in periods.items() if not p.empty}
    if not books:
        return {}, []
    days = sorted(set().union(*(set(p["date"]) for p in books.values())))
    sums = {m: _ls_sums(p, days) for m, p in books.items()}
    ppy = {m: cfg.sessions_per_year * float(summaries[m]["periods_per_session"]) for m in books}
    figures = {"gross_sharpe": lambda S, m: _sharpe_from(S["gross"], ppy[m]),
               "net_sharpe": lambda S, m: _sharpe_from(S["net"], ppy[m]),
               "net_return_ann": lambda S, m: _cagr_from(S["log"], ppy[m])}

    def resampled(m: str, fig: str):
        return lambda idx: figures[fig]({k: v[idx].sum(axis=-2) for k, v in sums[m].items()}, m)

    cis = {m: {f"{fig}_ci": list(day_block_ci(resampled(m, fig), len(days), cfg.seed)) for fig in figures}
           for m in books}
    diffs = []
    for base in (b for b in books if b != "model" and "model" in books):
        for fig in ("net_sharpe", "net_return_ann"):
            a, b = resampled("model", fig), resampled(base, fig)
            lo, hi = day_block_ci(lambda idx: a(idx) - b(idx), len(days), cfg.seed)
            diffs.append({"book": "long_short", "figure": fig, "yardstick": base, "days": len(days),
                          "difference": float(summaries["model"][fig] - summaries[base][fig]), "ci": [lo, hi]})
    return cis, diffs


def vol_uncertainty(holds: Mapping[str, pd.DataFrame], summaries: Mapping[str, Mapping[str, float]],
                    cfg: Any) -> tuple[dict[str, dict[str, list[float]]], list[dict[str, Any]]]:
    """95% day-block CIs of each method's tracking error and of the model's minus HAR-RV's, EWMA's
    and the oracle's (the same holds of the same resampled days)."""
    books = {m: h for m, h in holds.items() if not h.empty}
    if not books:
        return {}, []
    days = sorted(set().union(*(set(h["date"]) for h in books.values())))
    sums = {m: _day_sums(h, days, {"n": lambda f: np.ones(len(f)), "e2": lambda f: (f["ratio"] - 1.0) ** 2})
            for m, h in books.items()}

    def te(m: str):
        return lambda idx: _te_from(sums[m][idx].sum(axis=-2))

    cis = {m: {"tracking_error_ci": list(day_block_ci(te(m), len(days), cfg.seed))} for m in books}
    diffs = []
    for base in (b for b in books if b != "model" and "model" in books):
        a, b = te("model"), te(base)
        lo, hi = day_block_ci(lambda idx: a(idx) - b(idx), len(days), cfg.seed)
        diffs.append({"book": "vol_target", "figure": "tracking_error", "yardstick": base, "days": len(days),
                      "difference": float(summaries["model"]["tracking_error"] - summaries[base]["tracking_error"]),
                      "ci": [lo, hi]})
    return cis, diffs


def small_sample_notes(n_days: int) -> list[str]:
    """The warning every figure resting on fewer than :data:`MIN_INDEPENDENT_DAYS` days carries."""
    if n_days >= MIN_INDEPENDENT_DAYS:
        return []
    return [f"small sample: only {n_days} independent day(s) behind every figure (fewer than "
            f"{MIN_INDEPENDENT_DAYS}): Sharpe ratios and annual returns of an intraday book annualise "
            f"large and their confidence intervals are wide; read differences inside the intervals as noise"]
