"""Shared fixtures: real servers on 127.0.0.1, started and stopped by the test session."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from hfcast.config import Settings, get_settings
from hfcast.testing.servers import SeaweedFS


@pytest.fixture(scope="session")
def s3():
    """A real SeaweedFS S3 server for the whole session (stopped at the end)."""
    with SeaweedFS() as server:
        yield server


@pytest.fixture
def s3_bucket(s3) -> str:
    """A fresh, empty bucket per test: ``s3://hf-<random>``."""
    return s3.make_bucket(f"hf-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-default settings rooted in a temp folder (file:// lake, sqlite MLflow)."""
    return get_settings(env={"HFCAST_HOME": str(tmp_path / ".hfcast")}, cwd=tmp_path)


@pytest.fixture
def s3_settings(tmp_path: Path, s3, s3_bucket) -> Settings:
    """Settings whose lake is a fresh bucket on the session's SeaweedFS server."""
    env = {"HFCAST_HOME": str(tmp_path / ".hfcast"), "HFCAST_LAKE": f"{s3_bucket}/lake", **s3.env()}
    return get_settings(env=env, cwd=tmp_path)
