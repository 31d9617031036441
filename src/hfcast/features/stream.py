"""Training windows as a source of batches: in memory for small spans, streamed by date for large ones.

Why two: a year of 1000 symbols is ~23 GB of float32 features, more than a training machine holds,
while a few weeks fit easily and train fastest from one matrix. :class:`WindowSource` is the one
interface :func:`hfcast.train.train_forecaster` reads; :class:`InMemorySource` wraps
:class:`~hfcast.features.windows.WindowArrays` (today's path, bit for bit), :class:`StreamingSource`
reads the features lake one date (shard) at a time, and :func:`open_training_source` picks one by
size (params.yaml ``train.stream_above_rows``).

The streamed order is reproducible: every epoch draws, from ``(seed, epoch)`` alone, a shard
order, how many windows each shard contributes (a multivariate hypergeometric split of
``max_train_windows``, so each epoch trains on a fresh random subset) and which ones; shards are
read ``buffer_dates`` at a time, their windows shuffled together, and the batches cut from that
buffer (a remainder smaller than a batch is carried into the next buffer). Peak memory is the
buffer (plus one prefetched buffer), not the number of days.

Data parallelism: every source defines the sequence of GLOBAL batches from the seed only; rank r
of N takes rows ``r::N`` of each one, and the label counts of the whole global batch come with
them, so N processes compute exactly the gradient of one process (hfcast.train divides the loss by
the global counts). Each rank reads the buffer's dates but gathers, scales and trains on its rows only.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from hfcast.contracts import LOOKBACK
from hfcast.features.windows import (LABEL_COLS, BatchIndexSampler, Scaler, WindowArrays, WindowDataset,
                                     build_windows, fit_scaler, label_moments, merge_moments, nan_moments)
from hfcast.storage import Lake

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x [b, 30, F], y [b, 2] (this rank), counts [2] (global)


@runtime_checkable
class WindowSource(Protocol):
    """What the trainer needs from training data, whatever holds it."""

    feature_names: list[str]

    def fit_scaler(self) -> Scaler:
        """The scaler of the training rows (covered by a window) and the labels at window ends."""

    def n_windows(self) -> int:
        """Windows one epoch trains on (after sampling)."""

    def dates(self) -> list[str]:
        """Session dates the training windows end on."""

    def batches(self, epoch: int, batch_size: int, scaler: Scaler, rank: int = 0, world: int = 1,
                drop_last: bool = True, num_workers: int = 0) -> Iterator[Batch]:
        """This rank's rows ``rank::world`` of every global batch of ``epoch``, with the global
        batch's finite-label counts per target."""


def n_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def _global_counts(y_scaled: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.isfinite(y_scaled).sum(0).astype(np.float32))


class _RankSampler(Sampler):
    """Rows ``rank::world`` of each index batch of another sampler."""

    def __init__(self, inner: BatchIndexSampler, rank: int, world: int):
        self.inner, self.rank, self.world = inner, rank, world

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        for idx in self.inner:
            yield idx[self.rank::self.world]


class InMemorySource:
    """Windows of one in-memory :class:`WindowArrays` (already subsampled by the caller).

    The global batches are exactly those of ``make_loader(..., shuffle=True, seed=seed * 100_003 +
    epoch)``: one process reproduces the trainer's earlier results bit for bit.
    """

    def __init__(self, wa: WindowArrays, seed: int = 0, scaler_from: WindowArrays | None = None):
        """``scaler_from``: the windows the scaler is fitted on (the span before subsampling)."""
        self.wa, self.seed = wa, int(seed)
        self.feature_names = list(wa.feature_names)
        self._scaler_from = scaler_from if scaler_from is not None else wa

    def fit_scaler(self) -> Scaler:
        return fit_scaler(self._scaler_from)

    def n_windows(self) -> int:
        return len(self.wa)

    def dates(self) -> list[str]:
        return sorted(set(self.wa.end_dates().tolist()))

    def batches(self, epoch: int, batch_size: int, scaler: Scaler, rank: int = 0, world: int = 1,
                drop_last: bool = True, num_workers: int = 0) -> Iterator[Batch]:
        ds = WindowDataset(self.wa, scaler)
        glob = BatchIndexSampler(len(ds), batch_size, True, self.seed * 100_003 + epoch, drop_last)
        loader = DataLoader(ds, sampler=_RankSampler(glob, rank, world), batch_size=None, num_workers=num_workers)
        for idx, (x, y) in zip(glob, loader):
            yield x, y, _global_counts(ds._y[idx])


# --- streaming -------------------------------------------------------------------------------------

@dataclass
class _Shard:
    """One date's windows: the feature matrix and the end rows of its labelled windows."""

    date: str
    wa: WindowArrays
    labelled: np.ndarray  # indices into wa.ends of windows with at least one finite label


@dataclass
class _Pool:
    """Windows of a buffer: (shard slot, window index) in shuffled order."""

    shards: list[_Shard]
    slot: np.ndarray
    win: np.ndarray


class StreamingSource:
    """Training windows read from ``<lake>/features/date=D`` one date at a time (see module doc).

    Args:
        lake: the lake with the features table.
        dates: the training dates (ISO); dates without a partition are an error.
        feature_names: feature columns in model order.
        stride: window stride in minutes (walkforward.train_stride).
        max_windows: windows per epoch (None = every labelled window), drawn afresh each epoch.
        seed: the seed of every random choice.
        buffer_dates: dates shuffled together (memory ~ 2 x buffer_dates x one date's features).
        market: the calendar (hfcast.market; None = XNYS).
    """

    def __init__(self, lake: Lake, dates: Sequence[str], feature_names: Sequence[str], stride: int = 1,
                 max_windows: int | None = None, seed: int = 0, buffer_dates: int = 4, market: Any = None):
        if buffer_dates < 1:
            raise ValueError(f"train.stream_buffer_dates must be >= 1, got {buffer_dates}")
        self.lake, self.dates_ = lake, sorted(str(d) for d in dates)
        if not self.dates_:
            raise ValueError("a streaming training source needs at least one date")
        self.feature_names = list(feature_names)
        self.stride, self.max_windows, self.seed = int(stride), max_windows, int(seed)
        self.buffer_dates, self.market = int(buffer_dates), market
        self._counts: np.ndarray | None = None  # labelled windows per date, from the scaler pass
        self._scaler: Scaler | None = None

    def _read(self, date: str) -> _Shard:
        df = self.lake.read("features", date, ["symbol", "ts", *self.feature_names, *LABEL_COLS])
        wa = build_windows(df, self.feature_names, stride=self.stride, market=self.market)
        wa.keys = wa.keys.iloc[:0]  # the trainer needs rows and labels only: drop the key frame
        lab = np.flatnonzero(np.isfinite(wa.labels()).any(axis=1)) if wa.y is not None and len(wa) else np.empty(0, np.int64)
        return _Shard(date, wa, lab)

    def fit_scaler(self) -> Scaler:
        """One pass over the dates: Chan's pairwise merge of per-date moments (= ``fit_scaler`` of the
        concatenated span within float rounding); it also counts the labelled windows per date."""
        if self._scaler is not None:
            return self._scaler
        feats = ret = lrv = None
        counts = np.zeros(len(self.dates_), np.int64)
        for i, d in enumerate(self.dates_):
            sh = self._read(d)
            counts[i] = sh.labelled.size
            if not len(sh.wa):
                continue
            m = nan_moments(sh.wa.X, np.flatnonzero(sh.wa.rows_covered()))
            feats = m if feats is None else merge_moments(feats, m)
            if sh.wa.y is not None:
                r, v = label_moments(sh.wa.labels())
                ret = r if ret is None else merge_moments(ret, r)
                lrv = v if lrv is None else merge_moments(lrv, v)
        if feats is None:
            raise ValueError(f"no training windows in {len(self.dates_)} date(s) {self.dates_[0]}..{self.dates_[-1]}")
        if counts.sum() == 0:
            raise ValueError("training span has no window with a finite label")
        self._counts = counts
        self._scaler = Scaler().set_moments(feats, ret, lrv, self.feature_names)
        log.info("streamed scaler pass over %d date(s): %d labelled windows", len(self.dates_), int(counts.sum()))
        return self._scaler

    def _labelled_counts(self) -> np.ndarray:
        if self._counts is None:
            self.fit_scaler()
        return self._counts

    def n_windows(self) -> int:
        total = int(self._labelled_counts().sum())
        return min(total, self.max_windows) if self.max_windows is not None else total

    def dates(self) -> list[str]:
        return [d for d, c in zip(self.dates_, self._labelled_counts()) if c > 0]

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard order, windows taken per shard) of an epoch: a function of (seed, epoch) only."""
        counts = self._labelled_counts()
        rng = np.random.default_rng([self.seed, epoch, 0])
        order = rng.permutation(len(counts))
        take = counts.copy()
        if self.max_windows is not None and counts.sum() > self.max_windows:
            take = rng.multivariate_hypergeometric(counts, self.max_windows)
        return order, take

    def _load_buffer(self, epoch: int, group: list[int], take: np.ndarray) -> _Pool:
        shards, slots, wins = [], [], []
        for s in group:
            if take[s] == 0:
                continue
            sh = self._read(self.dates_[s])
            if sh.labelled.size != self._counts[s]:
                raise RuntimeError(f"features of {self.dates_[s]} changed during training "
                                   f"({sh.labelled.size} labelled windows, {self._counts[s]} at the scaler pass)")
            pick = sh.labelled
            if take[s] < pick.size:
                pick = np.sort(np.random.default_rng([self.seed, epoch, 1, s]).choice(pick, take[s], replace=False))
            slots.append(np.full(pick.size, len(shards), np.int32))
            wins.append(pick)
            shards.append(sh)
        slot = np.concatenate(slots) if slots else np.empty(0, np.int32)
        win = np.concatenate(wins) if wins else np.empty(0, np.int64)
        perm = np.random.default_rng([self.seed, epoch, 2, group[0]]).permutation(slot.size)
        return _Pool(shards, slot[perm], win[perm])

    @staticmethod
    def _gather(pool: _Pool, pos: np.ndarray, scaler: Scaler) -> tuple[np.ndarray, np.ndarray]:
        """Scaled windows [k, 30, F] and scaled labels [k, 2] at pool positions ``pos``."""
        F = len(scaler.mean)
        x = np.empty((pos.size, LOOKBACK, F), np.float32)
        y = np.empty((pos.size, 2), np.float32)
        slot, win = pool.slot[pos], pool.win[pos]
        for s in np.unique(slot):
            m = np.flatnonzero(slot == s)
            wa = pool.shards[s].wa
            x[m] = wa.windows(win[m])
            y[m] = wa.y[wa.ends[win[m]]]
        scaler.transform(x, inplace=True)
        return x, scaler.scale_targets(y)

    def batches(self, epoch: int, batch_size: int, scaler: Scaler, rank: int = 0, world: int = 1,
                drop_last: bool = True, num_workers: int = 0) -> Iterator[Batch]:
        """See :class:`WindowSource`; ``num_workers`` is not used (the next buffer is read by a thread)."""
        order, take = self.epoch_plan(epoch)
        groups = [list(order[i:i + self.buffer_dates]) for i in range(0, len(order), self.buffer_dates)]
        carry_x = np.empty((0, LOOKBACK, len(self.feature_names)), np.float32)
        carry_y = np.empty((0, 2), np.float32)
        with ThreadPoolExecutor(1, thread_name_prefix="hfcast-stream") as ex:
            nxt = ex.submit(self._load_buffer, epoch, groups[0], take) if groups else None
            for g in range(len(groups)):
                pool = nxt.result()
                nxt = ex.submit(self._load_buffer, epoch, groups[g + 1], take) if g + 1 < len(groups) else None
                c, n = len(carry_y), pool.slot.size
                last = nxt is None
                n_full = (c + n) // batch_size
                for b in range(n_full):
                    lo, hi = b * batch_size, (b + 1) * batch_size  # positions in carry + pool
                    yield self._batch(pool, carry_x, carry_y, lo, hi, scaler, rank, world)
                rest_lo = n_full * batch_size
                if last:
                    if not drop_last and rest_lo < c + n:
                        yield self._batch(pool, carry_x, carry_y, rest_lo, c + n, scaler, rank, world)
                    break
                # the remainder (< one batch) is materialised and carried into the next buffer
                carry_x, carry_y = self._slice(pool, carry_x, carry_y, rest_lo, c + n, scaler)
                del pool

    def _slice(self, pool: _Pool, carry_x, carry_y, lo: int, hi: int, scaler: Scaler,
               take: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scaled windows at combined positions lo..hi (carry first, then the pool), rows ``take``."""
        c = len(carry_y)
        pos = np.arange(lo, hi)
        if take is not None:
            pos = pos[take]
        from_carry, from_pool = pos[pos < c], pos[pos >= c] - c
        px, py = self._gather(pool, from_pool, scaler)
        if from_carry.size == 0:
            return px, py
        return np.concatenate([carry_x[from_carry], px]), np.concatenate([carry_y[from_carry], py])

    def _batch(self, pool, carry_x, carry_y, lo, hi, scaler, rank, world) -> Batch:
        x, y = self._slice(pool, carry_x, carry_y, lo, hi, scaler, slice(rank, None, world))
        counts = self._global_counts(pool, carry_y, lo, hi)
        return torch.from_numpy(x), torch.from_numpy(y), counts

    @staticmethod
    def _global_counts(pool: _Pool, carry_y: np.ndarray, lo: int, hi: int) -> torch.Tensor:
        """Finite-label counts of the whole global batch (labels only: cheap on every rank)."""
        c = len(carry_y)
        pos = np.arange(lo, hi)
        yc = carry_y[pos[pos < c]]
        p = pos[pos >= c] - c
        raw = np.empty((p.size, 2), np.float32)
        slot, win = pool.slot[p], pool.win[p]
        for s in np.unique(slot):
            m = np.flatnonzero(slot == s)
            wa = pool.shards[s].wa
            raw[m] = wa.y[wa.ends[win[m]]]
        # a scaled label is finite iff ret is finite / rv is finite and > 0 (Scaler.scale_targets)
        ok = np.stack([np.isfinite(raw[:, 0]), np.isfinite(raw[:, 1]) & (raw[:, 1] > 0)], axis=1)
        return torch.from_numpy((np.isfinite(yc).sum(0) + ok.sum(0)).astype(np.float32))


# --- choosing ----------------------------------------------------------------------------------------

def features_rows(lake: Lake, dates: Sequence[str]) -> int:
    """Rows of the features partitions of ``dates``, from the parquet footers (no data read)."""
    import pyarrow.parquet as pq

    from hfcast.storage import filesystem

    total = 0
    for d in dates:
        fs, path = filesystem(lake.partition("features", d), lake.storage_options)
        with fs.open(path, "rb") as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


def open_training_source(lake: Lake, dates: Sequence[str], feature_names: Sequence[str], cfg: Any,
                         stride: int = 1, market: Any = None) -> WindowSource | WindowArrays:
    """The training source for ``dates``: streamed when their features exceed
    ``cfg.stream_above_rows`` rows (hfcast.train.TrainConfig), else one in-memory matrix.

    The in-memory source is subsampled here exactly as the trainer subsamples WindowArrays.
    """
    rows = features_rows(lake, dates)
    limit = getattr(cfg, "stream_above_rows", None)
    if limit is not None and rows > limit:
        log.info("training span of %d rows > train.stream_above_rows=%d: streaming by date", rows, limit)
        return StreamingSource(lake, dates, feature_names, stride, cfg.max_train_windows, cfg.seed,
                               cfg.stream_buffer_dates, market)
    from hfcast.features.engine import load_features

    wa = build_windows(load_features(lake, dates, [*feature_names, *LABEL_COLS]), feature_names, stride, market=market)
    return wa  # a WindowArrays: the trainer wraps it (and subsamples it) as before
