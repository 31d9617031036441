"""The market calendar: which dates trade, when each session opens and closes, in UTC.

Why one module: the session used to be hard-coded (09:30-16:00 New York, 390 minutes) in several
places; real data comes from exchanges with other hours, holidays, early closes, lunch breaks
and sessions that start the evening before (CME Globex). Every consumer asks a :class:`Market`.

Sources, in order: a name known to ``exchange_calendars`` (XNYS, XETR, XEUR, XLON, XTKS, CMES...),
then one known to ``pandas_market_calendars`` (CME_Equity, CME_Rate, CBOT_Equity, ... futures calendars),
else a custom session from configuration (``params.yaml``)::

    market:
      calendar: custom          # or XNYS (default), XETR, CME_Equity, ...
      tz: Europe/Berlin
      open: "09:00"             # a close <= open means the session starts the evening before
      close: "22:00"
      weekdays: [0, 1, 2, 3, 4]
      holidays: ["2024-12-25"]
      early_closes: {"2024-12-24": "14:00"}

A session belongs to its trade date (the date it closes on, as the exchange labels it). The
session grid is the minute starts in [open, close) minus a break, so minute ``i`` of the session
is the i-th trading minute. Lookups are cached per date and vectorised over timestamps (integer
arithmetic on UTC microseconds), so the hot path never converts time zones row by row.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any, Mapping
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_CALENDAR = "XNYS"
_MIN_US = 60_000_000
_DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class Session:
    """One trading session. Times are UTC microseconds since the epoch (int) for fast arithmetic."""

    date: str          # trade date, ISO
    open_us: int
    close_us: int
    break_start_us: int  # == close_us when the session has no break
    break_end_us: int
    n_minutes: int     # trading minutes (break excluded)

    @property
    def open_utc(self) -> pd.Timestamp:
        return pd.Timestamp(self.open_us, unit="us", tz="UTC")

    @property
    def close_utc(self) -> pd.Timestamp:
        return pd.Timestamp(self.close_us, unit="us", tz="UTC")

    def __iter__(self):  # (open_utc, close_utc, n_minutes), as the API sketch has it
        return iter((self.open_utc, self.close_utc, self.n_minutes))

    def minutes_utc(self) -> pd.DatetimeIndex:
        """The minute starts of the session in UTC (datetime64[us, UTC]); the break is left out."""
        us = self.open_us + _MIN_US * np.arange(self.n_minutes, dtype=np.int64)
        us = np.where(us >= self.break_start_us, us + (self.break_end_us - self.break_start_us), us)
        return pd.DatetimeIndex(us.astype("datetime64[us]")).tz_localize("UTC")

    def minute_index(self, us: np.ndarray) -> np.ndarray:
        """Minute of this session of each UTC-microsecond stamp; -1 in the break, outside 0..n-1 elsewhere."""
        m = np.floor_divide(us - self.open_us, _MIN_US)
        if self.break_end_us > self.break_start_us:
            gap = (self.break_end_us - self.break_start_us) // _MIN_US
            in_break = (us >= self.break_start_us) & (us < self.break_end_us)
            m = np.where(us >= self.break_end_us, m - gap, m)
            m = np.where(in_break, -1, m)
        return m


def _hhmm(text: str) -> dt.time:
    try:
        return dt.time.fromisoformat(str(text))
    except ValueError as exc:
        raise ValueError(f"market: time must be HH:MM, got {text!r}") from exc


def calendar_known(name: str) -> bool:
    """Whether exchange_calendars or pandas_market_calendars has a calendar called ``name`` (checked
    where a name is given, e.g. ``--calendar``, instead of at the first session it is asked for)."""
    import exchange_calendars as xcals

    if name in xcals.get_calendar_names(include_aliases=True):
        return True
    import pandas_market_calendars as mcal

    return name in mcal.get_calendar_names()


def _library_schedule(name: str, start: pd.Timestamp, end: pd.Timestamp) -> tuple[pd.DataFrame, str]:
    """(schedule with open/break_start/break_end/close UTC columns indexed by trade date, tz name)."""
    import exchange_calendars as xcals

    if name in xcals.get_calendar_names(include_aliases=True):
        first = max(start, pd.Timestamp("1990-01-02"))
        cal = xcals.get_calendar(name, start=first.date().isoformat(), end=end.date().isoformat())
        return cal.schedule, str(cal.tz)
    import pandas_market_calendars as mcal

    if name in mcal.get_calendar_names():
        cal = mcal.get_calendar(name)
        sch = cal.schedule(start.date().isoformat(), end.date().isoformat())
        sch = sch.rename(columns={"market_open": "open", "market_close": "close"})
        for col in ("break_start", "break_end"):
            if col not in sch:
                sch[col] = pd.NaT
        return sch[["open", "break_start", "break_end", "close"]], str(cal.tz)
    raise ValueError(f"unknown market calendar {name!r}: use a name from exchange_calendars "
                     "(XNYS, XETR, XEUR, XLON, XTKS, CMES, ...; exchange_calendars.get_calendar_names()), "
                     "from pandas_market_calendars (CME_Equity, CME_Rate, CBOT_Equity, ...), or calendar: custom "
                     "with tz, open and close")


def _custom_schedule(spec: Mapping[str, Any], start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Schedule of a custom session: weekdays minus holidays, early closes applied, DST-correct."""
    tz = ZoneInfo(spec["tz"])
    t_open, t_close = _hhmm(spec["open"]), _hhmm(spec["close"])
    weekdays = set(spec.get("weekdays", [0, 1, 2, 3, 4]))
    holidays = {pd.Timestamp(h).date() for h in spec.get("holidays", []) or []}
    early = {pd.Timestamp(k).date(): _hhmm(v) for k, v in (spec.get("early_closes") or {}).items()}
    brk = spec.get("break")
    overnight = t_close <= t_open
    rows = {}
    for day in pd.date_range(start, end, freq="D"):
        d = day.date()
        if d.weekday() not in weekdays or d in holidays:
            continue
        o_day = d - dt.timedelta(days=1) if overnight else d
        o = pd.Timestamp(dt.datetime.combine(o_day, t_open, tzinfo=tz)).tz_convert("UTC")
        c = pd.Timestamp(dt.datetime.combine(d, early.get(d, t_close), tzinfo=tz)).tz_convert("UTC")
        bs = be = pd.NaT
        if brk:
            bs = pd.Timestamp(dt.datetime.combine(d, _hhmm(brk[0]), tzinfo=tz)).tz_convert("UTC")
            be = pd.Timestamp(dt.datetime.combine(d, _hhmm(brk[1]), tzinfo=tz)).tz_convert("UTC")
        rows[pd.Timestamp(d)] = (o, bs, be, c)
    return pd.DataFrame.from_dict(rows, orient="index", columns=["open", "break_start", "break_end", "close"])


def _us(col: pd.Series) -> np.ndarray:
    return pd.to_datetime(col, utc=True).dt.as_unit("us").astype("int64").to_numpy()


class Market:
    """A trading calendar (see module docstring). Build with :meth:`from_params` or :func:`get_market`."""

    def __init__(self, spec: Mapping[str, Any] | str | None = None):
        spec = {"calendar": spec} if isinstance(spec, str) else dict(spec or {})
        spec.setdefault("calendar", DEFAULT_CALENDAR)
        if str(spec["calendar"]).lower() == "custom":
            spec["calendar"] = "custom"
            missing = [k for k in ("tz", "open", "close") if not spec.get(k)]
            if missing:
                raise ValueError(f"market: a custom calendar needs {missing} (e.g. tz: Europe/Berlin, "
                                 "open: '09:00', close: '22:00')")
            _hhmm(spec["open"]), _hhmm(spec["close"])
        self.spec = spec
        self.name = str(spec["calendar"])
        self.tz = spec.get("tz")
        self._span: tuple[pd.Timestamp, pd.Timestamp] | None = None
        self._cache: dict[str, Session | None] = {}

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, calendar: str | None = None) -> "Market":
        """From the ``market:`` section of params.yaml; ``calendar`` (the --calendar option) wins."""
        section = dict((params or {}).get("market") or {}) if params and "market" in params else dict(params or {})
        if calendar:
            if calendar.lower() != "custom" and str(section.get("calendar", "")).lower() == "custom":
                section = {}
            section["calendar"] = calendar
        return get_market(_freeze(section))

    @property
    def timezone(self) -> str:
        """The exchange's time zone (IANA name), e.g. America/New_York for XNYS."""
        if self.tz is None:
            self._covering(pd.Timestamp.now().date())
        return str(self.tz)

    def __repr__(self) -> str:
        return f"Market({self.name})"

    # -- the session table ------------------------------------------------------------------
    def _ensure(self, start: pd.Timestamp, end: pd.Timestamp) -> None:
        """Load the schedule so that [start, end] is covered (whole years, with a margin)."""
        if self._span and self._span[0] <= start and end <= self._span[1]:
            return
        lo = pd.Timestamp(f"{min(start, self._span[0] if self._span else start).year - 1}-01-01")
        hi = pd.Timestamp(f"{max(end, self._span[1] if self._span else end).year + 1}-12-31")
        if self.name == "custom":
            sch = _custom_schedule(self.spec, lo, hi)
        else:
            sch, tz = _library_schedule(self.name, lo, hi)
            self.tz = self.tz or tz
        sch = sch.sort_index()
        self._dates = np.asarray(pd.DatetimeIndex(sch.index).strftime("%Y-%m-%d"), dtype=object)
        self._open = _us(sch["open"])
        self._close = _us(sch["close"])
        bs, be = (pd.to_datetime(sch[c], utc=True) for c in ("break_start", "break_end"))
        close = pd.to_datetime(sch["close"], utc=True)
        has = (bs.notna() & be.notna()).to_numpy()
        self._bs = np.where(has, _us(bs.fillna(close)), self._close)
        self._be = np.where(has, _us(be.fillna(close)), self._close)
        self._pos = {d: i for i, d in enumerate(self._dates)}
        self._span = (lo, hi)
        self._cache.clear()

    def _covering(self, *days: Any) -> None:
        ts = [pd.Timestamp(str(d)[:10]) for d in days]
        self._ensure(min(ts), max(ts))

    # -- per date ----------------------------------------------------------------------------
    def session(self, date: str | dt.date) -> Session:
        """The session of a trade date. Raises ValueError (naming the calendar) on a closed date."""
        s = self.session_or_none(date)
        if s is None:
            raise ValueError(f"{str(date)[:10]} is not a trading session of the {self.name} calendar "
                             "(holiday or weekend); check the date or the market calendar (--calendar)")
        return s

    def session_or_none(self, date: str | dt.date) -> Session | None:
        key = str(date)[:10]
        if key in self._cache:
            return self._cache[key]
        self._covering(key)
        i = self._pos.get(key)
        s = None
        if i is not None:
            brk = self._be[i] - self._bs[i]
            n = int((self._close[i] - self._open[i] - brk) // _MIN_US)
            s = Session(key, int(self._open[i]), int(self._close[i]), int(self._bs[i]), int(self._be[i]), n)
        self._cache[key] = s
        return s

    def is_session(self, date: str | dt.date) -> bool:
        return self.session_or_none(date) is not None

    def n_minutes(self, date: str | dt.date) -> int:
        return self.session(date).n_minutes

    def minutes_utc(self, date: str | dt.date) -> pd.DatetimeIndex:
        """Minute starts of the session of ``date`` in UTC (the featurize grid)."""
        return self.session(date).minutes_utc()

    def sessions(self, start: str | dt.date, end: str | dt.date) -> list[str]:
        """Trade dates in [start, end] (inclusive), ISO strings."""
        a, b = str(start)[:10], str(end)[:10]
        self._covering(a, b)
        lo, hi = np.searchsorted(self._dates, a, "left"), np.searchsorted(self._dates, b, "right")
        return list(self._dates[lo:hi])

    def next_sessions(self, start: str | dt.date, n: int) -> list[str]:
        """The first ``n`` trade dates on or after ``start``."""
        a = pd.Timestamp(str(start)[:10])
        span = max(14, int(n * 7 / 4) + 14)
        while True:
            out = self.sessions(a, a + pd.Timedelta(days=span))
            if len(out) >= n:
                return out[:n]
            span *= 2

    def regular_minutes(self) -> int:
        """The most common session length in the loaded table (390 for XNYS)."""
        self._covering(pd.Timestamp.now().date())
        n = (self._close - self._open - (self._be - self._bs)) // _MIN_US
        vals, counts = np.unique(n, return_counts=True)
        return int(vals[np.argmax(counts)])

    # -- per timestamp (vectorised) -------------------------------------------------------
    def locate(self, ts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For UTC stamps: (index into the loaded table or -1, minute of that session, inside).

        ``inside`` is True for a stamp in [open, close) and not in the break. Sessions start and
        end on whole minutes, so the work is done once per distinct minute (a year of 1000 symbols
        has ~100k of them for ~100M rows) with one searchsorted over session opens; NaT gives -1.
        """
        idx = pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("us")
        nat = np.asarray(idx.isna())
        us = np.where(nat, idx.asi8[~nat][0] if (~nat).any() else 0, idx.asi8)  # NaT -> any real stamp
        if len(us) > 4096:
            codes, uniq = pd.factorize(np.floor_divide(us, _MIN_US))
            sub = np.asarray(uniq, dtype=np.int64) * _MIN_US
            i, minute, inside = self._locate_us(sub, np.zeros(len(sub), dtype=bool))
            i, minute, inside = i[codes], minute[codes], inside[codes]
            return np.where(nat, -1, i), minute, inside & ~nat
        return self._locate_us(us, nat)

    def _locate_us(self, us: np.ndarray, nat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(us) and not nat.all():
            good = us[~nat]
            self._covering(pd.Timestamp(good.min(), unit="us") - _DAY, pd.Timestamp(good.max(), unit="us") + _DAY)
        if not len(us) or self._span is None:
            z = np.zeros(len(us), dtype=np.int64)
            return z - 1, z, np.zeros(len(us), dtype=bool)
        i = np.searchsorted(self._open, us, "right") - 1
        i = np.where(nat, -1, i)
        j = np.maximum(i, 0)
        minute = np.floor_divide(us - self._open[j], _MIN_US)
        gap = (self._be[j] - self._bs[j]) // _MIN_US
        minute = np.where(us >= self._be[j], minute - gap, minute)
        inside = (i >= 0) & (us < self._close[j]) & ~((us >= self._bs[j]) & (us < self._be[j]))
        return i, minute, inside

    def trade_date(self, ts: Any) -> np.ndarray:
        """Trade date (ISO string) of each UTC stamp: its session's date when inside one, else the
        exchange-local calendar date (so a stray evening bar of an equity lands on its own day);
        None for NaT. Computed once per distinct minute."""
        idx = pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("us")
        nat = np.asarray(idx.isna())
        us = np.where(nat, idx.asi8[~nat][0] if (~nat).any() else 0, idx.asi8)  # NaT -> any real stamp
        codes, uniq = pd.factorize(np.floor_divide(us, _MIN_US))
        sub = pd.DatetimeIndex((np.asarray(uniq, dtype=np.int64) * _MIN_US).astype("datetime64[us]")).tz_localize("UTC")
        i, _, inside = self.locate(sub)
        local = self.local_dates(sub)
        days = np.array(local, dtype=object)
        if self._span:
            days[inside] = self._dates[i[inside]]
        out: np.ndarray = days[codes] if len(days) else np.full(len(us), None, dtype=object)
        out[nat] = None
        return out

    def local_dates(self, ts: Any) -> np.ndarray:
        """Exchange-local calendar date of each stamp (object array of ISO strings, None for NaT).

        Converts only the distinct UTC hours (offsets are whole hours or half hours at worst: the
        distinct 15-minute blocks are converted), so a million rows cost a few thousand conversions.
        """
        idx = pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("us")
        nat = idx.isna()
        us = np.where(nat, idx.asi8[~nat][0] if (~nat).any() else 0, idx.asi8)  # NaT -> any real stamp
        block = np.floor_divide(us, 15 * _MIN_US)
        codes, uniq = pd.factorize(block)
        if self.tz is None:
            self._covering(pd.Timestamp.now().date())
        days = (pd.DatetimeIndex((uniq * 15 * _MIN_US).astype("datetime64[us]")).tz_localize("UTC")
                .tz_convert(self.tz).strftime("%Y-%m-%d"))
        out: np.ndarray = (np.asarray(days, dtype=object)[np.maximum(codes, 0)] if len(uniq)
                           else np.full(len(us), None, dtype=object))
        out[np.asarray(nat)] = None
        return out

    def minute_of_session(self, ts: Any, date: str | None = None) -> np.ndarray:
        """Minute of session of each stamp: of ``date``'s session when given (outside 0..n-1 for
        other times), else of the session each stamp falls in (-1 outside any session)."""
        us = pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("us").asi8
        if date is not None:
            return self.session(date).minute_index(us)
        _, minute, inside = self.locate(ts)
        return np.where(inside, minute, -1)

    def minutes_to_close(self, ts: Any) -> np.ndarray:
        """Trading minutes left after the minute of each stamp until its session's close (-1 outside)."""
        i, minute, inside = self.locate(ts)
        j = np.maximum(i, 0)
        n = (self._close[j] - self._open[j] - (self._be[j] - self._bs[j])) // _MIN_US if self._span else 0
        return np.where(inside, n - 1 - minute, -1)

    def open_seconds(self, ts: Any) -> np.ndarray:
        """Seconds the market has been in session from the start of the loaded table until each stamp.

        Differences of it measure age in trading time: a feature row written at Friday's close is
        not stale on Monday before the open (Feast / serving staleness: market closed is not stale).
        """
        us = pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("us").asi8
        with _TABLE_LOCK:  # the table may grow (and its origin move): extend and read it in one step
            if len(us):
                self._covering(pd.Timestamp(us.min(), unit="us") - _DAY, pd.Timestamp(us.max(), unit="us") + _DAY)
            opens, closes, bs, be = self._open, self._close, self._bs, self._be
        dur = (closes - opens) - (be - bs)
        cum = np.concatenate([[0], np.cumsum(dur)])
        i = np.searchsorted(opens, us, "right") - 1
        j = np.maximum(i, 0)
        inside = np.clip(us - opens[j], 0, closes[j] - opens[j])
        inside -= np.clip(np.minimum(us, be[j]) - bs[j], 0, be[j] - bs[j])
        return np.where(i >= 0, cum[j] + inside, 0) / 1e6

    def trading_age_s(self, ts: Any, now: Any) -> np.ndarray:
        """Age of each stamp at ``now`` counted in session seconds only (closed hours do not age it)."""
        now = pd.Timestamp(now)
        now = now.tz_convert("UTC") if now.tzinfo else now.tz_localize("UTC")
        stamps = pd.DatetimeIndex(pd.to_datetime(ts, utc=True))
        secs = self.open_seconds(stamps.append(pd.DatetimeIndex([now])))  # one table, one origin for both
        return secs[-1] - secs[:-1]


def _freeze(d: Mapping[str, Any]) -> tuple:
    """A hashable key of a market spec (lists -> tuples, dicts -> sorted items)."""
    def f(v: Any) -> Any:
        if isinstance(v, Mapping):
            return tuple(sorted((k, f(x)) for k, x in v.items()))
        if isinstance(v, (list, tuple)):
            return tuple(f(x) for x in v)
        return v
    return f(d)


def _thaw(key: Any) -> Any:
    if isinstance(key, tuple) and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in key):
        return {k: _thaw(v) for k, v in key}
    if isinstance(key, tuple):
        return [_thaw(x) for x in key]
    return key


_TABLE_LOCK = threading.RLock()  # session tables are shared by server threads


@functools.lru_cache(maxsize=32)
def _cached(key: tuple) -> Market:
    return Market(_thaw(key) if key else None)


def get_market(spec: Mapping[str, Any] | str | tuple | None = None) -> Market:
    """A shared :class:`Market` per spec (a calendar name, a ``market:`` mapping, or None = XNYS)."""
    if isinstance(spec, Market):
        return spec
    if spec is None or isinstance(spec, str):
        spec = {"calendar": spec or DEFAULT_CALENDAR}
    key = spec if isinstance(spec, tuple) else _freeze(spec)
    if not key:
        key = _freeze({"calendar": DEFAULT_CALENDAR})
    return _cached(key)


def default() -> Market:
    """The XNYS calendar: the explicit fallback of a function called with ``market=None``.

    Why a constant and not a setting: the configured calendar travels as a value
    (:attr:`hfcast.config.Settings.market`, passed down as ``market=``); nothing process-wide can
    change what ``None`` means, so two settings with different calendars in one process never mix.
    """
    return get_market(None)


def resolve(market: Market | Mapping[str, Any] | str | None) -> Market:
    """Accept a Market, a spec or None (XNYS, :func:`default`): what every consumer's ``market=`` takes."""
    if market is None:
        return default()
    return market if isinstance(market, Market) else get_market(market)
