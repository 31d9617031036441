"""Windows are views of the feature matrix, never cross a symbol/day/gap, and cost ~1x its memory."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch

from hfcast.data.schema import minute_of_session
from hfcast.features.windows import (
    LOOKBACK,
    Scaler,
    WindowDataset,
    build_windows,
    fit_scaler,
    make_loader,
    synthetic_feature_frame,
)

FEATS = [f"f{j}" for j in range(6)]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    df = synthetic_feature_frame(n_symbols=3, n_days=2, n_features=6, seed=1)
    # punch a one-minute gap into S001's first day and cut S002's second day short
    s1 = df.index[(df.symbol == "S001")][100]
    s2 = df.index[(df.symbol == "S002")][-1]
    return df.drop(index=[s1, *range(s2 - 300, s2 + 1)]).reset_index(drop=True)


def _reference_ends(df: pd.DataFrame, stride: int = 1) -> np.ndarray:
    """Brute force: row r ends a window iff rows r-29..r are one symbol, one day, 1-minute steps."""
    ends = []
    ts = pd.DatetimeIndex(df.ts)
    days = ts.tz_convert("America/New_York").date
    mos = minute_of_session(ts)
    for r in range(LOOKBACK - 1, len(df)):
        a = r - LOOKBACK + 1
        same = df.symbol.iloc[a] == df.symbol.iloc[r] and days[a] == days[r]
        steps = np.diff(ts[a:r + 1].asi8)
        if same and (df.symbol.iloc[a:r + 1] == df.symbol.iloc[r]).all() and (steps == 60_000_000).all():
            if (mos[r] - (LOOKBACK - 1)) % stride == 0:
                ends.append(r)
    return np.asarray(ends)


def test_window_i_is_the_30_rows_ending_at_its_end_and_a_view(frame):
    wa = build_windows(frame, FEATS)
    assert wa.X.dtype == np.float32 and wa.X.flags.c_contiguous and wa.X.shape == (len(frame), 6)
    for i in [0, 1, 57, len(wa) // 2, len(wa) - 1]:
        e = wa.ends[i]
        w = wa.window(i)
        np.testing.assert_array_equal(w, wa.X[e - LOOKBACK + 1:e + 1])
        np.testing.assert_array_equal(w, frame[FEATS].to_numpy(np.float32)[e - 29:e + 1])
        assert np.shares_memory(w, wa.X)
    idx = np.array([3, 0, 99])
    np.testing.assert_array_equal(wa.windows(idx), np.stack([wa.window(i) for i in idx]))


@pytest.mark.parametrize("stride", [1, 10])
def test_windows_never_cross_symbol_day_or_gap(frame, stride):
    wa = build_windows(frame, FEATS, stride=stride)
    np.testing.assert_array_equal(wa.ends, _reference_ends(frame, stride))
    for e in wa.ends:
        rows = wa.keys.iloc[e - 29:e + 1]
        assert rows.symbol.nunique() == 1
        assert (np.diff(pd.DatetimeIndex(rows.ts).asi8) == 60_000_000).all()


def test_dense_and_sparse_counts(frame):
    dense, sparse = build_windows(frame, FEATS), build_windows(frame, FEATS, stride=10)
    full_day = 390 - 29
    # 3 symbols x 2 days, minus: the gap (S001 day 1) and the shortened day (S002 day 2: 89 rows)
    gap_loss = 29 + 1  # windows that would contain the dropped minute 100, plus its own
    assert len(dense) == 6 * full_day - gap_loss - (full_day - (89 - 29))
    assert set(sparse.ends) <= set(dense.ends)
    mos = minute_of_session(pd.DatetimeIndex(sparse.keys.ts.iloc[sparse.ends]))
    assert ((mos - 29) % 10 == 0).all() and mos.min() == 29


def test_unsorted_input_is_sorted(frame):
    shuffled = frame.sample(frac=1.0, random_state=0)
    a, b = build_windows(frame, FEATS), build_windows(shuffled, FEATS)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.ends, b.ends)


def test_subset_dates_and_rows_covered(frame):
    wa = build_windows(frame, FEATS)
    day2 = wa.subset_dates(["2024-01-03"])
    assert len(day2) > 0 and set(day2.end_dates()) == {"2024-01-03"}
    assert day2.X is wa.X  # rows shared, not copied
    covered = day2.rows_covered()
    days = pd.DatetimeIndex(wa.keys.ts).tz_convert("America/New_York").strftime("%Y-%m-%d")
    assert set(days[covered]) == {"2024-01-03"}


def test_missing_feature_is_named(frame):
    with pytest.raises(ValueError, match="nope"):
        build_windows(frame, [*FEATS, "nope"])


def test_scaler_fits_training_rows_only_and_is_nan_aware(frame, tmp_path):
    wa = build_windows(frame, FEATS)
    train = wa.subset_dates(["2024-01-02"])
    sc = fit_scaler(train)
    rows = train.rows_covered()
    ref = wa.X[rows].astype(np.float64)
    np.testing.assert_allclose(sc.mean, ref.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sc.std, ref.std(0, ddof=1), rtol=1e-6)
    # poisoning the other span's rows (and a NaN inside the span) must not move the fit much
    poisoned = frame.copy()
    days = pd.DatetimeIndex(poisoned.ts).tz_convert("America/New_York").strftime("%Y-%m-%d")
    poisoned.loc[days == "2024-01-03", "f2"] = 1e6
    poisoned.loc[poisoned.index[5], "f3"] = np.nan
    sc2 = fit_scaler(build_windows(poisoned, FEATS).subset_dates(["2024-01-02"]))
    assert abs(sc2.mean[2] - sc.mean[2]) < 1e-9 and np.isfinite(sc2.mean[3])
    lab = train.labels()
    assert sc.ret_scale == pytest.approx(np.nanstd(lab[:, 0].astype(np.float64)), rel=1e-5)
    lrv = np.log(lab[:, 1][lab[:, 1] > 0].astype(np.float64))
    assert sc.lrv_mean == pytest.approx(lrv.mean(), rel=1e-5)
    assert sc.lrv_std == pytest.approx(lrv.std(), rel=1e-5)


def test_scaler_transform_clip_nan_and_json_roundtrip(tmp_path):
    X = np.array([[0.0, 1.0], [2.0, np.nan], [4.0, 3.0], [1e9, 2.0]], dtype=np.float32)
    sc = Scaler(clip=10.0).fit(X[:3], np.array([[0.01, 0.0], [-0.01, 1e-3], [np.nan, -1.0]]))
    out = sc.transform(X)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:3, 0], [-1.0, 0.0, 1.0], atol=1e-6)
    assert out[1, 1] == 0.0 and out[3, 0] == 10.0  # NaN -> 0 (the training mean); huge -> clip
    assert sc.lrv_mean == pytest.approx(np.log(1e-3)) and sc.lrv_std == 1.0  # one valid rv: unit std kept
    sc.save(tmp_path / "scaler.json")
    back = Scaler.load(tmp_path / "scaler.json")
    np.testing.assert_array_equal(back.transform(X), out)
    assert json.loads((tmp_path / "scaler.json").read_text())["ret_scale"] == sc.ret_scale
    with pytest.raises(ValueError, match="features"):
        sc.transform(np.zeros((2, 3), np.float32))


def test_dataset_items_batches_and_loader(frame):
    wa = build_windows(frame, FEATS)
    sc = fit_scaler(wa)
    ds = WindowDataset(wa, sc)
    x, y = ds[7]
    assert x.shape == (30, 6) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), sc.transform(wa.window(7)))
    np.testing.assert_allclose(y.numpy(), sc.scale_targets(wa.labels()[7]), equal_nan=True)
    assert np.isfinite(wa.X).all() and not np.shares_memory(x.numpy(), wa.X)  # X never scaled in place
    seen = []
    for xb, yb in make_loader(ds, batch_size=100, shuffle=True, seed=3):
        assert xb.shape[1:] == (30, 6) and yb.shape == (len(xb), 2)
        seen.append(len(xb))
    assert sum(seen) == len(ds)
    first = lambda s: next(iter(make_loader(ds, 50, shuffle=True, seed=s)))[0]  # noqa: E731
    assert torch.equal(first(1), first(1)) and not torch.equal(first(1), first(2))


def test_dataset_memory_stays_near_the_feature_matrix():
    df = synthetic_feature_frame(n_symbols=24, n_days=2, n_features=59, seed=0)
    feats = [f"f{j}" for j in range(59)]
    tracemalloc.start()
    wa = build_windows(df, feats)
    ds = WindowDataset(wa, fit_scaler(wa))
    retained, build_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    n = 0
    for xb, _ in make_loader(ds, batch_size=64, shuffle=True):
        n += len(xb)
    _, epoch_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    x_bytes = wa.X.nbytes
    assert n == len(ds) > 16000
    assert retained / x_bytes < 1.5, retained / x_bytes
    assert epoch_peak / x_bytes < 1.5, epoch_peak / x_bytes
    materialised = len(ds) * LOOKBACK * wa.X.shape[1] * 4
    assert materialised / x_bytes > 25
