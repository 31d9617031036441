"""Computation of every catalogue feature on one session's [S, T] panel, vectorised over symbols.

T is that day's session length from the market calendar (390 on a regular XNYS day).

Each ``_group`` function returns ``{name: [S, T] float64}`` for the names its catalogue group
declares (formulas in ``hfcast.features.catalog``). Quote groups are called only when the
source has quotes. The engine checks that the names computed equal the catalogue's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hfcast.features import ops
from hfcast.features.catalog import feature_names

_LN2x4 = 4.0 * np.log(2.0)


@dataclass
class Panel:
    """One session on the minute grid; every array is [S, T] float64 unless noted.

    Prices and quotes are forward-filled over missing bars; volume / trades are 0 there;
    ``vwap`` is NaN there (the bar has no trades of its own).
    """

    mid: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    bid_size: np.ndarray
    ask_size: np.ndarray
    last: np.ndarray
    volume: np.ndarray
    trades: np.ndarray
    vwap: np.ndarray
    mid_high: np.ndarray
    mid_low: np.ndarray
    present: np.ndarray  # bool [S, T]: a bar existed for this minute
    minute: np.ndarray  # int [T]: minute of session

    def __post_init__(self) -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            self.p = np.log(self.mid)
        self.r = ops.lag_diff(self.p, 1)
        self.r2_prefix = ops.Prefix(self.r * self.r)  # shared by rv_*, har_rv_today


def _returns(pn: Panel) -> dict[str, np.ndarray]:
    out = {f"past_ret_{k}m": ops.lag_diff(pn.p, k) for k in (1, 5, 15, 30, 60)}
    out["ret_since_open"] = ops.lag_diff(pn.p, pn.p.shape[1])
    return out


def _spread(pn: Panel) -> dict[str, np.ndarray]:
    sbps = 1e4 * (pn.ask - pn.bid) / ((pn.ask + pn.bid) / 2.0)
    return {"spread_bps": sbps, "spread_z30": ops.zscore(sbps, 30), "spread_chg_5m": ops.lag_diff(sbps, 5)}


def _microprice(pn: Panel) -> dict[str, np.ndarray]:
    qmid = (pn.ask + pn.bid) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        micro = (pn.bid * pn.ask_size + pn.ask * pn.bid_size) / (pn.bid_size + pn.ask_size)
        return {"microprice_dev_bps": 1e4 * (micro - qmid) / qmid,
                "microprice_ret_1m": ops.lag_diff(np.log(micro), 1)}


def _depth(pn: Panel) -> dict[str, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        imb = (pn.bid_size - pn.ask_size) / (pn.bid_size + pn.ask_size)
    return {"log_bid_size": np.log1p(pn.bid_size), "log_ask_size": np.log1p(pn.ask_size),
            "depth_imbalance": imb, "depth_imbalance_ma5": ops.roll_mean(imb, 5)}


def _ofi(pn: Panel) -> dict[str, np.ndarray]:
    b, a, qb, qa = pn.bid, pn.ask, pn.bid_size, pn.ask_size
    b1, a1, qb1, qa1 = ops.lag(b), ops.lag(a), ops.lag(qb), ops.lag(qa)
    e = (np.where(b >= b1, qb, 0.0) - np.where(b <= b1, qb1, 0.0)
         - np.where(a <= a1, qa, 0.0) + np.where(a >= a1, qa1, 0.0))
    e = np.where(np.isnan(b1) | np.isnan(a1) | np.isnan(b) | np.isnan(a), np.nan, e)
    pe, pd_ = ops.Prefix(e), ops.Prefix((qb + qa) / 2.0)
    out = {}
    for k in (1, 5, 15):
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"ofi_{k}m"] = np.where(pe.count(k) > 0, pe.sum(k) / pd_.mean(k), np.nan)
    return out


def _volume(pn: Panel) -> dict[str, np.ndarray]:
    lv, lt = np.log1p(pn.volume), np.log1p(pn.trades)
    with np.errstate(invalid="ignore", divide="ignore"):
        pv = ops.Prefix(pn.volume)
        m30 = pv.mean(30)
        ratio = np.where(m30 > 0, pv.mean(5) / m30, np.nan)
        ats = np.log1p(pn.volume / np.maximum(pn.trades, 1.0))
    cum = np.cumsum(np.nan_to_num(pn.volume), axis=1)
    return {"log_volume": lv, "volume_z30": ops.zscore(lv, 30), "log_trades": lt,
            "trades_z30": ops.zscore(lt, 30), "volume_ratio_5_30": ratio,
            "log_avg_trade_size": ats, "log_cum_volume": np.log1p(cum)}


def high_low(pn: Panel) -> tuple[np.ndarray, np.ndarray]:
    """Bar high / low of the mid, falling back to max / min of this and the previous mid."""
    prev = ops.lag(pn.mid)
    prev = np.where(np.isnan(prev), pn.mid, prev)
    hi = np.where(np.isnan(pn.mid_high), np.fmax(pn.mid, prev), pn.mid_high)
    lo = np.where(np.isnan(pn.mid_low), np.fmin(pn.mid, prev), pn.mid_low)
    return hi, lo


def _volatility(pn: Panel) -> dict[str, np.ndarray]:
    r2 = pn.r * pn.r
    p2 = pn.r2_prefix
    out = {f"rv_{k}m": np.sqrt(k * p2.mean(k)) for k in (5, 15, 30, 60)}
    hi, lo = high_low(pn)
    with np.errstate(invalid="ignore", divide="ignore"):
        pk = np.log(hi / lo) ** 2 / _LN2x4
        out["range_bps_1m"] = 1e4 * (hi - lo) / pn.mid
    ppk = ops.Prefix(pk)
    out.update({f"park_{k}m": np.sqrt(k * ppk.mean(k)) for k in (5, 15, 30)})
    pbp = ops.Prefix(np.abs(pn.r) * np.abs(ops.lag(pn.r)))
    out.update({f"bpv_{k}m": np.sqrt(k * np.pi / 2.0 * pbp.mean(k)) for k in (15, 30)})
    with np.errstate(invalid="ignore", divide="ignore"):
        jr = np.maximum(0.0, 1.0 - out["bpv_30m"] ** 2 / out["rv_30m"] ** 2)
    out["jump_ratio_30m"] = np.where(out["rv_30m"] == 0, 0.0, jr)
    for h in (10, 60):
        out[f"ewma_vol_{h}"] = np.sqrt(ops.ewm(r2, ops.halflife_alpha(h)))
    return out


@dataclass(frozen=True)
class DailyHistory:
    """[S] carried daily state of each symbol before the session (NaN: no history).

    ``rv_d``: the previous day's realized variance; ``rv_w``, ``rv_m``: mean daily RV of the last
    <= 5 and <= 22 sessions; ``ac1_m``: mean over the last <= 22 sessions of each day's first-order
    autocorrelation of the one-minute returns (:func:`daily_values`).
    """

    rv_d: np.ndarray
    rv_w: np.ndarray
    rv_m: np.ndarray
    ac1_m: np.ndarray

    @classmethod
    def empty(cls, n: int) -> "DailyHistory":
        return cls(*(np.full(n, np.nan) for _ in range(4)))


def daily_values(pn: Panel) -> tuple[np.ndarray, np.ndarray]:
    """[S] realized variance of the whole session (sum of r^2; NaN for a symbol with no return) and
    [S] first-order autocorrelation of its one-minute returns, ``sum r_s r_(s-1) / sum r_s^2``
    (about zero mean; NaN without a non-zero return): near -0.5 where quote noise (bid-ask bounce)
    dominates the mid's minute moves, near 0 for an efficient price."""
    r = np.nan_to_num(pn.r)
    rv = (r * r).sum(axis=1)
    num = (r[:, 1:] * r[:, :-1]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ac1 = np.where(rv > 0, num / rv, np.nan)
    rv[~np.isfinite(pn.r).any(axis=1)] = np.nan
    return rv, ac1


def _har(pn: Panel, hist: DailyHistory) -> dict[str, np.ndarray]:
    shape = pn.mid.shape
    s, n = pn.r2_prefix.sum(shape[1]), pn.r2_prefix.count(shape[1])

    def daily(v: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.asarray(v, np.float64)[:, None], shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        today = np.sqrt(np.where(n > 0, shape[1] * s / n, np.nan))
        w = daily(np.sqrt(hist.rv_w))
        return {"har_rv_d": daily(np.sqrt(hist.rv_d)), "har_rv_w": w, "har_rv_m": daily(np.sqrt(hist.rv_m)),
                "har_rv_today": today, "har_today_ratio": today / w, "noise_ac1_m": daily(hist.ac1_m)}


def _technical(pn: Panel) -> dict[str, np.ndarray]:
    a = 1.0 / 14.0
    up, dn = ops.ewm(np.maximum(pn.r, 0.0), a), ops.ewm(np.maximum(-pn.r, 0.0), a)  # NaN stays NaN
    with np.errstate(invalid="ignore", divide="ignore"):
        rsi = np.where(up + dn > 0, 100.0 * up / (up + dn), 50.0)
        rsi = np.where(np.isnan(up + dn), np.nan, rsi)
        macd = 1e4 * (ops.ewm(pn.mid, ops.span_alpha(12)) - ops.ewm(pn.mid, ops.span_alpha(26))) / pn.mid
        sig = ops.ewm(macd, ops.span_alpha(9))
        m, sd, const = ops.roll_mean_std(pn.mid, 20)
        pctb = np.where(const, 0.5, (pn.mid - m + 2.0 * sd) / (4.0 * sd))
    pctb = np.where(np.isnan(pn.mid), np.nan, pctb)
    return {"rsi_14": rsi, "macd_bps": macd, "macd_signal_bps": sig, "macd_hist_bps": macd - sig,
            "bb_pctb_20": pctb}


def _location(pn: Panel, quotes: bool) -> dict[str, np.ndarray]:
    vol = np.nan_to_num(pn.volume)
    px = np.where(np.isnan(pn.vwap), pn.mid, pn.vwap)
    cpv = np.cumsum(np.where(vol > 0, px * vol, 0.0), axis=1)
    cv = np.cumsum(vol, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap_s = np.where(cv > 0, cpv / cv, np.nan)
        out = {"vwap_dist_bps": 1e4 * (pn.mid - vwap_s) / vwap_s,
               "bar_vwap_dist_bps": 1e4 * (pn.mid - pn.vwap) / pn.mid}
        if quotes:
            out["last_mid_dist_bps"] = 1e4 * (pn.last - pn.mid) / pn.mid
    return out


def _time(pn: Panel) -> dict[str, np.ndarray]:
    """Time of day from that day's actual session: m / n of the way through it, n - 1 - m to its close."""
    m = pn.minute.astype(float)[None, :]
    shape = pn.mid.shape
    n = float(shape[1])
    ang = 2.0 * np.pi * m / n
    return {"tod_sin": np.broadcast_to(np.sin(ang), shape), "tod_cos": np.broadcast_to(np.cos(ang), shape),
            "minutes_to_close": np.broadcast_to(n - 1.0 - m, shape)}


def _cross_section(done: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k in (1, 15):
        mkt = ops.xs_mean(done[f"past_ret_{k}m"])
        out[f"mkt_ret_{k}m"] = np.broadcast_to(mkt, done[f"past_ret_{k}m"].shape)
        out[f"excess_ret_{k}m"] = done[f"past_ret_{k}m"] - mkt
    out["rank_ret_15m"] = ops.xs_pct_rank(done["past_ret_15m"])
    return out


def compute_features(pn: Panel, hist: DailyHistory, quotes: bool) -> dict[str, np.ndarray]:
    """All catalogue features of one session, keyed by name, in catalogue order.

    Args:
        pn: the session panel (see :class:`Panel`).
        hist: each symbol's carried daily state (:class:`DailyHistory`; NaN: no history).
        quotes: whether the source has quotes; quote features are not computed otherwise.

    Raises:
        RuntimeError: the computed names differ from the catalogue (a programming error).
    """
    done: dict[str, np.ndarray] = {}
    done.update(_returns(pn))
    if quotes:
        for fn in (_spread, _microprice, _depth, _ofi):
            done.update(fn(pn))
    for fn in (_volume, _volatility):
        done.update(fn(pn))
    done.update(_har(pn, hist))
    done.update(_technical(pn))
    done.update(_location(pn, quotes))
    done.update(_time(pn))
    done.update(_cross_section(done))
    done["bar_missing"] = (~pn.present).astype(float)
    names = feature_names(quotes)
    if set(done) != set(names):
        raise RuntimeError(f"computed features differ from the catalogue: missing {sorted(set(names) - set(done))}, "
                           f"extra {sorted(set(done) - set(names))}")
    return {n: done[n] for n in names}
