"""Dataset versions for lineage: the DVC hash of the features output, and ``dvc repro`` as a function.

Training runs log :func:`dataset_version` so that a model can be traced to the exact bytes it was
trained on; ``dvc checkout`` with that lock brings them back. The version is the DVC directory hash
(``<md5>.dir``) recorded in ``dvc.lock``. Without a lock (data made outside DVC) the same hash is
computed from the folder, by DVC's own recipe, so both routes agree on identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import yaml

log = logging.getLogger(__name__)

FEATURES_OUT = "data/lake/features"
LAKE_DIR = "data/lake"


def _lock_hash(lock_path: Path, out: str) -> str | None:
    """The md5 recorded for ``out`` in any stage of ``dvc.lock`` (None when absent)."""
    lock = yaml.safe_load(lock_path.read_text()) or {}
    want = out.rstrip("/")
    for stage in (lock.get("stages") or {}).values():
        for o in stage.get("outs") or []:
            if str(o.get("path", "")).rstrip("/") == want:
                return o.get("md5")
    return None


def _file_md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_hash(folder: str | os.PathLike) -> str:
    """DVC's directory hash of ``folder``: md5 of the sorted JSON list of (md5, relpath), plus ``.dir``.

    Mirrors ``dvc_data`` (Tree.as_bytes + digest) for the default md5 hash; a test checks it equals
    the hash in dvc.lock.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: nothing to version")
    entries = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.startswith(".") and ".tmp-" in name:  # interrupted writes; .dvcignore skips them too
                continue
            p = Path(dirpath) / name
            entries.append({"md5": _file_md5(p), "relpath": p.relative_to(root).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    digest = hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()
    return f"{digest}.dir"


def dataset_version(repo_dir: str | os.PathLike = ".", out: str = FEATURES_OUT) -> str | None:
    """The version of the features dataset: its DVC hash from ``dvc.lock``, else from the folder.

    Args:
        repo_dir: the DVC repository root (where dvc.yaml and dvc.lock live).
        out: the output path as written in dvc.yaml, relative to ``repo_dir``.

    Returns:
        ``"<md5>.dir"``, or None when neither the lock nor the folder has it.
    """
    repo = Path(repo_dir)
    lock = repo / "dvc.lock"
    if lock.exists():
        found = _lock_hash(lock, out)
        if found:
            return found
        log.warning("%s has no entry for %s; hashing the folder instead", lock, out)
    folder = repo / out
    return folder_hash(folder) if folder.is_dir() else None


class DvcError(RuntimeError):
    """``dvc`` failed; the message carries the tail of its output."""


def _dvc(repo: Path, args: list[str], env: Mapping[str, str] | None) -> str:
    dvc = Path(sys.executable).parent / "dvc"
    cmd = [str(dvc) if dvc.exists() else "dvc", *args]
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"  # stage cmds find hfcast
    res = subprocess.run(cmd, cwd=repo, env=full_env, capture_output=True, text=True)
    if res.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` failed in {repo} (exit {res.returncode}):\n"
                       f"{(res.stdout + res.stderr)[-3000:]}")
    return res.stdout


def prepare(repo_dir: str | os.PathLike = ".", targets: list[str] | None = None, pull: bool = False,
            push: bool = False, remote: str | None = None, env: Mapping[str, str] | None = None,
            out: str = FEATURES_OUT) -> str:
    """Bring the data up to date with ``dvc repro`` and return the features dataset version.

    Used by the Kubeflow prepare component: stages whose deps and params did not change are
    skipped, so a rerun costs only the hashing.

    Args:
        repo_dir: DVC repository root.
        targets: stages to reproduce (default: the whole pipeline).
        pull: ``dvc pull`` first (outputs cached on the remote need not be recomputed).
        push: ``dvc push`` afterwards, so other machines can pull this version.
        remote: remote name for pull/push (default: the repository's default remote).
        env: extra environment for the stages (e.g. S3 credentials for an S3 remote).
        out: the output whose hash is the dataset version.

    Raises:
        DvcError: a dvc command failed.
    """
    repo = Path(repo_dir).resolve()
    rflag = ["-r", remote] if remote else []
    if pull:
        try:
            _dvc(repo, ["pull", *rflag], env)
        except DvcError as exc:  # a partial pull is fine: repro recomputes what is missing
            log.warning("dvc pull incomplete, reproducing instead: %s", str(exc).splitlines()[0])
    log.info("dvc repro in %s", repo)
    _dvc(repo, ["repro", *(targets or [])], env)
    if push:
        _dvc(repo, ["push", *rflag], env)
    version = dataset_version(repo, out)
    if version is None:
        raise DvcError(f"dvc repro finished but {out} has no version in {repo}/dvc.lock")
    log.info("dataset version %s", version)
    return version


# --- one dataset version per replayed day: `dvc add` + git commit + `dvc push` of the features ---------------

FEATURES_DVC = "features.dvc"
_GIT_ID = ["-c", "user.name=hfcast", "-c", "user.email=hfcast@localhost", "-c", "commit.gpgsign=false"]


def _git(repo: Path, args: list[str]) -> str:
    res = subprocess.run(["git", *_GIT_ID, *args], cwd=repo, capture_output=True, text=True)
    if res.returncode != 0:
        raise DvcError(f"`git {' '.join(args)}` failed in {repo} (exit {res.returncode}):\n{(res.stdout + res.stderr)[-2000:]}")
    return res.stdout.strip()


class FeatureVersions:
    """Versions ``<lake>/features`` after each day: ``dvc add``, a git commit of ``features.dvc``, ``dvc push``.

    Why ``dvc add`` and not ``dvc repro`` per day: the replay featurizes one day at a time, so the
    pipeline's stages (which featurize every date) would redo the whole history each day; ``dvc add``
    hashes only new files (DVC caches the hashes of unchanged ones). The lake folder is the git + DVC
    repository; only ``features.dvc`` and ``.gitignore`` are committed. A dataset version is
    ``<md5>.dir@<commit>``: :func:`restore_features` brings those exact bytes back in a fresh clone.

    Args:
        lake_dir: the local lake folder (DVC outputs must be local).
        remote: DVC remote URL (``s3://bucket/dvc`` or a folder); None = no push.
        endpoint_url: S3 endpoint of the remote (SeaweedFS); credentials come from the environment.
    """

    def __init__(self, lake_dir: str | os.PathLike, remote: str | None = None, endpoint_url: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.repo = Path(lake_dir).resolve()
        self.remote, self.endpoint_url, self.env = remote, endpoint_url, dict(env or {})

    def init(self) -> "FeatureVersions":
        """Make the lake a git + DVC repository with the remote (idempotent)."""
        self.repo.mkdir(parents=True, exist_ok=True)
        if not (self.repo / ".git").exists():
            _git(self.repo, ["init", "-q"])
        if not (self.repo / ".dvc").exists():
            _dvc(self.repo, ["init", "-q"], self.env)
            _dvc(self.repo, ["config", "core.autostage", "false"], self.env)
            if self.remote:
                _dvc(self.repo, ["remote", "add", "-d", "store", self.remote], self.env)
                if self.endpoint_url:
                    _dvc(self.repo, ["remote", "modify", "store", "endpointurl", self.endpoint_url], self.env)
            _git(self.repo, ["add", ".dvc"])
            _git(self.repo, ["commit", "-q", "-m", "dvc init"])
        return self

    def snapshot(self, message: str) -> str:
        """Version the features folder as it is now; the dataset version ``<md5>.dir@<commit>``."""
        _dvc(self.repo, ["add", "-q", "features"], self.env)
        _git(self.repo, ["add", FEATURES_DVC, ".gitignore"])
        if _git(self.repo, ["status", "--porcelain", "--", FEATURES_DVC]):
            _git(self.repo, ["commit", "-q", "-m", message])
        if self.remote:
            _dvc(self.repo, ["push", "-q"], self.env)
        doc = yaml.safe_load((self.repo / FEATURES_DVC).read_text())
        return f"{doc['outs'][0]['md5']}@{_git(self.repo, ['rev-parse', 'HEAD'])}"


def restore_features(origin: str | os.PathLike, version: str, dest: str | os.PathLike,
                     env: Mapping[str, str] | None = None) -> Path:
    """Clone ``origin`` (the lake's git repository) into ``dest`` at ``version``'s commit and ``dvc pull``
    the features from the remote; the restored features folder."""
    md5, _, commit = version.partition("@")
    if not commit:
        raise ValueError(f"dataset version {version!r} is not '<md5>.dir@<commit>' (not made by FeatureVersions)")
    dest = Path(dest)
    res = subprocess.run(["git", "clone", "-q", str(origin), str(dest)], capture_output=True, text=True)
    if res.returncode != 0:
        raise DvcError(f"git clone {origin} failed: {res.stderr[-2000:]}")
    _git(dest, ["checkout", "-q", commit])
    _dvc(dest, ["pull", "-q", FEATURES_DVC], env)
    got = yaml.safe_load((dest / FEATURES_DVC).read_text())["outs"][0]["md5"]
    if got != md5:
        raise DvcError(f"commit {commit} records features {got}, not {md5}")
    return dest / "features"
