"""Validation and quarantine of minute bars: nothing is dropped silently.

Every input row ends in exactly one of two tables: the clean bars (``validated/``) or the
quarantine (``quarantine/``), which keeps the bar columns plus ``reason`` (one of
:data:`REASONS`) and ``detail`` (human text naming the offending values). Each run writes counts
per reason to ``reports/validate/date=D.json``, so ``clean + quarantined == input`` can be
checked for every date.

A row gets its FIRST failing reason in the order of :data:`REASONS`. Row-local checks come first;
the checks that compare rows with each other (duplicates, order, jumps) only look at rows that
passed the row-local ones, so one corrupt row never causes a good neighbour to be rejected.

* ``duplicate_ts``: the 2nd+ occurrence of a (symbol, ts) pair in file order.
* ``out_of_order_ts``: a row whose ts is earlier than a ts already seen for its symbol.
* ``absurd_jump``: an isolated one-minute spike. With ``r1 = log(mid[t]/mid[t-1])`` and
  ``r2 = log(mid[t+1]/mid[t])`` between neighbouring clean rows of a symbol, row t is a spike when
  ``|r1| > L``, ``|r2| > L``, r1 and r2 have opposite signs and the price comes back,
  ``|log(mid[t+1]/mid[t-1])| < L / 2``. A genuine jump (the price stays) is kept; the first and
  last row of a symbol cannot be judged and are kept; a spike lasting two minutes is not caught.
  ``mid`` falls back to ``last`` for quote-less (OHLCV) sources.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, TypeVar

import numpy as np
import pandas as pd

from hfcast.config import checked_section

from hfcast.data.schema import (
    BAR_COLUMNS,
    QUOTE_COLUMNS,
    conform,
    has_quotes,
    mid_price,
    symbol_problems,
)
from hfcast.market import resolve as resolve_market

log = logging.getLogger(__name__)

#: quarantine reasons, in priority order (a row gets the first that applies)
REASONS: tuple[str, ...] = (
    "missing_symbol",
    "bad_symbol",
    "nan_or_inf",
    "nonpositive_price",
    "nonpositive_size",
    "crossed_quote",
    "locked_quote",
    "closed_date",
    "wrong_date",
    "outside_session",
    "unaligned_ts",
    "duplicate_ts",
    "out_of_order_ts",
    "absurd_jump",
)
QUARANTINE_COLUMNS = [*BAR_COLUMNS, "reason", "detail"]
DEFAULT_JUMP_LIMIT = 0.10  # log-return of an isolated one-minute spike (params.yaml validate.jump_limit)


@dataclass(frozen=True)
class ValidateConfig:
    """The ``validate:`` section of params.yaml (read by ingest, validate, prepare and the replay)."""

    SECTION: ClassVar[str] = "validate"

    jump_limit: float = DEFAULT_JUMP_LIMIT  # log-return of an isolated one-minute spike that is quarantined

    def __post_init__(self) -> None:
        if not float(self.jump_limit) > 0:
            raise ValueError(f"validate.jump_limit must be a log-return > 0, got {self.jump_limit}")

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None) -> "ValidateConfig":
        """Build from params.yaml ``validate:``; unknown keys are an error."""
        doc = checked_section(cls, section, "validate parameter(s)")
        return cls(**{k: float(v) for k, v in doc.items()})

PRICE_COLUMNS = ["bid", "ask", "last", "vwap", "mid_high", "mid_low"]
SIZE_COLUMNS = ["bid_size", "ask_size"]
COUNT_COLUMNS = ["volume", "trades"]  # zero is fine (a quiet minute), negative is not
NUMERIC_COLUMNS = [c for c in BAR_COLUMNS if c not in ("symbol", "ts")]

T = TypeVar("T")


def progress_iter(items: Iterable[T], description: str, total: int | None = None,
                  enabled: bool = True) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (a no-op when ``enabled`` is False).

    Shared by validate and ingest so long runs show where they are without the library printing.
    """
    if not enabled:
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        yield from bar.track(items, total=total, description=description)


def _fmt(df: pd.DataFrame, mask: np.ndarray, cols: list[str], template: str) -> pd.Series:
    """Detail strings like ``bid=10.02 ask=10.01`` for the flagged rows only."""
    sub = df.loc[mask, cols]
    parts = [f"{c}=" + sub[c].astype("string").fillna("NA") for c in cols]
    text = parts[0]
    for p in parts[1:]:
        text = text + " " + p
    return template + ": " + text


def exchange_dates(ts: pd.Series, market: Any = None) -> pd.Series:
    """Trade date ``YYYY-MM-DD`` of each UTC timestamp: its session's date (a Globex bar on Sunday
    evening belongs to Monday), the exchange-local date outside sessions (hfcast.market)."""
    return pd.Series(resolve_market(market).trade_date(ts), index=ts.index, dtype="string")


def _name_bad(df: pd.DataFrame, mask: np.ndarray, need: list[str]) -> pd.Series:
    """``"missing: bid,ask_size; infinite: volume"`` for the flagged rows (so a reader can fix the source)."""
    sub = df.loc[mask]
    out = pd.Series("", index=sub.index, dtype=object)
    for col in ["symbol", "ts", *need]:
        out = out.where(sub[col].notna().to_numpy(), out + "missing " + col + "; ")
    for col in NUMERIC_COLUMNS:
        out = out.where(~np.isinf(sub[col].to_numpy(dtype="float64")), out + "infinite " + col + "; ")
    return out.str.rstrip("; ")


def _symbol_checks(symbol: pd.Series) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """Missing/blank symbols, and symbols that break the one symbol rule
    (:func:`hfcast.data.schema.symbol_problem`: control or bidi characters, too long): such a name
    would be cut or mangled by files and stores downstream, or refused by the server, so the row is
    quarantined."""
    why = symbol_problems(symbol)
    missing = (symbol.isna() | (symbol.astype("string").str.strip() == "")).fillna(True).to_numpy(dtype=bool)
    bad = why.notna().to_numpy(dtype=bool) & ~missing
    text = pd.Series([f"symbol {str(s)[:40]!r}: {w}" for s, w in zip(symbol[bad], why[bad])],
                     index=symbol.index[bad], dtype=object)
    return missing, bad, text


def _row_checks(df: pd.DataFrame, date: str, quotes: bool,
                market: Any = None) -> list[tuple[str, np.ndarray, pd.Series | str]]:
    """Row-local checks as (reason, mask, detail) in priority order."""
    num = df[NUMERIC_COLUMNS].to_numpy(dtype="float64")
    inf = np.isinf(num).any(axis=1)
    need = QUOTE_COLUMNS if quotes else ["last"]
    missing = df[need].isna().any(axis=1).to_numpy() | df["symbol"].isna().to_numpy() | df["ts"].isna().to_numpy()
    nan_mask = inf | missing
    nan_detail = _name_bad(df, nan_mask, need)

    def le0(cols: list[str], strict: bool = True) -> np.ndarray:
        vals = df[cols].to_numpy(dtype="float64")
        bad = (vals <= 0) if strict else (vals < 0)  # NaN compares False: missing is not negative
        return bad.any(axis=1)

    price_bad = le0(PRICE_COLUMNS)
    size_bad = le0(SIZE_COLUMNS) | le0(COUNT_COLUMNS, strict=False)
    bid, ask = df["bid"].to_numpy(), df["ask"].to_numpy()
    crossed = bid > ask
    locked = bid == ask
    ts = df["ts"]
    mk = resolve_market(market)
    session = mk.session_or_none(date)
    trade = exchange_dates(ts, mk)
    open_days = {d: mk.is_session(d) for d in trade.dropna().unique()}
    closed = trade.map(open_days).fillna(False).to_numpy(dtype=bool) == False  # noqa: E712
    closed &= trade.notna().to_numpy()
    wrong_date = (trade != date).fillna(True).to_numpy(dtype=bool)
    if session is not None:
        idx = pd.DatetimeIndex(ts).as_unit("us")
        mos = session.minute_index(np.where(idx.isna(), session.open_us, idx.asi8))
        outside = (mos < 0) | (mos >= session.n_minutes)
        hours = f"{session.open_utc:%H:%M}-{session.close_utc:%H:%M} UTC ({session.n_minutes} minutes, {mk.name})"
    else:
        outside, hours = np.zeros(len(df), dtype=bool), ""
    missing_sym, bad_sym, bad_text = _symbol_checks(df["symbol"])
    return [
        ("missing_symbol", missing_sym, "symbol is missing or empty"),
        ("bad_symbol", bad_sym, bad_text),
        ("nan_or_inf", nan_mask, nan_detail),
        ("nonpositive_price", price_bad, "price <= 0"),
        ("nonpositive_size", size_bad, "size <= 0 or negative volume/trades"),
        ("crossed_quote", crossed, "bid > ask"),
        ("locked_quote", locked, "bid == ask"),
        ("closed_date", closed, f"the trade date is not a session of the {mk.name} calendar (holiday or weekend)"),
        ("wrong_date", wrong_date, f"trade date ({mk.name} calendar) is not {date}"),
        ("outside_session", outside, f"minute outside the session {hours}"),
        ("unaligned_ts", (ts != ts.dt.floor("min")).to_numpy(dtype=bool), "ts is not a whole minute (bars are minute starts)"),
    ]


_DETAIL_COLS = {
    "nonpositive_price": PRICE_COLUMNS,
    "nonpositive_size": SIZE_COLUMNS + COUNT_COLUMNS,
    "crossed_quote": ["bid", "ask"],
    "locked_quote": ["bid", "ask"],
    "closed_date": ["ts"],
    "wrong_date": ["ts"],
    "outside_session": ["ts"],
    "unaligned_ts": ["ts"],
    "duplicate_ts": ["ts"],
    "out_of_order_ts": ["ts"],
}


def _spikes(mid: np.ndarray, symbol: np.ndarray, limit: float) -> np.ndarray:
    """Isolated one-minute spikes in a (symbol, ts)-sorted mid series (see module docstring)."""
    out = np.zeros(len(mid), dtype=bool)
    if len(mid) < 3:
        return out
    lm = np.log(mid)
    r1 = lm[1:-1] - lm[:-2]
    r2 = lm[2:] - lm[1:-1]
    span = lm[2:] - lm[:-2]
    same = (symbol[1:-1] == symbol[:-2]) & (symbol[2:] == symbol[1:-1])
    spike = same & (np.abs(r1) > limit) & (np.abs(r2) > limit) & (np.sign(r1) != np.sign(r2)) & (np.abs(span) < limit / 2)
    out[1:-1] = spike
    return out


def validate_bars(df: pd.DataFrame, date: str, quotes_available: bool | None = None,
                  jump_limit: float = DEFAULT_JUMP_LIMIT, market: Any = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split one date's bars into clean rows and quarantined rows (with reasons).

    Args:
        df: bars in file order (anything :func:`conform` accepts); order matters for the
            duplicate and out-of-order rules, so do not sort before validating.
        date: the session date ``YYYY-MM-DD`` (exchange-local) that the rows claim to belong to.
        quotes_available: False for quote-less (OHLCV) sources: missing quotes are then fine but a
            missing ``last`` is not. None detects it from the data (:func:`has_quotes`).
        jump_limit: the log-return ``L`` of the absurd-jump rule.
        market: the calendar (hfcast.market; None = XNYS) that defines sessions and trade dates.

    Returns:
        ``(clean, quarantine)``: clean has BAR_COLUMNS sorted by (symbol, ts); quarantine has
        BAR_COLUMNS + ``reason`` + ``detail`` in input order. ``len(clean) + len(quarantine) ==
        len(df)``.
    """
    bars = conform(df)
    quotes = has_quotes(bars) if quotes_available is None else bool(quotes_available)
    verdict = _Verdict(bars)
    for name, mask, text in _row_checks(bars, date, quotes, market):
        verdict.assign(name, np.asarray(mask, dtype=bool), text)
    verdict.assign("duplicate_ts", _duplicate_rows(bars, verdict.clean()), "repeated (symbol, ts)")
    verdict.assign("out_of_order_ts", _out_of_order_rows(bars, verdict.clean()),
                   "earlier than a ts already seen for the symbol")
    verdict.mark_jumps(jump_limit)
    return verdict.split()


class _Verdict:
    """The first reason (and its detail) that quarantines each row of ``bars``; a later rule
    never overrides an earlier one, so each row carries the first rule it broke."""

    def __init__(self, bars: pd.DataFrame):
        n = len(bars)
        self.bars = bars
        self.reason = np.full(n, None, dtype=object)
        self.detail = pd.Series(np.full(n, None, dtype=object), index=bars.index, dtype=object)

    def clean(self) -> np.ndarray:
        """[n] bool: the rows no rule has quarantined yet."""
        return self.reason == None  # noqa: E711 - elementwise on an object array

    def assign(self, name: str, mask: np.ndarray, text: pd.Series | str) -> None:
        new = mask & self.clean()
        if not new.any():
            return
        self.reason[new] = name
        cols = _DETAIL_COLS.get(name)
        if isinstance(text, pd.Series):
            self.detail[new] = text.reindex(self.bars.index[new]).to_numpy()
        else:
            self.detail[new] = _fmt(self.bars, new, cols, text) if cols else text

    def mark_jumps(self, jump_limit: float) -> None:
        """The absurd-jump rule over the clean rows, in (symbol, ts) order."""
        bars = self.bars
        order = bars.iloc[np.flatnonzero(self.clean())].sort_values(["symbol", "ts"], kind="stable").index.to_numpy()
        mid = mid_price(bars.loc[order]).to_numpy(dtype="float64")
        spike = _spikes(mid, bars.loc[order, "symbol"].to_numpy(dtype=object), jump_limit)
        if spike.any():
            prev_mid = np.r_[np.nan, mid[:-1]][spike]
            next_mid = np.r_[mid[1:], np.nan][spike]
            text = [f"mid {p:.6g} -> {m:.6g} -> {q:.6g} (limit {jump_limit:g} log)"
                    for p, m, q in zip(prev_mid, mid[spike], next_mid)]
            self.reason[order[spike]] = "absurd_jump"
            self.detail[order[spike]] = text

    def split(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(clean, quarantine)`` as :func:`validate_bars` returns them."""
        bad = ~self.clean()
        quarantine = self.bars.loc[bad].copy()
        quarantine["reason"] = pd.Series(self.reason[bad], index=quarantine.index, dtype="string")
        quarantine["detail"] = self.detail[bad].astype("string")
        clean = self.bars.loc[~bad].sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
        return clean, quarantine.reset_index(drop=True)


def _duplicate_rows(bars: pd.DataFrame, ok: np.ndarray) -> np.ndarray:
    """[n] bool: among the ``ok`` rows, each repeat of a (symbol, ts) already seen."""
    okf = bars.loc[ok, ["symbol", "ts"]]
    dup = np.zeros(len(bars), dtype=bool)
    dup[np.flatnonzero(ok)[okf.duplicated(keep="first").to_numpy()]] = True
    return dup


def _out_of_order_rows(bars: pd.DataFrame, ok: np.ndarray) -> np.ndarray:
    """[n] bool: among the ``ok`` rows, each earlier than a ts already seen for its symbol."""
    okf = bars.loc[ok, ["symbol", "ts"]]
    prev_max = okf.groupby("symbol", sort=False)["ts"].cummax().groupby(okf["symbol"], sort=False).shift(1)
    ooo = np.zeros(len(bars), dtype=bool)
    ooo[np.flatnonzero(ok)[(okf["ts"] < prev_max).fillna(False).to_numpy(dtype=bool)]] = True
    return ooo


def reason_counts(quarantine: pd.DataFrame) -> dict[str, int]:
    """Counts for every reason in :data:`REASONS` (zeros included, so reports have one shape)."""
    vc = quarantine["reason"].value_counts() if len(quarantine) else pd.Series(dtype="int64")
    return {r: int(vc.get(r, 0)) for r in REASONS}


def validate_date(lake: Any, date: str, quotes_available: bool | None = None,
                  jump_limit: float = DEFAULT_JUMP_LIMIT, market: Any = None) -> dict[str, Any]:
    """Validate ``raw/date=D``; write validated/, quarantine/ (always, maybe empty) and the report."""
    from hfcast.storage import write_text

    raw = lake.read("raw", date)
    clean, quarantine = validate_bars(raw, date, quotes_available, jump_limit, market)
    lake.write("validated", date, clean)
    lake.write("quarantine", date, quarantine)
    counts = reason_counts(quarantine)
    report = {
        "date": date,
        "input_rows": len(raw),
        "clean_rows": len(clean),
        "quarantined_rows": len(quarantine),
        "quotes_available": has_quotes(clean) if quotes_available is None else bool(quotes_available),
        "jump_limit": jump_limit,
        "reasons": counts,
        "diagnosis": diagnose_offset(raw, date, market),
    }
    if report["diagnosis"]:
        log.warning("%s: %s", date, report["diagnosis"])
    write_text(lake.report("validate", f"date={date}.json"), json.dumps(report, indent=2), lake.storage_options)
    if len(quarantine):
        log.info("%s: %d of %d rows quarantined (%s)", date, len(quarantine), len(raw),
                 ", ".join(f"{k}={v}" for k, v in counts.items() if v))
    return report


def run_validate(lake: Any, dates: list[str] | None = None, progress: bool = True,
                 quotes_available: bool | None = None, jump_limit: float = DEFAULT_JUMP_LIMIT,
                 market: Any = None) -> dict[str, Any]:
    """Validate raw partitions of ``dates`` (default: all); reruns overwrite, so they are idempotent.

    Returns:
        Totals: ``dates``, ``input_rows``, ``clean_rows``, ``quarantined_rows``, ``reasons``
        (counts per reason) and ``per_date`` (each date's report).

    Raises:
        FileNotFoundError: a requested date has no raw partition (the message names it).
    """
    todo = lake.dates("raw") if dates is None else list(dates)
    missing = [d for d in todo if not lake.exists("raw", d)]
    if missing:
        raise FileNotFoundError(f"no raw partition for date(s) {missing} under {lake.table('raw')}")
    per_date = [validate_date(lake, d, quotes_available, jump_limit, market)
                for d in progress_iter(todo, "validate", total=len(todo), enabled=progress)]
    totals: dict[str, Any] = {"dates": todo, "per_date": per_date}
    for key in ("input_rows", "clean_rows", "quarantined_rows"):
        totals[key] = sum(r[key] for r in per_date)
    totals["reasons"] = {r: sum(p["reasons"][r] for p in per_date) for r in REASONS}
    totals["diagnoses"] = {p["date"]: p["diagnosis"] for p in per_date if p.get("diagnosis")}
    return totals


def diagnose_offset(df: pd.DataFrame, date: str, market: Any = None) -> str | None:
    """Name the likely cause when a date's rows sit outside the session by one constant offset.

    Why: a time-zone, daylight-saving or bar-end mistake shifts every stamp by the same amount; a
    count of ``outside_session`` rows does not say so. The rows are "shifted by k minutes" when
    the ones outside lie on one side of the session, their extreme is k minutes past the edge, and
    the opposite extreme is k minutes from the other edge (the whole day moved, not a few stray
    bars). Returns None when there is no such pattern.
    """
    mk = resolve_market(market)
    session = mk.session_or_none(date)
    ts = pd.to_datetime(df["ts"], utc=True, errors="coerce").dropna() if len(df) else pd.Series([], dtype=object)
    if session is None or not len(ts):
        return None
    m = session.minute_index(pd.DatetimeIndex(ts).as_unit("us").asi8)
    n = session.n_minutes
    out = (m < 0) | (m >= n)
    if not out.any():
        return None
    lo, hi = int(m.min()), int(m.max())
    if (m[out] >= n).all() and lo == hi - (n - 1) and lo > 0:
        k, side = lo, "after"
    elif (m[out] < 0).all() and hi == n - 1 + lo and lo < 0:
        k, side = -lo, "before"
    else:
        return None
    return (f"{int(out.sum())} of {len(m)} rows are outside the {mk.name} session of {date}; all rows are "
            f"{k} minutes {side} the session (first bar {k} min {side} the open, last {k} min {side} the close): "
            "check --tz, daylight saving, or --stamp end")
