"""Ingest formats: one object per source format, registered where it is defined.

The shape of :mod:`hfcast.gate`: an :class:`IngestFormat` holds everything that differs between
sources (its name, the contract columns its files must have, the loader, whether it promises
quotes, a one-line help); :func:`hfcast.data.ingest.ingest` does the rest the same way for all
(dates on the market calendar, validation, quarantine, reports). Every list derives from the
registry: ``hfcast ingest --format`` and its help, the request checks, the reports.

**Adding a format** is one module in this package (it is found by :func:`formats`, nothing imports
it by name) and one test::

    def _load(req: Request) -> Loaded:
        from hfcast.data import ingest   # pandas: loaded when files are read, not for `hfcast --help`
        return Loaded(bars=ingest.read_files(req, REQUIRED, "myvendor"))

    register(IngestFormat("myvendor", "one line for --help", REQUIRED, _load))

A loader returns contract minute bars (``bars``) or ticks (``trades`` / ``quotes``, aggregated into
bars by :func:`hfcast.data.ingest.aggregate_ticks`). Format modules stay light (standard library
and this package at import): the command line reads the registry for ``--help``. A format defined
elsewhere (a test, another package) calls :func:`register` the same way; :func:`unregister`
removes it.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

_REGISTRY: dict[str, "IngestFormat"] = {}
_DISCOVERED: list[bool] = []


class IngestError(ValueError):
    """A source file cannot be ingested; the message names the file and the problem."""


@dataclass(frozen=True)
class Request:
    """What every loader is given: the files and how to read them (see :func:`hfcast.data.ingest.ingest`)."""

    paths: tuple[str, ...]
    tz: str                                    # time zone of naive timestamps
    column_map: Mapping[str, str] = field(default_factory=dict)  # contract -> source column name
    symbol: str | None = None                  # for files without a symbol column
    quotes_paths: tuple[str, ...] = ()         # quote tick files (formats with ``quote_files``)
    date: str | None = None                    # the session date of files whose name does not carry it
    storage_options: Mapping[str, Any] | None = None
    progress: bool = False
    stamp: str = "start"                       # bar files: what minute a stamp marks (start | end)
    epoch_unit: str | None = None              # numeric timestamps: s | ms | us | ns (None: from magnitude)
    notes: list[str] = field(default_factory=list)  # what was repaired on the way, for the report


@dataclass
class Loaded:
    """What a loader read: contract bars, or ticks to aggregate (pandas DataFrames)."""

    bars: list[Any] = field(default_factory=list)
    trades: list[Any] = field(default_factory=list)
    quotes: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class IngestFormat:
    """One source format."""

    name: str
    help: str                        # one line: what the files hold (``hfcast ingest --help``)
    required: tuple[str, ...]        # contract columns the files must have after --map (() = a fixed layout)
    load: Callable[[Request], Loaded]
    quotes: bool | None = True       # the source promises quotes; None = only when --quotes files are given
    bar_files: bool = True           # files of bars (--stamp end applies), not ticks with event times
    quote_files: bool = False        # takes --quotes tick files beside its own

    def describe(self) -> str:
        return f"{self.name}: {self.help}"


def register(fmt: IngestFormat) -> IngestFormat:
    """Add ``fmt`` (a name registered twice by the same module is replaced: reloads, tests)."""
    _REGISTRY[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    """Remove a format (a test's, once it is done); an unknown name is ignored."""
    _REGISTRY.pop(name, None)


def formats() -> dict[str, IngestFormat]:
    """Every registered format by name (the modules of this package are imported once, first)."""
    if not _DISCOVERED:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            importlib.import_module(f"{__name__}.{info.name}")
        _DISCOVERED.append(True)
    return dict(_REGISTRY)


def names() -> list[str]:
    return list(formats())


def get(name: str) -> IngestFormat:
    """The format called ``name``, or an :class:`IngestError` that lists the known ones."""
    known = formats()
    if name not in known:
        raise IngestError(f"unknown format {name!r}; choose one of {', '.join(known)}")
    return known[name]


def help_text() -> str:
    """``hfcast ingest --format``'s help: every format with its line."""
    return " | ".join(f.describe() for f in formats().values())
