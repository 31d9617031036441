"""How every component body starts: one helper instead of the same lines in each component.

A component imports it inside its body (kfp ships only the function's source to the step; the
image, like this machine, has the ``components`` package installed).
"""

from __future__ import annotations

from typing import Any


def step_settings(settings: str, lake_url: str | None = None) -> Any:
    """Logging on for the step's log, and the ``settings`` parameter parsed.

    The settings' market calendar travels with them (``settings.market``, passed to each stage as a
    value): the step sets nothing process-wide.

    Args:
        settings: the pipeline's ``settings`` parameter (``Settings.to_param()`` JSON; '' = the
            cluster's hfcast-config / the environment).
        lake_url: the lake an input artifact came from, which wins over the settings' lake.

    Returns:
        The step's :class:`hfcast.config.Settings`.
    """
    import logging

    from hfcast.config import settings_from_param

    logging.basicConfig(level=logging.INFO)
    s = settings_from_param(settings)
    return s if lake_url is None else s.with_(lake_url=lake_url)
