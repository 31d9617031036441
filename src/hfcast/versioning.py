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
