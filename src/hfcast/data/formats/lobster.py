"""``lobster``: LOBSTER message + orderbook file pairs (:mod:`hfcast.data.lobster`) -> trade and quote ticks."""

from __future__ import annotations

from hfcast.data.formats import IngestFormat, Loaded, Request, register


def _load(req: Request) -> Loaded:
    from hfcast.data import ingest, lobster  # pandas: loaded when files are read, not for `hfcast --help`

    out = Loaded()
    pairs = lobster.pair_files(list(req.paths))
    for message, book in ingest.progress_iter(pairs, "read lobster", total=len(pairs), enabled=req.progress):
        trades, quotes = lobster.read_lobster(message, book, symbol=req.symbol, date=req.date, tz=req.tz)
        out.trades.append(trades)
        out.quotes.append(quotes)
    return out


register(IngestFormat("lobster", "LOBSTER message + orderbook file pairs (paired by name)", (), _load,
                      bar_files=False))
