"""Which code made a run, a model version or a report: the git commit and the entry point.

Why its own module: MLflow records ``mlflow.source.git.commit`` only for runs opened with its
fluent API from a script inside a git checkout; hfcast opens runs with the client (so they exist
from the first second of training) and, in a Kubeflow step, runs from an image without ``.git``,
where MLflow would name KFP's ``executor_main.py`` as the source. So the commit is taken, in
order, from

1. ``HFCAST_GIT_COMMIT`` - baked into the images at build time (``docker build --build-arg
   HFCAST_GIT_COMMIT=$(git rev-parse HEAD)``, see docker/Dockerfile);
2. ``git rev-parse HEAD`` in the checkout the package was imported from (a developer's machine,
   CI, the demo).

and the entry point is the Kubeflow component function (``--function_to_execute`` of KFP's
executor) or the ``hfcast`` command line.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

COMMIT_ENV = "HFCAST_GIT_COMMIT"
UNKNOWN = ("", "unknown", "none")
#: run tags written by :func:`run_tags` (the first three are MLflow's own, shown in its UI)
COMMIT_TAG, SOURCE_NAME_TAG, SOURCE_TYPE_TAG = "mlflow.source.git.commit", "mlflow.source.name", "mlflow.source.type"
DIRTY_TAG, VERSION_TAG = "hfcast.git_dirty", "hfcast.version"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), *args], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the running code (:data:`COMMIT_ENV`, else the checkout's HEAD); None if unknown."""
    baked = os.environ.get(COMMIT_ENV, "").strip()
    if baked.lower() not in UNKNOWN:
        return baked
    head = _git("rev-parse", "HEAD")
    return head or None


@functools.lru_cache(maxsize=1)
def git_dirty() -> bool | None:
    """Whether the checkout has uncommitted changes to tracked files (None: no checkout, e.g. an image)."""
    if os.environ.get(COMMIT_ENV, "").strip().lower() not in UNKNOWN:
        return False  # an image is built from a commit
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def entry_point(argv: list[str] | None = None) -> tuple[str, str]:
    """``(name, type)`` of what is running: a Kubeflow component (``JOB``) or a command (``LOCAL``)."""
    argv = list(sys.argv if argv is None else argv)
    if "--function_to_execute" in argv[:-1]:
        return f"kubeflow component {argv[argv.index('--function_to_execute') + 1]}", "JOB"
    words: list[str] = []
    for a in argv[1:3]:  # the sub-command(s): "hfcast train", "hfcast monitor run"
        if a.startswith("-"):
            break
        words.append(a)
    return " ".join([Path(argv[0]).name if argv else "python", *words]), "LOCAL"


def package_version() -> str:
    try:
        return version("hfcast")
    except PackageNotFoundError:
        return "unknown"


def run_tags(argv: list[str] | None = None) -> dict[str, str]:
    """MLflow tags naming the code of a run: commit (when known), entry point, package version."""
    name, kind = entry_point(argv)
    tags = {SOURCE_NAME_TAG: name[:500], SOURCE_TYPE_TAG: kind, VERSION_TAG: package_version()}
    commit, dirty = git_commit(), git_dirty()
    if commit:
        tags[COMMIT_TAG] = commit
    if dirty is not None:
        tags[DIRTY_TAG] = str(dirty).lower()
    return tags


def describe() -> str:
    """"abc1234 (uncommitted changes)": the commit in a line (for reports and logs)."""
    commit = git_commit()
    if not commit:
        return "unknown commit"
    return commit[:12] + (" (with uncommitted changes)" if git_dirty() else "")
