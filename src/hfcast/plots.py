"""One way to draw a report's figure off-screen into a PNG file (backtest, explanations)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def png_figure(path: Any, figsize: tuple[float, float], ncols: int = 1, dpi: int = 110) -> Iterator[tuple[Any, Any]]:
    """Yield ``(fig, axes)`` of a new figure; on a clean exit lay it out tight and save it to ``path``.

    Why the Agg backend, chosen at call time: reports are drawn in servers, pipeline steps and
    tests, none of which has a display, and importing matplotlib at module level would slow
    every import of the core. The figure is closed either way, so a failed plot leaks no memory.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
