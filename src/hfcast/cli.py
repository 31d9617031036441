"""The ``hfcast`` command: one sub-command per lifecycle stage, plus ``demo``.

Every command is a thin shell over a documented function in the library (imported inside the
command so that ``hfcast --help`` stays fast and nothing heavy runs at import time).
Each section below belongs to one module; keep the logic in that module, not here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="hfcast: minute-level return and volatility forecasts with calibrated confidence.")
console = Console()


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)],
    )
    for noisy in ("botocore", "s3fs", "urllib3", "aiobotocore", "alembic", "numba", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _settings():
    from hfcast.config import get_settings

    return get_settings()


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


# --- data: synth (hfcast.data.simulator) -------------------------------------------------------

# --- data: ingest, validate (hfcast.data.ingest, hfcast.data.validate) -------------------------

# --- features: featurize (hfcast.features.engine) ----------------------------------------------

# --- feature store: materialize (hfcast.feature_store) -----------------------------------------

# --- train, compare, evaluate (hfcast.train, hfcast.walkforward, hfcast.evaluate) --------------

# --- registry (hfcast.registry) ------------------------------------------------------------------

# --- export, serve (hfcast.export, serving/) -----------------------------------------------------

# --- predict (hfcast.predict) --------------------------------------------------------------------

# --- monitor (hfcast.drift) ----------------------------------------------------------------------

# --- pipeline, demo (hfcast.demo, pipelines/) ----------------------------------------------------


if __name__ == "__main__":
    app()
