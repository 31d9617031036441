"""The data contract: minute BBO bars, the simulator's truth table, the trading session.

One row per symbol per minute; ``ts`` is the START of the minute in UTC (datetime64[us, UTC]);
the quote fields describe the book at the END of that minute. Sessions are regular US equity
hours, 09:30-16:00 America/New_York (390 minutes), converted explicitly so that daylight
saving time moves the UTC clock, not the session. That is the default market (XNYS); every session
question goes to :mod:`hfcast.market` (holidays, early closes, other exchanges), and the constants
below describe only the default's regular day.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from hfcast import contracts
from hfcast.market import resolve

EXCHANGE_TZ = ZoneInfo("America/New_York")
SESSION_OPEN = dt.time(9, 30)
SESSION_CLOSE = dt.time(16, 0)
MINUTES_PER_SESSION = 390

TS_DTYPE = "datetime64[us, UTC]"

#: required bar columns and their dtypes
REQUIRED_COLUMNS: dict[str, str] = {
    "symbol": "string",
    "ts": TS_DTYPE,
    "bid": "float64",
    "ask": "float64",
    "bid_size": "float64",
    "ask_size": "float64",
}
#: optional bar columns: missing ones are added as NaN so later stages see one schema
OPTIONAL_COLUMNS: dict[str, str] = {
    "last": "float64",  # last trade price in the minute (the only price of OHLCV sources: their close)
    "volume": "float64",
    "trades": "float64",
    "vwap": "float64",
    "mid_high": "float64",
    "mid_low": "float64",
}
BAR_COLUMNS: list[str] = [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]
QUOTE_COLUMNS = list(contracts.QUOTE_COLUMNS)  # a list: it indexes DataFrames

#: the mid price of a bar: (bid + ask) / 2 when quotes exist, else ``last`` (OHLCV sources)


def mid_price(df: pd.DataFrame) -> pd.Series:
    """Mid of each bar; falls back to ``last`` where quotes are missing (quote-less sources)."""
    mid = (df["bid"] + df["ask"]) / 2.0
    if "last" in df:
        mid = mid.fillna(df["last"])
    return mid


def has_quotes(df: pd.DataFrame) -> bool:
    """True when the bars carry quotes (an OHLCV source leaves bid/ask all missing)."""
    return bool(df[["bid", "ask"]].notna().any(axis=None)) if len(df) else True


#: simulator ground truth, one row per symbol-minute, joined on (symbol, ts)
TRUTH_COLUMNS: dict[str, str] = {
    "true_var_10m": "float64",  # E[integrated variance of the efficient log price over t+1..t+10]
    "true_ret_60m": "float64",  # E[log(P_eff[t+60] / P_eff[t])] given the latent state at t
    "latent_sigma": "float64",  # instantaneous per-minute volatility of the efficient price at t
    "latent_drift": "float64",  # planted per-minute drift at t (the predictable part)
    "regime": "int64",          # 0 before a configured regime shift, 1 after
}

#: the longest symbol accepted anywhere (ingest, features, the online store, the server)
MAX_SYMBOL_LEN = 64


def symbol_problem(symbol: Any) -> str | None:
    """Why ``symbol`` is not a symbol, or None: the one rule that ingest (quarantine), the feature
    store and the server (a 4xx) apply, so that nothing accepted at ingest is refused when served.

    A symbol is a non-empty string of at most :data:`MAX_SYMBOL_LEN` printable characters:
    control characters (NUL, newline) would cut files and keys, and invisible formatting characters
    (bidi overrides such as U+202E, zero-width joiners: Unicode category Cf) would show one
    ticker under another's name.
    """
    if not isinstance(symbol, str) or not symbol.strip():
        return "missing or empty"
    if len(symbol) > MAX_SYMBOL_LEN:
        return f"{len(symbol)} characters, more than {MAX_SYMBOL_LEN}"
    if not symbol.isprintable():
        bad = next(c for c in symbol if not c.isprintable())
        return f"holds the non-printable character U+{ord(bad):04X} (control or invisible formatting)"
    return None


def symbol_problems(symbols: pd.Series) -> pd.Series:
    """:func:`symbol_problem` of each value (None where fine), judged once per distinct symbol."""
    values = symbols.astype(object).where(symbols.notna(), None)
    verdict = {u: symbol_problem(u) for u in pd.unique(values)}
    return values.map(verdict).astype(object)


LABEL_COLUMNS = ["ret_60m", "rv_10m"]
LABEL_HORIZONS = {"ret_60m": 60, "rv_10m": 10}  # minutes of future each label reads


def session_minutes_utc(date: str | dt.date, market: Any = None) -> pd.DatetimeIndex:
    """The minute starts of the session of ``date`` in UTC (datetime64[us, UTC]): 390 on a regular
    XNYS day, fewer on an early close; raises ValueError on a closed date."""
    return resolve(market).minutes_utc(date)


def minute_of_session(ts: pd.Series | pd.DatetimeIndex, market: Any = None) -> np.ndarray:
    """Minute of the session each stamp falls in (0 = the open); -1 outside every session."""
    return resolve(market).minute_of_session(ts)


def trading_days(start: str | dt.date, n_days: int, market: Any = None) -> list[str]:
    """The first ``n_days`` sessions of the market calendar from ``start`` (inclusive), ISO strings."""
    return resolve(market).next_sessions(start, n_days)


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Return bars with exactly BAR_COLUMNS, in order, with contract dtypes (missing optional -> NaN).

    Raises:
        ValueError: a required column is missing (the message names it).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"bars are missing required column(s) {missing}; have {list(df.columns)}")
    out = pd.DataFrame(index=df.index)
    out["symbol"] = df["symbol"].astype("string")
    ts = pd.to_datetime(df["ts"], utc=True)
    out["ts"] = ts.dt.as_unit("us") if hasattr(ts, "dt") else ts
    for col in [*QUOTE_COLUMNS, *OPTIONAL_COLUMNS]:
        out[col] = pd.to_numeric(df[col], errors="coerce").astype("float64") if col in df else np.nan
    return out.reset_index(drop=True)
