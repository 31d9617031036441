"""Which code made a run: the commit baked into an image wins, a checkout answers with git, and a
Kubeflow step is named by its component function rather than KFP's executor_main.py."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hfcast import provenance

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv(provenance.COMMIT_ENV, raising=False)
    provenance.git_commit.cache_clear()
    provenance.git_dirty.cache_clear()
    yield
    provenance.git_commit.cache_clear()
    provenance.git_dirty.cache_clear()


def test_commit_baked_into_an_image_is_used_without_git(monkeypatch):
    monkeypatch.setenv(provenance.COMMIT_ENV, "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setattr(provenance, "_git", lambda *a: pytest.fail("git must not be asked when the commit is baked"))
    tags = provenance.run_tags(["/usr/bin/python3", "-m", "kfp.dsl.executor_main", "--executor_input", "{}",
                                "--function_to_execute", "train_model"])
    assert tags["mlflow.source.git.commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert tags["mlflow.source.name"] == "kubeflow component train_model" and tags["mlflow.source.type"] == "JOB"
    assert tags["hfcast.git_dirty"] == "false"


def test_a_checkout_answers_with_git_and_unknown_stays_unknown(monkeypatch):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout (CI, the demo): the same HEAD as git says
        assert provenance.git_commit() == head.stdout.strip()
    monkeypatch.setenv(provenance.COMMIT_ENV, "unknown")  # the Dockerfile's default build arg
    monkeypatch.setattr(provenance, "_git", lambda *a: None)  # an image: no .git
    provenance.git_commit.cache_clear()
    provenance.git_dirty.cache_clear()
    tags = provenance.run_tags(["/venv/bin/hfcast", "monitor", "run", "--date", "2024-01-02"])
    assert "mlflow.source.git.commit" not in tags and "hfcast.git_dirty" not in tags
    assert tags["mlflow.source.name"] == "hfcast monitor run" and tags["mlflow.source.type"] == "LOCAL"
    assert provenance.describe() == "unknown commit"


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/Dockerfile.gpu"])
def test_images_bake_the_commit_from_a_build_arg(dockerfile):
    text = (ROOT / dockerfile).read_text()
    assert re.search(r"^ARG HFCAST_GIT_COMMIT=unknown$", text, re.M)
    assert re.search(r"^ENV HFCAST_GIT_COMMIT=\$\{HFCAST_GIT_COMMIT\}$", text, re.M)
    assert text.index("ARG HFCAST_GIT_COMMIT") > text.index("pip install -c constraints.txt")  # layers stay cached
