"""LOBSTER message + orderbook files -> trade ticks and best-quote ticks.

LOBSTER (lobsterdata.com) ships one pair of headerless CSV files per symbol and day::

    <TICKER>_<YYYY-MM-DD>_<start>_<end>_message_<LEVELS>.csv
        time (seconds after midnight, exchange time, decimals), type (1..7), order id,
        size (shares), price (dollars x 10000), direction (-1 sell / +1 buy limit order)
    <TICKER>_<YYYY-MM-DD>_<start>_<end>_orderbook_<LEVELS>.csv
        ask_px1, ask_sz1, bid_px1, bid_sz1, ask_px2, ... : the book AFTER each message (same row count)

Executions are types 4 (visible) and 5 (hidden); an empty side carries the dummy prices
9999999999 (ask) / -9999999999 (bid) and becomes NaN here, so the bar built from it is
quarantined rather than priced at a made-up level. Aggregation to minute bars is shared with
trade/quote ticks (:func:`hfcast.data.ingest.aggregate_ticks`); the ``lobster`` ingest format
(:mod:`hfcast.data.formats.lobster`) calls this module.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from hfcast.data.formats import IngestError

MESSAGE_COLUMNS = ["time", "type", "order_id", "size", "price", "direction"]
EXECUTION_TYPES = (4, 5)
PRICE_SCALE = 10_000.0
DUMMY_ASK = 9_999_999_999
DUMMY_BID = -9_999_999_999
_NAME = re.compile(r"^(?P<symbol>[^_]+)_(?P<date>\d{4}-\d{2}-\d{2})_[^_]+_[^_]+_(?P<kind>message|orderbook)_(?P<levels>\d+)\.csv$")


class LobsterError(IngestError):
    """A LOBSTER file cannot be used; the message names the file and the problem."""


def pair_files(paths: list[str]) -> list[tuple[str, str]]:
    """Pair message and orderbook files by name (``..._message_N.csv`` <-> ``..._orderbook_N.csv``).

    Raises:
        LobsterError: a file is neither kind, or a message file has no orderbook partner.
    """
    messages, books = {}, {}
    for p in paths:
        name = Path(p).name
        if "_message_" in name:
            messages[name.replace("_message_", "_orderbook_")] = p
        elif "_orderbook_" in name:
            books[name] = p
        else:
            raise LobsterError(f"{p}: not a LOBSTER file name (expected '..._message_N.csv' or '..._orderbook_N.csv')")
    pairs = []
    for key, msg in sorted(messages.items()):
        if key not in books:
            raise LobsterError(f"{msg}: no orderbook file '{key}' was given beside it")
        pairs.append((msg, books.pop(key)))
    if books:
        raise LobsterError(f"{sorted(books.values())[0]}: orderbook file without its message file")
    return pairs


def name_info(path: str) -> dict[str, str]:
    """Symbol and date from a standard LOBSTER file name ({} when it does not follow the pattern)."""
    m = _NAME.match(Path(path).name)
    return {"symbol": m.group("symbol"), "date": m.group("date")} if m else {}


def _read_numeric(path: str, what: str) -> np.ndarray:
    try:
        frame = pd.read_csv(path, header=None)
    except FileNotFoundError:
        raise LobsterError(f"{path}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LobsterError(f"{path}: cannot parse LOBSTER {what} file: {exc}") from None
    num = frame.apply(pd.to_numeric, errors="coerce")
    bad = num.isna() & frame.notna()
    if bad.any(axis=None):
        row, col = np.argwhere(bad.to_numpy())[0]
        raise LobsterError(f"{path}: LOBSTER {what} file has a non-numeric value {frame.iat[row, col]!r} "
                           f"at line {row + 1}, column {col + 1}")
    return num.to_numpy(dtype="float64")


def read_lobster(message_path: str, orderbook_path: str, symbol: str | None = None,
                 date: str | None = None, tz: str = "America/New_York") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read one LOBSTER pair into (trades, quotes) tick frames with UTC timestamps.

    Args:
        message_path, orderbook_path: the two files of one symbol-day.
        symbol, date: override / supply what the file name does not carry (times in the file are
            seconds after midnight of ``date`` in ``tz``).
        tz: the exchange time zone of the times.

    Returns:
        trades (symbol, ts, price, size) for execution messages and quotes (symbol, ts, bid, ask,
        bid_size, ask_size) with one row per message (the best level after it), in file order.
    """
    info = name_info(message_path)
    symbol = symbol or info.get("symbol")
    date = date or info.get("date")
    if not symbol or not date:
        raise LobsterError(f"{message_path}: the file name does not carry the symbol and date; pass --symbol and --date")
    msg = _read_numeric(message_path, "message")
    book = _read_numeric(orderbook_path, "orderbook")
    if msg.shape[1] < len(MESSAGE_COLUMNS):
        raise LobsterError(f"{message_path}: LOBSTER message file needs {len(MESSAGE_COLUMNS)} columns "
                           f"({', '.join(MESSAGE_COLUMNS)}), found {msg.shape[1]}")
    if book.shape[1] < 4 or book.shape[1] % 4:
        raise LobsterError(f"{orderbook_path}: LOBSTER orderbook file needs 4 columns per level, found {book.shape[1]}")
    if len(msg) != len(book):
        raise LobsterError(f"{message_path} has {len(msg)} rows but {orderbook_path} has {len(book)}: "
                           "they must describe the same messages")
    try:
        local = pd.Timestamp(date) + pd.to_timedelta(msg[:, 0], unit="s")
        ts = pd.DatetimeIndex(local).tz_localize(tz).tz_convert("UTC").as_unit("us")
    except Exception as exc:  # bad date, bad tz, DST ambiguity
        raise LobsterError(f"{message_path}: cannot convert times to UTC (date {date}, tz {tz}): {exc}") from None
    ask_px, ask_sz, bid_px, bid_sz = (book[:, i].copy() for i in range(4))
    no_ask, no_bid = ask_px >= DUMMY_ASK, bid_px <= DUMMY_BID
    ask_px[no_ask], ask_sz[no_ask] = np.nan, np.nan
    bid_px[no_bid], bid_sz[no_bid] = np.nan, np.nan
    quotes = pd.DataFrame({"symbol": symbol, "ts": ts, "bid": bid_px / PRICE_SCALE, "ask": ask_px / PRICE_SCALE,
                           "bid_size": bid_sz, "ask_size": ask_sz})
    execs = np.isin(msg[:, 1], EXECUTION_TYPES)
    trades = pd.DataFrame({"symbol": symbol, "ts": ts[execs], "price": msg[execs, 4] / PRICE_SCALE,
                           "size": msg[execs, 3]})
    return trades, quotes
