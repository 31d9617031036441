"""Streamed training windows: the scaler of one pass equals the in-memory fit, every epoch is a
reproducible random subset cut into global batches that N ranks share row by row, and the trainer
accepts the stream, checkpoints every epoch and resumes a killed training at the next epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfcast.features.stream import InMemorySource, StreamingSource, open_training_source
from hfcast.features.windows import build_windows, fit_scaler, synthetic_feature_frame
from hfcast.storage import Lake
from hfcast.train import TrainConfig, train_forecaster

FEATS = [f"f{j}" for j in range(6)]
TINY = {"hidden": 8, "n_layers": 1, "head_hidden": 8}


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """A features lake of 5 dates x 3 symbols (one parquet partition per date, as featurize writes)."""
    df = synthetic_feature_frame(3, 5, len(FEATS), seed=4)
    lk = Lake(tmp_path_factory.mktemp("lake").as_uri())
    day = df["ts"].dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d")
    for d, part in df.groupby(day):
        lk.write("features", d, part.reset_index(drop=True))
    return lk, df, sorted(day.unique())


def test_streamed_scaler_equals_the_in_memory_fit(lake):
    lk, df, dates = lake
    for stride in (1, 10):
        ref = fit_scaler(build_windows(df, FEATS, stride=stride)).to_dict()
        got = StreamingSource(lk, dates, FEATS, stride=stride).fit_scaler().to_dict()
        for k in ("mean", "std"):
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-9)  # float32 blocks
        for k in ("ret_scale", "lrv_mean", "lrv_std"):
            assert got[k] == pytest.approx(ref[k], rel=1e-9)


def _epoch_rows(src, epoch, batch, scaler, world=1, rank=0, drop_last=True):
    return [(x.numpy(), y.numpy(), c.numpy()) for x, y, c in src.batches(epoch, batch, scaler, rank, world, drop_last)]


def test_an_epoch_is_a_seeded_subset_cut_into_global_batches(lake):
    lk, df, dates = lake
    src = StreamingSource(lk, dates, FEATS, max_windows=900, seed=3, buffer_dates=2)
    sc = src.fit_scaler()
    one = _epoch_rows(src, 0, 64, sc, drop_last=False)
    assert sum(len(x) for x, _, _ in one) == src.n_windows() == 900
    assert all(len(x) == 64 for x, _, _ in one[:-1]) and len(one[-1][0]) == 900 - 64 * 14
    last_rows = np.concatenate([x[:, -1, :] for x, _, _ in one])
    assert len(np.unique(last_rows, axis=0)) == 900  # no window twice in an epoch
    again = _epoch_rows(src, 0, 64, sc, drop_last=False)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(one, again))  # reproducible
    other = np.concatenate([x[:, -1, :] for x, _, _ in _epoch_rows(src, 1, 64, sc, drop_last=False)])
    assert not np.array_equal(other, last_rows)  # each epoch draws its own subset and order
    for x, y, counts in one:  # counts are the batch's finite labels, as the loss normalises
        np.testing.assert_array_equal(counts, np.isfinite(y).sum(0))


@pytest.mark.parametrize("source", ["memory", "stream"])
def test_ranks_take_rows_r_mod_n_of_the_same_global_batches(lake, source):
    lk, df, dates = lake
    if source == "stream":
        src = StreamingSource(lk, dates, FEATS, max_windows=700, seed=5, buffer_dates=2)
    else:
        src = InMemorySource(build_windows(df, FEATS).select(np.arange(700)), seed=5)
    sc = src.fit_scaler()
    whole = _epoch_rows(src, 2, 50, sc)
    parts = [_epoch_rows(src, 2, 50, sc, world=3, rank=r) for r in range(3)]
    assert len(whole) == 14 and all(len(p) == len(whole) for p in parts)
    for b, (x, y, counts) in enumerate(whole):
        for r in range(3):
            np.testing.assert_array_equal(parts[r][b][0], x[r::3])
            np.testing.assert_array_equal(parts[r][b][1], y[r::3])
            np.testing.assert_array_equal(parts[r][b][2], counts)  # global counts on every rank


def test_open_training_source_streams_above_the_threshold(lake):
    lk, df, dates = lake
    small = open_training_source(lk, dates, FEATS, TrainConfig(stream_above_rows=10**9))
    assert len(small) == len(build_windows(df, FEATS))  # WindowArrays: the in-memory path
    big = open_training_source(lk, dates, FEATS, TrainConfig(stream_above_rows=100, max_train_windows=500))
    assert isinstance(big, StreamingSource) and big.n_windows() == 500


def _train(src, val, cfg, on_epoch=None):
    return train_forecaster("lstm", src, val, TINY, cfg, calibrate=False, progress=False, on_epoch=on_epoch)


def test_trainer_reads_the_stream(lake):
    lk, df, dates = lake
    val = build_windows(df, FEATS).subset_dates(dates[-1:])
    src = StreamingSource(lk, dates[:-1], FEATS, max_windows=600, seed=0, buffer_dates=2)
    fc, hist = _train(src, val, TrainConfig(epochs=2, batch_size=64, device="cpu"))
    assert hist["source"] == "StreamingSource" and hist["n_train_windows"] == 600
    assert len(hist["epochs"]) == 2 and all(np.isfinite(e["train_loss"]) for e in hist["epochs"])
    assert fc.meta["train_dates"] == dates[:-1] and fc.scaler.to_dict() == src.fit_scaler().to_dict()


class Killed(Exception):
    pass


def test_a_killed_training_resumes_at_the_next_epoch(lake, tmp_path):
    lk, df, dates = lake
    wa = build_windows(df, FEATS)
    tr, val = wa.subset_dates(dates[:-1]), wa.subset_dates(dates[-1:])
    cfg = TrainConfig(epochs=4, batch_size=64, device="cpu", patience=10, max_train_windows=800,
                      checkpoint_dir=str(tmp_path / "ckpt"))
    ref, ref_hist = _train(tr, val, TrainConfig(**{**cfg.to_dict(), "checkpoint_dir": None}))

    def kill_after_epoch_1(rec):
        if rec["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        _train(tr, val, cfg, kill_after_epoch_1)
    seen = []
    fc, hist = _train(tr, val, cfg, lambda rec: seen.append(rec["epoch"]))
    assert hist["resumed_at_epoch"] == 2
    assert seen == [0, 1, 2, 3]  # restored epochs are reported again, then 2 and 3 are trained
    assert [e["val_loss"] for e in hist["epochs"]] == [e["val_loss"] for e in ref_hist["epochs"]]
    for a, b in zip(fc.net.state_dict().values(), ref.net.state_dict().values()):
        assert torch.equal(a, b)  # resumed == never interrupted, bit for bit on CPU
    _, done = _train(tr, val, cfg)  # a finished training is restored, not retrained
    assert done["resumed_at_epoch"] == 4 and done["train_seconds"] == pytest.approx(hist["train_seconds"])
