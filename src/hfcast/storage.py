"""Storage through fsspec: local folders (``file://`` or plain paths) and S3 (``s3://``).

Two promises hold for every write made through this module:

* **atomic** - a reader sees either the old object or the complete new one, never a part.
  Locally we write a hidden temp file in the same folder, fsync it and ``os.replace`` it;
  on S3 we upload the whole body in one request (S3 makes an object visible only when the
  request completes), never a streamed file whose ``close()`` would commit a half-written body.
* **no secrets in messages** - errors are re-raised with credentials redacted.

The lake layout (one place for every path) is :class:`Lake`.
"""

from __future__ import annotations

import io
import logging
import os
import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote
from pathlib import Path
from typing import Any, Iterator

import fsspec
import pandas as pd

from hfcast.config import Settings, check_storage_url
from hfcast.errors import UserError

log = logging.getLogger(__name__)

_SECRET_PATTERNS = [
    re.compile(r"(aws_secret_access_key|secret|password|token)(['\"]?\s*[:=]\s*['\"]?)([^'\"\s,}]+)", re.I),
    re.compile(r"(aws_access_key_id|key)(['\"]?\s*[:=]\s*['\"]?)([^'\"\s,}]+)", re.I),
]


def redact(message: str, settings: Settings | None = None) -> str:
    """Remove credentials from a message (known values first, then key=value patterns)."""
    out = message
    if settings is not None:
        for secret in (settings.s3_key.reveal(), settings.s3_secret.reveal()):
            if secret:
                out = out.replace(secret, "***")
    for pat in _SECRET_PATTERNS:
        out = pat.sub(lambda m: f"{m.group(1)}{m.group(2)}***", out)
    return out


class StorageError(RuntimeError):
    """A read or write failed; the message names the URL and never a credential."""

def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def local_path(url: str) -> Path:
    """The filesystem path for a ``file://`` URL or a plain path."""
    if url.startswith("file://"):
        return Path(unquote(url[len("file://"):]))  # Path.as_uri() percent-encodes spaces etc.
    return Path(url)


def join(base: str, *parts: str) -> str:
    """Join URL/path parts with '/' (works for file://, s3:// and plain paths)."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


_ENDPOINT_ENV = ("HFCAST_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_said_endpoint: set[str] = set()


def _s3_endpoint_guard(url: str, storage_options: dict[str, Any] | None) -> None:
    """Never let an S3 client fall back to AWS when an endpoint is configured; say once which
    endpoint a client without one uses.

    Why here: every S3 client of hfcast is built by :func:`filesystem`. Options built by
    :meth:`hfcast.config.Settings.storage_options_for` carry the endpoint; options built any other
    way (or none) while ``HFCAST_S3_ENDPOINT`` is set would send data, with the configured
    credentials, to a host nobody configured.
    """
    endpoint = ((storage_options or {}).get("client_kwargs") or {}).get("endpoint_url")
    if endpoint:
        return
    configured = {k: os.environ[k] for k in _ENDPOINT_ENV if os.environ.get(k)}
    if configured.get("HFCAST_S3_ENDPOINT"):
        raise UserError(f"refusing to open {redact(url)} without the configured S3 endpoint "
                        f"(HFCAST_S3_ENDPOINT={configured['HFCAST_S3_ENDPOINT']}): it would go to AWS",
                        "build storage options with Settings.storage_options_for(url) (hfcast.config)")
    bucket = url[len("s3://"):].split("/", 1)[0]
    if bucket not in _said_endpoint:
        _said_endpoint.add(bucket)
        where = next(iter(configured.items()), None)
        log.info("s3://%s: no HFCAST_S3_ENDPOINT configured; using %s", bucket,
                 f"{where[1]} ({where[0]}, read by botocore)" if where else "AWS S3 (https://s3.amazonaws.com)")


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fs, path-inside-fs) for a URL (see :func:`_s3_endpoint_guard` for S3)."""
    if not is_remote(url):
        return fsspec.filesystem("file"), str(local_path(url))
    if url.startswith("s3://"):
        _s3_endpoint_guard(url, storage_options)
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path


@contextmanager
def _durable_temp(path: Path, data: bytes) -> Iterator[Path]:
    """``data`` written and fsynced to a unique temp file beside ``path``, for the caller to rename
    or link into place; whatever is left of it is removed on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``data`` atomically to ``url`` (see module docstring)."""
    try:
        if not is_remote(url):
            path = local_path(url)
            with _durable_temp(path, data) as tmp:
                os.replace(tmp, path)
            return
        fs, path = filesystem(url, storage_options)
        fs.pipe_file(path, data)  # one PUT: the object appears whole or not at all
    except Exception as exc:  # re-raise without credentials
        raise StorageError(redact(f"writing {url} failed: {exc}")) from None


def create_exclusive(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> bool:
    """Write ``data`` to ``url`` only if nothing is there yet; True if this call created it.

    Why: a decision log and a lease shared by concurrent monitors need create-if-absent, never
    read-then-write. Local: the content goes to a temp file that is hard-linked into place (the
    link fails if the name exists, so the object appears whole or not at all). S3: a conditional
    PUT ``If-None-Match: *`` (s3fs mode ``xb``; SeaweedFS and AWS S3 answer 412 when it exists).
    """
    try:
        if not is_remote(url):
            path = local_path(url)
            with _durable_temp(path, data) as tmp:
                try:
                    os.link(tmp, path)
                    return True
                except FileExistsError:
                    return False
        fs, path = filesystem(url, storage_options)
        try:
            with fs.open(path, "xb") as fh:
                fh.write(data)
        except (FileExistsError, OSError) as exc:
            if isinstance(exc, FileExistsError) or "pre-condition" in str(exc).lower() or "412" in str(exc):
                return False
            raise
        fs.invalidate_cache(path)
        return True
    except Exception as exc:  # re-raise without credentials
        raise StorageError(redact(f"creating {url} failed: {exc}")) from None


def read_bytes(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    try:
        if not is_remote(url):
            return local_path(url).read_bytes()
        fs, path = filesystem(url, storage_options)
        fs.invalidate_cache(path)  # a cached listing from before another process wrote must not hide it
        return fs.cat_file(path)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise StorageError(redact(f"reading {url} failed: {exc}")) from None


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    try:
        fs, path = filesystem(url, storage_options)
        fs.invalidate_cache(path)
        return fs.exists(path)
    except Exception as exc:
        raise StorageError(redact(f"checking {url} failed: {exc}")) from None


def listdir(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Names (not paths) directly under ``url``; hidden temp files are skipped; [] if absent."""
    try:
        fs, path = filesystem(url, storage_options)
        fs.invalidate_cache(path)  # s3fs caches listings: another process may have written since
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    except Exception as exc:
        raise StorageError(redact(f"listing {url} failed: {exc}")) from None
    names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
    return sorted(n for n in names if not n.startswith("."))


def remove(url: str, storage_options: dict[str, Any] | None = None, recursive: bool = False) -> None:
    try:
        fs, path = filesystem(url, storage_options)
        if fs.exists(path):
            fs.rm(path, recursive=recursive)
    except Exception as exc:
        raise StorageError(redact(f"removing {url} failed: {exc}")) from None


def write_parquet(df: pd.DataFrame, url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Atomic parquet write (timestamps kept as given; use datetime64[us, UTC] for Feast)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    write_bytes(url, buf.getvalue(), storage_options)


def read_parquet(url: str, storage_options: dict[str, Any] | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    if not is_remote(url):
        return pd.read_parquet(local_path(url), columns=columns)
    return pd.read_parquet(io.BytesIO(read_bytes(url, storage_options)), columns=columns)


def write_text(url: str, text: str, storage_options: dict[str, Any] | None = None) -> None:
    write_bytes(url, text.encode(), storage_options)


def read_text(url: str, storage_options: dict[str, Any] | None = None) -> str:
    return read_bytes(url, storage_options).decode()


_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})(?:\.csv)?$")


@dataclass(frozen=True)
class Lake:
    """The lake layout. Every stage finds its inputs and outputs here and nowhere else.

    ::

        <lake>/raw/date=YYYY-MM-DD/part-0.parquet          bars as produced (synth or ingest)
        <lake>/truth/date=YYYY-MM-DD/part-0.parquet        simulator ground truth (synth only)
        <lake>/validated/date=YYYY-MM-DD/part-0.parquet    rows that passed validation
        <lake>/quarantine/date=YYYY-MM-DD/part-0.parquet   rejected rows + ``reason`` column
        <lake>/features/date=YYYY-MM-DD/part-0.parquet     features + labels (+ truth columns)
        <lake>/reports/<stage>/...                         JSON run reports (counts per reason, ...)
        <lake>/predictions/<model>/<version>/date=YYYY-MM-DD.csv (+ ``.manifest.json``)
        <lake>/monitoring/<model>/<version>/date=YYYY-MM-DD/  drift reports
    """

    url: str
    storage_options: dict[str, Any] | None = None
    #: the trading calendar of the lake's data (hfcast.market.Market; None = XNYS): what windows
    #: built from it count sessions in; :meth:`from_settings` gives the settings' own
    market: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> "Lake":
        """The settings' lake, or the lake at ``url`` (e.g. ``--lake``) with the same storage client
        (:meth:`hfcast.config.Settings.storage_options_for`: one rule, whatever named the lake)."""
        url = check_storage_url(url, "--lake") if url else settings.lake_url
        if "://" not in url:
            url = Path(url).resolve().as_uri()
        return cls(url.rstrip("/"), settings.storage_options_for(url) or None, settings.market)

    def table(self, name: str) -> str:
        return join(self.url, name)

    def partition(self, name: str, date: str) -> str:
        """URL of one date's parquet file in a date-partitioned table."""
        return join(self.url, name, f"date={date}", "part-0.parquet")

    def dates(self, name: str) -> list[str]:
        """Dates present in a date-partitioned table, sorted."""
        out = []
        for entry in listdir(self.table(name), self.storage_options):
            m = _DATE_DIR.match(entry)
            if m:
                out.append(m.group(1))
        return sorted(set(out))

    def read(self, name: str, date: str, columns: list[str] | None = None) -> pd.DataFrame:
        return read_parquet(self.partition(name, date), self.storage_options, columns)

    def write(self, name: str, date: str, df: pd.DataFrame) -> str:
        url = self.partition(name, date)
        write_parquet(df, url, self.storage_options)
        return url

    def exists(self, name: str, date: str) -> bool:
        return exists(self.partition(name, date), self.storage_options)

    def predictions(self, model: str, version: str | int, date: str) -> str:
        return join(self.url, "predictions", model, str(version), f"date={date}.csv")

    def monitoring(self, model: str, version: str | int, date: str) -> str:
        return join(self.url, "monitoring", model, str(version), f"date={date}")

    def report(self, stage: str, name: str) -> str:
        return join(self.url, "reports", stage, name)
