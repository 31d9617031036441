"""The feature catalogue: every feature declared once, with its formula, lookback and inputs.

The catalogue is the single source of truth for the feature list and its order (the column order
of the ``features`` table and of the model input). ``hfcast.features.compute`` computes exactly
these names; a test checks the two agree and that every feature is causal.

Notation used in the formulas: the session grid has minutes t = 0..389; ``mid_t`` is the mid at
the END of minute t (bid/ask average, ``last`` for quote-less sources), forward-filled over
missing bars; ``p_t = log(mid_t)``; ``r_t = p_t - p_{t-1}`` (undefined at t = 0: no overnight
return is used). "Over the last w" means the minutes max(0, t-w+1)..t of the same day, i.e.
the partial window early in the session; a feature is NaN only when that window holds no value.
Volatilities are scaled to their window (``sqrt(w * mean)``), so partial windows stay comparable.
"NaN at t=0" means at the symbol's first minute with a price that day (minute 0 normally; later
when its first bars were missing, as every row before the first bar has no price at all).

Missing bars: each symbol-day is put on the 390-minute grid; a missing minute carries prices and
quotes forward, has volume = trades = 0 and no vwap, and is flagged by ``bar_missing``.
"""

from __future__ import annotations

from dataclasses import dataclass

_MID = ("bid", "ask", "last")
_QUOTES = ("bid", "ask")
_SIZES = ("bid_size", "ask_size")


@dataclass(frozen=True)
class FeatureSpec:
    """One feature.

    Attributes:
        name: column name in the features table.
        group: family (returns, spread, ...); used in reports and docs.
        formula: the exact definition, including the partial-window and NaN conventions.
        lookback: minutes of history read (1 = this bar only), or "1d"/"5d"/"22d" for carried daily state.
        inputs: bar columns the feature reads (hfcast.data.schema names).
        needs_quotes: True when the feature needs bid/ask or their sizes; such features are left out
            (declared unavailable, not faked) for OHLCV sources.
    """

    name: str
    group: str
    formula: str
    lookback: int | str
    inputs: tuple[str, ...]
    needs_quotes: bool = False


def _f(name: str, group: str, formula: str, lookback: int | str, inputs: tuple[str, ...],
       needs_quotes: bool = False) -> FeatureSpec:
    return FeatureSpec(name, group, formula, lookback, tuple(inputs), needs_quotes)


FEATURES: list[FeatureSpec] = [
    # --- returns -----------------------------------------------------------------------------
    *[_f(f"past_ret_{k}m", "returns",
         f"p_t - p_max(t-{k},f): log mid return over the last {k} minutes, f = the first minute "
         "with a price today (0 normally), so early in the day the return since then; NaN for t<=f", k + 1, _MID) for k in (1, 5, 15, 30, 60)],
    _f("ret_since_open", "returns", "p_t - p_f (f as in past_ret_*); NaN for t<=f", 390, _MID),
    # --- spread ------------------------------------------------------------------------------
    _f("spread_bps", "spread", "1e4 * (ask - bid) / mid", 1, _QUOTES, True),
    _f("spread_z30", "spread",
       "(spread_bps - mean) / std over the last 30 minutes (population std); 0 when std is ~0",
       30, _QUOTES, True),
    _f("spread_chg_5m", "spread", "spread_bps_t - spread_bps_max(t-5,0); NaN at t=0", 6, _QUOTES, True),
    # --- microprice --------------------------------------------------------------------------
    _f("microprice_dev_bps", "microprice",
       "1e4 * (micro - mid) / mid, micro = (bid*ask_size + ask*bid_size) / (bid_size + ask_size)",
       1, (*_QUOTES, *_SIZES), True),
    _f("microprice_ret_1m", "microprice", "log(micro_t / micro_{t-1}); NaN at t=0", 2,
       (*_QUOTES, *_SIZES), True),
    # --- depth -------------------------------------------------------------------------------
    _f("log_bid_size", "depth", "log(1 + bid_size)", 1, ("bid_size",), True),
    _f("log_ask_size", "depth", "log(1 + ask_size)", 1, ("ask_size",), True),
    _f("depth_imbalance", "depth", "(bid_size - ask_size) / (bid_size + ask_size)", 1, _SIZES, True),
    _f("depth_imbalance_ma5", "depth", "mean of depth_imbalance over the last 5 minutes", 5, _SIZES, True),
    # --- order-flow imbalance (Cont, Kukanov, Stoikov 2014) -------------------------------------
    *[_f(f"ofi_{k}m", "ofi",
         f"sum of e_s over the last {k} minutes / mean of (bid_size+ask_size)/2 over the same "
         "minutes, e_s = 1[b_s>=b_{s-1}]qb_s - 1[b_s<=b_{s-1}]qb_{s-1} - 1[a_s<=a_{s-1}]qa_s + "
         "1[a_s>=a_{s-1}]qa_{s-1}; e_0 undefined (NaN at t=0)",
         k + 1, (*_QUOTES, *_SIZES), True) for k in (1, 5, 15)],
    # --- volume and trade intensity ------------------------------------------------------------
    _f("log_volume", "volume", "log(1 + volume)", 1, ("volume",)),
    _f("volume_z30", "volume", "z-score of log(1+volume) over the last 30 minutes; 0 when std ~0",
       30, ("volume",)),
    _f("log_trades", "volume", "log(1 + trades)", 1, ("trades",)),
    _f("trades_z30", "volume", "z-score of log(1+trades) over the last 30 minutes; 0 when std ~0",
       30, ("trades",)),
    _f("volume_ratio_5_30", "volume",
       "mean volume over the last 5 / mean volume over the last 30 minutes; NaN when the latter is 0",
       30, ("volume",)),
    _f("log_avg_trade_size", "volume", "log(1 + volume / max(trades, 1))", 1, ("volume", "trades")),
    _f("log_cum_volume", "volume", "log(1 + volume summed over minutes 0..t)", 390, ("volume",)),
    # --- volatility --------------------------------------------------------------------------
    *[_f(f"rv_{k}m", "volatility",
         f"sqrt({k} * mean of r_s^2 over the last {k} minutes); NaN at t=0", k + 1, _MID)
      for k in (5, 15, 30, 60)],
    *[_f(f"park_{k}m", "volatility",
         f"Parkinson: sqrt({k} * mean of ln(H_s/L_s)^2 / (4 ln 2) over the last {k} minutes); H, L = "
         "mid_high, mid_low, or max/min(mid_s, mid_{s-1}) where those are missing", k + 1,
         (*_MID, "mid_high", "mid_low")) for k in (5, 15, 30)],
    *[_f(f"bpv_{k}m", "volatility",
         f"bipower: sqrt({k} * pi/2 * mean of |r_s||r_(s-1)| over the last {k} minutes (s>=2)); "
         "NaN for t<2", k + 2, _MID) for k in (15, 30)],
    _f("jump_ratio_30m", "volatility", "max(0, 1 - bpv_30m^2 / rv_30m^2); 0 when rv_30m = 0", 32, _MID),
    *[_f(f"ewma_vol_{h}", "volatility",
         f"sqrt(EWMA of r_s^2, halflife {h} minutes, started at the first return of the day "
         "(pandas ewm adjust=False)); NaN at t=0", 390, _MID) for h in (10, 60)],
    _f("range_bps_1m", "volatility", "1e4 * (H_t - L_t) / mid_t (H, L as in park_*)", 2,
       (*_MID, "mid_high", "mid_low")),
    # --- HAR components (carried daily state) --------------------------------------------------
    _f("har_rv_d", "har", "sqrt(RV of the symbol's previous day), RV = sum of r_s^2 over that session "
       "(an early close sums its shorter session: 210 minutes on a 13:00 XNYS close); NaN without history",
       "1d", _MID),
    _f("har_rv_w", "har", "sqrt(mean RV of the symbol's last <=5 days); NaN without history", "5d", _MID),
    _f("har_rv_today", "har", "sqrt(T * mean of r_s^2 over today's returns so far), T the session's "
       "length in minutes (390 on a regular XNYS day): today's RV scaled to the whole session; NaN at t=0",
       390, _MID),
    _f("har_today_ratio", "har", "har_rv_today / har_rv_w; NaN without history", "5d", _MID),
    _f("har_rv_m", "har", "sqrt(mean RV of the symbol's last <=22 days): Corsi's monthly level; NaN "
       "without history", "22d", _MID),
    _f("noise_ac1_m", "har", "mean over the symbol's last <=22 days of each day's first-order "
       "autocorrelation of its one-minute returns, sum r_s r_(s-1) / sum r_s^2 (days with no "
       "non-zero return skipped): the quote-noise signature, near -0.5 where bid-ask bounce dominates "
       "the mid's moves, near 0 for an efficient price; NaN without history", "22d", _MID),
    # --- technical indicators ----------------------------------------------------------------
    _f("rsi_14", "technical", "Wilder RSI: 100 * U / (U + D), U, D = EWMA (alpha 1/14, adjust=False, "
       "from the first return) of max(r,0), max(-r,0) on mid changes; 50 when U + D = 0", 390, _MID),
    _f("macd_bps", "technical", "1e4 * (EMA12(mid) - EMA26(mid)) / mid (span EMAs, adjust=False, "
       "from the first mid)", 390, _MID),
    _f("macd_signal_bps", "technical", "EMA9 of macd_bps (span 9, adjust=False)", 390, _MID),
    _f("macd_hist_bps", "technical", "macd_bps - macd_signal_bps", 390, _MID),
    _f("bb_pctb_20", "technical", "Bollinger %b: (mid - (m - 2s)) / (4s), m, s = mean, population std "
       "of mid over the last 20 minutes; 0.5 when s ~0", 20, _MID),
    # --- price location ----------------------------------------------------------------------
    _f("vwap_dist_bps", "location", "1e4 * (mid - VWAP) / VWAP, VWAP = sum(vwap*volume)/sum(volume) "
       "over minutes 0..t (bar vwap falls back to mid); NaN while no volume", 390,
       (*_MID, "vwap", "volume")),
    _f("bar_vwap_dist_bps", "location", "1e4 * (mid - vwap) / mid; NaN when the bar has no vwap",
       1, (*_MID, "vwap")),
    _f("last_mid_dist_bps", "location", "1e4 * (last - mid) / mid: where the last trade printed "
       "relative to the quote; NaN when there is no last", 1, (*_QUOTES, "last"), True),
    # --- time of day -------------------------------------------------------------------------
    _f("tod_sin", "time", "sin(2 pi m / n), m = minute of session, n = that day's session minutes "
       "(390 on a regular XNYS day; hfcast.market)", 1, ("ts",)),
    _f("tod_cos", "time", "cos(2 pi m / n)", 1, ("ts",)),
    _f("minutes_to_close", "time", "n - 1 - m: whole minutes left after this bar ends, to that day's actual close (early closes included)", 1, ("ts",)),
    # --- cross-section (all symbols at the same minute t; causal) --------------------------------
    *[_f(f"mkt_ret_{k}m", "cross_section", f"mean over symbols of past_ret_{k}m at t", k + 1, _MID)
      for k in (1, 15)],
    *[_f(f"excess_ret_{k}m", "cross_section", f"past_ret_{k}m - mkt_ret_{k}m", k + 1, _MID)
      for k in (1, 15)],
    _f("rank_ret_15m", "cross_section", "(average rank - 1) / (n - 1) of past_ret_15m across the n "
       "symbols with a value at t, in [0, 1]; 0.5 when n = 1", 16, _MID),
    # --- data quality ------------------------------------------------------------------------
    _f("bar_missing", "data_quality", "1 when this minute had no (valid) bar and was filled: prices "
       "and quotes carried forward, volume and trades 0; else 0", 1, ("ts",)),
]

BY_NAME: dict[str, FeatureSpec] = {f.name: f for f in FEATURES}
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(f.group for f in FEATURES))


def feature_names(quotes_available: bool = True) -> list[str]:
    """Names of the features computed for a source, in catalogue (= column) order.

    Args:
        quotes_available: False for OHLCV sources; quote-based features are then left out.
    """
    return [f.name for f in FEATURES if quotes_available or not f.needs_quotes]


def unavailable_features(quotes_available: bool) -> list[str]:
    """Features declared unavailable for a source (recorded in ``_feature_set.json``)."""
    return [] if quotes_available else [f.name for f in FEATURES if f.needs_quotes]

