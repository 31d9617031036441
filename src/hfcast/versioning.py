"""Dataset versions for lineage: the DVC hash of the features output, and ``dvc repro`` as a function.

Training runs log :func:`dataset_version` so that a model can be traced to the exact bytes it was
trained on; ``dvc checkout`` with that lock brings them back. The version is the DVC directory hash
(``<md5>.dir``) recorded in ``dvc.lock``. Without a lock (data made outside DVC) the same hash is
computed from the folder, by DVC's own recipe, so both routes agree on identical bytes.

Outside ``dvc repro`` (the pipeline's prepare step, each replayed day, the demo),
:func:`features_version` is the one place that names the features' version: it ``dvc add``-s and
pushes them to the settings' DVC remote, through a local mirror when the lake is an object store,
and :func:`restore_features` brings any registered version back from that remote alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from hfcast.config import Settings
from hfcast import storage
from hfcast.errors import UserError

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


# --- one dataset version per prepared / replayed day: `dvc add` + (git commit) + `dvc push` ----------------

FEATURES_DVC = "features.dvc"
_GIT_ID = ["-c", "user.name=hfcast", "-c", "user.email=hfcast@localhost", "-c", "commit.gpgsign=false"]
_DVCIGNORE = "# hidden temp files of interrupted atomic writes (hfcast.storage)\n**/.*.tmp-*\n"


def _git(repo: Path, args: list[str]) -> str:
    res = subprocess.run(["git", *_GIT_ID, *args], cwd=repo, capture_output=True, text=True)
    if res.returncode != 0:
        raise DvcError(f"`git {' '.join(args)}` failed in {repo} (exit {res.returncode}):\n{(res.stdout + res.stderr)[-2000:]}")
    return res.stdout.strip()


@dataclass(frozen=True)
class DvcRemote:
    """Where dataset versions are pushed, and what ``dvc`` needs to reach it.

    Args:
        url: ``s3://bucket/dvc`` or a folder.
        endpoint_url: S3 endpoint (SeaweedFS, MinIO); None = AWS. Written to the DVC config (not secret).
        env: environment for the ``dvc`` processes (S3 credentials); never written anywhere, never shown.
    """

    url: str
    endpoint_url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> "DvcRemote | None":
        """The remote of ``HFCAST_DVC_REMOTE`` or params.yaml ``dvc.remote`` (None when neither is set).

        An S3 remote reuses the lake's endpoint (unless ``dvc.endpoint_url`` is set) and credentials.
        """
        environ = os.environ if environ is None else environ
        url = environ.get("HFCAST_DVC_REMOTE") or settings.param("dvc.remote")
        if not url:
            return None
        if not storage.is_remote(str(url)):
            return cls(str(storage.local_path(str(url)).resolve()))
        key, secret = (getattr(v, "reveal", lambda v=v: str(v))() for v in (settings.s3_key, settings.s3_secret))
        env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret} if key else {}
        return cls(str(url), settings.param("dvc.endpoint_url") or settings.s3_endpoint, env)


def _write_config(repo: Path, remote: DvcRemote | None, scm: bool) -> None:
    """The whole ``.dvc/config`` of a repository hfcast creates, in one write.

    Why not ``dvc config`` / ``dvc remote add``: each is a process of about a second, and a day's
    version would pay four of them; the file's INI format is DVC's documented, hand-editable one.
    Credentials never go here (they reach ``dvc`` through the environment).
    """
    lines = ["[core]", "    autostage = false", *([] if scm else ["    no_scm = True"])]
    if remote is not None:
        lines += ["    remote = store", "['remote \"store\"']", f"    url = {remote.url}"]
        lines += [f"    endpointurl = {remote.endpoint_url}"] if remote.endpoint_url else []
    (repo / ".dvc").mkdir(parents=True, exist_ok=True)
    (repo / ".dvc" / "config").write_text("\n".join(lines) + "\n")


def _configure_remote(repo: Path, remote: DvcRemote) -> None:
    """Make ``remote`` the default remote ``store`` of the existing DVC repository ``repo`` (idempotent)."""
    config = repo / ".dvc" / "config"
    if config.exists() and f"url = {remote.url}\n" in config.read_text():
        return  # already this remote: spare two dvc processes (about 1 s each)
    _dvc(repo, ["remote", "add", "-f", "-d", "store", remote.url], remote.env)
    if remote.endpoint_url:
        _dvc(repo, ["remote", "modify", "store", "endpointurl", remote.endpoint_url], remote.env)


class FeatureVersions:
    """Versions ``<folder>/features`` after each day: ``dvc add``, a git commit of ``features.dvc``, ``dvc push``.

    Why ``dvc add`` and not ``dvc repro`` per day: the replay featurizes one day at a time, so the
    pipeline's stages (which featurize every date) would redo the whole history each day; ``dvc add``
    hashes only new files (DVC caches the hashes of unchanged ones). The folder is the git + DVC
    repository; only ``features.dvc``, ``.dvcignore`` and ``.gitignore`` are committed. A dataset
    version is ``<md5>.dir@<commit>``. With ``git=False`` (a workspace that mirrors an object-store
    lake, :func:`features_version`) it is a ``dvc init --no-scm`` repository and the version is
    ``<md5>.dir``. Either form is restored by :func:`restore_features`: from the git repository, or
    from the remote alone.

    Args:
        lake_dir: the local folder holding ``features`` (DVC outputs must be local).
        remote: DVC remote URL (``s3://bucket/dvc`` or a folder); None = no push.
        endpoint_url: S3 endpoint of the remote (SeaweedFS); credentials come from ``env``.
        env: environment of the ``dvc`` processes (S3 credentials).
        git: commit each version (``@<commit>`` in the version) or not.
    """

    def __init__(self, lake_dir: str | os.PathLike, remote: str | None = None, endpoint_url: str | None = None,
                 env: Mapping[str, str] | None = None, git: bool = True) -> None:
        self.repo = Path(lake_dir).resolve()
        self.remote, self.endpoint_url, self.env, self.git = remote, endpoint_url, dict(env or {}), git

    @classmethod
    def to(cls, folder: str | os.PathLike, remote: DvcRemote | None, git: bool = True) -> "FeatureVersions":
        """Versions of ``folder``'s features pushed to ``remote`` (None = kept in the local cache only)."""
        if remote is None:
            return cls(folder, git=git)
        return cls(folder, remote.url, remote.endpoint_url, remote.env, git=git)

    def init(self) -> "FeatureVersions":
        """Make the folder a (git +) DVC repository with the remote (idempotent)."""
        self.repo.mkdir(parents=True, exist_ok=True)
        if self.git and not (self.repo / ".git").exists():
            _git(self.repo, ["init", "-q"])
        remote = DvcRemote(self.remote, self.endpoint_url, self.env) if self.remote else None
        if not (self.repo / ".dvc").exists():
            _dvc(self.repo, ["init", "-q", *([] if self.git else ["--no-scm"])], self.env)
            _write_config(self.repo, remote, scm=self.git)
            (self.repo / ".dvcignore").write_text(_DVCIGNORE)
        elif remote is not None:
            _configure_remote(self.repo, remote)
        if self.git and _git(self.repo, ["status", "--porcelain", "--", ".dvc", ".dvcignore"]):
            _git(self.repo, ["add", ".dvc", ".dvcignore"])  # a clone must know the remote to pull from
            _git(self.repo, ["commit", "-q", "-m", "dvc init / remote"])
        return self

    def snapshot(self, message: str) -> str:
        """Version the features folder as it is now: ``<md5>.dir@<commit>`` (``<md5>.dir`` without git)."""
        _dvc(self.repo, ["add", "-q", "features"], self.env)
        if self.git:
            _git(self.repo, ["add", FEATURES_DVC, ".gitignore"])
            if _git(self.repo, ["status", "--porcelain", "--", FEATURES_DVC]):
                _git(self.repo, ["commit", "-q", "-m", message])
        if self.remote:
            _dvc(self.repo, ["push", "-q"], self.env)
        md5 = yaml.safe_load((self.repo / FEATURES_DVC).read_text())["outs"][0]["md5"]
        return f"{md5}@{_git(self.repo, ['rev-parse', 'HEAD'])}" if self.git else md5


def restore_features(origin: str | os.PathLike | DvcRemote, version: str, dest: str | os.PathLike,
                     env: Mapping[str, str] | None = None) -> Path:
    """Bring the features of dataset ``version`` back into ``dest``; the restored features folder.

    Args:
        origin: the lake's git repository (``version`` must be ``<md5>.dir@<commit>``: a clone at that
            commit pulls from the remote in its config), or a :class:`DvcRemote` (the ``.dir`` md5 alone
            is enough, no git history needed: what a cluster pod has; ``@<commit>`` is ignored).
        version: a dataset version as registered (the MLflow ``dataset_version`` tag).
        dest: an empty or absent folder.
        env: extra environment of the ``dvc`` processes (S3 credentials) for a git origin.

    Raises:
        UserError: the remote does not hold ``version``.
        DvcError: a git or dvc command failed, or the restored bytes do not hash to ``version``.
    """
    md5 = version.partition("@")[0]
    if not md5.endswith(".dir"):
        raise UserError(f"dataset version {version!r} is not a DVC folder hash ('<md5>.dir[@<commit>]')",
                        "pass the dataset_version tag of a registered model version")
    dest = Path(dest)
    if isinstance(origin, DvcRemote):
        _pull_from_remote(origin, md5, dest)
    else:
        _clone_and_pull(origin, version, dest, env)
    got = folder_hash(dest / "features")
    if got != md5:
        raise DvcError(f"the features restored into {dest} hash to {got}, not {md5} (dataset version {version}): "
                       f"the remote's copy is damaged; push the version again from the workspace that made it")
    return dest / "features"


def _clone_and_pull(origin: str | os.PathLike, version: str, dest: Path, env: Mapping[str, str] | None) -> None:
    md5, _, commit = version.partition("@")
    if not commit:
        raise UserError(f"dataset version {version!r} has no '@<commit>': it cannot be found in a git repository",
                        "restore it from its DVC remote: restore_features(DvcRemote(url, endpoint_url), ...)")
    res = subprocess.run(["git", "clone", "-q", str(origin), str(dest)], capture_output=True, text=True)
    if res.returncode != 0:
        raise DvcError(f"git clone {origin} failed: {res.stderr[-2000:]}")
    _git(dest, ["checkout", "-q", commit])
    _dvc(dest, ["pull", "-q", FEATURES_DVC], env)
    got = yaml.safe_load((dest / FEATURES_DVC).read_text())["outs"][0]["md5"]
    if got != md5:
        raise DvcError(f"commit {commit} records features {got}, not {md5}")


def _pull_from_remote(remote: DvcRemote, md5: str, dest: Path) -> None:
    """A ``dvc init --no-scm`` repository in ``dest`` with a ``features.dvc`` naming ``md5``, then ``dvc pull``."""
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest} is not empty", "restore into a new folder")
    _write_config(dest, remote, scm=False)  # all a repository needs to pull (no `dvc init`: a process less)
    (dest / FEATURES_DVC).write_text(yaml.safe_dump({"outs": [{"md5": md5, "hash": "md5", "path": "features"}]}))
    try:
        _dvc(dest, ["pull", FEATURES_DVC], remote.env)
    except DvcError as exc:
        raise UserError(f"dataset version {md5} could not be pulled from the DVC remote {remote.url}: "
                        f"{str(exc).strip().splitlines()[-1][:300]}",
                        "check that this is the remote the version was pushed to (dvc.remote / HFCAST_DVC_REMOTE, "
                        "its endpoint and credentials) and that the version comes from a run's dataset_version tag"
                        ) from None


# --- an object-store lake: a local mirror of its features table, versioned like a local lake ----------------

MIRROR_STATE = ".mirror.json"  # beside the mirrored folder: what each file was when fetched (size, ETag)


def _stamp(info: Mapping[str, Any]) -> str:
    """What tells an object-store file changed: its size and ETag (or modification time)."""
    tag = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or ""
    return f"{info.get('size')}:{str(tag).strip(chr(34))}"


def mirror_table(url: str, dest: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> dict[str, int]:
    """Make the local folder ``dest`` hold exactly the files under ``url``: fetch new or changed ones,
    delete those gone. Hidden files (temp files of interrupted writes) are skipped.

    Returns:
        ``{"files", "fetched", "removed"}`` counts.
    """
    dest = Path(dest)
    fs, root = storage.filesystem(url, storage_options)
    fs.invalidate_cache(root)
    root = root.rstrip("/")
    want = {p[len(root):].lstrip("/"): _stamp(info) for p, info in fs.find(root, detail=True).items()}
    want = {rel: s for rel, s in want.items() if rel and not any(part.startswith(".") for part in rel.split("/"))}
    state_file = dest.parent / f".{dest.name}{MIRROR_STATE}"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    fetched = 0
    for rel, stamp in sorted(want.items()):
        if state.get(rel) != stamp or not (dest / rel).is_file():
            storage.write_bytes(str(dest / rel), fs.cat_file(f"{root}/{rel}"))
            fetched += 1
    removed = 0
    for p in sorted(dest.rglob("*"), reverse=True) if dest.exists() else []:
        rel = p.relative_to(dest).as_posix()
        if p.is_file() and rel not in want:
            p.unlink()
            removed += 1
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    storage.write_text(str(state_file), json.dumps(want, indent=0, sort_keys=True))
    return {"files": len(want), "fetched": fetched, "removed": removed}


def workspace(settings: Settings, environ: Mapping[str, str] | None = None) -> Path:
    """The local DVC workspace of an object-store lake: ``HFCAST_DVC_WORKSPACE``, params.yaml
    ``dvc.workspace``, else ``<home>/dvc/<hash of the lake URL>`` (on a cluster: a volume that outlives
    the pod, so each run fetches only the new days)."""
    environ = os.environ if environ is None else environ
    given = environ.get("HFCAST_DVC_WORKSPACE") or settings.param("dvc.workspace")
    if given:
        return Path(given).resolve()
    return Path(settings.home) / "dvc" / hashlib.sha1(settings.lake_url.encode()).hexdigest()[:12]


def _locked(folder: Path) -> Any:
    """One versioning at a time per workspace (two pipeline runs may share a volume)."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder.parent / f".{folder.name}.lock"))


def features_version(settings: Settings, versions: FeatureVersions | None = None, message: str = "features") -> str:
    """THE dataset version of the settings' features table now; every path (prepare, replay, demo) asks here.

    - ``versions`` given: its snapshot (``dvc add`` + commit + push in the local lake).
    - local lake: with a DVC remote configured (:meth:`DvcRemote.from_settings`), the lake folder becomes
      a git + DVC repository and each call is a pushed snapshot; without, DVC's hash of the folder.
    - object-store lake: the features table is mirrored into :func:`workspace`, ``dvc add``-ed there and
      pushed to the remote; the version ``<md5>.dir`` restores from the remote alone. Without a remote
      the version is still the hash of those bytes, kept in the workspace's cache only (said in the log).
    """
    if versions is not None:
        return versions.snapshot(message)
    table = storage.Lake.from_settings(settings).table("features")
    remote = DvcRemote.from_settings(settings)
    if not storage.is_remote(table):
        if remote is None:
            return folder_hash(storage.local_path(table))
        return FeatureVersions.to(storage.local_path(settings.lake_url), remote).init().snapshot(message)
    ws = workspace(settings)
    with _locked(ws):
        counts = mirror_table(table, ws / "features", settings.storage_options)
        version = FeatureVersions.to(ws, remote, git=False).init().snapshot(message)
    log.info("features of %s mirrored in %s (%s): dataset version %s", settings.lake_url, ws, counts, version)
    if remote is None:
        log.warning("dataset version %s is NOT pushed (no DVC remote): set dvc.remote in params.yaml or "
                    "HFCAST_DVC_REMOTE so that other machines can restore it", version)
    return version
