"""Tiny network widths for the model tests: fast on a CPU, yet every part of each architecture runs."""

from __future__ import annotations


def small_configs(head_hidden: int) -> dict[str, dict]:
    """``{arch: config overrides}`` of width 16, one transformer block, three TCN levels."""
    return {"transformer": {"d_model": 16, "n_heads": 2, "n_layers": 1, "head_hidden": head_hidden},
            "lstm": {"hidden": 16, "n_layers": 1, "head_hidden": head_hidden},
            "tcn": {"channels": 16, "n_levels": 3, "head_hidden": head_hidden},
            "hybrid": {"channels": 16, "n_heads": 2, "head_hidden": head_hidden}}
