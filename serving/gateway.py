"""The HTTP front of the predictor: size limit, decoding off the event loop, 4xx for every bad body.

Why an ASGI middleware in front of KServe's app rather than KServe's own infer endpoints: KServe
(FastAPI) parses the whole V2 JSON body into pydantic objects on the event loop before any model
code runs, with no size limit. A 50 MB body stalled every other request for seconds, and the
decode errors it raised outside the model became 500s that reset the keep-alive connection.

Here, for ``POST /v1/models/<name>:predict`` and ``POST /v2/models/<name>[/versions/<v>]/infer``:

1. a declared ``content-length`` over the limit is answered 413 before any byte is parsed
   (the body is drained, unparsed, so that the connection stays usable; a body far over the
   limit is answered with ``connection: close`` instead of being read);
2. the body is read (a chunked body that grows past the limit is also a 413);
3. small bodies are decoded and run inline (a thread hop costs more than a batch-1 forecast);
   larger ones in a worker thread; JSON bodies above ``process_bytes`` are decoded in a separate
   process (the body spooled to a temp file on its way in), because JSON parsing holds the GIL (measured here: parsing 50 MB with orjson in a
   thread stopped the event loop for 0.66 s; numpy's text parser releases it but is 4x slower).
   Binary tensors never need that: they are read with ``np.frombuffer``, no copy;
4. every refusal is ``{"error": "..."}`` with a 4xx status and a complete response, so the
   connection is kept alive. Anything unexpected is logged and answered 500, still complete.

Everything else (health, metadata, gRPC) stays KServe's.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import re
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Callable

import orjson
from kserve.errors import InvalidInput

log = logging.getLogger(__name__)

_ROUTES = (("v1", re.compile(r"^/v1/models/([^/:]+):predict/?$")),
           ("v2", re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer/?$")))
DRAIN_FACTOR = 4  # bodies up to 4x the limit are read and dropped (connection kept); larger: closed
Decode = Callable[[str, bytes, dict], Any]  # (protocol, body, headers) -> parsed request | InvalidInput
Answer = Callable[[Any], Any]  # parsed request -> response document | InvalidInput


def decode_in_process(decode: Decode, proto: str, path: str, headers: dict) -> tuple[str, Any]:
    """Runs in the decoding process on a body the server spooled to a file (pickling 50 MB to
    send it would hold the server's GIL for 0.1 s): ("ok", parsed) or ("invalid", message)
    (KServe's InvalidInput does not survive pickling, so the message travels instead)."""
    with open(path, "rb") as f:
        body = f.read()
    try:
        return "ok", decode(proto, body, headers)
    except InvalidInput as exc:
        return "invalid", str(exc)


def _warm_up() -> bool:
    return True


def _background_priority() -> None:
    """Decoding a huge body is background work: let the server's request threads win the CPU."""
    import os

    try:
        os.nice(5)
    except OSError:
        pass


class TooLarge(Exception):
    """The body exceeds the configured limit; ``drained`` tells whether the connection can be kept."""

    def __init__(self, size: int, limit: int, drained: bool):
        super().__init__(f"request body of {size} bytes exceeds the limit of {limit} bytes "
                         f"(server option --max-body-mb); send smaller batches or the binary tensor format")
        self.drained = drained


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


async def read_body(receive: Callable, declared: int | None, limit: int) -> list[bytes]:
    """The body's chunks; TooLarge (after draining what is reasonable) when over ``limit``."""
    if declared is not None and declared > limit:
        if declared > DRAIN_FACTOR * limit:
            raise TooLarge(declared, limit, drained=False)
        await _drain(receive)
        raise TooLarge(declared, limit, drained=True)
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ConnectionAbortedError("client disconnected while sending the body")
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            drained = not msg.get("more_body") or await _drain(receive, DRAIN_FACTOR * limit - size)
            raise TooLarge(size, limit, drained=drained)
        chunks.append(chunk)
        if not msg.get("more_body"):
            return chunks


async def _drain(receive: Callable, budget: int | None = None) -> bool:
    """Read and drop the rest of a body; False if it runs past ``budget`` bytes (then: close)."""
    seen = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return False
        seen += len(msg.get("body", b""))
        if budget is not None and seen > budget:
            return False
        if not msg.get("more_body"):
            return True


async def respond(send: Callable, status: int, payload: bytes, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class RequestGate:
    """ASGI middleware: see the module docstring. ``decode(protocol, body, headers)`` validates a
    body (a picklable module-level function: it may run in another process), ``answer(parsed)``
    returns the response document; both raise InvalidInput. ``ready()``: the model is loaded."""

    def __init__(self, app: Any, model_name: str, decode: Decode, answer: Answer, ready: Callable[[], bool],
                 max_body_bytes: int, inline_bytes: int = 256 * 1024, process_bytes: int = 4 * 2**20,
                 threads: int = 2):
        self.app, self.model_name, self.decode, self.answer, self.ready = app, model_name, decode, answer, ready
        self.max_body_bytes, self.inline_bytes, self.process_bytes = max_body_bytes, inline_bytes, process_bytes
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="hfcast-decode")
        self._procs: ProcessPoolExecutor | None = None
        self.procs().submit(_warm_up)  # start it now, not on the first large request

    def procs(self) -> ProcessPoolExecutor:
        """One decoding process, started on the first large JSON body (spawn: no forked torch state)."""
        if self._procs is None:
            self._procs = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_background_priority)
        return self._procs

    def protocol(self, scope: dict) -> str | None:
        if scope.get("type") != "http" or scope.get("method") != "POST":
            return None
        for proto, pattern in _ROUTES:
            m = pattern.match(scope.get("path", ""))
            if m:
                return proto if m.group(1) == self.model_name else None
        return None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        proto = self.protocol(scope)
        if proto is None:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            declared = int(headers["content-length"]) if "content-length" in headers else None
        except ValueError:
            return await respond(send, 400, error_body("content-length must be an integer"), close=True)
        if (declared is not None and self.process_bytes < declared <= self.max_body_bytes
                and "inference-header-content-length" not in headers and self.ready()):
            return await self.remote(receive, send, proto, declared, headers)
        try:
            chunks = await read_body(receive, declared, self.max_body_bytes)
        except TooLarge as exc:
            return await respond(send, 413, error_body(str(exc)), close=not exc.drained)
        except ConnectionAbortedError:
            return None
        if not self.ready():
            return await respond(send, 503, error_body(f"model {self.model_name} is not ready yet"))
        if sum(len(c) for c in chunks) > self.inline_bytes:
            loop = asyncio.get_running_loop()
            status, payload = await loop.run_in_executor(self.pool, self.handle, proto, chunks, headers)
        else:
            status, payload = self.handle(proto, chunks, headers)
        await respond(send, status, payload)

    async def remote(self, receive: Callable, send: Callable, proto: str, size: int, headers: dict) -> None:
        """A large JSON body: spooled to a temp file as it arrives (64 KB writes to the page cache
        between other requests; a file, not /dev/shm, which is 64 MB in a default pod), decoded in
        the decoding process, forecast in a thread."""
        fd, path = tempfile.mkstemp(prefix="hfcast-body-")
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        return None
                    f.write(msg.get("body", b""))
                    if not msg.get("more_body"):
                        break
            status, payload = await self._decode_remote(proto, path, headers)
        finally:
            os.unlink(path)
        await respond(send, status, payload)

    async def _decode_remote(self, proto: str, path: str, headers: dict) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        try:
            kind, value = await loop.run_in_executor(self.procs(), decode_in_process, self.decode, proto, path, headers)
        except Exception as exc:  # the decoding process died (memory?): the caller gets a complete 500
            log.exception("decoding process failed")
            self._procs = None
            return 500, error_body(f"internal error while decoding the body ({type(exc).__name__})")
        if kind == "invalid":
            return 400, error_body(value)
        return await loop.run_in_executor(self.pool, self.finish, proto, value)

    def handle(self, proto: str, chunks: list[bytes], headers: dict) -> tuple[int, bytes]:
        """Decode, validate, forecast, encode: (status, JSON bytes). Never raises."""
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            parsed = self.decode(proto, body, headers)
        except InvalidInput as exc:
            return 400, error_body(str(exc))
        except Exception as exc:  # a bug, not the caller's: log it, answer 500, keep the connection
            log.exception("unexpected error while decoding a %s request", proto)
            return 500, error_body(f"internal error ({type(exc).__name__}): {exc}")
        return self.finish(proto, parsed)

    def finish(self, proto: str, parsed: Any) -> tuple[int, bytes]:
        """Forecast and encode a validated request: (status, JSON bytes). Never raises."""
        try:
            return 200, orjson.dumps(self.answer(parsed), option=orjson.OPT_SERIALIZE_NUMPY)
        except InvalidInput as exc:
            return 400, error_body(str(exc))
        except Exception as exc:
            log.exception("unexpected error while answering a %s request", proto)
            return 500, error_body(f"internal error ({type(exc).__name__}): {exc}")
