"""Batch inference against a real SeaweedFS S3 server: dense, sparse, resume after SIGKILL, failures."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hfcast import storage
from hfcast.data.simulator import SimConfig, write_synth
from hfcast.features.engine import read_feature_set, run_featurize
from hfcast.features.windows import build_windows
from hfcast.contracts import INFO_COLUMNS, PRED_COLUMNS
from hfcast.forecaster import Forecaster
from hfcast.predict import SPARSE_STRIDE, parse_dates, predict_frame, run_predict
from hfcast.storage import Lake

pytestmark = pytest.mark.integration

N_SYM, N_DAYS = 4, 3


@pytest.fixture(scope="module")
def local_lake(tmp_path_factory) -> Lake:
    """A small simulated + featurized lake (file://), shared by the module's tests."""
    root = tmp_path_factory.mktemp("lake")
    lake = Lake(root.as_uri())
    write_synth(SimConfig(n_symbols=N_SYM, n_days=N_DAYS, seed=3), lake, progress=False)
    run_featurize(lake, progress=False)
    return lake


@pytest.fixture(scope="module")
def bundle(local_lake, tmp_path_factory) -> str:
    """A small real forecaster: an untrained TCN floored on har_tod (fitted on the first dates),
    calibrated, saved as a bundle: batch prediction runs its graph AND its post-step."""
    from serving_fixtures import tiny_composite

    names = read_feature_set(local_lake)["features"]
    df = pd.concat([local_lake.read("features", d) for d in local_lake.dates("features")[:2]], ignore_index=True)
    fc = tiny_composite("floor", ("tcn",), frame=df.sort_values(["symbol", "ts"]).reset_index(drop=True), names=names)
    fc.meta.update(model_name="hfcast", model_version="7")
    path = tmp_path_factory.mktemp("bundle")
    fc.save(str(path))
    return str(path)


def _copy_lake_to(src: Lake, dst: Lake) -> None:
    for d in src.dates("features"):
        dst.write("features", d, src.read("features", d))
    storage.write_text(storage.join(dst.table("features"), "_feature_set.json"),
                       storage.read_text(storage.join(src.table("features"), "_feature_set.json")),
                       dst.storage_options)


@pytest.fixture
def s3_lake(local_lake, s3_settings) -> Lake:
    lake = Lake.from_settings(s3_settings)
    _copy_lake_to(local_lake, lake)
    return lake


def _read_csv(lake: Lake, url: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(storage.read_bytes(url, lake.storage_options)))


def test_parse_dates_range_and_list():
    avail = ["2024-01-02", "2024-01-03", "2024-01-05"]
    assert parse_dates("2024-01-02..2024-01-04", avail) == ["2024-01-02", "2024-01-03"]
    assert parse_dates("2024-01-05,2024-01-02") == ["2024-01-02", "2024-01-05"]
    with pytest.raises(ValueError, match="backwards"):
        parse_dates("2024-01-05..2024-01-02")


def test_dense_and_sparse_csvs_on_s3(s3_settings, s3_lake, bundle):
    dates = s3_lake.dates("features")
    dense = run_predict(s3_settings, f"{dates[0]}..{dates[-1]}", bundle_dir=bundle, mode="dense", progress=False)
    sparse = run_predict(s3_settings, dates, bundle_dir=bundle, mode="sparse", progress=False,
                         out=f"{s3_settings.lake_url}/sparse")
    assert dense.as_dict()["done"] == len(dates) and not dense.failed and not sparse.failed
    fc = Forecaster.load(bundle)
    out_sparse = Lake(f"{s3_settings.lake_url}/sparse", s3_lake.storage_options)
    for d in dates:
        dcsv = _read_csv(s3_lake, s3_lake.predictions("hfcast", "7", d))
        scsv = _read_csv(s3_lake, out_sparse.predictions("hfcast", "7", d))
        feats = s3_lake.read("features", d)
        # every symbol-minute row, exactly once
        assert len(dcsv) == len(feats) == N_SYM * 390
        assert not dcsv.duplicated(["symbol", "ts"]).any()
        assert list(dcsv.columns) == ["symbol", "ts", *PRED_COLUMNS, *INFO_COLUMNS, "model_name", "model_version",
                                      "mode", "filled"]
        # predictions wherever a full 30-minute window exists, nowhere else
        wa = build_windows(feats, fc.feature_names, label_cols=None)
        has = np.zeros(len(feats), bool)
        has[wa.ends] = True
        assert (dcsv["ret_60m_pred"].notna().to_numpy() == has).all()
        assert (dcsv["model_version"].astype(str) == "7").all() and (dcsv["mode"] == "dense").all()
        # the CSV equals calling the model directly on the same windows
        direct = fc.predict(wa.windows(slice(None)))
        for c in PRED_COLUMNS:
            np.testing.assert_allclose(dcsv[c].to_numpy()[wa.ends], direct[c].to_numpy(), rtol=2e-4, atol=1e-7)
        # the informativeness flags: this version's, on every forecast row (sparse: filled rows too)
        info = fc.confidence_info()
        for c, key in zip(INFO_COLUMNS, ("ret_conf_informative", "rv_conf_informative")):
            for csv in (dcsv, scsv):
                got = csv[c].to_numpy()
                assert (np.isnan(got) == csv["ret_60m_pred"].isna().to_numpy()).all()
                assert set(got[~np.isnan(got)]) == {float(info[key])}
        # sparse == dense on the sampled minutes, forward-filled in between
        sampled = build_windows(feats, fc.feature_names, stride=SPARSE_STRIDE, label_cols=None).ends
        np.testing.assert_allclose(scsv["ret_60m_pred"].to_numpy()[sampled], dcsv["ret_60m_pred"].to_numpy()[sampled],
                                   rtol=1e-6)
        assert not scsv["filled"].to_numpy()[sampled].any()
        filled = scsv["filled"].to_numpy()
        assert filled.sum() == scsv["ret_60m_pred"].notna().sum() - len(sampled)
        for sym, g in scsv.groupby("symbol"):
            v = g["rv_10m_pred"].to_numpy()
            first = np.flatnonzero(~g["filled"].to_numpy() & ~np.isnan(v))
            # each filled row carries the value of the last sampled row before it
            for a, b in zip(first, [*first[1:], len(v)]):
                assert np.all(v[a:b] == v[a])


def test_rerun_skips_and_force_redoes(settings, local_lake, bundle):
    s = settings.with_(lake_url=local_lake.url)
    out = str(Path(settings.home) / "out")
    first = run_predict(s, local_lake.dates("features"), bundle_dir=bundle, out=out, progress=False)
    again = run_predict(s, local_lake.dates("features"), bundle_dir=bundle, out=out, progress=False)
    forced = run_predict(s, local_lake.dates("features"), bundle_dir=bundle, out=out, force=True, progress=False)
    assert first.as_dict()["done"] == N_DAYS
    assert again.as_dict()["skipped"] == N_DAYS and again.rows == 0
    assert forced.as_dict()["done"] == N_DAYS
    # a tampered CSV (checksum mismatch) is redone
    url = Lake(out).predictions("hfcast", "7", local_lake.dates("features")[0])
    storage.write_bytes(url, storage.read_bytes(url)[:1000])
    redo = run_predict(s, local_lake.dates("features"), bundle_dir=bundle, out=out, progress=False)
    assert redo.as_dict()["done"] == 1 and redo.as_dict()["skipped"] == N_DAYS - 1


def test_corrupt_date_fails_alone(settings, local_lake, bundle, tmp_path):
    lake = Lake((tmp_path / "lake").as_uri())
    _copy_lake_to(local_lake, lake)
    bad = lake.dates("features")[1]
    storage.write_bytes(lake.partition("features", bad), b"PAR1 this is not parquet")
    s = settings.with_(lake_url=lake.url)
    summary = run_predict(s, lake.dates("features"), bundle_dir=bundle, workers=2, progress=False)
    d = summary.as_dict()
    assert d["failed"] == 1 and d["done"] == N_DAYS - 1
    assert bad in d["failed_dates"] and d["failed_dates"][bad]
    assert not storage.exists(lake.predictions("hfcast", "7", bad))
    # a date with no features at all is refused up front, naming the dates that have features
    from hfcast.errors import UserError

    with pytest.raises(UserError, match=r"no features for 2030-01-02 .*dates with features"):
        run_predict(s, "2030-01-02", bundle_dir=bundle, progress=False)


@pytest.mark.slow
def test_cli_exit_code_and_sigkill_resume(local_lake, bundle, tmp_path, s3, s3_bucket):
    """SIGKILL mid-batch, rerun: outputs byte-identical to an uninterrupted run, nothing partial."""
    lake = Lake(f"{s3_bucket}/lake", s3.storage_options)
    # more dates so the kill lands mid-way: reuse the same 3 dates under 6 names
    src_dates = local_lake.dates("features")
    dates = []
    for i, d in enumerate(src_dates * 2):
        new = (pd.Timestamp(d) + pd.Timedelta(days=7 * (i // len(src_dates)))).date().isoformat()
        df = local_lake.read("features", d)
        df["ts"] = df["ts"] + pd.Timedelta(days=7 * (i // len(src_dates)))
        lake.write("features", new, df)
        dates.append(new)
    storage.write_text(storage.join(lake.table("features"), "_feature_set.json"),
                       storage.read_text(storage.join(local_lake.table("features"), "_feature_set.json")),
                       lake.storage_options)
    env = {**os.environ, **s3.env(), "HFCAST_HOME": str(tmp_path / "home"), "HFCAST_LAKE": lake.url}
    cmd = [sys.executable, "-m", "hfcast.cli", "predict", "--bundle", bundle, "--dates", ",".join(dates),
           "--runner", "torch"]
    ref = subprocess.run([*cmd, "--out", f"{s3_bucket}/ref"], env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stdout + ref.stderr

    out = Lake(f"{s3_bucket}/killed", s3.storage_options)
    proc = subprocess.Popen([*cmd, "--out", out.url], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    prefix = storage.join(out.url, "predictions", "hfcast", "7")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # kill as soon as the first date is complete
        if any(n.endswith(".manifest.json") for n in storage.listdir(prefix, s3.storage_options)):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    names = storage.listdir(prefix, s3.storage_options)
    assert 0 < sum(n.endswith(".csv") for n in names) < len(dates), names  # killed mid-way
    rerun = subprocess.run([*cmd, "--out", out.url], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    ref_lake = Lake(f"{s3_bucket}/ref", s3.storage_options)
    for d in dates:
        a = storage.read_bytes(ref_lake.predictions("hfcast", "7", d), s3.storage_options)
        b = storage.read_bytes(out.predictions("hfcast", "7", d), s3.storage_options)
        assert a == b, d
        assert len(pd.read_csv(io.BytesIO(b))) == N_SYM * 390
    assert sorted(storage.listdir(prefix, s3.storage_options)) == sorted(
        [f"date={d}.csv" for d in dates] + [f"date={d}.manifest.json" for d in dates])

    # a failing date makes the command exit non-zero and name the date
    storage.write_bytes(lake.partition("features", dates[0]), b"garbage", lake.storage_options)
    bad = subprocess.run([*cmd, "--out", f"{s3_bucket}/bad"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and dates[0] in bad.stdout + bad.stderr


def test_predict_frame_rejects_unknown_mode(local_lake, bundle):
    fc = Forecaster.load(bundle)
    with pytest.raises(ValueError, match="mode"):
        predict_frame(fc, local_lake.read("features", local_lake.dates("features")[0]), mode="weekly")


@pytest.mark.parametrize("workers", [1, 2])
def test_overlapped_dates_keep_the_model_at_workers_and_the_bytes(settings, local_lake, bundle, monkeypatch, workers):
    """One date more than ``workers`` is in flight (read / write overlap the model), but never more
    than ``workers`` dates are in the model at once, and the CSVs equal a strictly one-by-one run."""
    import threading

    import hfcast.runners as R
    from hfcast import predict as P

    s = settings.with_(lake_url=local_lake.url)
    dates = local_lake.dates("features")
    serial_out = Path(settings.home) / f"serial{workers}"
    for d in dates:  # the reference: one date at a time, nothing overlapping
        run_predict(s, [d], bundle_dir=bundle, out=serial_out.as_uri(), runner="torch", progress=False)

    inside, most, in_flight, most_flight = [0], [0], [0], [0]
    lock = threading.Lock()
    real_run, real_date = R.run_windows, P.predict_date

    def counting_run(*args, **kwargs):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)  # long enough for another date to try to enter
        try:
            return real_run(*args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1

    def counting_date(job, date):
        with lock:
            in_flight[0] += 1
            most_flight[0] = max(most_flight[0], in_flight[0])
        try:
            return real_date(job, date)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(R, "run_windows", counting_run)
    monkeypatch.setattr(P, "predict_date", counting_date)
    out = Path(settings.home) / f"overlap{workers}"
    summary = run_predict(s, dates, bundle_dir=bundle, out=out.as_uri(), runner="torch", workers=workers,
                          progress=False)
    assert summary.as_dict()["done"] == N_DAYS
    assert most[0] == workers  # the slots bound the model ...
    assert most_flight[0] == min(workers + 1, N_DAYS)  # ... while one date more is read or written
    for d in dates:
        a = storage.read_bytes(Lake(out.as_uri()).predictions("hfcast", "7", d))
        b = storage.read_bytes(Lake(serial_out.as_uri()).predictions("hfcast", "7", d))
        assert a == b, d
