"""Other libraries' chatter held back for the length of one call, in one place.

The steps of ``hfcast train`` call libraries that talk a lot at INFO: torch's dynamo ONNX exporter
(a line per deduplicated initializer, "torchvision is not installed" per vision op, FutureWarnings
of its internals) and onnxruntime's quantizer (a pre-processing hint and a line per float tensor,
through the ROOT logger, so no named logger can be turned down). A user can act on none of it;
what matters is checked after the call and logged by hfcast (parity, the int8 guard).

:func:`held_back` turns that down for one block and restores everything after. Under
``--verbose`` (the root logger enabled for DEBUG) nothing is held back, as in serving's start-up.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

log = logging.getLogger(__name__)


@dataclass
class Held:
    """How many root-logger records :func:`held_back` dropped (logged at debug after the block)."""

    dropped: int = 0


class _FromPackages(logging.Filter):
    """Drops root-logger records whose source file lies in one of ``packages`` (a library calling
    ``logging.info`` directly logs as "root": only its path says whose it is)."""

    def __init__(self, packages: Sequence[str], held: Held) -> None:
        super().__init__()
        self.packages, self.held = tuple(packages), held

    def filter(self, record: logging.LogRecord) -> bool:
        path = record.pathname.replace("\\", "/")
        if record.name == "root" and any(f"/{p}/" in path for p in self.packages):
            self.held.dropped += 1
            return False
        return True


def verbose() -> bool:
    """Whether the user asked for everything (``hfcast -v``: the root logger at DEBUG)."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


@contextmanager
def held_back(loggers: Sequence[str] = (), root_from: Sequence[str] = (),
              categories: Sequence[type[Warning]] = (), messages: Sequence[str] = ()) -> Iterator[Held]:
    """Within the block: the named ``loggers`` below ERROR, root-logger records from the packages
    ``root_from`` dropped, warnings of ``categories`` ignored and so are warnings whose message
    matches one of the regular expressions ``messages`` (from its start, case-insensitive); all as
    before after it, also when the block raises. Nothing is held back under ``--verbose``."""
    held = Held()
    if verbose():
        yield held
        return
    named = [logging.getLogger(n) for n in loggers]
    levels = [lg.level for lg in named]
    root, drop = logging.getLogger(), _FromPackages(root_from, held)
    try:
        for lg in named:
            lg.setLevel(logging.ERROR)
        if root_from:
            root.addFilter(drop)
        with warnings.catch_warnings():
            for category in categories:
                warnings.simplefilter("ignore", category)
            for message in messages:
                warnings.filterwarnings("ignore", message=message)
            yield held
    finally:
        root.removeFilter(drop)
        for lg, level in zip(named, levels):
            lg.setLevel(level)
        if held.dropped:
            log.debug("%d log line(s) of %s held back", held.dropped, ", ".join(root_from))
