"""Settings of a throw-away project in a test folder: params.yaml with overrides, a file lake, MLflow on SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from hfcast.config import Settings, deep_merge, get_settings

ROOT = Path(__file__).resolve().parents[1]


def project_settings(root: Path, overrides: Mapping[str, Any]) -> Settings:
    """The repository's params.yaml merged with ``overrides``, written to ``root``; everything under ``root``."""
    params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()) or {}, dict(overrides))
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return get_settings(env={"HFCAST_HOME": str(root / ".hfcast"), "HFCAST_LAKE": (root / "lake").as_uri(),
                             "HFCAST_PARAMS": str(root / "params.yaml"),
                             "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}, cwd=root)
