"""Prometheus metrics of the hfcast server, scraped at ``GET /metrics``.

Why our own series beside KServe's: KServe 0.21 serves ``/metrics`` from prometheus-client's
default registry and times ``Model.__call__`` there (``request_predict_seconds`` and friends, by
model name only), but hfcast answers inference before that hook (serving.gateway over HTTP,
serving.grpc_server over gRPC), and a platform team needs the outcome, the protocol and the input
kind. These series go to the same default registry, so KServe's endpoint serves them unchanged.

Labels (one vocabulary for both protocols):
- ``protocol``: ``v1`` | ``v2-rest`` | ``v2-grpc``;
- ``verb``: ``infer`` | ``explain``;
- ``kind``: ``window`` | ``symbol`` | ``unknown`` (the request was refused before its input was read);
- ``status``: the gRPC canonical code in lower case, also for HTTP answers (200 ``ok``, 400
  ``invalid_argument``, 404 ``not_found``, 413 ``resource_exhausted``, 503 ``unavailable``, 5xx
  ``internal``), so one query covers both protocols.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, Info

PROTOCOLS = ("v1", "v2-rest", "v2-grpc")
HTTP_STATUS = {200: "ok", 400: "invalid_argument", 404: "not_found", 413: "resource_exhausted",
               503: "unavailable"}
# forecasts take 1-100 ms here; the tail up to seconds is a busy or swapping machine
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

REQUESTS = Counter("hfcast_requests", "Inference and explain requests answered, by outcome",
                   ("protocol", "verb", "kind", "status"))
LATENCY = Histogram("hfcast_request_duration_seconds", "Time from the request's arrival to its answer",
                    ("protocol", "verb", "kind", "status"), buckets=LATENCY_BUCKETS)
BATCH = Histogram("hfcast_batch_size", "Rows (windows or symbols) of the requests answered ok",
                  ("protocol", "kind"), buckets=BATCH_BUCKETS)
STALE = Counter("hfcast_stale_refusals", "Symbol requests refused because a feature window was older than "
                "--max-staleness-s", ("protocol",))
MODEL = Info("hfcast_model", "The served model: name, version, runner and device")


def http_status(code: int) -> str:
    """An HTTP status as the ``status`` label."""
    return HTTP_STATUS.get(code, "internal" if code >= 500 else "invalid_argument")


def observe(protocol: str, verb: str, kind: str, status: str, seconds: float, batch: int = 0,
            stale: bool = False) -> None:
    """Record one answered request (``batch`` only counts for answers that succeeded)."""
    REQUESTS.labels(protocol, verb, kind, status).inc()
    LATENCY.labels(protocol, verb, kind, status).observe(seconds)
    if status == "ok" and batch:
        BATCH.labels(protocol, kind).observe(batch)
    if stale:
        STALE.labels(protocol).inc()


def set_model(name: str, version: str, runner: str, device: str) -> None:
    """The served model as labels of ``hfcast_model_info`` (value 1): a dashboard joins on it."""
    MODEL.info({"model_name": name, "model_version": version, "runner": runner, "device": device})
