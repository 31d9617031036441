"""The HTTP front of the predictor: routes, size limit, decoding off the event loop, 4xx for every bad body.

Why an ASGI middleware in front of KServe's app rather than KServe's own endpoints: KServe
(FastAPI) parses the whole V2 JSON body into pydantic objects on the event loop before any model
code runs, with no size limit. A 50 MB body stalled every other request for seconds, and the
decode errors it raised outside the model became 500s that reset the keep-alive connection.
KServe 0.21 also has no V2 explain route, answers any ``/versions/<v>/`` path with 501 (or, before
this gate, served every version with the current model), and its pydantic metadata model drops
the units hfcast states.

Here, for the model's routes (``POST /v1/models/<name>:predict|:explain``,
``POST /v2/models/<name>[/versions/<v>]/infer|explain``, ``GET /v2/models/<name>[/versions/<v>][/ready]``):

0. a version other than the one served is a 404 naming both (serving.predictor.check_version);
1. a declared ``content-length`` over the limit is answered 413 before any byte is parsed
   (the body is drained, unparsed, so that the connection stays usable; a body far over the
   limit is answered with ``connection: close`` instead of being read);
2. the body is read (a chunked body that grows past the limit is also a 413);
3. small bodies are decoded and run inline (a thread hop costs more than a batch-1 forecast);
   larger ones, and every explain, in a worker thread; JSON bodies above ``process_bytes`` are
   decoded in a separate process (the body spooled to a temp file on its way in), because JSON
   parsing holds the GIL (measured here: parsing 50 MB with orjson in a thread stopped the event
   loop for 0.66 s; numpy's text parser releases it but is 4x slower). Binary tensors never need
   that: they are read with ``np.frombuffer``, no copy;
4. every refusal is ``{"error": "..."}`` with a 4xx status and a complete response, so the
   connection is kept alive. Anything unexpected is logged and answered 500, still complete;
5. every inference and explain request is counted and timed (serving.metrics).

Everything else (server health, ``/metrics``, other models) stays KServe's; gRPC is serving.grpc_server.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import re
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import orjson
from kserve.errors import InvalidInput, ModelNotFound

from serving import metrics
from serving.core import StaleFeatures
from serving.validation import BINARY_HEADER

log = logging.getLogger(__name__)

_V2 = r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"


@dataclass(frozen=True)
class Route:
    method: str
    proto: str  # "v1" | "v2": how the body is read
    verb: str  # "infer" | "explain" (POST, counted) | "metadata" | "ready" (GET)
    pattern: re.Pattern


ROUTES = (Route("POST", "v1", "infer", re.compile(r"^/v1/models/(?P<name>[^/:]+):predict/?$")),
          Route("POST", "v1", "explain", re.compile(r"^/v1/models/(?P<name>[^/:]+):explain/?$")),
          Route("POST", "v2", "infer", re.compile(_V2 + r"/infer/?$")),
          Route("POST", "v2", "explain", re.compile(_V2 + r"/explain/?$")),
          Route("GET", "v2", "metadata", re.compile(_V2 + r"/?$")),
          Route("GET", "v2", "ready", re.compile(_V2 + r"/ready/?$")))
DRAIN_FACTOR = 4  # bodies up to 4x the limit are read and dropped (connection kept); larger: closed
Decode = Callable[[str, bytes, dict], Any]  # (protocol, body, headers) -> parsed request | InvalidInput


class GatedModel(Protocol):
    """What the gate needs of a model (serving.predictor.HfcastPredictor)."""

    name: str
    ready: bool
    version: str

    def decoder(self) -> Decode: ...  # picklable: it may run in the decoding process

    def answer(self, parsed: Any, verb: str) -> tuple[bytes, dict[str, str]]: ...  # body, headers | InvalidInput

    def check_version(self, version: str | None) -> None: ...  # ModelNotFound for a version not served

    def metadata(self) -> dict: ...


@dataclass
class Reply:
    """A complete answer, with what the metrics need to know about it."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = "unknown"
    batch: int = 0
    stale: bool = False
    close: bool = False

    @classmethod
    def error(cls, status: int, message: str, **kw: Any) -> "Reply":
        return cls(status, orjson.dumps({"error": message}), **kw)


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


def _decoder_init(parent: int) -> None:
    """Set up the decoding process: background priority (decoding a huge body must not win the CPU
    over the server's request threads), and death with the server.

    Why a watching thread and not ``prctl(PR_SET_PDEATHSIG)``: the kernel sends that signal when
    the *thread* that started the child exits, not the process; the pool may be (re)started from
    any thread. A SIGKILLed server cannot clean up, so the child checks for itself (0.5 s).
    """
    try:
        os.nice(5)
    except OSError:
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)  # orphaned: nobody will read our answers

    threading.Thread(target=watch, name="hfcast-parent-watch", daemon=True).start()


class TooLarge(Exception):
    """The body exceeds the configured limit; ``drained`` tells whether the connection can be kept."""

    def __init__(self, size: int, limit: int, drained: bool):
        super().__init__(f"request body of {size} bytes exceeds the limit of {limit} bytes "
                         f"(server option --max-body-mb); send smaller batches or the binary tensor format")
        self.drained = drained


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


async def respond(send: Callable, reply: Reply) -> None:
    headers = {"content-type": "application/json", **reply.headers, "content-length": str(len(reply.body))}
    if reply.close:
        headers["connection"] = "close"
    await send({"type": "http.response.start", "status": reply.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]})
    await send({"type": "http.response.body", "body": reply.body})


class RequestGate:
    """ASGI middleware: see the module docstring. ``model`` answers (:class:`GatedModel`); its
    ``decoder()`` validates a body (picklable: it may run in another process)."""

    def __init__(self, app: Any, model: GatedModel, max_body_bytes: int, inline_bytes: int = 256 * 1024,
                 process_bytes: int = 4 * 2**20, threads: int = 2):
        self.app, self.model, self.decode = app, model, model.decoder()
        self.max_body_bytes, self.inline_bytes, self.process_bytes = max_body_bytes, inline_bytes, process_bytes
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="hfcast-decode")
        self._procs: ProcessPoolExecutor | None = None
        self.procs().submit(_warm_up)  # start it now, not on the first large request

    def procs(self) -> ProcessPoolExecutor:
        """One decoding process, started on the first large JSON body (spawn: no forked torch state)."""
        if self._procs is None:
            self._procs = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_decoder_init,
                                              initargs=(os.getpid(),))
        return self._procs

    def route(self, scope: dict) -> tuple[Route, str | None] | None:
        if scope.get("type") != "http":
            return None
        for route in ROUTES:
            m = route.pattern.match(scope.get("path", ""))
            if m and route.method == scope.get("method") and m.group("name") == self.model.name:
                return route, m.groupdict().get("version")
        return None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        found = self.route(scope)
        if found is None:
            return await self.app(scope, receive, send)
        route, version = found
        t0 = time.perf_counter()
        if route.method == "GET":
            return await respond(send, self.describe(route, version))
        reply = await self.dispatch(route, version, scope, receive)
        if reply is None:  # the client went away
            return None
        await respond(send, reply)
        metrics.observe("v1" if route.proto == "v1" else "v2-rest", route.verb, reply.kind,
                        metrics.http_status(reply.status), time.perf_counter() - t0, reply.batch, reply.stale)

    def refusal(self, version: str | None) -> Reply | None:
        """503 while the model loads, 404 for a version not served, else None."""
        if not self.model.ready:
            return Reply.error(503, f"model {self.model.name} is not ready yet")
        try:
            self.model.check_version(version)
        except ModelNotFound as exc:
            return Reply.error(404, str(exc))
        return None

    def describe(self, route: Route, version: str | None) -> Reply:
        """GET: the model's V2 metadata (with units) or readiness."""
        refused = self.refusal(version)
        if refused is not None:
            return refused
        if route.verb == "ready":
            return Reply(200, orjson.dumps({"name": self.model.name, "ready": True}))
        return Reply(200, orjson.dumps(self.model.metadata()))

    async def dispatch(self, route: Route, version: str | None, scope: dict, receive: Callable) -> Reply | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            declared = int(headers["content-length"]) if "content-length" in headers else None
        except ValueError:
            return Reply.error(400, "content-length must be an integer", close=True)
        refused = self.refusal(version)
        if refused is not None:
            refused.close = not await _drain(receive, DRAIN_FACTOR * self.max_body_bytes)
            return refused
        if declared is not None and self.process_bytes < declared <= self.max_body_bytes and BINARY_HEADER not in headers:
            return await self.remote(receive, route, headers)
        try:
            chunks = await read_body(receive, declared, self.max_body_bytes)
        except TooLarge as exc:
            return Reply.error(413, str(exc), close=not exc.drained)
        except ConnectionAbortedError:
            return None
        if route.verb == "explain" or sum(len(c) for c in chunks) > self.inline_bytes:
            return await asyncio.get_running_loop().run_in_executor(self.pool, self.handle, route, chunks, headers)
        return self.handle(route, chunks, headers)

    async def remote(self, receive: Callable, route: Route, headers: dict) -> Reply | None:
        """A large JSON body: spooled to a temp file as it arrives (64 KB writes to the page cache
        between other requests; a file, not /dev/shm, which is 64 MB in a default pod), decoded in
        the decoding process, answered in a thread."""
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
            return await self._decode_remote(route, path, headers)
        finally:
            os.unlink(path)

    async def _decode_remote(self, route: Route, path: str, headers: dict) -> Reply:
        loop = asyncio.get_running_loop()
        try:
            kind, value = await loop.run_in_executor(self.procs(), decode_in_process, self.decode, route.proto, path,
                                                      headers)
        except Exception as exc:  # the decoding process died (memory?): the caller gets a complete 500
            log.exception("decoding process failed")
            self._procs = None
            return Reply.error(500, f"internal error while decoding the body ({type(exc).__name__})")
        if kind == "invalid":
            return Reply.error(400, value)
        return await loop.run_in_executor(self.pool, self.finish, route, value)

    def handle(self, route: Route, chunks: list[bytes], headers: dict) -> Reply:
        """Decode, validate, forecast, encode. Never raises."""
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            parsed = self.decode(route.proto, body, headers)
        except InvalidInput as exc:
            return Reply.error(400, str(exc))
        except Exception as exc:  # a bug, not the caller's: log it, answer 500, keep the connection
            log.exception("unexpected error while decoding a %s request", route.proto)
            return Reply.error(500, f"internal error ({type(exc).__name__}): {exc}")
        return self.finish(route, parsed)

    def finish(self, route: Route, parsed: Any) -> Reply:
        """Forecast (or explain) and encode a validated request. Never raises."""
        kind = parsed.kind
        try:
            body, headers = self.model.answer(parsed, route.verb)
            return Reply(200, body, headers, kind, parsed.size)
        except InvalidInput as exc:
            return Reply.error(400, str(exc), kind=kind, stale=isinstance(exc, StaleFeatures))
        except Exception as exc:
            log.exception("unexpected error while answering a %s request", route.proto)
            return Reply.error(500, f"internal error ({type(exc).__name__}): {exc}", kind=kind)
