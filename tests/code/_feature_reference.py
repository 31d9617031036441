"""Slow, obviously-correct reference features (pandas, per symbol-day) and a random bar generator.

Written independently of hfcast.features.ops/compute: pandas reindex + ffill for the grid,
``Series.rolling(w, min_periods=1)`` for windows, ``Series.ewm(adjust=False)`` for EWMAs, python
loops for OFI and the cross-sectional rank. It follows the registry's formula text. Also the
"straightforward pandas groupby-rolling" side of bench/bench_featurize.py.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from hfcast.data import schema

T = 390


def make_bars(n_symbols: int, date: str, seed: int = 0, missing_frac: float = 0.03, quotes: bool = True,
              late_start: bool = True) -> pd.DataFrame:
    """Random-walk mids on a 1-cent grid with sizes, volumes and trades; some bars dropped."""
    rng = np.random.default_rng(seed)
    grid = schema.session_minutes_utc(date)
    frames = []
    for i in range(n_symbols):
        p0 = rng.uniform(20, 200)
        ticks = np.round(p0 * 100 + np.cumsum(rng.normal(0, 0.08 * p0, T))).clip(100)
        half = rng.choice([1, 1, 1, 2, 3], T)
        bid, ask = (ticks - half) / 100, (ticks + half) / 100
        vol = rng.poisson(rng.uniform(50, 3000), T).astype(float)
        trades = np.minimum(vol, rng.poisson(20, T)).astype(float)
        mid = (bid + ask) / 2
        df = pd.DataFrame({
            "symbol": f"S{i:03d}", "ts": grid, "bid": bid, "ask": ask,
            "bid_size": rng.integers(1, 50, T) * 100.0, "ask_size": rng.integers(1, 50, T) * 100.0,
            "last": np.where(rng.random(T) < 0.5, bid, ask), "volume": vol, "trades": trades,
            "vwap": np.where(vol > 0, mid + rng.normal(0, 0.005, T), np.nan),
            "mid_high": mid + rng.uniform(0, 0.05, T), "mid_low": mid - rng.uniform(0, 0.05, T)})
        keep = rng.random(T) >= missing_frac
        if late_start and i == 1:
            keep[:7] = False  # a symbol whose first bar of the day comes late
        frames.append(df[keep])
    bars = pd.concat(frames, ignore_index=True)
    if not quotes:
        bars[["bid", "ask", "bid_size", "ask_size"]] = np.nan
    return schema.conform(bars)


def _grid(g: pd.DataFrame, grid: pd.DatetimeIndex) -> pd.DataFrame:
    g = g.set_index("ts").reindex(grid)
    out = pd.DataFrame(index=grid)
    out["present"] = g["symbol"].notna()
    mid = ((g["bid"] + g["ask"]) / 2).fillna(g["last"])
    out["mid"] = mid.ffill()
    for c in ("bid", "ask", "bid_size", "ask_size", "last"):
        out[c] = g[c].ffill()
    for c in ("volume", "trades"):
        out[c] = g[c].where(out["present"], 0.0) if g[c].notna().any() else g[c]
    for c in ("vwap", "mid_high", "mid_low"):
        out[c] = g[c]
    return out


def _lagdiff(x: pd.Series, k: int) -> pd.Series:
    f = x.first_valid_index()
    fi = len(x) if f is None else x.index.get_loc(f)
    vals = x.to_numpy()
    out = [vals[t] - vals[max(t - k, fi)] if t > fi else np.nan for t in range(len(x))]
    return pd.Series(out, index=x.index, dtype=float)


def _roll(x: pd.Series, w: int) -> pd.core.window.Rolling:
    return x.rolling(w, min_periods=1)


def _z(x: pd.Series, w: int) -> pd.Series:
    r = _roll(x, w)
    const = r.max() == r.min()
    z = (x - r.mean()) / r.std(ddof=0)
    return z.where(~(const & x.notna()), 0.0)


def _one_symbol(g: pd.DataFrame, prev: tuple[float, float, float, float], quotes: bool) -> dict[str, pd.Series]:
    rv_d, rv_w, rv_m, ac1_m = prev
    o: dict[str, pd.Series] = {}
    p = np.log(g["mid"])
    r = _lagdiff(p, 1)
    for k in (1, 5, 15, 30, 60):
        o[f"past_ret_{k}m"] = _lagdiff(p, k)
    o["ret_since_open"] = _lagdiff(p, T)
    if quotes:
        qmid = (g["bid"] + g["ask"]) / 2
        sp = 1e4 * (g["ask"] - g["bid"]) / qmid
        o.update(spread_bps=sp, spread_z30=_z(sp, 30), spread_chg_5m=_lagdiff(sp, 5))
        micro = (g["bid"] * g["ask_size"] + g["ask"] * g["bid_size"]) / (g["bid_size"] + g["ask_size"])
        o.update(microprice_dev_bps=1e4 * (micro - qmid) / qmid, microprice_ret_1m=_lagdiff(np.log(micro), 1))
        imb = (g["bid_size"] - g["ask_size"]) / (g["bid_size"] + g["ask_size"])
        o.update(log_bid_size=np.log1p(g["bid_size"]), log_ask_size=np.log1p(g["ask_size"]),
                 depth_imbalance=imb, depth_imbalance_ma5=_roll(imb, 5).mean())
        b, a, qb, qa = (g[c].to_numpy() for c in ("bid", "ask", "bid_size", "ask_size"))
        e = [np.nan] * T
        for t in range(1, T):
            if not any(math.isnan(v) for v in (b[t], b[t - 1], a[t], a[t - 1])):
                e[t] = ((qb[t] if b[t] >= b[t - 1] else 0) - (qb[t - 1] if b[t] <= b[t - 1] else 0)
                        - (qa[t] if a[t] <= a[t - 1] else 0) + (qa[t - 1] if a[t] >= a[t - 1] else 0))
        e = pd.Series(e, index=g.index, dtype=float)
        for k in (1, 5, 15):
            cnt = _roll(e, k).count()
            o[f"ofi_{k}m"] = (_roll(e, k).sum() / _roll((g["bid_size"] + g["ask_size"]) / 2, k).mean()).where(cnt > 0)
        o["last_mid_dist_bps"] = 1e4 * (g["last"] - g["mid"]) / g["mid"]
    lv, lt = np.log1p(g["volume"]), np.log1p(g["trades"])
    m30 = _roll(g["volume"], 30).mean()
    o.update(log_volume=lv, volume_z30=_z(lv, 30), log_trades=lt, trades_z30=_z(lt, 30),
             volume_ratio_5_30=(_roll(g["volume"], 5).mean() / m30).where(m30 > 0),
             log_avg_trade_size=np.log1p(g["volume"] / g["trades"].clip(lower=1)),
             log_cum_volume=np.log1p(g["volume"].fillna(0).cumsum()))
    r2 = r ** 2
    for k in (5, 15, 30, 60):
        o[f"rv_{k}m"] = np.sqrt(k * _roll(r2, k).mean())
    prev = g["mid"].shift(1).fillna(g["mid"])
    hi = g["mid_high"].fillna(pd.concat([g["mid"], prev], axis=1).max(axis=1))
    lo = g["mid_low"].fillna(pd.concat([g["mid"], prev], axis=1).min(axis=1))
    pk = np.log(hi / lo) ** 2 / (4 * math.log(2))
    for k in (5, 15, 30):
        o[f"park_{k}m"] = np.sqrt(k * _roll(pk, k).mean())
    bp = r.abs() * r.abs().shift(1)
    for k in (15, 30):
        o[f"bpv_{k}m"] = np.sqrt(k * math.pi / 2 * _roll(bp, k).mean())
    jr = (1 - o["bpv_30m"] ** 2 / o["rv_30m"] ** 2).clip(lower=0)
    o["jump_ratio_30m"] = jr.where(o["rv_30m"] != 0, 0.0)
    for h in (10, 60):
        o[f"ewma_vol_{h}"] = np.sqrt(r2.ewm(halflife=h, adjust=False).mean())
    o["range_bps_1m"] = 1e4 * (hi - lo) / g["mid"]
    n = r.notna().cumsum()
    today = np.sqrt(T * r2.fillna(0).cumsum() / n).where(n > 0)
    o.update(har_rv_d=pd.Series(math.sqrt(rv_d), index=g.index) if rv_d == rv_d else pd.Series(np.nan, index=g.index),
             har_rv_w=pd.Series(math.sqrt(rv_w) if rv_w == rv_w else np.nan, index=g.index, dtype=float),
             har_rv_today=today)
    o["har_today_ratio"] = today / o["har_rv_w"]
    o["har_rv_m"] = pd.Series(math.sqrt(rv_m) if rv_m == rv_m else np.nan, index=g.index, dtype=float)
    o["noise_ac1_m"] = pd.Series(ac1_m, index=g.index, dtype=float)
    up = r.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    dn = (-r).clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    rsi = (100 * up / (up + dn)).where(up + dn > 0, 50.0)
    o["rsi_14"] = rsi.where((up + dn).notna())
    macd = 1e4 * (g["mid"].ewm(span=12, adjust=False).mean() - g["mid"].ewm(span=26, adjust=False).mean()) / g["mid"]
    sig = macd.ewm(span=9, adjust=False).mean()
    o.update(macd_bps=macd, macd_signal_bps=sig, macd_hist_bps=macd - sig)
    rm = _roll(g["mid"], 20)
    m, s = rm.mean(), rm.std(ddof=0)
    o["bb_pctb_20"] = ((g["mid"] - m + 2 * s) / (4 * s)).where(rm.max() != rm.min(), 0.5).where(g["mid"].notna())
    vol = g["volume"].fillna(0)
    px = g["vwap"].fillna(g["mid"])
    cv = vol.cumsum()
    vw = ((px * vol).where(vol > 0, 0.0).cumsum() / cv).where(cv > 0)
    o["vwap_dist_bps"] = 1e4 * (g["mid"] - vw) / vw
    o["bar_vwap_dist_bps"] = 1e4 * (g["mid"] - g["vwap"]) / g["mid"]
    mins = np.arange(T)
    o.update(tod_sin=pd.Series(np.sin(2 * np.pi * mins / 390), index=g.index),
             tod_cos=pd.Series(np.cos(2 * np.pi * mins / 390), index=g.index),
             minutes_to_close=pd.Series(389.0 - mins, index=g.index),
             bar_missing=(~g["present"]).astype(float))
    return o


def reference_features(bars: pd.DataFrame, date: str, names: list[str],
                       har_prev: dict[str, tuple[float, float, float, float]] | None = None) -> pd.DataFrame:
    """Reference frame (symbol, ts, names...) for one date; ``har_prev`` maps symbol -> (rv_d, rv_w,
    rv_m, ac1_m) (:func:`reference_history`)."""
    har_prev = har_prev or {}
    quotes = "spread_bps" in names
    grid = schema.session_minutes_utc(date)
    parts = []
    for sym, g in bars.groupby("symbol", sort=True):
        gg = _grid(g, grid)
        feats = pd.DataFrame(_one_symbol(gg, har_prev.get(sym, (np.nan,) * 4), quotes), index=grid)
        feats.insert(0, "symbol", sym)
        parts.append(feats.rename_axis("ts").reset_index())
    df = pd.concat(parts, ignore_index=True)
    for k in (1, 15):
        col = f"past_ret_{k}m"
        df[f"mkt_ret_{k}m"] = df.groupby("ts")[col].transform("mean")
        df[f"excess_ret_{k}m"] = df[col] - df[f"mkt_ret_{k}m"]
    rank = df.groupby("ts")["past_ret_15m"].rank(method="average")
    n = df.groupby("ts")["past_ret_15m"].transform("count")
    df["rank_ret_15m"] = ((rank - 1) / (n - 1)).where(n > 1, 0.5).where(df["past_ret_15m"].notna())
    return df[["symbol", "ts", *names]].sort_values(["symbol", "ts"]).reset_index(drop=True)


def reference_daily(bars: pd.DataFrame, date: str) -> dict[str, tuple[float, float]]:
    """symbol -> (realized variance, first-order autocorrelation of the one-minute returns) of one
    date, from the reference's own gridded mid (plain pandas)."""
    out = {}
    for sym, g in bars.groupby("symbol", sort=True):
        r = _lagdiff(np.log(_grid(g, schema.session_minutes_utc(date))["mid"]), 1)
        if r.notna().any():
            rv = float((r ** 2).sum())
            ac = float((r * r.shift(1)).sum() / rv) if rv > 0 else np.nan
            out[sym] = (rv, ac)
    return out


def reference_history(days: list[dict[str, tuple[float, float]]]) -> dict[str, tuple[float, float, float, float]]:
    """symbol -> (rv_d, rv_w, rv_m, ac1_m) after ``days`` (oldest first, :func:`reference_daily` each):
    the previous day's RV, mean RV of the last <= 5 and <= 22 days the symbol traded, mean
    autocorrelation over those <= 22 days (NaN ones skipped)."""
    out = {}
    for sym in sorted({s for d in days for s in d}):
        seen = [d[sym] for d in days if sym in d][-22:]
        rv = [v for v, _ in seen]
        ac = [a for _, a in seen if a == a]
        out[sym] = (rv[-1], float(np.mean(rv[-5:])), float(np.mean(rv)), float(np.mean(ac)) if ac else np.nan)
    return out


def reference_labels(mid: pd.Series) -> pd.DataFrame:
    """Per-row python labels for one symbol-day's gridded mid."""
    lm = np.log(mid.to_numpy())
    ret, rv = [], []
    for t in range(T):
        ret.append(lm[t + 60] - lm[t] if t + 60 < T else np.nan)
        if t + 10 < T:
            rs = [lm[k] - lm[k - 1] for k in range(t + 1, t + 11)]
            rv.append(math.sqrt(sum(x * x for x in rs)))
        else:
            rv.append(np.nan)
    return pd.DataFrame({"ret_60m": ret, "rv_10m": rv})
