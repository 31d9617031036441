"""Economic value of the forecasts after costs: volatility targeting and a long-short book.

Why this module: a lower QLIKE or a higher IC does not say whether the forecasts cut risk or make
money once trades cost the spread. Two portfolios answer that on the batch prediction CSVs
(``<lake>/predictions/<model>/<version>/date=D.csv``) and the lake's own bars:

* **Volatility targeting** - each symbol's position is sized so that its forecast volatility
  equals a target: ``w_t = target_per_minute * sqrt(10) / rv_10m_hat_t``, held for ``vol_hold``
  minutes. The realized volatility of ``w_t * r`` over the hold, divided by the target, should
  be 1; we report its RMS distance from 1 (tracking error), the realized volatility of the
  scaled positions against the target, the share of minutes beyond 1.5x the target, and
  turnover - for the model, HAR-RV, EWMA and (simulated lakes) the oracle, on the same rows.
* **Cross-sectional long-short** on ``ret_60m_pred``: every ``rebalance`` minutes rank the
  symbols, long the top and short the bottom ``quantile`` (equal or confidence weights, each
  leg 0.5 of gross), hold to the next rebalance, flat at the close. Costs come from the data:
  half the quoted spread at the rebalance minute plus ``fee_bps`` on every unit traded. Gross and
  net Sharpe are annualised with the number of holding periods per session found in the data;
  turnover, maximum drawdown and hit rate beside them, with a zero-skill (seeded random ranking)
  and an oracle (``true_ret_60m``) portfolio on the same rows as yardsticks.

No look-ahead, by construction: a forecast stamped minute t uses bars up to the END of minute t;
its position trades at that minute's quote (the bar's bid/ask are end-of-minute) and earns the
mid move from t to the next rebalance. Nothing at a later minute enters a position or a cost
decided at t (``tests/code/test_backtest.py`` perturbs future prices and forecasts to prove it).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np
import pandas as pd

from hfcast import storage
from hfcast.config import Settings, checked_section
from hfcast.backtest_ci import (BOOTSTRAP_RESAMPLES, CI_LEVEL, MIN_INDEPENDENT_DAYS, long_short_uncertainty,
                                small_sample_notes, vol_uncertainty)
from hfcast.data.schema import EXCHANGE_TZ
from hfcast.plots import png_figure
from hfcast.predict import parse_dates
from hfcast.storage import Lake

log = logging.getLogger(__name__)

RV_HORIZON = 10  # minutes of the rv_10m forecast (the label's horizon)
LS_METHODS = ("model", "zero_skill", "oracle")
VOL_METHODS = ("model", "har_rv", "ewma", "oracle")
#: metrics a gate may require a challenger not to lose, and whether higher is better
GATE_METRICS = {"net_sharpe": True, "gross_sharpe": True, "max_drawdown": False,
                "vol_tracking_error": False, "vol_share_beyond_1_5": False}


@dataclass
class BacktestConfig:
    """Portfolio rules (params.yaml section ``backtest:``)."""

    SECTION: ClassVar[str] = "backtest"

    target_vol: float = 0.20          # annualised volatility each vol-targeted position aims at
    vol_hold: int = 10                # minutes a vol-targeted position is held (the rv forecast horizon)
    rebalance: int = 30               # long-short: minutes between rebalances (10, 30, 60 ...)
    quantile: float = 0.2             # long the top, short the bottom quantile of the ranking
    confidence_weighted: bool = False  # weight names in each leg by ret_60m_conf instead of equally
    fee_bps: float = 0.5              # fee per unit of notional traded, on top of half the spread
    sessions_per_year: int = 252      # annualisation: sessions a year x holding periods per session
    seed: int = 0                     # the zero-skill portfolio's random ranking
    gate_metric: str = "net_sharpe"   # the number a challenger may be required not to lose

    def __post_init__(self) -> None:
        if self.rebalance < 1 or self.vol_hold < 1:
            raise ValueError(f"rebalance and vol_hold must be >= 1 minute, got {self.rebalance}, {self.vol_hold}")
        if not 0.0 < self.quantile <= 0.5:
            raise ValueError(f"quantile must be in (0, 0.5], got {self.quantile}")
        if self.target_vol <= 0 or self.fee_bps < 0 or self.sessions_per_year < 1:
            raise ValueError("target_vol must be > 0, fee_bps >= 0 and sessions_per_year >= 1")
        if self.gate_metric not in GATE_METRICS:
            raise ValueError(f"gate_metric must be one of {sorted(GATE_METRICS)}, got {self.gate_metric!r}")

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None, **overrides: Any) -> "BacktestConfig":
        merged = {**(section or {}), **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**checked_section(cls, merged, "backtest parameter(s)"))


# --- one session as [S, T] arrays ---------------------------------------------------------------

@dataclass
class Day:
    """One session on its minute grid: S symbols x T minutes (the minutes found in the data).

    Attributes:
        mid: mid price at the END of each minute, forward-filled over missing bars (NaN before the
            first quote).
        half_spread: (ask - bid) / (2 mid), the cost of crossing half the spread, forward-filled.
        ret: return forecasts by method (``model``, ``oracle``...), NaN where none.
        vol: 10-minute volatility forecasts by method.
        conf: the model's ret_60m_conf (None when absent).
        active: rows where the model made a forecast: every portfolio trades these rows only.
    """

    date: str
    symbols: np.ndarray
    ts: pd.DatetimeIndex
    mid: np.ndarray
    half_spread: np.ndarray
    ret: dict[str, np.ndarray] = field(default_factory=dict)
    vol: dict[str, np.ndarray] = field(default_factory=dict)
    conf: np.ndarray | None = None
    active: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.mid.shape


def _grid(frame: pd.DataFrame, symbols: np.ndarray, ts: pd.DatetimeIndex, cols: Iterable[str]) -> dict[str, np.ndarray]:
    """Long (symbol, ts, cols) rows -> one [S, T] float array per column (NaN where absent)."""
    s = pd.Index(symbols).get_indexer(frame["symbol"].astype(str))
    t = ts.get_indexer(pd.DatetimeIndex(pd.to_datetime(frame["ts"], utc=True)))
    ok = (s >= 0) & (t >= 0)
    out = {}
    for c in cols:
        a = np.full((len(symbols), len(ts)), np.nan)
        a[s[ok], t[ok]] = pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float64)[ok]
        out[c] = a
    return out


def _ffill(a: np.ndarray) -> np.ndarray:
    """Forward-fill NaN along axis 1 (the minute axis): a missing bar keeps the last quote."""
    idx = np.where(np.isfinite(a), np.arange(a.shape[1])[None, :], 0)  # leading NaN -> column 0 (NaN too)
    np.maximum.accumulate(idx, axis=1, out=idx)
    return a[np.arange(a.shape[0])[:, None], idx]


def make_day(date: str, bars: pd.DataFrame, preds: pd.DataFrame, truth: pd.DataFrame | None = None,
             baselines: pd.DataFrame | None = None) -> Day:
    """A :class:`Day` from long frames (what the lake holds), aligned on (symbol, ts).

    Args:
        bars: symbol, ts, bid, ask (the data contract); their minutes define the grid.
        preds: a prediction CSV's rows: symbol, ts, ret_60m_pred, ret_60m_conf, rv_10m_pred.
        truth: simulator truth (true_ret_60m, true_var_10m) or None.
        baselines: symbol, ts and ``rv_<method>`` columns (har_rv, ewma) or None.
    """
    symbols = np.array(sorted(bars["symbol"].astype(str).unique()))
    ts = pd.DatetimeIndex(sorted(pd.to_datetime(bars["ts"], utc=True).unique()))
    q = _grid(bars, symbols, ts, ("bid", "ask"))
    mid = (q["bid"] + q["ask"]) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        hs = np.where(mid > 0, (q["ask"] - q["bid"]) / (2.0 * mid), np.nan)
    p = _grid(preds, symbols, ts, [c for c in ("ret_60m_pred", "ret_60m_conf", "rv_10m_pred") if c in preds])
    day = Day(date, symbols, ts, _ffill(mid), _ffill(hs), ret={"model": p["ret_60m_pred"]},
              vol={"model": p["rv_10m_pred"]}, conf=p.get("ret_60m_conf"))
    day.active = np.isfinite(p["ret_60m_pred"]) & np.isfinite(day.mid) & (day.mid > 0)
    if truth is not None and len(truth):
        tr = _grid(truth, symbols, ts, ("true_ret_60m", "true_var_10m"))
        day.ret["oracle"] = tr["true_ret_60m"]
        day.vol["oracle"] = np.sqrt(np.maximum(tr["true_var_10m"], 0.0))
    if baselines is not None and len(baselines):
        cols = [c for c in baselines.columns if c.startswith("rv_") and c != "rv_10m"]
        for c, a in _grid(baselines, symbols, ts, cols).items():
            day.vol[c[3:]] = a
    return day


# --- long-short ---------------------------------------------------------------------------------

def leg_weights(score: np.ndarray, ok: np.ndarray, quantile: float, conf: np.ndarray | None = None) -> np.ndarray:
    """Dollar-neutral weights [S]: top ``quantile`` long (+0.5 in all), bottom short (-0.5 in all).

    A name is held only where the forecast ranks it: where the legs meet in a tie (the lowest long
    score equals the highest short score) the tied names leave both legs, so a forecast with one
    value for every name (the zero return a forecaster serves without return skill) holds nothing
    instead of a book on symbol order. Other ties keep symbol order (a stable sort), so the book is
    deterministic. With fewer than two rankable names, or a leg emptied by ties, the book is flat.
    """
    w = np.zeros(score.shape[0])
    idx = np.flatnonzero(ok & np.isfinite(score))
    n = idx.size
    if n < 2:
        return w
    k = min(max(1, int(math.floor(quantile * n + 1e-9))), n // 2)
    order = idx[np.argsort(score[idx], kind="stable")]
    longs, shorts = order[-k:], order[:k]
    lowest_long, highest_short = score[longs[0]], score[shorts[-1]]
    if lowest_long <= highest_short:  # tied across the legs: those names are not ranked
        longs, shorts = longs[score[longs] > highest_short], shorts[score[shorts] < lowest_long]
        if not (longs.size and shorts.size):
            return w
    for leg, sign in ((longs, 0.5), (shorts, -0.5)):
        size = np.ones(leg.size) if conf is None else np.nan_to_num(conf[leg], nan=0.0).clip(min=0.0)
        size = size if size.sum() > 0 else np.ones(leg.size)
        w[leg] = sign * size / size.sum()
    return w


def long_short_day(day: Day, score: np.ndarray, cfg: BacktestConfig, conf: np.ndarray | None = None) -> pd.DataFrame:
    """One row per holding period: rebalance minute, gross, cost, net, traded notional, names held.

    Rebalances at the first minute with a forecast and every ``cfg.rebalance`` minutes after it;
    the last period ends at the session's last minute, where the book is closed (that exit is
    charged to the last period). Weights are reset to target at every rebalance.
    """
    S, T = day.shape
    ok = day.active
    cols = np.flatnonzero(ok.any(axis=0))
    rows: list[dict[str, Any]] = []
    if cols.size == 0:
        return pd.DataFrame(rows)
    fee = cfg.fee_bps * 1e-4
    hs = np.nan_to_num(day.half_spread, nan=0.0)
    w_prev = np.zeros(S)
    starts = list(range(int(cols[0]), T - 1, cfg.rebalance))
    for j, t in enumerate(starts):
        end = starts[j + 1] if j + 1 < len(starts) else T - 1
        w = leg_weights(score[:, t], ok[:, t], cfg.quantile, None if conf is None else conf[:, t])
        traded = np.abs(w - w_prev)
        cost = float(np.sum(traded * (hs[:, t] + fee)))
        if end == T - 1:  # flat at the close: the exit crosses the spread at the last minute
            traded_out = np.abs(w)
            cost += float(np.sum(traded_out * (hs[:, end] + fee)))
            traded = traded + traded_out
        with np.errstate(invalid="ignore", divide="ignore"):
            move = np.where(w != 0, day.mid[:, end] / day.mid[:, t] - 1.0, 0.0)
        gross = float(np.sum(w * np.nan_to_num(move, nan=0.0)))
        rows.append({"date": day.date, "ts": day.ts[t], "minute": t, "end_minute": end, "gross": gross,
                     "cost": cost, "net": gross - cost, "traded": float(traded.sum()),
                     "n_long": int((w > 0).sum()), "n_short": int((w < 0).sum())})
        w_prev = w
    return pd.DataFrame(rows)


def _empyrical():
    """empyrical-reloaded, imported when a summary is made (its import costs about a second)."""
    import empyrical

    return empyrical


def sharpe(x: np.ndarray, periods_per_year: float) -> float:
    """Annualised Sharpe ratio mean / std (ddof=1) * sqrt(periods a year) (``empyrical.sharpe_ratio``);
    NaN when undefined (fewer than two periods, or no variation)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size < 2 or not np.std(x, ddof=1) > 0:
        return float("nan")
    return float(_empyrical().sharpe_ratio(x, annualization=periods_per_year))


def max_drawdown(net: np.ndarray) -> float:
    """Largest fall of the compounded equity curve from its running peak, as a positive fraction
    (``empyrical.max_drawdown``, which reports it negative)."""
    net = np.asarray(net, dtype=np.float64)
    return max(0.0, float(-_empyrical().max_drawdown(net))) if net.size else 0.0  # no "-0.0" for a flat book


def annual_return(x: np.ndarray, periods_per_year: float) -> float:
    """Compounded annual growth rate of a series of period returns (``empyrical.annual_return``)."""
    x = np.asarray(x, dtype=np.float64)
    return float(_empyrical().annual_return(x, annualization=periods_per_year)) if x.size else float("nan")


def summarize_long_short(periods: pd.DataFrame, cfg: BacktestConfig) -> dict[str, float]:
    """Sharpe (gross, net), returns, cost, turnover, drawdown and hit rate of a period table.

    Returns and costs are fractions of the gross notional (long plus short legs = 1); the annual
    returns compound (empyrical's CAGR), the cost is also given in basis points a period and a day.
    """
    if periods.empty:
        return {"periods": 0}
    n_days = periods["date"].nunique()
    per_session = len(periods) / n_days
    ppy = cfg.sessions_per_year * per_session
    ep = _empyrical()
    names = periods["n_long"] + periods["n_short"]
    held = (names > 0).to_numpy()  # a flat period neither hits nor misses
    return {
        "periods": int(len(periods)), "days": int(n_days), "periods_per_session": per_session,
        "gross_sharpe": sharpe(periods["gross"], ppy), "net_sharpe": sharpe(periods["net"], ppy),
        "gross_return_ann": annual_return(periods["gross"], ppy), "net_return_ann": annual_return(periods["net"], ppy),
        "net_vol_ann": float(ep.annual_volatility(periods["net"].to_numpy(np.float64), annualization=ppy)),
        "cost_bps_per_period": float(periods["cost"].mean() * 1e4),
        "cost_bps_per_day": float(periods["cost"].sum() / n_days * 1e4),
        "turnover_per_period": float(periods["traded"].mean()),
        "turnover_per_day": float(periods["traded"].sum() / n_days),
        "max_drawdown": max_drawdown(periods["net"].to_numpy()),
        "hit_rate": float((periods["net"][held] > 0).mean()) if held.any() else float("nan"),
        "share_held": float(held.mean()),
        "avg_names": float(names.mean()),
    }


# --- volatility targeting -----------------------------------------------------------------------

def vol_target_day(day: Day, forecast: np.ndarray, rows: np.ndarray, cfg: BacktestConfig,
                   minutes_per_year: float) -> pd.DataFrame:
    """One row per (symbol, hold): position, realized / target volatility ratio, PnL, traded.

    A hold starts at the first minute with a forecast and every ``vol_hold`` minutes after it,
    and only complete holds are scored. ``rows`` [S, T] marks where every compared method has a
    usable forecast, so all methods are scored on the same rows.
    """
    S, T = day.shape
    h = cfg.vol_hold
    cols = np.flatnonzero(rows.any(axis=0))
    if cols.size == 0:
        return pd.DataFrame()
    target_min = cfg.target_vol / math.sqrt(minutes_per_year)  # per-minute target
    logmid = np.log(day.mid)
    starts = np.arange(int(cols[0]), T - h, h)
    if starts.size == 0:
        return pd.DataFrame()
    r = np.diff(logmid, axis=1)  # r[:, t] = log mid[t+1] - log mid[t]
    rv_hold = np.sqrt(np.stack([np.sum(r[:, t:t + h] ** 2, axis=1) for t in starts], axis=1))  # [S, K]
    fc = forecast[:, starts]
    ok = rows[:, starts] & np.isfinite(fc) & (fc > 0) & np.isfinite(rv_hold)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(ok, target_min * math.sqrt(RV_HORIZON) / fc, 0.0)  # forecast vol per minute * w = target
        ratio = np.where(ok, w * rv_hold / math.sqrt(h) / target_min, np.nan)
        pnl = np.where(ok, w * (day.mid[:, starts + h] / day.mid[:, starts] - 1.0), np.nan)
    w_prev = np.concatenate([np.zeros((S, 1)), w[:, :-1]], axis=1)
    traded = np.abs(w - w_prev)
    traded[:, -1] += np.abs(w[:, -1])  # flat at the end of the last hold
    si, ki = np.nonzero(ok)
    return pd.DataFrame({"date": day.date, "symbol": day.symbols[si], "minute": starts[ki], "position": w[si, ki],
                         "ratio": ratio[si, ki], "pnl": pnl[si, ki], "traded": traded[si, ki]})


def summarize_vol(holds: pd.DataFrame, cfg: BacktestConfig, minutes_per_year: float) -> dict[str, float]:
    """Realized vol of the scaled positions vs the target, tracking error, tails and turnover."""
    if holds.empty:
        return {"holds": 0}
    ratio = holds["ratio"].to_numpy()
    realized = cfg.target_vol * math.sqrt(np.mean(ratio**2))  # pooled RMS of the scaled returns
    per_sd = holds.groupby(["date", "symbol"])
    turnover = (per_sd["traded"].sum() / per_sd["position"].apply(lambda p: np.abs(p).mean())).mean()
    return {
        "holds": int(len(holds)), "target_vol": cfg.target_vol, "realized_vol": float(realized),
        "realized_over_target": float(realized / cfg.target_vol),
        "tracking_error": float(np.sqrt(np.mean((ratio - 1.0) ** 2))),
        "log_tracking_error": float(np.std(np.log(np.maximum(ratio, 1e-12)))),
        "median_ratio": float(np.median(ratio)),
        "share_beyond_1_5": float(np.mean(ratio > 1.5)),
        "turnover_per_day": float(turnover),
        "days": int(holds["date"].nunique()),
        "sharpe": sharpe(holds.groupby(["date", "minute"])["pnl"].sum(), minutes_per_year / cfg.vol_hold),
    }


# --- the whole backtest -------------------------------------------------------------------------

def zero_skill_scores(day: Day, seed: int) -> np.ndarray:
    """A random ranking per minute (seeded by date): the yardstick of no skill, same rows and costs."""
    rng = np.random.default_rng([seed, int(pd.Timestamp(day.date).strftime("%Y%m%d"))])
    return rng.standard_normal(day.shape)


def minutes_per_session(days: list[Day]) -> int:
    """The session length found in the data (the most common number of minutes a day)."""
    return int(pd.Series([d.shape[1] for d in days]).mode().iloc[0])


@dataclass
class BacktestResult:
    """Metrics by portfolio and method, the per-period tables behind them, and the settings."""

    config: BacktestConfig
    model: str
    dates: list[str]
    minutes_per_session: int
    long_short: dict[str, dict[str, float]]
    vol_target: dict[str, dict[str, float]]
    periods: dict[str, pd.DataFrame] = field(repr=False, default_factory=dict)
    holds: dict[str, pd.DataFrame] = field(repr=False, default_factory=dict)
    notes: list[str] = field(default_factory=list)
    differences: list[dict[str, Any]] = field(default_factory=list)  # model minus each yardstick, with CIs

    @property
    def gate_value(self) -> float:
        """The configured gate metric for the model (see :data:`GATE_METRICS`)."""
        return metric_value(self, self.config.gate_metric)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dates": self.dates, "minutes_per_session": self.minutes_per_session,
                "config": asdict(self.config), "long_short": self.long_short, "vol_target": self.vol_target,
                "gate": {"metric": self.config.gate_metric, "value": self.gate_value}, "notes": self.notes,
                "differences": self.differences,
                "uncertainty": {"method": f"day-block bootstrap (BCa, {BOOTSTRAP_RESAMPLES} resamples of whole "
                                          f"sessions), {CI_LEVEL:.0%} intervals",
                                "days": len(self.dates), "min_independent_days": MIN_INDEPENDENT_DAYS}}

    def table(self) -> pd.DataFrame:
        """One row per (portfolio, method) with the headline numbers and their 95% CIs (table.csv)."""
        rows = []
        for m, s in self.long_short.items():
            rows.append({"portfolio": "long-short", "method": m, **{k: s.get(k) for k in (
                "gross_sharpe", "net_sharpe", "net_return_ann", "cost_bps_per_day", "turnover_per_day",
                "max_drawdown", "hit_rate")}, **_ci_columns(s, ("net_sharpe", "net_return_ann"))})
        for m, s in self.vol_target.items():
            rows.append({"portfolio": "vol-target", "method": m, **{k: s.get(k) for k in (
                "realized_over_target", "tracking_error", "share_beyond_1_5", "turnover_per_day")},
                **_ci_columns(s, ("tracking_error",))})
        return pd.DataFrame(rows)


def _ci_columns(summary: Mapping[str, Any], figures: Iterable[str]) -> dict[str, float]:
    out = {}
    for f in figures:
        lo, hi = summary.get(f"{f}_ci") or (float("nan"), float("nan"))
        out[f"{f}_ci_lo"], out[f"{f}_ci_hi"] = lo, hi
    return out


def backtest_days(days: list[Day], cfg: BacktestConfig, model: str = "model") -> BacktestResult:
    """Run both portfolios over prepared days (the pure core; :func:`run_backtest` loads the lake)."""
    if not days:
        raise ValueError("backtest needs at least one day with bars and forecasts")
    mps = minutes_per_session(days)
    mpy = cfg.sessions_per_year * mps
    periods: dict[str, list[pd.DataFrame]] = {}
    holds: dict[str, list[pd.DataFrame]] = {}
    vol_methods = [m for m in VOL_METHODS if all(m in d.vol for d in days)]
    for d in days:
        scores = {"model": d.ret["model"], "zero_skill": zero_skill_scores(d, cfg.seed)}
        if "oracle" in d.ret:
            scores["oracle"] = d.ret["oracle"]
        for m, sc in scores.items():
            conf = d.conf if (cfg.confidence_weighted and m == "model") else None
            periods.setdefault(m, []).append(long_short_day(d, sc, cfg, conf))
        same = d.active.copy()
        for m in vol_methods:
            same &= np.isfinite(d.vol[m]) & (d.vol[m] > 0)
        for m in vol_methods:
            holds.setdefault(m, []).append(vol_target_day(d, d.vol[m], same, cfg, mpy))
    per = {m: pd.concat(v, ignore_index=True) for m, v in periods.items()}
    hol = {m: pd.concat(v, ignore_index=True) for m, v in holds.items()}
    notes = small_sample_notes(len(days))
    if "oracle" not in per:
        notes.append("no truth in the lake: no oracle portfolio")
    ls = {m: summarize_long_short(p, cfg) for m, p in per.items()}
    if ls.get("model", {}).get("share_held") == 0:
        notes.append("the model's return forecast ranks no name (one value for every name, e.g. the zero return "
                     "served without validated return skill): its long-short book is flat, not a measurement")
    vt = {m: summarize_vol(h, cfg, mpy) for m, h in hol.items()}
    ls_ci, ls_diff = long_short_uncertainty(per, ls, cfg)
    vt_ci, vt_diff = vol_uncertainty(hol, vt, cfg)
    for summaries, cis in ((ls, ls_ci), (vt, vt_ci)):
        for m, ci in cis.items():
            summaries[m].update(ci)
    return BacktestResult(cfg, model, [d.date for d in days], mps, ls, vt, per, hol, notes, ls_diff + vt_diff)


# --- loading from the lake ----------------------------------------------------------------------

def read_predictions(lake: Lake, model: str, version: str, date: str) -> pd.DataFrame:
    """One date's prediction CSV (symbol, ts, PRED_COLUMNS ...)."""
    url = lake.predictions(model, version, date)
    try:
        body = storage.read_bytes(url, lake.storage_options)
    except FileNotFoundError:
        raise FileNotFoundError(f"no predictions for {date} at {url}: run `hfcast predict --dates {date}` first") from None
    df = pd.read_csv(io.BytesIO(body))
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return df


def prediction_dates(lake: Lake, model: str, version: str) -> list[str]:
    """Dates with a prediction CSV for ``model/version``."""
    folder = storage.join(lake.url, "predictions", model, str(version))
    names = storage.listdir(folder, lake.storage_options)
    return sorted(n[len("date="):-len(".csv")] for n in names if n.startswith("date=") and n.endswith(".csv"))


def _session_dates(ts: pd.Series) -> np.ndarray:
    """ISO session date (exchange time) of each timestamp, computed once per distinct day."""
    day = pd.DatetimeIndex(ts).tz_convert(EXCHANGE_TZ).normalize()
    codes, uniq = pd.factorize(day)
    return np.asarray([u.date().isoformat() for u in uniq], dtype=object)[codes]


def baseline_vols(lake: Lake, dates: list[str], fit_days: int = 5, names: tuple[str, ...] = ("har_rv", "ewma"),
                  require_history: bool = False) -> tuple[pd.DataFrame | None, list[str]]:
    """Baseline 10-minute vol forecasts for ``dates`` (symbol, ts, ``rv_<name>`` for each of ``names``).

    The baselines are fitted on up to ``fit_days`` feature dates BEFORE the first date; when the
    lake has none, they are fitted on the dates themselves and a note says so (in-sample
    coefficients flatter the baseline, never the model), unless ``require_history`` (then None).
    Returns (frame or None, notes).
    """
    from hfcast.features.windows import build_windows
    from hfcast.models.baselines import LAST_ROW_FEATURES, RETURN_FEATURE, Baseline, baseline_inputs

    have = lake.dates("features")
    if not set(dates) <= set(have):
        return None, [f"no features for some dates: {', '.join(names)} left out"]
    before = [d for d in have if d < dates[0]][-fit_days:]
    if not before and require_history:
        return None, [f"no features before {dates[0]} to fit {', '.join(names)} on"]
    notes = [] if before else [f"{', '.join(names)} fitted on the backtest dates themselves (no earlier features)"]
    # the baselines read the 30-minute window's own features, as the served forecaster does
    feats = [RETURN_FEATURE, *LAST_ROW_FEATURES]
    df = pd.concat([lake.read("features", d, ["symbol", "ts", *feats, "ret_60m", "rv_10m"]) for d in [*before, *dates]],
                   ignore_index=True)
    df["symbol"] = df["symbol"].astype(str)
    df = df.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    wa = build_windows(df, feats, market=lake.market)
    inp = baseline_inputs(wa, df)
    inp["symbol"], inp["ts"] = df["symbol"].to_numpy()[wa.ends], df["ts"].to_numpy()[wa.ends]
    days = pd.Series(_session_dates(df["ts"].iloc[wa.ends]), index=inp.index)
    fit = inp[days.isin(before)] if before else inp
    test = inp[days.isin(dates)]
    out = test[["symbol", "ts"]].copy()
    out["ts"] = df["ts"].iloc[test.index].to_numpy()
    out["date"] = days[test.index]
    for name in names:
        b = Baseline(name).fit(fit, fit)
        out[f"rv_{name}"] = b.predict(test)["rv_10m_pred"].to_numpy()
    return out, notes


def load_days(lake: Lake, model: str, version: str | Mapping[str, str], dates: list[str],
              with_baselines: bool = True) -> tuple[list[Day], list[str]]:
    """Days for the backtest: bars (validated/, else raw/), predictions, truth and baselines.

    ``version``: one version for every date, or ``{date: version}``, the version that served each
    date (a replay's champion of the moment: what a user of the default path actually got).
    """
    notes: list[str] = []
    base, more = baseline_vols(lake, dates) if with_baselines else (None, [])
    notes += more
    by_date = dict(tuple(base.groupby("date", sort=False))) if base is not None else {}
    days = []
    for d in dates:
        src = "validated" if lake.exists("validated", d) else "raw"
        bars = lake.read(src, d, ["symbol", "ts", "bid", "ask"])
        truth = lake.read("truth", d) if lake.exists("truth", d) else None
        v = version[d] if isinstance(version, Mapping) else version
        days.append(make_day(d, bars, read_predictions(lake, model, v, d), truth, by_date.get(d)))
    return days, notes


def run_backtest(lake: Lake, model: str, version: str | Mapping[str, str], dates: str | list[str] | None = None,
                 cfg: BacktestConfig | None = None, out_dir: str | Path | None = None) -> BacktestResult:
    """Backtest ``model/version``'s prediction CSVs (the function behind ``hfcast backtest``).

    Args:
        lake: where the bars, truth, features and predictions live.
        model, version: the prediction folder ``predictions/<model>/<version>/``; or ``{date:
            version}`` for the versions that served each date (:func:`load_days`).
        dates: ``"A..B"``, ``"A,B"``, a list, or None for every date with predictions.
        cfg: portfolio rules.
        out_dir: a local folder for backtest.json, table.csv and the plots (None: none written).
    """
    cfg = cfg or BacktestConfig()
    if isinstance(version, Mapping):
        available = sorted(d for d, v in version.items() if d in set(prediction_dates(lake, model, v)))
        label = f"{model} served ({', '.join(f'v{v}' for v in dict.fromkeys(version[d] for d in available))})"
    else:
        available, label = prediction_dates(lake, model, version), f"{model}/{version}"
    date_list = available if dates is None else parse_dates(dates, available)
    if not date_list:
        raise ValueError(f"no prediction dates for {label} in {dates!r} "
                         f"({len(available)} available under {lake.url}/predictions/{model})")
    days, notes = load_days(lake, model, version, date_list)
    result = backtest_days(days, cfg, label)
    result.notes = notes + result.notes
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


# --- outputs ------------------------------------------------------------------------------------

def write_outputs(result: BacktestResult, out_dir: str | Path) -> dict[str, Path]:
    """backtest.json, table.csv, equity.png and tracking.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "backtest.json", "table": out / "table.csv"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1, default=_json_default) + "\n")
    result.table().to_csv(paths["table"], index=False, float_format="%.6g")
    paths["equity"] = plot_equity(result, out / "equity.png")
    paths["tracking"] = plot_tracking(result, out / "tracking.png")
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def _date_ticks(ax: Any, dates: np.ndarray, max_labels: int = 10) -> None:
    """Label a period-index axis with the session date at each day's first period (at most
    ``max_labels``, evenly thinned): a datetime axis would draw the nights and weekends as flat gaps."""
    first = np.flatnonzero(np.r_[True, dates[1:] != dates[:-1]])
    step = max(1, int(math.ceil(len(first) / max_labels)))
    ax.set_xticks(first[::step], [str(dates[i]) for i in first[::step]], rotation=30, ha="right", fontsize=8)


def plot_equity(result: BacktestResult, path: Path) -> Path:
    """Cumulative net (solid) and gross (dotted) return of each long-short book, by session date,
    with the 95% band a book of the model's day-to-day volatility but no edge would stay in."""
    from matplotlib.ticker import PercentFormatter

    with png_figure(path, (9, 4.8)) as (_, ax):
        dates = None
        for m, p in result.periods.items():
            if p.empty:
                continue
            s = result.long_short[m]
            lo, hi = s.get("net_sharpe_ci") or (float("nan"), float("nan"))
            line, = ax.plot(100 * np.cumsum(p["net"].to_numpy()), lw=1.4,
                            label=f"{m} net (Sharpe {s['net_sharpe']:.2f}, 95% CI {lo:.1f} to {hi:.1f})")
            ax.plot(100 * np.cumsum(p["gross"].to_numpy()), ls=":", color=line.get_color(), label=f"{m} gross")
            if m == "model":
                dates = p["date"].to_numpy()
                daily = p.groupby("date", sort=False)["net"].sum()
                k = pd.Series(np.arange(1, len(daily) + 1), index=daily.index)[dates].to_numpy()
                band = 196 * float(daily.std(ddof=1)) * np.sqrt(k) if len(daily) > 1 else np.zeros(len(k))
                ax.fill_between(np.arange(len(k)), -band, band, color="grey", alpha=0.18, lw=0,
                                label="95% band of a no-edge book with the model's daily volatility")
        ax.axhline(0, color="grey", lw=0.6)
        if dates is not None:
            _date_ticks(ax, dates)
        ax.yaxis.set_major_formatter(PercentFormatter(decimals=1))
        ax.set_xlabel(f"session date (holding periods of {result.config.rebalance} min, nights left out)")
        ax.set_ylabel("cumulative return, % of gross notional")
        ax.set_title(f"long-short on ret_60m - {result.model}, {result.dates[0]}..{result.dates[-1]} "
                     f"({len(result.dates)} days)", fontsize=10)
        ax.legend(fontsize=7)
    return path


def plot_tracking(result: BacktestResult, path: Path) -> Path:
    """Realized / target volatility by time of day (median and 90% quantile) for each method."""
    with png_figure(path, (9, 4.5)) as (_, ax):
        for m, h in result.holds.items():
            if h.empty:
                continue
            g = h.groupby("minute")["ratio"]
            lo, hi = result.vol_target[m].get("tracking_error_ci") or (float("nan"), float("nan"))
            line, = ax.plot(g.median().index, g.median().to_numpy(),
                            label=f"{m} median (TE {result.vol_target[m]['tracking_error']:.2f}, 95% CI "
                                  f"{lo:.2f} to {hi:.2f})")
            ax.plot(g.quantile(0.9).index, g.quantile(0.9).to_numpy(), ls=":", color=line.get_color())
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(1.5, color="red", lw=0.8, ls="--", label="1.5x target")
        ax.set_xlabel(f"hold start, minutes after the session's first minute "
                      f"({result.dates[0]}..{result.dates[-1]} pooled)")
        ax.set_ylabel("realized / target volatility (ratio, 1 = on target)")
        ax.set_title(f"volatility targeting ({result.config.target_vol:.0%} a year) - dotted: 90% quantile",
                     fontsize=10)
        ax.legend(fontsize=7)
    return path


def _pct(v: Any, digits: int = 1) -> str:
    return f"{100 * v:.{digits}f}%" if isinstance(v, float) and np.isfinite(v) else "-"


def _num(v: Any, digits: int = 2) -> str:
    return f"{v:.{digits}f}" if isinstance(v, float) and np.isfinite(v) else "-"


def _ci(pair: Any, fmt: Any = _num) -> str:
    lo, hi = pair if pair else (float("nan"), float("nan"))
    return f"{fmt(lo)} .. {fmt(hi)}" if np.isfinite(lo) and np.isfinite(hi) else "-"


def terminal_tables(result: BacktestResult) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` of the tables ``hfcast backtest`` prints, every cell a short string
    so that the three tables fit 100 columns (annual returns compound; costs in basis points of the
    gross notional a day)."""
    days = f"{len(result.dates)} day(s), {result.dates[0]}..{result.dates[-1]}"
    ls = [[m, _num(s.get("gross_sharpe")), _num(s.get("net_sharpe")), _ci(s.get("net_sharpe_ci")),
           _pct(s.get("net_return_ann")), _num(s.get("cost_bps_per_day"), 1), _num(s.get("turnover_per_day"), 1),
           _pct(s.get("max_drawdown")), _pct(s.get("hit_rate"), 0)] for m, s in result.long_short.items()]
    vt = [[m, _num(s.get("realized_over_target")), _num(s.get("tracking_error")), _ci(s.get("tracking_error_ci")),
           _pct(s.get("share_beyond_1_5")), _num(s.get("turnover_per_day"), 1)] for m, s in result.vol_target.items()]
    fmt = {"net_sharpe": ("net Sharpe", _num), "net_return_ann": ("net ann. return", _pct),
           "tracking_error": ("tracking error", _num)}
    diff = [[d["book"].replace("_", "-"), d["yardstick"], fmt[d["figure"]][0], fmt[d["figure"]][1](d["difference"]),
             _ci(d["ci"], fmt[d["figure"]][1])] for d in result.differences]
    return [(f"long-short {result.model}: {days}, rebalanced every {result.config.rebalance} min",
             ["method", "gross SR", "net SR", "net SR 95% CI", "ann. ret", "cost bp/d", "turn/d", "max DD", "hit"], ls),
            (f"vol-target {result.model}: {result.config.target_vol:.0%} a year, {result.config.vol_hold}-min holds",
             ["method", "real./target", "TE", "TE 95% CI", ">1.5x", "turn/d"], vt),
            ("model minus yardstick, same days (95% day-block bootstrap CI)",
             ["book", "yardstick", "figure", "model - yardstick", "95% CI"], diff)]


HEADLINE_KEYS = ("net_sharpe", "gross_sharpe", "max_drawdown", "tracking_error", "share_beyond_1_5")


def headline_metrics(result: BacktestResult) -> dict[str, float]:
    """``{book}_{method}_{key}`` for each book (``ls``, ``vol``), method and :data:`HEADLINE_KEYS`
    value the method has: the flat numbers a pipeline's metrics panel shows. An undefined figure (a
    flat book's Sharpe) is left out: Kubeflow's metrics cannot carry NaN (the step would fail)."""
    out: dict[str, float] = {}
    for book, summary in (("ls", result.long_short), ("vol", result.vol_target)):
        for method, values in summary.items():
            for key in HEADLINE_KEYS:
                if isinstance(values.get(key), float) and math.isfinite(values[key]):
                    out[f"{book}_{method}_{key}"] = values[key]
    return out


def split_model_ref(ref: str) -> tuple[str, str]:
    """``NAME/VERSION`` -> ``(NAME, VERSION)``: the prediction folder ``predictions/<NAME>/<VERSION>``."""
    if "/" not in ref:
        raise ValueError(f"model_ref must be NAME/VERSION (a predictions/<NAME>/<VERSION> folder), got {ref!r}")
    name, version = ref.split("/", 1)
    return name, version


def equity_html(png_path: str | Path, title: str) -> str:
    """A one-image HTML page with the equity plot inlined (what the Kubeflow UI shows)."""
    png = base64.b64encode(Path(png_path).read_bytes()).decode()
    return f'<html><body><h3>{title}</h3><img src="data:image/png;base64,{png}"></body></html>'


def gate_check(challenger: BacktestResult, champion: BacktestResult, metric: str | None = None,
               margin: float = 0.0) -> dict[str, Any]:
    """Pass when the challenger does not lose more than ``margin`` on the gate metric.

    Both results must come from the same dates and rules; a NaN on either side fails (the
    comparison cannot be made, so the safe answer is no).
    """
    metric = metric or challenger.config.gate_metric
    if challenger.dates != champion.dates:
        raise ValueError("challenger and champion were backtested on different dates")
    c, r = metric_value(challenger, metric), metric_value(champion, metric)
    higher = GATE_METRICS[metric]
    gain = (c - r) if higher else (r - c)
    ok = bool(np.isfinite(c) and np.isfinite(r) and gain >= -margin)
    out = {"metric": metric, "challenger": c, "champion": r, "improvement": gain, "margin": margin, "passed": ok}
    undefined = [(who, res) for who, v, res in (("challenger", c, challenger), ("champion", r, champion))
                 if not np.isfinite(v)]
    if undefined:
        missing = [who for who, _ in undefined]
        flat = [who for who, res in undefined
                if not metric.startswith("vol_") and res.long_short.get("model", {}).get("share_held") == 0]
        out["reason"] = (f"{metric} is not defined for the {' and the '.join(missing)}"
                         + (f" (a flat long-short book: the {' and the '.join(flat)}'s return forecast ranks no "
                            f"name); compare the volatility with --gate-metric vol_tracking_error" if flat else ""))
    return out


def metric_value(result: BacktestResult, metric: str) -> float:
    """The model's value of a :data:`GATE_METRICS` name (``vol_*`` read the vol-targeting book)."""
    if metric not in GATE_METRICS:
        raise ValueError(f"unknown gate metric {metric!r}; choose from {sorted(GATE_METRICS)}")
    if metric.startswith("vol_"):
        return float(result.vol_target.get("model", {}).get(metric[4:], float("nan")))
    return float(result.long_short.get("model", {}).get(metric, float("nan")))


@dataclass
class GatedBacktest:
    """A backtest, and the comparison with the champion's when one was asked for."""

    result: BacktestResult
    out_dir: Path                       # the report folder (backtest.json, table.csv, equity.png, tracking.png)
    gate: dict[str, Any] | None = None  # gate_check's answer; None = no gate

    @property
    def passed(self) -> bool:
        """Whether the gate passed (True when there is none)."""
        return self.gate is None or bool(self.gate["passed"])

    def metrics(self) -> dict[str, float]:
        """The headline figures (what a pipeline step logs)."""
        return headline_metrics(self.result)

    def metadata(self) -> dict[str, Any]:
        """What a pipeline step's metrics artifact says beside the figures."""
        r = self.result
        value = r.gate_value
        doc = {"model": r.model, "dates": f"{r.dates[0]}..{r.dates[-1]}", "gate_metric": r.config.gate_metric,
               "gate_value": value if math.isfinite(value) else None, "notes": "; ".join(r.notes)}
        if self.gate is not None:  # NaN as null: strict JSON, which Kubeflow's metadata needs
            doc["gate"] = json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                      for k, v in self.gate.items()}, default=float, allow_nan=False)
        return doc

    def equity_page(self) -> str:
        """The equity plot as a one-image HTML page (what the Kubeflow UI shows)."""
        return equity_html(self.out_dir / "equity.png", self.result.model)


def backtest_against(settings: Settings, model: str, dates: str | list[str] | None, out_dir: str | Path,
                     against: str | None = None, margin: float = 0.0, lake: Lake | None = None,
                     cfg: BacktestConfig | None = None) -> GatedBacktest:
    """Backtest the ``NAME/VERSION`` prediction folder ``model`` and, with ``against``, the champion's
    on the same dates with the same rules, then :func:`gate_check` (``hfcast backtest --gate-against``
    and the batch pipeline's backtest step).

    Args:
        dates: ``"A..B"``, ``"A,B"``, a list, or None for every date with predictions.
        out_dir: the report folder; the champion's goes to ``<out_dir>/champion``.
        lake: the lake (default: the settings').
        cfg: the rules (default: params.yaml ``backtest:``).
    """
    lake = lake or Lake.from_settings(settings)
    cfg = cfg or settings.section(BacktestConfig)
    name, version = split_model_ref(model)
    result = run_backtest(lake, name, version, dates, cfg, out_dir)
    gate = None
    if against:
        cname, cversion = split_model_ref(against)
        champion = run_backtest(lake, cname, cversion, result.dates, cfg, Path(out_dir) / "champion")
        gate = gate_check(result, champion, margin=margin)
    return GatedBacktest(result, Path(out_dir), gate)
