"""What the ``hfcast`` command accepts, checked while the command line is parsed, and how it fails.

Why here and not in each command: a bad value must be refused before any work starts, naming the
option (``predict --out ftp://x/y`` names ``--out``, not the "no features" it would meet later),
and every failure of every command, the plug-ins' included, must read the same: one line
``error: PROBLEM``, one line ``  fix: NEXT STEP``, exit 2, a traceback only with ``-v``.

* Each parser below turns one kind of value into what the command needs, or raises
  :class:`OptionValueError` (a ``ValueError`` with a fix); Typer reports it as a bad value of the
  option that declared it (``typer.Option(..., parser=storage_url)``). ``parser.kind`` names the
  kind (a test gives every option a bad value of its kind, ``tests/code/test_cli_options.py``).
* :class:`HfcastGroup` is the top-level command group: it runs the command line and turns click's
  usage errors and every :class:`hfcast.errors.UserError` (or what :func:`hfcast.errors.explain`
  recognises) into the two lines.

Standard library and Typer only at import time: ``hfcast --help`` stays fast.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import typer
from typer.core import TyperGroup


class OptionValueError(ValueError):
    """A value an option cannot take; ``fix`` says what it takes (shown as the fix line)."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(problem)
        self.fix = fix


def _kind(kind: str) -> Callable[[Callable], Callable]:
    def mark(fn: Callable) -> Callable:
        fn.kind = kind  # type: ignore[attr-defined]
        return fn
    return mark


@_kind("storage-url")
def storage_url(value: str) -> str:
    """A lake or output root: ``s3://bucket/prefix``, ``file:///abs/path`` or a plain path."""
    from hfcast.config import check_storage_url
    from hfcast.errors import UserError

    try:
        return check_storage_url(value, "")
    except UserError as exc:
        raise OptionValueError(exc.problem.strip(), exc.fix) from None


@_kind("date")
def iso_date(value: str) -> str:
    """One date, YYYY-MM-DD."""
    try:
        return dt.date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        raise OptionValueError(f"{value!r} is not a date", "write it as YYYY-MM-DD, e.g. 2024-01-02") from None


@_kind("dates")
def date_spec(value: str) -> str:
    """Dates as ``A..B`` (a span) or ``D1,D2`` (a list)."""
    parts = value.split("..", 1) if ".." in value else value.split(",")
    for part in parts:
        try:
            dt.date.fromisoformat(part.strip())
        except ValueError:
            raise OptionValueError(f"{part.strip()!r} in {value!r} is not a date",
                                   "write dates as 'A..B' or 'D1,D2' with each date YYYY-MM-DD") from None
    return value


@_kind("timestamp")
def timestamp(value: str) -> str:
    """A minute, ISO 8601 (``2024-01-05T15:00:00Z``)."""
    try:
        dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise OptionValueError(f"{value!r} is not a timestamp", "write it as ISO 8601, e.g. 2024-01-05T15:00:00Z") from None
    return value


@_kind("calendar")
def calendar(value: str) -> str:
    """A market calendar name that exchange_calendars or pandas_market_calendars has, or ``custom``."""
    from hfcast.market import calendar_known

    if value.lower() == "custom" or calendar_known(value):
        return value
    raise OptionValueError(f"unknown market calendar {value!r}",
                           "use an exchange_calendars name (XNYS, XETR, XLON, XTKS, CMES, ...), a "
                           "pandas_market_calendars name (CME_Equity, ...), or custom (params.yaml market:)")


@_kind("timezone")
def timezone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise OptionValueError(f"unknown time zone {value!r}", "use an IANA name, e.g. America/New_York or UTC") from None
    return value


@_kind("model-ref")
def model_ref(value: str) -> str:
    """A registry reference: ``NAME@alias``, ``NAME/version``, ``models:/...``, a version or an alias."""
    body = value.strip().removeprefix("models:/")
    if re.fullmatch(r"[A-Za-z0-9_.-]+(@[A-Za-z0-9_.-]+|/\d+)?", body) or re.fullmatch(r"@[A-Za-z0-9_.-]+", body):
        return value.strip()
    raise OptionValueError(f"{value!r} is not a model reference",
                           "write NAME@ALIAS (hfcast@champion) or NAME/VERSION (hfcast/3); `hfcast registry list` "
                           "shows them")


@_kind("bundle")
def bundle_dir(value: str) -> Path:
    """A local forecaster bundle: a folder whose model.json says what it serves (a forecaster of
    ``hfcast.forecaster``, or an older release's single network with its architecture)."""
    path = Path(value)
    fix = "pass a bundle folder written by Forecaster.save (model.json, scaler.json, members/, checksums.json)"
    if not path.is_dir():
        raise OptionValueError(f"{value} is {'a file' if path.exists() else 'missing'}, not a bundle folder", fix)
    meta = path / "model.json"
    if not meta.is_file():
        raise OptionValueError(f"{value} has no model.json: not a forecaster bundle", fix)
    try:
        doc = json.loads(meta.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise OptionValueError(f"{meta} is not JSON ({exc})", fix) from None
    served = isinstance(doc, dict) and "choice" in doc and "feature_names" in doc  # a served forecaster
    missing = [] if served else [k for k in ("arch", "n_features", "config") if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise OptionValueError(f"{meta} lacks {', '.join(missing)}: it does not say what the bundle serves",
                               "re-save the bundle with Forecaster.save, or download it again from the registry "
                               "(hfcast.registry.download_bundle)")
    return path


@_kind("input-file")
def input_file(value: str) -> str:
    """A file to read: an existing local file, or an ``s3://`` object."""
    if value.startswith("s3://"):
        return storage_url(value)
    if "://" in value and not value.startswith("file://"):
        storage_url(value)  # names the scheme it refuses
    path = Path(value.removeprefix("file://"))
    if not path.is_file():
        raise OptionValueError(f"{value}: no such file", "check the path (a relative path starts in the current folder)")
    return value


@_kind("local-file")
def local_file(value: str) -> Path:
    """A file on this machine that exists."""
    path = Path(value)
    if not path.is_file():
        raise OptionValueError(f"{value}: no such file", "check the path (a relative path starts in the current folder)")
    return path


@_kind("input-dir")
def input_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise OptionValueError(f"{value}: no such folder", "check the path (a relative path starts in the current folder)")
    return path


@_kind("output-dir")
def output_dir(value: str) -> Path:
    """A folder to write to: it may not exist yet, but nothing on its way may be a file."""
    path = Path(value)
    for p in [path, *path.parents]:
        if p.exists():
            if not p.is_dir():
                raise OptionValueError(f"{value}: {p} is a file, so the folder cannot be made there",
                                       "pass a folder path (it is created when missing)")
            break
    return path


@_kind("http-url")
def http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value.strip()):
        raise OptionValueError(f"{value!r} is not an http(s) URL", "write it like http://localhost:8080")
    return value.strip()


@_kind("column-map")
def column_map(value: str) -> str:
    for item in filter(None, (t.strip() for t in value.split(","))):
        key, sep, source = item.partition("=")
        if not sep or not key.strip() or not source.strip():
            raise OptionValueError(f"column map item {item!r} is not CONTRACT=SOURCE",
                                   "write it like ts=Timestamp,bid=BidPx")
    return value


@_kind("key-value")
def key_value(value: str) -> str:
    key, sep, _ = value.partition("=")
    if not sep or not key.strip():
        raise OptionValueError(f"{value!r} is not KEY=VALUE", "write it like epochs=2 (repeat the option for more)")
    return value


@_kind("cron")
def cron6(value: str) -> str:
    if len(value.split()) != 6:
        raise OptionValueError(f"{value!r} has {len(value.split())} fields, not 6",
                               "write a 6-field cron (seconds first, UTC), e.g. '0 30 21 * * 1-5'")
    return value


@_kind("symbol")
def symbol(value: str) -> str:
    """A ticker that the one symbol rule accepts (:func:`hfcast.data.schema.symbol_problem`)."""
    from hfcast.data.schema import symbol_problem

    why = symbol_problem(value)
    if why:
        raise OptionValueError(f"symbol {value[:40]!r}: {why}", "pass the ticker as the data names it, e.g. AAPL")
    return value


def choice(values: Sequence[str] | Callable[[], Iterable[str]], what: str = "value") -> Callable[[str], str]:
    """A parser that accepts one of ``values`` (a callable is asked on first use: lazy imports)."""
    @_kind("choice")
    def parse(value: str) -> str:
        allowed = list(values() if callable(values) else values)
        if value not in allowed:
            raise OptionValueError(f"unknown {what} {value!r}", f"choose one of {', '.join(allowed)}")
        return value
    parse.allowed = lambda: list(values() if callable(values) else values)  # type: ignore[attr-defined]
    return parse


def comma_list(item: Callable[[str], str]) -> Callable[[str], str]:
    """A parser for ``a,b,c`` whose every item ``item`` accepts (the text is returned as given)."""
    @_kind(f"list-of-{getattr(item, 'kind', 'value')}")
    def parse(value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            item(part)
        return value
    parse.item = item  # type: ignore[attr-defined]
    return parse


def _architectures() -> list[str]:
    from hfcast.models import ARCHITECTURES  # torch: imported when the option is given, not for --help

    return list(ARCHITECTURES)


architecture = choice(_architectures, "architecture")


# --- the one error path of the command line ---------------------------------------------------

def _option_fix(exc: Any) -> str:
    """The fix a parser attached (an :class:`OptionValueError` inside Typer's validation error), if any."""
    seen = set()
    cur = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OptionValueError):
            return cur.fix
        for err in getattr(cur, "errors", lambda: [])() if hasattr(cur, "errors") else []:
            inner = (err.get("ctx") or {}).get("error")
            if isinstance(inner, OptionValueError):
                return inner.fix
        cur = cur.__cause__ or cur.__context__
    return ""


def usage_lines(exc: Any) -> list[str]:
    """A click usage error (bad value, unknown option, missing argument) as the two lines."""
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "hfcast"
    message = " ".join(exc.format_message().replace("Value error, ", "").split())
    param = getattr(exc, "param", None)
    fix = _option_fix(exc)
    if not fix and param is not None and getattr(param, "help", None):
        fix = f"{param.opts[0] if getattr(param, 'opts', None) else param.name} takes: {param.help}"
    return [f"error: {path}: {message}", f"  fix: {fix or f'see `{path} --help`'}"]


def _print(lines: list[str]) -> None:
    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    for line in lines:
        console.print(line, markup=False)


class HfcastGroup(TyperGroup):
    """The ``hfcast`` group: every failure a user can fix ends as two lines and exit 2."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        from typer._click import exceptions as cx

        from hfcast.errors import explain

        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args=argv, prog_name=prog_name or "hfcast", complete_var=complete_var,
                              standalone_mode=False, **extra)
        except cx.NoArgsIsHelpError:  # Typer printed the help already
            sys.exit(2)
        except cx.UsageError as exc:
            _print(usage_lines(exc))
            sys.exit(2)
        except cx.ClickException as exc:  # e.g. a file click could not open
            _print([f"error: {' '.join(exc.format_message().split())}", "  fix: check the path and its permissions"])
            sys.exit(2)
        except typer.Abort:
            _print(["error: aborted"])
            sys.exit(1)
        except Exception as exc:
            err = explain(exc)
            if err is None or "-v" in argv or "--verbose" in argv:
                raise
            _print(err.lines())
            sys.exit(err.exit_code)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)
