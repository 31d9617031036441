"""The featurize stage: bars of one date -> features + labels on the session's minute grid, date by date.

Why a grid: windows downstream need 30 consecutive minutes, and a missing (quarantined) bar
must not silently join 9:58 to 10:03. Each symbol-day is reindexed onto the session's minutes
(390 on a regular XNYS day; the market calendar, hfcast.market, gives each date's open, close and
break, so early closes are shorter and other exchanges have their own length); prices and quotes are carried forward (causal), volume and trades are 0, and the
``bar_missing`` feature says which rows were filled. Rows before a symbol's first bar of the day
have no price, so their price features and labels are NaN.

Why date by date: memory stays one date (plus a tiny per-symbol state for the HAR terms), so a
year of 1000 symbols streams. Dates must be processed in order for that state.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from hfcast.contracts import FEATURE_SET_FILE
from hfcast.data import schema
from hfcast.features import ops
from hfcast.features.compute import DailyHistory, Panel, compute_features, daily_values
from hfcast.features.labels import make_labels
from hfcast.features.catalog import feature_names, unavailable_features
from hfcast.market import resolve as resolve_market
from hfcast.storage import Lake, join, read_text, write_bytes, write_text

log = logging.getLogger(__name__)

TRUTH_OUT = ("true_ret_60m", "true_var_10m")
HAR_DAYS = 5     # the weekly HAR level
#: per date, each symbol's daily RV and return autocorrelation (the HAR state's inputs), written beside
#: the features: a later run warms its state from these instead of re-reading 22 dates of bars
DAILY_TABLE = "har_daily"
LEVEL_DAYS = 22  # the monthly level (Corsi's HAR: 22 sessions): the days of state carried


@dataclass(frozen=True)
class HarState:
    """Per-symbol daily realized variances and return autocorrelations of the last <= 22 sessions
    seen (oldest first; the two tuples of a symbol are aligned, an autocorrelation may be NaN)."""

    rv: dict[str, tuple[float, ...]] = field(default_factory=dict)
    ac1: dict[str, tuple[float, ...]] = field(default_factory=dict)
    #: the last session's daily values (symbol, rv, ac1), what :data:`DAILY_TABLE` stores
    last: pd.DataFrame | None = field(default=None, compare=False, repr=False)

    def previous(self, symbols: np.ndarray) -> DailyHistory:
        """The :class:`DailyHistory` of ``symbols``; NaN for a symbol with no history."""
        out = DailyHistory.empty(len(symbols))
        for i, s in enumerate(symbols):
            hist = self.rv.get(s)
            if hist:
                out.rv_d[i], out.rv_w[i], out.rv_m[i] = hist[-1], np.mean(hist[-HAR_DAYS:]), np.mean(hist)
                ac = np.asarray(self.ac1.get(s, ()), np.float64)
                if np.isfinite(ac).any():
                    out.ac1_m[i] = np.nanmean(ac)
        return out

    def update(self, symbols: np.ndarray, daily_rv: np.ndarray, daily_ac1: np.ndarray,
               last: pd.DataFrame | None = None) -> "HarState":
        """A new state with today's values appended (symbols with no return today are left as they
        were); ``last``: today's values as :data:`DAILY_TABLE` stores them."""
        rv, ac1 = dict(self.rv), dict(self.ac1)
        keep = LEVEL_DAYS - 1
        for s, v, a in zip(symbols, daily_rv, daily_ac1):
            if np.isfinite(v):
                rv[s] = (*rv.get(s, ())[-keep:], float(v))
                ac1[s] = (*ac1.get(s, ())[-keep:], float(a))
        return HarState(rv, ac1, last)

    def after(self, symbols: np.ndarray, pn: Panel) -> "HarState":
        """The state after the session ``pn`` of ``symbols`` (its daily values kept as ``last``)."""
        rv, ac1 = daily_values(pn)
        return self.following(pd.DataFrame({"symbol": pd.array(symbols, dtype="string"), "rv": rv, "ac1": ac1}))

    def following(self, day: pd.DataFrame) -> "HarState":
        """The state after a session whose daily values (symbol, rv, ac1) are ``day``."""
        return self.update(day["symbol"].to_numpy(object), day["rv"].to_numpy(np.float64),
                           day["ac1"].to_numpy(np.float64), last=day)


def _minutes(ts: pd.Series, session: Any) -> np.ndarray:
    """Minute of the session for each ts (outside 0..n-1 for other times or dates, -1 in a break).

    Integer arithmetic against the session's UTC open (the calendar handles DST and early closes,
    cached per date): a tz conversion of every row costs seconds on a 1000-symbol date.
    """
    us = pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("us").asi8
    return session.minute_index(us)


def _grid_index(bars: pd.DataFrame, date: str, session: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted symbols, flat [S*T] grid position of each kept row, row numbers kept)."""
    T = session.n_minutes
    minute = _minutes(bars["ts"], session)
    inside = (minute >= 0) & (minute < T)
    if not inside.all():
        log.warning("%s: %d bar(s) outside the session ignored", date, int((~inside).sum()))
    codes, symbols = pd.factorize(bars["symbol"], sort=True)
    key = codes.astype(np.int64) * T + minute
    rows = np.flatnonzero(inside)
    _, first = np.unique(key[rows], return_index=True)
    if len(first) != len(rows):
        log.warning("%s: %d duplicate (symbol, minute) bar(s); the first is kept", date, len(rows) - len(first))
        rows = rows[np.sort(first)]
    return np.asarray(symbols, dtype=object), key[rows], rows


def _scatter(values: np.ndarray, key: np.ndarray, n_sym: int, T: int) -> np.ndarray:
    out = np.full(n_sym * T, np.nan)
    out[key] = values
    return out.reshape(n_sym, T)


def _conformed(bars: pd.DataFrame) -> pd.DataFrame:
    """Bars with the contract's columns and dtypes; skips the (copying) schema.conform when they have them."""
    dtypes = bars.dtypes.to_dict()
    ok = all(c in dtypes for c in schema.BAR_COLUMNS) and str(dtypes["ts"]) == schema.TS_DTYPE and all(
        dtypes[c] == np.float64 for c in schema.BAR_COLUMNS[2:])
    return bars if ok else schema.conform(bars)


def to_panel(bars: pd.DataFrame, date: str, market: Any = None) -> tuple[np.ndarray, Panel]:
    """Reindex one date's bars onto the session grid (see module docstring); returns (symbols, panel)."""
    bars = _conformed(bars)
    session = resolve_market(market).session(date)
    T = session.n_minutes
    symbols, key, rows = _grid_index(bars, date, session)
    s = len(symbols)
    col = {c: _scatter(bars[c].to_numpy(np.float64)[rows], key, s, T) for c in schema.BAR_COLUMNS[2:]}
    present = np.zeros(s * T, dtype=bool)
    present[key] = True
    present = present.reshape(s, T)
    mid = (col["bid"] + col["ask"]) / 2.0
    mid = np.where(np.isnan(mid), col["last"], mid)
    filled = {c: ops.ffill(col[c]) for c in ("bid", "ask", "bid_size", "ask_size", "last")}
    flows = {c: np.where(present, col[c], 0.0) if not np.isnan(col[c][present]).all() else col[c]
             for c in ("volume", "trades")}
    panel = Panel(mid=ops.ffill(mid), **filled, **flows, vwap=col["vwap"], mid_high=col["mid_high"],
                  mid_low=col["mid_low"], present=present, minute=np.arange(T))
    return symbols, panel


def featurize_frame(bars: pd.DataFrame, date: str, state: HarState | None = None,
                    truth: pd.DataFrame | None = None,
                    quotes_available: bool | None = None, market: Any = None) -> tuple[pd.DataFrame, HarState]:
    """Features and labels of one date: a pure function of the bars, the truth and the carried state.

    Args:
        bars: the date's bars (hfcast.data.schema columns).
        date: ISO date of the session (defines the grid).
        state: HAR state from the previous dates (None: no history -> the carried daily terms NaN).
        truth: the simulator's truth table of the date, or None.
        quotes_available: feature set to produce; None decides from the bars (schema.has_quotes).
        market: the calendar (hfcast.market; None = XNYS): the grid is that date's session.

    Returns:
        (frame sorted by symbol, ts with symbol, ts, features (float32, catalogue order), labels
        (float64) and truth columns when given; the new HarState including this date).

    Raises:
        ValueError: quote features were requested but the bars carry no quotes.
    """
    state = state or HarState()
    has_q = schema.has_quotes(bars)
    quotes = has_q if quotes_available is None else quotes_available
    if quotes and not has_q:
        raise ValueError(f"{date}: the feature set needs quotes but these bars have none (bid/ask all missing); "
                         "featurize an OHLCV source separately")
    mk = resolve_market(market)
    if not mk.is_session(date):
        log.warning("%s is not a session of the %s calendar: no features", date, mk.name)
        # the same state, without the previous session's daily values (none are written for this date)
        return _empty_frame(quotes, truth is not None and len(truth) > 0), HarState(state.rv, state.ac1)
    session = mk.session(date)
    symbols, pn = to_panel(bars, date, mk)
    feats = compute_features(pn, state.previous(symbols), quotes)
    grid = session.minutes_utc()
    T = session.n_minutes
    labels = make_labels(pn.mid, segment_starts=_break_starts(grid))
    s = len(symbols)
    names = list(feats)
    block = np.empty((len(names), s * T), dtype=np.float32)  # one float32 block, no consolidation copy
    for i, n in enumerate(names):
        block[i] = feats[n].reshape(-1)
    out = pd.DataFrame(block.T, columns=names, copy=False)
    out.insert(0, "symbol", pd.array(np.repeat(symbols, T), dtype="string"))
    out.insert(1, "ts", grid[np.tile(np.arange(T), s)])
    for n, v in labels.items():
        out[n] = v.reshape(-1)
    if truth is not None and len(truth):
        minute = _minutes(truth["ts"], session)
        sym = pd.Index(symbols).get_indexer(truth["symbol"].astype(object).to_numpy())
        keep = (sym >= 0) & (minute >= 0) & (minute < T)
        tkey = sym[keep].astype(np.int64) * T + minute[keep]
        for c in TRUTH_OUT:
            out[c] = _scatter(truth[c].to_numpy(np.float64)[keep], tkey, s, T).reshape(-1)
    return out, state.after(symbols, pn)


def _break_starts(grid: pd.DatetimeIndex) -> np.ndarray:
    """Grid positions where trading resumes after a break (a gap > 1 minute): labels stop there."""
    gaps = np.diff(grid.asi8) != 60_000_000
    return np.flatnonzero(gaps) + 1


def _empty_frame(quotes: bool, with_truth: bool) -> pd.DataFrame:
    """The featurize frame of a date with no session: right columns, no rows."""
    out = pd.DataFrame({"symbol": pd.array([], dtype="string"),
                        "ts": pd.DatetimeIndex([], tz="UTC").as_unit("us")})
    for n in feature_names(quotes):
        out[n] = np.array([], dtype=np.float32)
    for n in schema.LABEL_COLUMNS:
        out[n] = np.array([], dtype=np.float64)
    for c in TRUTH_OUT if with_truth else ():
        out[c] = np.array([], dtype=np.float64)
    return out



def _write_features(lake: Lake, date: str, df: pd.DataFrame) -> str:
    """``lake.write("features", ...)`` with writer options that matter at this width.

    Same partition URL, same atomic write (storage.write_bytes), same parquet schema; but pyarrow's
    default tries dictionary encoding on all 60 float columns, which made the write 5x slower than
    the features themselves. Only ``symbol`` repeats, so only it is dictionary-encoded.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, use_dictionary=["symbol"],
                   write_statistics=["symbol", "ts"])
    url = lake.partition("features", date)
    write_bytes(url, buf.getvalue(), lake.storage_options)
    return url


def _source(lake: Lake, date: str) -> str:
    if lake.exists("validated", date):
        return "validated"
    log.warning("%s: no validated partition; featurizing RAW bars (run `hfcast validate` first)", date)
    return "raw"


def _advance(lake: Lake, date: str, state: HarState, market: Any = None) -> HarState:
    """The HAR state after ``date`` without computing its features (read + grid + daily RV only)."""
    if not resolve_market(market).is_session(date):
        return state
    symbols, pn = to_panel(lake.read(_source(lake, date), date), date, market)
    return state.after(symbols, pn)


def _warm(lake: Lake, date: str, state: HarState, market: Any = None) -> HarState:
    """The HAR state after a date before those being featurized: from the daily values its
    featurize wrote (:data:`DAILY_TABLE`, the same numbers), else from its bars (:func:`_advance`)."""
    if resolve_market(market).is_session(date) and lake.exists(DAILY_TABLE, date):
        return state.following(lake.read(DAILY_TABLE, date))
    return _advance(lake, date, state, market)


def _featurize_one(lake: Lake, date: str, state: HarState, quotes: bool,
                   market: Any = None) -> tuple[int, str, HarState]:
    """Read, featurize and write one date (runs in a worker process when workers > 1): the daily
    values first, then the features partition (a kill between the two leaves daily values that a
    rerun recomputes identically)."""
    src = _source(lake, date)
    bars = lake.read(src, date)
    truth = lake.read("truth", date) if lake.exists("truth", date) else None
    df, new_state = featurize_frame(bars, date, state, truth, quotes_available=quotes, market=market)
    if new_state.last is not None:
        lake.write(DAILY_TABLE, date, new_state.last)
    _write_features(lake, date, df)
    return len(df), src, new_state


def _dates_to_featurize(lake: Lake, dates: Iterable[str] | None) -> tuple[list[str], list[str]]:
    """(every date with input bars, the dates to featurize); FileNotFoundError when bars are missing."""
    available = sorted(set(lake.dates("validated")) | set(lake.dates("raw")))
    todo = sorted(dates) if dates is not None else (lake.dates("validated") or lake.dates("raw"))
    if not todo:
        raise FileNotFoundError(f"no bars to featurize under {lake.url} (neither validated/ nor raw/ has dates)")
    missing = [d for d in todo if d not in available]
    if missing:
        raise FileNotFoundError(f"no validated or raw bars for date(s) {missing} under {lake.url}")
    return available, todo


def _featurize_parallel(lake: Lake, dates: Iterable[str], state: "HarState", quotes: bool, workers: int,
                        collect, market: Any = None) -> None:
    """Featurize dates in worker processes; this process walks them in order, advancing the HAR state."""
    # fork: workers inherit the imported modules (spawn re-imports pandas/pyarrow per worker: seconds)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as ex:
        pending: deque = deque()
        for d in dates:
            pending.append(ex.submit(_featurize_one, lake, d, state, quotes, market))
            state = _advance(lake, d, state, market)
            while len(pending) > 2 * workers:
                collect(*pending.popleft().result()[:2])
        while pending:
            collect(*pending.popleft().result()[:2])


def run_featurize(lake: Lake, dates: Iterable[str] | None = None, progress: bool = True,
                  workers: int = 1, market: Any = None) -> dict[str, Any]:
    """Featurize dates in order and write ``features/date=D`` partitions and ``_feature_set.json``.

    Args:
        lake: the lake; input is ``validated`` (``raw`` with a warning where a date has none).
        dates: dates to process (default: every validated date, else every raw date). Earlier input
            dates (up to 22) warm the HAR state (their :data:`DAILY_TABLE` values, else their
            bars), so a partial rerun equals a full run. Re-featurize from the first date whose
            bars changed: later dates carry its state.
        progress: show a progress bar on stderr.
        workers: processes featurizing dates in parallel. With > 1 the main process walks the
            dates in order computing only the small HAR state (read + daily RV) and hands each date
            with its state to a worker; at most 2 x workers dates are in flight (memory bound).
        market: the calendar (hfcast.market; None = XNYS); a date that is not a session gives no rows.

    Returns:
        Summary: dates, rows, n_features, quotes_available, seconds, rows_per_s, sources used.

    Raises:
        FileNotFoundError: there are no input bars.
    """
    available, todo = _dates_to_featurize(lake, dates)
    t0 = time.perf_counter()
    state = HarState()
    for d in [d for d in available if d < todo[0]][-LEVEL_DAYS:]:
        state = _warm(lake, d, state, market)
    quotes = _choose_quotes(lake, todo)
    if not quotes:
        log.warning("bars have no quotes: %d quote-based features are unavailable: %s",
                    len(unavailable_features(False)), unavailable_features(False))
    rows, sources = 0, {"validated": 0, "raw": 0}
    it: Iterable[str] = todo
    if progress:
        from rich.progress import track

        it = track(todo, description="featurize", transient=True)

    def collect(n: int, src: str) -> None:
        nonlocal rows
        rows += n
        sources[src] += 1

    if workers <= 1:
        for d in it:
            n, src, state = _featurize_one(lake, d, state, quotes, market)
            collect(n, src)
    else:
        _featurize_parallel(lake, it, state, quotes, workers, collect, market)
    names = feature_names(quotes)
    doc = {"features": names, "quotes_available": quotes, "n_features": len(names),
           "unavailable": unavailable_features(quotes)}
    write_text(join(lake.table("features"), FEATURE_SET_FILE), json.dumps(doc, indent=1), lake.storage_options)
    secs = time.perf_counter() - t0
    summary = {"dates": len(todo), "first": todo[0], "last": todo[-1], "rows": rows, "n_features": len(names),
               "quotes_available": quotes, "seconds": round(secs, 3), "workers": workers,
               "rows_per_s": round(rows / secs, 1) if secs > 0 else None, "sources": sources}
    log.info("featurized %d date(s), %d rows, %d features in %.1fs", len(todo), rows, len(names), secs)
    return summary


def _choose_quotes(lake: Lake, todo: list[str]) -> bool:
    """Whether the feature set includes quote features, from the first date that has bars.

    Why not simply the first date: a date with no clean rows (all quarantined, a closed date)
    says nothing about the source, and an empty frame would count as quoted. Empty dates are
    skipped with a warning; True when every date is empty (nothing to featurize either way).
    """
    for d in todo:
        bars = lake.read(_source(lake, d), d, ["symbol", "ts", "bid", "ask"])
        if len(bars):
            return schema.has_quotes(bars)
        log.warning("%s has no bars; the feature set is chosen from a later date", d)
    return True


def read_feature_set(lake: Lake) -> dict[str, Any]:
    """The feature list actually written (``<lake>/features/_feature_set.json``)."""
    return json.loads(read_text(join(lake.table("features"), FEATURE_SET_FILE), lake.storage_options))


def load_features(lake: Lake, dates: Iterable[str], columns: list[str] | None = None) -> pd.DataFrame:
    """Features partitions of ``dates`` concatenated and sorted by (symbol, ts).

    Args:
        columns: columns to read besides symbol and ts (None: all).
    """
    cols = None if columns is None else ["symbol", "ts", *[c for c in columns if c not in ("symbol", "ts")]]
    parts = [lake.read("features", d, cols) for d in dates]
    if not parts:
        raise ValueError("load_features: no dates given")
    df = pd.concat(parts, ignore_index=True)
    return df.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
