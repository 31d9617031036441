"""Per-day DVC versions of the features folder: add + commit + push, restored in a fresh clone or from
the remote alone (no git history: what a cluster pod has)."""

from __future__ import annotations

import pytest

from hfcast.errors import UserError
from hfcast.versioning import (DvcRemote, FeatureVersions, features_version, folder_hash, mirror_table,
                               restore_features)


def _lake_with_one_day(tmp_path):
    lake = tmp_path / "lake"
    part = lake / "features" / "date=2024-01-02"
    part.mkdir(parents=True)
    (part / "part-0.parquet").write_bytes(b"day one")
    (lake / "features" / "_feature_set.json").write_text('{"features": ["a"]}')
    return lake


def _add_day_two(lake):
    (lake / "features" / "date=2024-01-03").mkdir()
    (lake / "features" / "date=2024-01-03" / "part-0.parquet").write_bytes(b"day two")


def test_each_snapshot_restores_its_own_bytes_from_the_remote(tmp_path):
    lake = _lake_with_one_day(tmp_path)
    fv = FeatureVersions(lake, remote=str(tmp_path / "remote")).init()
    v1 = fv.snapshot("features up to 2024-01-02")
    _add_day_two(lake)
    v2 = fv.snapshot("features up to 2024-01-03")
    assert v1 != v2 and v1.endswith(tuple("0123456789abcdef")) and ".dir@" in v1
    old = restore_features(lake, v1, tmp_path / "clone1")
    assert (old / "date=2024-01-02" / "part-0.parquet").read_bytes() == b"day one"
    assert not (old / "date=2024-01-03").exists()  # the first version does not hold the later day
    new = restore_features(lake, v2, tmp_path / "clone2")
    assert (new / "date=2024-01-03" / "part-0.parquet").read_bytes() == b"day two"


def test_a_snapshot_restores_from_the_remote_alone_without_git(tmp_path):
    lake = _lake_with_one_day(tmp_path)
    remote = DvcRemote(str(tmp_path / "remote"))
    v1 = FeatureVersions.to(lake, remote).init().snapshot("day one")
    _add_day_two(lake)
    FeatureVersions.to(lake, remote).init().snapshot("day two")
    got = restore_features(remote, v1, tmp_path / "restored")  # no git origin: the .dir md5 is enough
    files = sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file())
    assert files == ["_feature_set.json", "date=2024-01-02/part-0.parquet"]  # day two is not in v1
    assert (got / "date=2024-01-02" / "part-0.parquet").read_bytes() == b"day one"
    assert folder_hash(got) == v1.split("@")[0]
    wrong = "0123456789abcdef0123456789abcdef.dir"
    with pytest.raises(UserError, match=wrong) as err:
        restore_features(remote, wrong, tmp_path / "nothing")
    assert "dvc.remote" in err.value.fix and str(tmp_path / "remote") in err.value.problem
    with pytest.raises(UserError, match="not a DVC folder hash"):
        restore_features(remote, "unversioned", tmp_path / "nothing2")


def test_mirror_fetches_new_and_changed_files_and_drops_removed_ones(tmp_path):
    src = _lake_with_one_day(tmp_path) / "features"
    dest = tmp_path / "ws" / "features"
    assert mirror_table(src.as_uri(), dest) == {"files": 2, "fetched": 2, "removed": 0}
    assert mirror_table(src.as_uri(), dest)["fetched"] == 0  # unchanged: nothing fetched again
    _add_day_two(src.parent)
    (src / "date=2024-01-02" / "part-0.parquet").write_bytes(b"day one, featurized again")
    (src / "date=2024-01-02" / ".part-0.parquet.tmp-123").write_bytes(b"an interrupted write")
    (src / "_feature_set.json").unlink()
    assert mirror_table(src.as_uri(), dest) == {"files": 2, "fetched": 2, "removed": 1}
    assert folder_hash(dest) == folder_hash(src)
    assert (dest / "date=2024-01-02" / "part-0.parquet").read_bytes() == b"day one, featurized again"


def test_a_local_lake_is_pushed_only_when_the_settings_name_a_remote(tmp_path, settings):
    lake = _lake_with_one_day(tmp_path)
    local = settings.with_(lake_url=lake.as_uri())
    assert features_version(local) == folder_hash(lake / "features")  # no remote: the hash, no repository
    assert not (lake / ".dvc").exists()
    pushed = local.with_(params={"dvc": {"remote": str(tmp_path / "remote")}})
    version = features_version(pushed, message="day one")
    assert version.startswith(folder_hash(lake / "features") + "@")
    got = restore_features(DvcRemote.from_settings(pushed), version, tmp_path / "restored")
    assert (got / "date=2024-01-02" / "part-0.parquet").read_bytes() == b"day one"
