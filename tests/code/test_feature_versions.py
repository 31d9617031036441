"""Per-day DVC versions of the features folder: add + commit + push, restored in a fresh clone."""

from __future__ import annotations

from hfcast.versioning import FeatureVersions, restore_features


def test_each_snapshot_restores_its_own_bytes_from_the_remote(tmp_path):
    lake = tmp_path / "lake"
    part = lake / "features" / "date=2024-01-02"
    part.mkdir(parents=True)
    (part / "part-0.parquet").write_bytes(b"day one")
    fv = FeatureVersions(lake, remote=str(tmp_path / "remote")).init()
    v1 = fv.snapshot("features up to 2024-01-02")
    (lake / "features" / "date=2024-01-03").mkdir()
    (lake / "features" / "date=2024-01-03" / "part-0.parquet").write_bytes(b"day two")
    v2 = fv.snapshot("features up to 2024-01-03")
    assert v1 != v2 and v1.endswith(tuple("0123456789abcdef")) and ".dir@" in v1
    old = restore_features(lake, v1, tmp_path / "clone1")
    assert (old / "date=2024-01-02" / "part-0.parquet").read_bytes() == b"day one"
    assert not (old / "date=2024-01-03").exists()  # the first version does not hold the later day
    new = restore_features(lake, v2, tmp_path / "clone2")
    assert (new / "date=2024-01-03" / "part-0.parquet").read_bytes() == b"day two"
