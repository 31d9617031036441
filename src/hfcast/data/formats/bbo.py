"""``bbo``: minute bars in the contract itself (symbol, ts, bid, ask, bid_size, ask_size [+ optional columns])."""

from __future__ import annotations

from hfcast.contracts import QUOTE_COLUMNS
from hfcast.data.formats import IngestFormat, Loaded, Request, register

REQUIRED = ("ts", *QUOTE_COLUMNS)


def _load(req: Request) -> Loaded:
    from hfcast.data import ingest  # pandas: loaded when files are read, not for `hfcast --help`

    return Loaded(bars=ingest.read_files(req, req.paths, REQUIRED, "bbo", stamp=req.stamp))


register(IngestFormat("bbo", "BBO minute bars in the contract (ts, bid, ask, bid_size, ask_size)", REQUIRED, _load))
