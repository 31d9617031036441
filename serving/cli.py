"""``hfcast serve``: a command plugin of the ``hfcast`` CLI (entry point group ``hfcast.cli``).

Why a plugin: the core library never imports KServe; installing the ``serving`` package (it is part
of this distribution) is what adds the command, with no path tricks.
"""

from __future__ import annotations

import typer

from hfcast.cli import BundleOption, ModelRefOption, RunnerOption
from hfcast.errors import UserError


def serve(
    model: ModelRefOption = "hfcast@champion",
    bundle: BundleOption = None,
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="HTTP port (KServe binds all interfaces)."),
    grpc_port: int = typer.Option(8081, "--grpc-port", min=1, max=65535, help="gRPC port."),
    runner: RunnerOption = "auto",
    max_batch: int = typer.Option(1024, "--max-batch", min=1, help="Largest batch accepted (larger: HTTP 400)."),
    max_staleness_s: float = typer.Option(600.0, "--max-staleness-s", help="Oldest feature age for symbol inputs (<0: no limit)."),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", min=0.001, help="Largest request body, MiB (larger: HTTP 413 before parsing)."),
    feature_store: bool = typer.Option(True, "--feature-store/--no-feature-store", help="Serve symbol inputs from Feast."),
) -> None:
    """Serve the model with KServe (V1 + V2): windows or symbols in, calibrated forecasts out."""
    import sys

    from hfcast.config import get_settings

    if port == grpc_port:  # checked before anything loads: KServe would fail three times over
        raise UserError(f"--port and --grpc-port are both {port}", "give the gRPC server another port, e.g. "
                        f"--grpc-port {port + 1 if port < 65535 else port - 1}")

    quiet_start()
    settings = get_settings()
    fetching = None if bundle else prefetch(settings, model)  # before the heavy imports below
    argv, sys.argv = sys.argv, sys.argv[:1]  # kserve parses sys.argv when first imported
    try:
        from serving.core import Limits
        from serving.predictor import HfcastPredictor, serve as run_server
    finally:
        sys.argv = argv
    limits = Limits(max_batch, None if max_staleness_s < 0 else max_staleness_s, int(max_body_mb * 2**20))
    predictor = HfcastPredictor("hfcast", bundle=bundle, ref=None if bundle else model, runner=runner,
                                limits=limits, settings=settings, use_feature_store=feature_store, prefetch=fetching)
    run_server(predictor, http_port=port, grpc_port=grpc_port)


def prefetch(settings, ref: str):
    """Fetch the registered version (resolve, download, verify: :func:`hfcast.registry.fetch_version`)
    in a forked child process; the Future of its :class:`~hfcast.registry.FetchedVersion`.

    Why: MLflow's import and the registry's answers take ~1.5 s of a server's start, and importing
    KServe, torch and Feast another ~3 s; on two cores they overlap (bench/bench_startup.py). Forked
    before those imports (nothing but the CLI is loaded yet, no thread runs), so the child starts in
    milliseconds and the server process never imports MLflow for a version whose export is stored.
    Its errors (no such version, a tampered file) come back as the same one-line errors."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from hfcast.registry import fetch_version

    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
    future = pool.submit(fetch_version, settings, ref)
    pool.shutdown(wait=False)  # the one task still runs; the child exits after it
    return future


#: libraries whose start-up INFO lines and warnings say nothing an operator can act on
NOISY_AT_START = ("kserve", "uvicorn", "uvicorn.error", "feast", "mlflow", "alembic", "onnxscript", "onnx_ir", "torch")


def quiet_start() -> None:
    """Without ``--verbose``: the libraries' start-up chatter (KServe and uvicorn banners, MLflow and
    Feast notices, Python warnings such as torch's FutureWarnings) is held back, so that start-up
    prints hfcast's own few lines and every warning or error; ``-v`` shows everything."""
    import logging

    if logging.getLogger().isEnabledFor(logging.DEBUG):  # --verbose
        return
    for name in NOISY_AT_START:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings.warn -> the py.warnings logger, held back below
    logging.getLogger("py.warnings").setLevel(logging.ERROR)


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``hfcast`` app (called by ``hfcast.cli`` for the ``hfcast.cli`` entry point)."""
    app.command("serve")(serve)
