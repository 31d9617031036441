"""The file layouts that real vendors ship, turned into what ingest expects.

Why a module of its own: each vendor quirk is small, but together they decided whether a real
file could be read at all. Handled here:

* date and time in separate columns: ``--map ts=Date+Time`` joins them (``+`` between source
  names, joined with a space before parsing);
* bar-END stamps (``--stamp end``): a bar stamped 09:01 covers 09:00-09:01; the contract wants the
  start, so one minute is subtracted;
* epoch timestamps (integers or floats): UTC by definition; the unit (s, ms, us, ns) is read from
  the magnitude, or given with ``--epoch-unit``;
* a CSV header with one name fewer than the fields of its rows: with an empty last field (a
  trailing delimiter) the field is dropped; otherwise the extra last field is kept as
  ``unnamed_extra`` and ignored. Both are reported. Any other mismatch is refused with the file,
  the row and the fix.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

STAMPS = ("start", "end")
EPOCH_UNITS = ("s", "ms", "us", "ns")
#: magnitude of a present-day epoch in each unit (2001..2286 in s is 1e9..1e10)
_EPOCH_MAGNITUDE = {"s": 1e9, "ms": 1e12, "us": 1e15, "ns": 1e18}
EXTRA_FIELD = "unnamed_extra"


def split_sources(source: str) -> list[str]:
    """``"Date+Time"`` -> ``["Date", "Time"]`` (one name stays a one-item list)."""
    return [p.strip() for p in source.split("+") if p.strip()]


def combine_columns(df: pd.DataFrame, names: list[str]) -> pd.Series:
    """Join date and time columns as text (``"2024-03-11" + " " + "09:01:00"``).

    Integers such as ``20240311`` and ``901`` stay digits: pandas' ISO8601 parsing reads
    ``20240311 09:01:00``; a time without separators is padded to HHMMSS first.
    """
    parts = []
    for i, n in enumerate(names):
        text = df[n].astype("string").str.strip()
        if i > 0 and text.str.fullmatch(r"\d{3,6}").fillna(False).all():
            text = text.str.zfill(6 if text.str.len().max() > 4 else 4)
            text = text.str.replace(r"^(\d{2})(\d{2})(\d{2})?$", lambda m: ":".join(g for g in m.groups() if g), regex=True)
        parts.append(text)
    out = parts[0]
    for p in parts[1:]:
        out = out + " " + p
    return out


def epoch_unit(values: np.ndarray, where: str) -> str:
    """The epoch unit whose magnitude fits the values (1e9 s, 1e12 ms, 1e15 us, 1e18 ns)."""
    finite = np.abs(values[np.isfinite(values)])
    if not finite.size:
        raise ValueError(f"{where}: numeric timestamps are all missing")
    mag = float(np.median(finite))
    for unit, m in _EPOCH_MAGNITUDE.items():
        if m / 10 <= mag < m * 100:
            return unit
    raise ValueError(f"{where}: numeric timestamps around {mag:.3g} fit no epoch unit (s ~1e9, ms ~1e12, "
                     "us ~1e15, ns ~1e18); fix: give --epoch-unit, or ISO text")


def from_epoch(values: pd.Series, unit: str | None, where: str) -> pd.Series:
    """Epoch numbers -> UTC timestamps (``unit`` None: from the magnitude, logged)."""
    arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    if unit is None:
        unit = epoch_unit(arr, where)
        log.info("%s: epoch timestamps read as %s (from their magnitude; --epoch-unit overrides)", where, unit)
    elif unit not in EPOCH_UNITS:
        raise ValueError(f"{where}: --epoch-unit must be one of {', '.join(EPOCH_UNITS)}, got {unit!r}")
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where}: {int(bad.sum())} missing epoch timestamp(s), first at row {row}; "
                         "fix: remove or fill those rows")
    ints = np.round(arr).astype(np.int64) if unit != "s" else None
    out = pd.to_datetime(ints if ints is not None else arr, unit=unit, utc=True)
    return pd.Series(out, index=values.index).dt.as_unit("us")


def shift_stamp(ts: pd.Series, stamp: str, where: str) -> pd.Series:
    """Bar-end stamps -> bar starts (minus one minute); ``start`` is left as it is."""
    if stamp not in STAMPS:
        raise ValueError(f"{where}: --stamp must be 'start' or 'end', got {stamp!r}")
    return ts - pd.Timedelta(minutes=1) if stamp == "end" else ts


def _head_lines(src: Any, compressed: bool, n: int = 50) -> list[str]:
    """First ``n`` lines of a CSV (path or bytes buffer), decoded."""
    fh: Any
    if isinstance(src, io.BytesIO):
        raw = src.getvalue()
        binary: Any = gzip.GzipFile(fileobj=io.BytesIO(raw)) if compressed else io.BytesIO(raw)
        fh = io.TextIOWrapper(binary, encoding="utf-8", errors="replace")
    else:
        fh = gzip.open(src, "rt", errors="replace") if compressed else open(src, encoding="utf-8", errors="replace")
    with fh:
        return [line for _, line in zip(range(n), fh)]


def read_csv_layout(src: Any, path: str, compressed: bool) -> tuple[pd.DataFrame, list[str]]:
    """Read a CSV whose header may name one field fewer than its rows; returns (frame, notes).

    Raises:
        ValueError: the header and the rows disagree by more than one field (names file, row, fix).
    """
    lines = [ln for ln in _head_lines(src, compressed) if ln.strip()]
    if len(lines) < 2:
        return pd.read_csv(src, compression="gzip" if compressed else None), []
    try:
        dialect_delim = csv.Sniffer().sniff(lines[0], delimiters=",;\t|").delimiter
    except csv.Error:  # one column, or nothing to tell: the CSV default
        dialect_delim = ","
    rows = list(csv.reader(lines, delimiter=dialect_delim))
    header, width = rows[0], len(rows[0])
    widths = [len(r) for r in rows[1:]]
    if isinstance(src, io.BytesIO):
        src.seek(0)
    comp = "gzip" if compressed else None
    if all(w == width for w in widths):
        return pd.read_csv(src, compression=comp, sep=dialect_delim), []
    if all(w == width + 1 for w in widths):
        if all(r[-1].strip() == "" for r in rows[1:]):
            note = (f"{path}: rows have one field more than the header ({width} names) and it is empty "
                    "(a trailing delimiter): dropped")
            df = pd.read_csv(src, compression=comp, sep=dialect_delim, index_col=False)
        else:
            note = (f"{path}: the header names {width} fields but rows have {width + 1}; the last field is kept as "
                    f"{EXTRA_FIELD!r} and ignored. If the names are shifted instead, fix the header or map "
                    "columns with --map")
            df = pd.read_csv(src, compression=comp, sep=dialect_delim, header=0,
                             names=[*header, EXTRA_FIELD], index_col=False)
        log.warning(note)
        return df, [note]
    row = 1 + next(i for i, w in enumerate(widths) if w != width)
    raise ValueError(f"{path}: cannot parse as csv: the header names {width} fields ({dialect_delim!r}-separated) but row {row} has "
                     f"{widths[row - 1]}; fix: make the header name every field (one unnamed extra last field "
                     "is handled), or check the delimiter")
