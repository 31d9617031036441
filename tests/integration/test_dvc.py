"""The DVC pipeline of the repository, run for real in a temp git repo with tiny params.

Shows: `dvc repro` runs synth -> validate -> featurize; a second repro does nothing; a changed
featurize parameter reruns only featurize; push/pull through the shipped default local remote and
an S3 remote on the SeaweedFS fixture; the dataset version is the features hash in dvc.lock.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hfcast import versioning
from hfcast.storage import Lake

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = {
    "synth": {"n_symbols": 2, "n_days": 3, "start_date": "2024-01-02", "seed": 3, "regime_shift_day": None},
    "validate": {"jump_limit": 0.10},
    "featurize": {"dates": None},
    "train": {"epochs": 1},  # a section no stage depends on
}


def _run(repo: Path, *args: str, env: dict | None = None) -> str:
    full_env = {**os.environ, **(env or {}), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    full_env.pop("HFCAST_LAKE", None)
    res = subprocess.run(list(args), cwd=repo, env=full_env, capture_output=True, text=True)
    assert res.returncode == 0, f"{args} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def _dvc(repo: Path, *args: str, env: dict | None = None) -> str:
    return _run(repo, str(BIN / "dvc"), *args, env=env)


def _ran(out: str) -> set[str]:
    return {s for s in ("synth", "validate", "featurize") if f"Running stage '{s}'" in out}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    _run(r, "git", "init", "-q")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, r / name)
    (r / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    _dvc(r, "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", r / ".dvc" / "config")  # the shipped remotes
    return r


def _set_param(repo: Path, dotted: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    section, key = dotted.split(".")
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_repro_skip_rerun_and_remotes(repo: Path, s3, s3_bucket):
    features = repo / "data" / "lake" / "features"
    # 1. first repro runs every stage; the version is the features hash in dvc.lock
    version = versioning.prepare(repo)
    lake = Lake((repo / "data" / "lake").as_uri())
    assert lake.dates("features") == ["2024-01-02", "2024-01-03", "2024-01-04"]
    assert lake.dates("validated") == lake.dates("raw") == lake.dates("quarantine") == lake.dates("features")
    assert (features / "_feature_set.json").exists()
    assert version.endswith(".dir") and version == versioning.dataset_version(repo)
    assert version == versioning.folder_hash(features)  # our folder hash follows DVC's recipe

    # 2. nothing changed: nothing runs, files untouched
    mtime = (features / "date=2024-01-02" / "part-0.parquet").stat().st_mtime_ns
    out = _dvc(repo, "repro")
    assert _ran(out) == set(), out
    assert "up to date" in _dvc(repo, "status")
    _set_param(repo, "train.epochs", 2)  # a section no stage declares
    assert _ran(_dvc(repo, "repro")) == set()
    assert (features / "date=2024-01-02" / "part-0.parquet").stat().st_mtime_ns == mtime

    # 3. a featurize parameter changed: only featurize reruns, and the version moves
    _set_param(repo, "featurize.dates", ["2024-01-02", "2024-01-03"])
    out = _dvc(repo, "repro")
    assert _ran(out) == {"featurize"}, out
    assert lake.dates("features") == ["2024-01-02", "2024-01-03"]
    v2 = versioning.dataset_version(repo)
    assert v2 != version and v2 == versioning.folder_hash(features)

    # 4. default (local) remote from the shipped .dvc/config: push, wipe, pull
    _dvc(repo, "push")
    assert any((repo / ".hfcast" / "dvc-remote").rglob("*"))
    shutil.rmtree(repo / "data" / "lake")
    shutil.rmtree(repo / ".dvc" / "cache")
    _dvc(repo, "pull")
    assert versioning.folder_hash(features) == v2

    # 5. S3 remote on SeaweedFS (endpointurl; credentials from the environment, never in config)
    bucket = s3_bucket[len("s3://"):]
    _dvc(repo, "remote", "modify", "s3", "url", f"{s3_bucket}/dvc")
    _dvc(repo, "remote", "modify", "--local", "s3", "endpointurl", s3.endpoint)
    assert s3.secret_key not in (repo / ".dvc" / "config").read_text()
    _dvc(repo, "push", "-r", "s3", env=s3.env())
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.startswith("dvc/files/md5/") for k in keys) and len(keys) >= 5
    shutil.rmtree(repo / "data" / "lake")
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / ".hfcast" / "dvc-remote")  # the local remote cannot help any more
    _dvc(repo, "pull", "-r", "s3", env=s3.env())
    assert versioning.folder_hash(features) == v2
    assert lake.dates("raw") == ["2024-01-02", "2024-01-03", "2024-01-04"]
    assert _ran(_dvc(repo, "repro")) == set()  # pulled data satisfies the lock


def test_dataset_version_reads_the_lock_and_falls_back_to_hashing(tmp_path: Path):
    folder = tmp_path / "data" / "lake" / "features"
    (folder / "date=2024-01-02").mkdir(parents=True)
    (folder / "date=2024-01-02" / "part-0.parquet").write_bytes(b"abc")
    (folder / "_feature_set.json").write_text('{"features": ["a"]}')
    assert versioning.dataset_version(tmp_path / "nowhere") is None
    fallback = versioning.dataset_version(tmp_path)
    assert fallback == versioning.folder_hash(folder) and fallback.endswith(".dir")
    (folder / "date=2024-01-02" / ".part-0.parquet.tmp-1234").write_bytes(b"partial")  # ignored
    assert versioning.folder_hash(folder) == fallback
    (folder / "_feature_set.json").write_text('{"features": ["b"]}')
    assert versioning.folder_hash(folder) != fallback  # content moves the hash
    lock = {"schema": "2.0", "stages": {"featurize": {"cmd": "x", "outs": [
        {"path": "data/lake/features", "hash": "md5", "md5": "0123abcd.dir", "size": 6, "nfiles": 2}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert versioning.dataset_version(tmp_path) == "0123abcd.dir"


def test_prepare_reports_dvc_failures(tmp_path: Path):
    with pytest.raises(versioning.DvcError, match="dvc repro"):
        versioning.prepare(tmp_path)  # not a DVC repository


def _s3_files(url: str, options: dict) -> dict[str, bytes]:
    """Every file under ``url`` (relative path -> bytes), read straight from the object store."""
    from hfcast import storage

    fs, root = storage.filesystem(url, options)
    fs.invalidate_cache(root)
    return {p[len(root):].lstrip("/"): fs.cat_file(p) for p in fs.find(root)}


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_object_store_lake_prep_is_versioned_and_each_version_restores_from_the_remote_alone(
        tmp_path: Path, s3_settings, s3_bucket, caplog):
    """The cluster's path: an S3 lake -> prepare_data -> a pushed version; restored from the S3 DVC remote
    alone (no lake, no git, no workspace) into a fresh folder, byte-identical to the lake; a later day
    makes a new version and the old one still restores the old bytes."""
    from hfcast.data.schema import trading_days
    from hfcast.prepare import SynthRequest, prepare_data

    days = trading_days("2024-01-02", 4)
    params = {"synth": {**TINY["synth"], "n_days": 4}, "dvc": {"remote": f"{s3_bucket}/dvc"}}
    first = s3_settings.with_(params={**params, "featurize": {"dates": days[:3]}})
    features = f"{first.lake_url}/features"
    p1 = prepare_data(first, synth=SynthRequest(n_symbols=2, n_days=4, seed=3, shift_day=-2))
    lake1 = _s3_files(features, first.storage_options)
    assert p1.dates == days[:3] and p1.dataset_version.endswith(".dir")
    remote = versioning.DvcRemote.from_settings(first)
    assert remote.endpoint_url == first.s3_endpoint and "secret" not in repr(remote).lower()
    got1 = versioning.restore_features(remote, p1.dataset_version, tmp_path / "restore1")
    assert _local_files(got1) == lake1 and len([f for f in lake1 if f.endswith(".parquet")]) == 3

    # one more day arrives: a new version; the old one still brings back exactly the old three days
    p2 = prepare_data(s3_settings.with_(params=params))
    assert p2.dates == days and p2.dataset_version != p1.dataset_version
    assert _local_files(versioning.restore_features(remote, p2.dataset_version, tmp_path / "restore2")) == \
        _s3_files(features, first.storage_options)
    again = versioning.restore_features(remote, p1.dataset_version, tmp_path / "restore1-again")
    assert _local_files(again) == lake1 and not (again / f"date={days[3]}").exists()

    # no remote configured: still the hash of the same bytes (same workspace), and the log says it is not pushed
    with caplog.at_level(logging.WARNING, logger="hfcast.versioning"):
        assert versioning.features_version(s3_settings.with_(params={})) == p2.dataset_version
    assert "NOT pushed" in caplog.text
