"""One error type for problems a user can fix, and how the ``hfcast`` command shows them.

Why: a missing champion, a tampered bundle or a port in use are not bugs; a 60-line traceback
hides the one line that matters. Library code raises :class:`UserError` (problem + next step)
where it knows both; :func:`explain` turns the usual third-party failures (S3 credentials,
pickles, ports) into one too. The CLI prints ``error: PROBLEM`` and ``  fix: NEXT STEP``, exits 2,
and shows the traceback only with ``-v``.
"""

from __future__ import annotations

import errno
import pickle
import re
from typing import Callable


class UserError(Exception):
    """A problem the user can act on: ``problem`` says what is wrong, ``fix`` what to do next."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(problem if not fix else f"{problem} ({fix})")
        self.problem, self.fix = problem, fix

    def __reduce__(self):  # pickled whole (a server fetches its model in a child process)
        return type(self), (self.problem, self.fix)

    def lines(self) -> list[str]:
        """``error: PROBLEM`` and ``  fix: NEXT STEP``, one line each (whatever newlines the texts hold)."""
        return [f"error: {' '.join(str(self.problem).split())}"] + (
            [f"  fix: {' '.join(str(self.fix).split())}"] if self.fix else [])


def _s3(exc: BaseException) -> UserError | None:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) if hasattr(exc, "response") else ""
    text = f"{type(exc).__name__}: {exc}"
    if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403") or "SignatureDoesNotMatch" in text:
        return UserError(f"S3 refused the credentials ({code or text[:120]})",
                         "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    if type(exc).__name__ in ("EndpointConnectionError", "ConnectTimeoutError") or "Could not connect to the endpoint" in text:
        url = re.search(r"endpoint URL: \"?(\w+://[^/\"\s]+)", text)  # the server, not the object asked for
        return UserError(f"cannot reach the S3 endpoint {url.group(1) if url else ''} ({type(exc).__name__})".replace("  ", " "),
                         "check HFCAST_S3_ENDPOINT and that the S3 server runs")
    return None


def _os(exc: BaseException) -> UserError | None:
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return UserError(f"the port is already in use ({exc.strerror})",
                         "stop the other server or pass another --port / --grpc-port")
    if isinstance(exc, FileNotFoundError):
        return UserError(f"missing file: {exc.filename or exc}",
                         "check the path (a forecaster bundle folder holds model.json, weights.safetensors and "
                         "scaler.json)")
    return None


def _pickle(exc: BaseException) -> UserError | None:
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "HeaderTooLarge" in text or "header too large" in text.lower() \
            or "invalid load key" in text:
        return UserError(f"a model file is not in the safetensors format ({type(exc).__name__}: {text[:120]})",
                         "hfcast never loads pickles: re-save the bundle with Forecaster.save (weights.safetensors)")
    return None


def _mlflow(exc: BaseException) -> UserError | None:
    """The tracking server did not answer (refused, timed out, 5xx): an outage, not a missing model."""
    text = str(exc)
    if type(exc).__name__ != "MlflowException" or "API request to" not in text:
        return None
    url = re.search(r"API request to (\w+://[^/\s]+)", text)
    why = ("connection refused" if "Connection refused" in text else "timed out" if "timed out" in text.lower()
           else f"HTTP {m.group(1)}" if (m := re.search(r"(5\d\d) (?:error|Server Error)|status code (5\d\d)", text))
           else text.split(" failed with exception ")[-1][:120])
    return UserError(f"the MLflow tracking server did not answer ({url.group(1) if url else '?'}: {why})",
                     "start it or check MLFLOW_TRACKING_URI; nothing was changed in the registry")


EXPLAINERS: list[Callable[[BaseException], UserError | None]] = [_s3, _os, _pickle, _mlflow]


def explain(exc: BaseException) -> UserError | None:
    """The :class:`UserError` that ``exc`` (or an exception it was raised from) amounts to, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return exc
        for fn in EXPLAINERS:
            found = fn(exc)
            if found is not None:
                return found
        exc = exc.__cause__ or exc.__context__
    return None
