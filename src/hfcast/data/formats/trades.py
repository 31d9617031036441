"""``trades``: trade ticks (ts, price, size), with quote ticks (ts, bid, ask, bid_size, ask_size)
from ``--quotes`` files when given; aggregated into minute bars (:func:`hfcast.data.ingest.aggregate_ticks`)."""

from __future__ import annotations

from hfcast.contracts import QUOTE_COLUMNS
from hfcast.data.formats import IngestFormat, Loaded, Request, register

REQUIRED = ("ts", "price", "size")
QUOTE_TICKS = ("ts", *QUOTE_COLUMNS)


def _load(req: Request) -> Loaded:
    from hfcast.data import ingest  # pandas: loaded when files are read, not for `hfcast --help`

    quotes = ingest.read_files(req, req.quotes_paths, QUOTE_TICKS, "quotes", column_map={}, show=False)
    return Loaded(trades=ingest.read_files(req, req.paths, REQUIRED, "trades"), quotes=quotes)


register(IngestFormat("trades", "trade ticks (ts, price, size) [+ quote ticks with --quotes]", REQUIRED, _load,
                      quotes=None, bar_files=False, quote_files=True))
