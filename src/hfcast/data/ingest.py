"""Ingest real data into the lake: BBO bars, OHLCV bars, trade (+ quote) ticks, LOBSTER files.

Every format ends as contract minute bars (:mod:`hfcast.data.schema`) written to ``raw/`` in file
order, then validated (:mod:`hfcast.data.validate`) into ``validated/`` + ``quarantine/``.

Time: naive timestamps are exchange-local time in ``tz`` and are localized, then converted to UTC;
timestamps that carry an offset (``...Z``, ``+01:00``, tz-aware parquet) are converted, never
re-localized; numeric timestamps are epochs (UTC; unit from their magnitude or ``epoch_unit``).
Bars are split into dates by their TRADE date on the market calendar (:mod:`hfcast.market`): a
Globex bar on Sunday evening belongs to Monday. ``tz`` defaults to the calendar's time zone.
Vendor layouts (date and time columns, bar-end stamps, a header one name short) are handled in
:mod:`hfcast.data.layouts`.

Formats are objects of the registry :mod:`hfcast.data.formats` (``bbo``, ``ohlcv``, ``trades``,
``lobster`` and whatever else registers): each names the contract columns its files must have and
reads them with the helpers below (:func:`read_files`); column names are matched
case-insensitively, and ``column_map`` maps contract -> source name.

Ticks -> bars (:func:`aggregate_ticks`): ``ts`` = minute start; ``last``/``volume``/``trades``/
``vwap`` from the trades of the minute; quotes = the book after the minute's last quote update
(carried from earlier minutes of the same day when the minute had none); ``mid_high``/``mid_low``
= range of the mid inside the minute, including the mid carried in at its start. With quotes a bar
is made for every minute from a symbol-day's first event to its last; without, only for minutes
with trades. Tick rows that would corrupt the aggregates (NaN/inf or non-positive prices and
sizes, out-of-order times) go to ``quarantine_ticks/`` with a reason, counted in the report.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
from typing import Any, Sequence

import numpy as np
import pandas as pd

from hfcast.data import formats, layouts
from hfcast.data.formats import IngestError, Request
from hfcast.data.schema import BAR_COLUMNS, QUOTE_COLUMNS, conform
from hfcast.data.validate import DEFAULT_JUMP_LIMIT, exchange_dates, progress_iter, validate_date
from hfcast.market import Market
from hfcast.market import resolve as resolve_market
from hfcast.storage import Lake, is_remote, read_bytes, write_text

log = logging.getLogger(__name__)

_OFFSET = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$", re.I)

__all__ = ["IngestError", "aggregate_ticks", "ingest", "parse_column_map", "prepare_table", "read_files",
           "read_table", "to_utc"]


def parse_column_map(text: str | None) -> dict[str, str]:
    """``"ts=Timestamp,bid=BidPx"`` -> ``{"ts": "Timestamp", "bid": "BidPx"}`` (contract -> source)."""
    out: dict[str, str] = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise IngestError(f"column map item {item!r} is not CONTRACT=SOURCE (e.g. ts=Timestamp)")
        out[key.strip()] = value.strip()
    return out


def read_table(path: str, storage_options: dict | None = None, notes: list[str] | None = None) -> pd.DataFrame:
    """Read a CSV (also .gz) or parquet file; any failure names the file and the problem.

    ``notes`` collects what was repaired on the way (a header one name short), for the report.
    """
    name = path.lower()
    kind = "parquet" if name.endswith((".parquet", ".pq")) else "csv" if re.search(r"\.(csv|txt)(\.gz)?$", name) else None
    if kind is None:
        raise IngestError(f"{path}: unknown file type (expected .csv, .csv.gz or .parquet)")
    try:
        src: Any = io.BytesIO(read_bytes(path, storage_options)) if is_remote(path) else path
        if kind == "parquet":
            return pd.read_parquet(src)
        df, fixed = _read_csv(path, src, name.endswith(".gz"))
        if notes is not None:
            notes.extend(fixed)
        return df
    except FileNotFoundError:
        raise IngestError(f"{path}: file not found") from None
    except IngestError:
        raise
    except ValueError as exc:
        if str(exc).startswith(path):
            raise IngestError(str(exc)) from None
        raise IngestError(f"{path}: cannot parse as {kind}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # parser, decoding, arrow errors: all are "cannot parse"
        raise IngestError(f"{path}: cannot parse as {kind}: {type(exc).__name__}: {exc}") from None


def _read_csv(path: str, src: Any, gz: bool) -> tuple[pd.DataFrame, list[str]]:
    """A CSV in a real vendor layout (:func:`hfcast.data.layouts.read_csv_layout`), and two traps:
    pandas' C parser cuts a field at a NUL byte (``A\\x00B`` became ``A``), so a file with NUL
    bytes goes through the Python parser, which keeps them (validation quarantines such symbols);
    and it renames repeated column names (``bid``, ``bid.1``), so a repeated name is refused."""
    data = src.getvalue() if isinstance(src, io.BytesIO) else open(src, "rb").read()
    if gz:
        data = gzip.decompress(data)
    _refuse_long_lines(data, path)
    header = next(iter(pd.read_csv(io.BytesIO(data), header=None, nrows=1, dtype=str,
                                   engine="python" if b"\x00" in data else "c").itertuples(index=False)), ())
    _refuse_duplicate_columns([str(c) for c in header], path)
    if b"\x00" in data:
        return pd.read_csv(io.BytesIO(data), engine="python"), []
    return layouts.read_csv_layout(io.BytesIO(data), path, False)


MAX_LINE_BYTES = 1 << 20  # a bar, tick or LOBSTER line is under 1 KB: a longer "line" is not a table


def _refuse_long_lines(data: bytes, path: str) -> None:
    """Refuse a CSV with a line longer than :data:`MAX_LINE_BYTES` before any parser sees it.

    Why: a parser fed 100 MB without a newline spends minutes building one giant field; one pass
    over the bytes for the newlines takes well under a second.
    """
    if len(data) <= MAX_LINE_BYTES:
        return
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    bounds = np.concatenate(([-1], ends, [len(data)]))
    lengths = np.diff(bounds) - 1
    longest = int(np.argmax(lengths))
    if lengths[longest] > MAX_LINE_BYTES:
        raise IngestError(f"{path}: line {longest + 1} is {int(lengths[longest]):,} bytes long, more than "
                          f"{MAX_LINE_BYTES:,} ({'no newline at all' if len(ends) == 0 else 'a broken file'}): "
                          f"not a table of bars; check the file (a CSV has one row per line)")


def _refuse_duplicate_columns(columns: list[str], path: str) -> None:
    seen: dict[str, str] = {}
    for c in columns:
        key = c.strip().lower()
        if key in seen:
            raise IngestError(f"{path}: column {c!r} appears more than once (as {seen[key]!r} and {c!r}; names are "
                              f"compared case-insensitively): rename or drop one, so that no value is silently ignored")
        seen[key] = c


def to_utc(values: pd.Series, tz: str, where: str) -> pd.Series:
    """Timestamps -> UTC ``datetime64[us, UTC]``: naive ones are ``tz`` local time, aware ones converted.

    Raises:
        IngestError: unparseable values (the first is quoted with its row), numeric epochs (their
            unit is ambiguous), a mix of naive and offset strings, or an ambiguous DST time.
    """
    s = values.reset_index(drop=True)
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        raise IngestError(f"{where}: numeric timestamps; read them as epochs (ingest does) or give ISO text")
    try:
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            out = s.dt.tz_convert("UTC")
        elif pd.api.types.is_datetime64_dtype(s):
            out = s.dt.tz_localize(tz, ambiguous="raise", nonexistent="raise").dt.tz_convert("UTC")
        else:
            text = s.astype("string").str.strip()
            aware = text.str.contains(_OFFSET, na=False)
            if aware.any() and not aware[text.notna()].all():
                row = int(np.flatnonzero(~aware & text.notna())[0])
                raise IngestError(f"{where}: mixes timestamps with and without UTC offset (row {row}: {text[row]!r}); "
                                  "fix: give every row an offset, or none")
            parsed = pd.to_datetime(text, errors="coerce", utc=bool(aware.any()), format="ISO8601")
            bad = parsed.isna()
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise IngestError(f"{where}: {int(bad.sum())} unparseable timestamp(s), first at row {row}: {s[row]!r}; "
                                  "fix: ISO dates (YYYY-MM-DD HH:MM[:SS]); date and time in two columns: "
                                  "--map ts=DATE+TIME")
            out = parsed if aware.any() else parsed.dt.tz_localize(tz, ambiguous="raise", nonexistent="raise").dt.tz_convert("UTC")
    except IngestError:
        raise
    except Exception as exc:  # unknown tz, DST-ambiguous or non-existent local times
        raise IngestError(f"{where}: cannot convert timestamps from {tz} to UTC: {exc}") from None
    return out.dt.as_unit("us")


def read_files(req: Request, paths: Sequence[str], required: Sequence[str], kind: str, stamp: str = "start",
               column_map: dict[str, str] | None = None, show: bool = True) -> list[pd.DataFrame]:
    """Every file of ``paths`` read (:func:`read_table`) and prepared (:func:`prepare_table`): what a
    format's loader calls. ``kind`` names the format in messages; ``column_map`` None = the request's."""
    cmap = dict(req.column_map if column_map is None else column_map)
    return [prepare_table(read_table(p, req.storage_options, req.notes), p, required, kind, cmap, req.symbol,
                          req.tz, stamp, req.epoch_unit)
            for p in progress_iter(list(paths), f"read {kind}", total=len(paths), enabled=req.progress and show)]


def prepare_table(df: pd.DataFrame, path: str, required: Sequence[str], kind: str, column_map: dict[str, str],
                  symbol: str | None, tz: str, stamp: str = "start", epoch_unit: str | None = None) -> pd.DataFrame:
    """Rename columns to contract names, check the ``required`` ones, fill symbol, convert ts to UTC.

    A map value ``Date+Time`` joins source columns; ``stamp="end"`` moves bar-end stamps to bar
    starts; numeric ``ts`` are epochs (see :mod:`hfcast.data.layouts`).
    """
    _refuse_duplicate_columns([str(c) for c in df.columns], path)  # parquet, and Bid next to bid
    lower = {c: str(c).strip().lower() for c in df.columns}
    df = df.rename(columns=lower)
    for contract, source in column_map.items():
        names = [n.lower() for n in layouts.split_sources(source)]
        absent = [n for n in names if n not in df.columns]
        if absent:
            raise IngestError(f"{path}: column map names {absent} for {contract!r}, but the file has "
                              f"columns {list(df.columns)}; fix: --map {contract}=<one of those>")
        if len(names) > 1:
            df[contract] = layouts.combine_columns(df, names)
    df = df.rename(columns={s.lower(): c for c, s in column_map.items() if "+" not in s})
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise IngestError(f"{path}: missing column(s) {missing} for format {kind!r}; the file has "
                          f"{list(df.columns)} (map names with --map CONTRACT=SOURCE)")
    if "symbol" not in df.columns:
        if not symbol:
            raise IngestError(f"{path}: no 'symbol' column; pass --symbol for single-symbol files")
        df["symbol"] = symbol
    try:
        if pd.api.types.is_numeric_dtype(df["ts"]) and not pd.api.types.is_bool_dtype(df["ts"]):
            df["ts"] = layouts.from_epoch(df["ts"], epoch_unit, path)
        else:
            df["ts"] = to_utc(df["ts"], tz, path).set_axis(df.index)
        df["ts"] = layouts.shift_stamp(df["ts"], stamp, path)
    except IngestError:
        raise
    except ValueError as exc:
        raise IngestError(str(exc)) from None
    return df


def _screen(df: pd.DataFrame, kind: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ticks into usable and quarantined (reason + detail); NaN quotes mean an empty side."""
    prices, sizes = (["price"], ["size"]) if kind == "trade" else (["bid", "ask"], ["bid_size", "ask_size"])
    for c in prices + sizes:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    vals = df[prices + sizes].to_numpy()
    checks = [
        ("nan_or_inf", np.isinf(vals).any(axis=1) | (df[prices + sizes].isna().any(axis=1).to_numpy() if kind == "trade" else False)),
        ("nonpositive_price", (df[prices].to_numpy() <= 0).any(axis=1)),
        ("nonpositive_size", (df[sizes].to_numpy() <= 0).any(axis=1)),
    ]
    reason = pd.Series(pd.NA, index=df.index, dtype="string")
    for name, mask in checks:
        reason[np.asarray(mask, dtype=bool) & reason.isna().to_numpy()] = name
    ok = reason.isna()
    prev_max = df.loc[ok].groupby("symbol", sort=False)["ts"].cummax().groupby(df.loc[ok, "symbol"], sort=False).shift(1)
    reason[prev_max.index[(df.loc[ok, "ts"] < prev_max).to_numpy(dtype=bool)]] = "out_of_order_ts"
    bad = df.loc[reason.notna()].assign(kind=kind, reason=reason[reason.notna()])
    bad["detail"] = bad["reason"] + " in " + kind + " tick"
    return df.loc[reason.isna()], bad


def aggregate_ticks(trades: pd.DataFrame, quotes: pd.DataFrame | None = None, market: Market | None = None
                    ) -> pd.DataFrame:
    """Minute bars from screened, time-ordered ticks (rules in the module docstring); ``market``
    dates the symbol-days of quote state (None: :func:`hfcast.market.default`, XNYS)."""
    frames = []
    if len(trades):
        t = trades.assign(minute=trades["ts"].dt.floor("min"), pv=trades["price"] * trades["size"])
        g = t.groupby(["symbol", "minute"], sort=True)
        tb = g.agg(last=("price", "last"), volume=("size", "sum"), trades=("price", "count"), pv=("pv", "sum"))
        tb["vwap"] = tb.pop("pv") / tb["volume"].where(tb["volume"] > 0)
        frames.append(tb)
    if quotes is not None and len(quotes):
        q = quotes.assign(minute=quotes["ts"].dt.floor("min"), mid=(quotes["bid"] + quotes["ask"]) / 2.0)
        end = q.drop_duplicates(["symbol", "minute"], keep="last").set_index(["symbol", "minute"])[[*QUOTE_COLUMNS, "mid"]]
        rng = q.groupby(["symbol", "minute"]).agg(mid_high=("mid", "max"), mid_low=("mid", "min"))
        frames.append(end.join(rng).assign(_upd=1))
    if not frames:
        return conform(pd.DataFrame(columns=BAR_COLUMNS))
    bars = pd.concat(frames, axis=1).sort_index().reset_index()
    if "_upd" in bars:
        bars = _fill_minutes(bars, resolve_market(market))
    else:
        bars[["trades", "volume"]] = bars[["trades", "volume"]].astype("float64")
        bars[QUOTE_COLUMNS] = np.nan  # trades only: a quote-less source, validated on `last`
    return conform(bars.rename(columns={"minute": "ts"}))


def _fill_minutes(bars: pd.DataFrame, market: Market) -> pd.DataFrame:
    """Every minute between a symbol-day's first and last event (the day on ``market``'s calendar:
    a Globex tick on Sunday evening belongs to Monday); quote state carried forward."""
    bars["day"] = exchange_dates(bars["minute"], market).to_numpy()
    grids = [pd.DataFrame({"symbol": s, "day": d, "minute": pd.date_range(g["minute"].min(), g["minute"].max(), freq="min").as_unit("us")})
             for (s, d), g in bars.groupby(["symbol", "day"], sort=True)]
    full = pd.concat(grids).merge(bars.drop(columns="day"), on=["symbol", "minute"], how="left")
    full["_upd"] = full["_upd"].fillna(0)
    block = full.groupby(["symbol", "day"])["_upd"].cumsum()
    keys = [full["symbol"], full["day"], block]
    for c in [*QUOTE_COLUMNS, "mid"]:  # a block = an update minute + the quiet minutes after it;
        full[c] = full[c].groupby(keys).ffill()  # only its first row has values, so NaN (empty side) stays NaN
    carried = full.groupby(["symbol", "day"])["mid"].shift(1)
    full["mid_high"] = np.fmax(full["mid_high"], carried).fillna(full["mid"])
    full["mid_low"] = np.fmin(full["mid_low"], carried).fillna(full["mid"])
    for c in ("volume", "trades"):
        full[c] = full[c].fillna(0.0).astype("float64") if c in full else 0.0
    return full.drop(columns=["day", "_upd", "mid"])


def _load(fmt: formats.IngestFormat, req: Request, market: Market
          ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """(bars in file order, quarantined ticks, tick counts): the format's loader, then, for ticks,
    screening and aggregation into minute bars."""
    loaded = fmt.load(req)
    counts = {"trade_ticks": sum(map(len, loaded.trades)), "quote_ticks": sum(map(len, loaded.quotes))}
    if fmt.bar_files:
        return pd.concat([conform(b) for b in loaded.bars], ignore_index=True), pd.DataFrame(), counts
    good_t, bad_t = _screen(pd.concat(loaded.trades, ignore_index=True), "trade")
    q_all = pd.concat(loaded.quotes, ignore_index=True) if loaded.quotes else None
    good_q, bad_q = _screen(q_all, "quote") if q_all is not None else (None, pd.DataFrame())
    sort = ["symbol", "ts"]
    agg = aggregate_ticks(good_t.sort_values(sort, kind="stable"),
                          None if good_q is None else good_q.sort_values(sort, kind="stable"), market)
    return agg, pd.concat([bad_t, bad_q], ignore_index=True), counts


def ingest(paths: list[str], fmt: str, lake: Lake, tz: str | None = None,
           column_map: dict[str, str] | None = None, symbol: str | None = None,
           quotes_paths: list[str] | None = None, date: str | None = None, progress: bool = True,
           jump_limit: float = DEFAULT_JUMP_LIMIT, market: Market | None = None, stamp: str = "start",
           epoch_unit: str | None = None) -> dict[str, Any]:
    """Parse source files, write ``raw/`` per exchange-local date, validate, and report.

    One call owns the dates it writes: their raw/validated/quarantine partitions are replaced, so
    give all files of a date in one call (reruns are idempotent).

    Args:
        paths: source files (for LOBSTER: message and orderbook files, paired by name).
        fmt: a registered format (:mod:`hfcast.data.formats`): ``bbo``, ``ohlcv``, ``trades``, ``lobster``...
        lake: the :class:`hfcast.storage.Lake` to write to.
        tz: time zone of naive timestamps (and of LOBSTER's seconds after midnight); None: the
            market calendar's.
        column_map: contract name -> source column name.
        symbol: symbol for files without a symbol column (and LOBSTER files not named by the standard).
        quotes_paths: quote tick files to combine with ``trades``.
        date: the session date of LOBSTER files whose name does not carry it.
        progress: show rich progress bars on stderr.
        jump_limit: the absurd-jump limit passed to validation.
        market: the calendar (hfcast.market; None = XNYS, :func:`hfcast.market.default`): trade
            dates, sessions, default tz.
        stamp: ``start`` (the contract) or ``end`` for bar files stamped at the bar's end.
        epoch_unit: s, ms, us or ns for numeric timestamps (None: from their magnitude).

    Returns:
        Totals (``dates``, ``bars``, ``clean_rows``, ``quarantined_rows``, ``reasons``, tick counts)
        and ``per_date`` reports.

    Raises:
        IngestError: a file cannot be read or parsed, or lacks what the format needs.
    """
    spec = _check_request(paths, fmt, quotes_paths, stamp)
    mk = resolve_market(market)
    notes: list[str] = []
    req = Request(paths=tuple(map(str, paths)), tz=tz or mk.timezone, column_map=dict(column_map or {}),
                  symbol=symbol, quotes_paths=tuple(map(str, quotes_paths or ())), date=date,
                  storage_options=lake.storage_options, progress=progress, stamp=stamp, epoch_unit=epoch_unit,
                  notes=notes)
    bars, bad_ticks, tick_counts = _load(spec, req, mk)
    bar_day = exchange_dates(bars["ts"], mk) if len(bars) else pd.Series(dtype="string")
    tick_day = exchange_dates(bad_ticks["ts"], mk) if len(bad_ticks) else pd.Series(dtype="string")
    dates = sorted(set(bar_day) | set(tick_day))
    # what the SOURCE promises, not what a date happens to hold: a BBO date with no quotes is bad data
    quotes = spec.quotes if spec.quotes is not None else bool(quotes_paths)
    files = [str(p) for p in paths] + list(map(str, quotes_paths or []))
    per_date = []
    for d in progress_iter(dates, "validate", total=len(dates), enabled=progress):
        ticks = None  # bar sources quarantine no ticks
        if not spec.bar_files:
            ticks = bad_ticks.loc[tick_day == d].reset_index(drop=True) if len(bad_ticks) else bad_ticks
        rep = _store_date(lake, d, bars.loc[bar_day == d].reset_index(drop=True), ticks, quotes, jump_limit, mk)
        rep.update(format=fmt, files=files, calendar=mk.name, notes=notes)
        write_text(lake.report("ingest", f"date={d}.json"), json.dumps(rep, indent=2), lake.storage_options)
        per_date.append(rep)
    out: dict[str, Any] = {"format": fmt, "dates": dates, "per_date": per_date, **tick_counts,
                           "ticks_quarantined": len(bad_ticks), "calendar": mk.name, "notes": notes,
                           "diagnoses": {r["date"]: r["diagnosis"] for r in per_date if r.get("diagnosis")},
                           **_row_totals(per_date)}
    log.info("ingested %d file(s) as %s: %d bars over %d date(s), %d quarantined", len(paths), fmt,
             out["bars"], len(dates), out["quarantined_rows"])
    return out


def _store_date(lake: Lake, date: str, bars: pd.DataFrame, bad_ticks: pd.DataFrame | None, quotes: bool,
                jump_limit: float, market: Market) -> dict[str, Any]:
    """Write one date's ``raw/`` bars, validate them, and (tick sources) its quarantined ticks.

    Returns:
        The date's validation report (with ``ticks_quarantined`` by reason for tick sources).
    """
    lake.write("raw", date, bars)
    rep = validate_date(lake, date, quotes_available=quotes, jump_limit=jump_limit, market=market)
    if bad_ticks is not None:
        lake.write("quarantine_ticks", date, bad_ticks)
        rep["ticks_quarantined"] = bad_ticks["reason"].value_counts().to_dict() if len(bad_ticks) else {}
    return rep


def _check_request(paths: list[str], fmt: str, quotes_paths: list[str] | None, stamp: str) -> formats.IngestFormat:
    """The format of the request, or an IngestError for arguments that contradict each other (before
    any file is read)."""
    spec = formats.get(fmt)
    if not paths:
        raise IngestError("no input files given")
    if quotes_paths and not spec.quote_files:
        takes = [f.name for f in formats.formats().values() if f.quote_files]
        raise IngestError(f"quote files (--quotes) go with --format {' or '.join(takes) or '(none)'} only")
    if stamp not in layouts.STAMPS:
        raise IngestError(f"--stamp must be 'start' or 'end', got {stamp!r}")
    if stamp == "end" and not spec.bar_files:
        bars = ", ".join(f.name for f in formats.formats().values() if f.bar_files)
        raise IngestError(f"--stamp end applies to bar files ({bars}), not {fmt!r} ticks (they carry event times)")
    return spec


def _row_totals(per_date: list[dict[str, Any]]) -> dict[str, Any]:
    """``bars``, ``clean_rows``, ``quarantined_rows`` and ``reasons`` summed over the dates' reports."""
    out: dict[str, Any] = {}
    out["bars"] = sum(r["input_rows"] for r in per_date)
    out["clean_rows"] = sum(r["clean_rows"] for r in per_date)
    out["quarantined_rows"] = sum(r["quarantined_rows"] for r in per_date)
    out["reasons"] = {k: sum(r["reasons"][k] for r in per_date) for k in per_date[0]["reasons"]} if per_date else {}
    return out
