"""Build :class:`hfcast.config.Settings` inside a component from its parameters.

Why here and not in each component: every component receives the same settings parameters (lake
URL, MLflow URI, Feast repo, S3 endpoint, home, params overrides). Credentials never travel as
parameters: they come from the pod's environment (a Kubernetes Secret) or, locally, from the
parent process. Imported inside component functions only (kfp serialises the function body).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

# the parameters every settings-aware component takes, and the variable each one overrides
SETTINGS_ENV = {"home": "HFCAST_HOME", "lake_url": "HFCAST_LAKE", "mlflow_uri": "MLFLOW_TRACKING_URI",
                "feast_repo": "HFCAST_FEAST_REPO", "s3_endpoint": "HFCAST_S3_ENDPOINT"}


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, recursively for nested mappings (override wins)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def parse_overrides(params_json: str) -> dict[str, Any]:
    """The ``params_json`` parameter: a JSON object of params.yaml overrides ('' or '{}' = none)."""
    if not params_json or not params_json.strip():
        return {}
    try:
        doc = json.loads(params_json)
    except json.JSONDecodeError as exc:
        raise ValueError(f"params_json is not valid JSON ({exc}): {params_json[:200]!r}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"params_json must be a JSON object like {{\"train\": {{\"epochs\": 1}}}}, got {params_json[:200]!r}")
    return doc


def make_settings(home: str = "", lake_url: str = "", mlflow_uri: str = "", feast_repo: str = "",
                  s3_endpoint: str = "", params_json: str = "", env: Mapping[str, str] | None = None):
    """Settings from the environment, with every non-empty parameter taking precedence.

    Args:
        home, lake_url, mlflow_uri, feast_repo, s3_endpoint: see :mod:`hfcast.config`; '' = from env.
        params_json: JSON overrides merged into params.yaml (e.g. fewer epochs for a smoke run).
        env: the environment (default ``os.environ``); credentials are read from it only.
    """
    from hfcast.config import get_settings

    given = {"home": home, "lake_url": lake_url, "mlflow_uri": mlflow_uri, "feast_repo": feast_repo,
             "s3_endpoint": s3_endpoint}
    merged_env = dict(os.environ if env is None else env)
    merged_env.update({SETTINGS_ENV[k]: v for k, v in given.items() if v})
    settings = get_settings(env=merged_env)
    overrides = parse_overrides(params_json)
    return settings.with_(params=deep_merge(settings.params, overrides)) if overrides else settings
