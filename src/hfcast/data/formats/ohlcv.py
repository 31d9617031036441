"""``ohlcv``: trade bars ts, open, high, low, close, volume; quotes stay NaN.

``close`` becomes ``last``; ``high``/``low`` become ``mid_high``/``mid_low``: for a quote-less
source the reference price is ``last`` (:func:`hfcast.data.schema.mid_price` falls back to it),
so the trade high/low are the range of that price. ``open`` is not in the contract and is not kept.
``ts`` must be the minute START (as the contract says); for sources stamping bar ends ``--stamp end``.
"""

from __future__ import annotations

from hfcast.contracts import QUOTE_COLUMNS
from hfcast.data.formats import IngestFormat, Loaded, Request, register

REQUIRED = ("ts", "close")
RENAME = {"close": "last", "high": "mid_high", "low": "mid_low"}


def _load(req: Request) -> Loaded:
    from hfcast.data import ingest  # pandas: loaded when files are read, not for `hfcast --help`

    bars = []
    for df in ingest.read_files(req, req.paths, REQUIRED, "ohlcv", stamp=req.stamp):
        df = df.rename(columns=RENAME)
        for c in QUOTE_COLUMNS:
            df[c] = float("nan")
        bars.append(df)
    return Loaded(bars=bars)


register(IngestFormat("ohlcv", "trade bars (ts, open, high, low, close, volume); no quotes", REQUIRED, _load,
                      quotes=False))
