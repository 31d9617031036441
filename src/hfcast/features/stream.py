"""Training windows as a source of batches: in memory for small spans, streamed by date for large ones.

Why two: a year of 1000 symbols is ~23 GB of float32 features, more than a training machine holds,
while a few weeks fit easily and train fastest from one matrix. :class:`WindowSource` is the one
interface :func:`hfcast.train.train_forecaster` reads; :class:`InMemorySource` wraps
:class:`~hfcast.features.windows.WindowArrays` (today's path, bit for bit), :class:`StreamingSource`
reads the features lake one date (shard) at a time (once, into a memory-mapped local cache),
and :func:`open_training_source` picks one by
size (params.yaml ``train.stream_above_rows``).

The streamed order is reproducible: every epoch draws, from ``(seed, epoch)`` alone, a shard
order, how many windows each shard contributes (a multivariate hypergeometric split of
``max_train_windows``, so each epoch trains on a fresh random subset) and which ones; shards are
opened ``buffer_dates`` at a time, their windows shuffled together, and the batches cut from that
buffer (a remainder smaller than a batch is carried into the next buffer). Peak memory is one
date while the cache is filled, then the buffer's pages, not the number of days.

Data parallelism: every source defines the sequence of GLOBAL batches from the seed only; rank r
of N takes rows ``r::N`` of each one, and the label counts of the whole global batch come with
them, so N processes compute exactly the gradient of one process (hfcast.train divides the loss by
the global counts). Each rank fills its own cache and gathers, scales and trains on its rows only.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import DataLoader, Sampler

from hfcast.contracts import LOOKBACK
from hfcast.features import engine
from hfcast.features.engine import load_features
from hfcast.features.windows import (LABEL_COLS, BatchIndexSampler, Scaler, WindowArrays, WindowDataset, build_windows,
                                     fit_scaler, label_moments, merge_moments, nan_moments)
from hfcast.market import Market, resolve
from hfcast.storage import Lake, filesystem

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
    """One date's training data, memory-mapped from the stream's cache."""

    X: np.ndarray       # float32 [N, F] (np.memmap)
    y: np.ndarray       # float32 [N, 2] (np.memmap)
    ends: np.ndarray    # int64 [W]: last rows of the date's labelled windows

    def windows(self, k: np.ndarray) -> np.ndarray:
        """Windows number ``k`` (of ``ends``) as [len(k), 30, F]: reads only their pages."""
        view = sliding_window_view(self.X, LOOKBACK, axis=0).transpose(0, 2, 1)  # [N-29, 30, F], a view
        return view[self.ends[k] - (LOOKBACK - 1)]


@dataclass
class _Pool:
    """Windows of a buffer: (shard slot, window number) in shuffled order."""

    shards: list[_Shard]
    slot: np.ndarray
    win: np.ndarray

    def raw(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unscaled windows [k, 30, F] and raw labels [k, 2] at pool positions ``pos``."""
        F = self.shards[0].X.shape[1] if self.shards else 0
        x = np.empty((pos.size, LOOKBACK, F), np.float32)
        y = np.empty((pos.size, 2), np.float32)
        slot, win = self.slot[pos], self.win[pos]
        for s in np.unique(slot):
            m = np.flatnonzero(slot == s)
            sh = self.shards[s]
            x[m] = sh.windows(win[m])
            y[m] = sh.y[sh.ends[win[m]]]
        return x, y

    def labels(self, pos: np.ndarray) -> np.ndarray:
        y = np.empty((pos.size, 2), np.float32)
        slot, win = self.slot[pos], self.win[pos]
        for s in np.unique(slot):
            m = np.flatnonzero(slot == s)
            sh = self.shards[s]
            y[m] = sh.y[sh.ends[win[m]]]
        return y


def _save(path: Path, arr: np.ndarray) -> None:
    """``np.save`` to a temp file renamed into place: ranks of one node may share a cache folder
    (they write the same bytes), and a rank mapping the old file keeps reading it whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, arr)
    os.replace(tmp, path)


class StreamingSource:
    """Training windows read from ``<lake>/features/date=D`` one date at a time (see module doc).

    The scaler pass reads each date's parquet partition once and keeps its float32 features,
    labels and labelled window ends in a local cache of memory-mapped ``.npy`` files (what the
    issue calls memory-mapped Arrow per symbol-day, as plain numpy): an epoch then reads only
    the pages of the windows it draws, not every date's parquet again, so drawing a fresh random
    subset from all dates each epoch costs I/O proportional to the windows, not to the days.

    Args:
        lake: the lake with the features table.
        dates: the training dates (ISO); dates without a partition are an error.
        feature_names: feature columns in model order.
        stride: window stride in minutes (walkforward.train_stride).
        max_windows: windows per epoch (None = every labelled window), drawn afresh each epoch.
        seed: the seed of every random choice.
        buffer_dates: dates shuffled together (their mapped pages are what an epoch holds).
        market: the calendar (hfcast.market; None = XNYS).
        cache_dir: local folder for the cache (None = a temporary folder removed with the source);
            about the size of the span's features as float32.
    """

    def __init__(self, lake: Lake, dates: Sequence[str], feature_names: Sequence[str], stride: int = 1,
                 max_windows: int | None = None, seed: int = 0, buffer_dates: int = 4, market: Any = None,
                 cache_dir: str | None = None):
        if buffer_dates < 1:
            raise ValueError(f"train.stream_buffer_dates must be >= 1, got {buffer_dates}")
        self.lake, self.dates_ = lake, sorted(str(d) for d in dates)
        if not self.dates_:
            raise ValueError("a streaming training source needs at least one date")
        self.feature_names = list(feature_names)
        self.stride, self.max_windows, self.seed = int(stride), max_windows, int(seed)
        self.buffer_dates, self.market = int(buffer_dates), market
        self._cache_arg = cache_dir
        self._cache: Path | None = None
        self._counts: np.ndarray | None = None  # labelled windows per date, from the scaler pass
        self._scaler: Scaler | None = None

    def _cache_dir(self) -> Path:
        if self._cache is None:
            if self._cache_arg:
                self._cache = Path(self._cache_arg)
                self._cache.mkdir(parents=True, exist_ok=True)
            else:
                self._cache = Path(tempfile.mkdtemp(prefix="hfcast-stream-"))
                weakref.finalize(self, shutil.rmtree, str(self._cache), True)
        return self._cache

    def _paths(self, i: int) -> tuple[Path, Path, Path]:
        base = self._cache_dir() / f"{self.dates_[i]}-s{self.stride}"
        return Path(f"{base}.X.npy"), Path(f"{base}.y.npy"), Path(f"{base}.ends.npy")

    def _read(self, date: str) -> WindowArrays:
        df = self.lake.read("features", date, ["symbol", "ts", *self.feature_names, *LABEL_COLS])
        return build_windows(df, self.feature_names, stride=self.stride, market=self.market)

    def fit_scaler(self) -> Scaler:
        """One pass over the dates: Chan's pairwise merge of per-date moments (= ``fit_scaler`` of the
        concatenated span within float rounding); it also fills the cache and counts the labelled
        windows per date."""
        if self._scaler is not None:
            return self._scaler
        feats = ret = lrv = None
        counts = np.zeros(len(self.dates_), np.int64)
        for i, d in enumerate(self.dates_):
            wa = self._read(d)
            lab = (np.flatnonzero(np.isfinite(wa.labels()).any(axis=1)) if wa.y is not None and len(wa)
                   else np.empty(0, np.int64))
            counts[i] = lab.size
            xp, yp, ep = self._paths(i)
            _save(xp, wa.X)
            _save(yp, wa.y if wa.y is not None else np.full((len(wa.X), 2), np.nan, np.float32))
            _save(ep, wa.ends[lab])
            if not len(wa):
                continue
            m = nan_moments(wa.X, np.flatnonzero(wa.rows_covered()))
            feats = m if feats is None else merge_moments(feats, m)
            if wa.y is not None:
                r, v = label_moments(wa.labels())
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
            xp, yp, ep = self._paths(s)
            sh = _Shard(np.load(xp, mmap_mode="r"), np.load(yp, mmap_mode="r"), np.load(ep))
            pick = np.arange(sh.ends.size)
            if take[s] < pick.size:
                pick = np.sort(np.random.default_rng([self.seed, epoch, 1, s]).choice(pick.size, take[s], replace=False))
            slots.append(np.full(pick.size, len(shards), np.int32))
            wins.append(pick)
            shards.append(sh)
        slot = np.concatenate(slots) if slots else np.empty(0, np.int32)
        win = np.concatenate(wins) if wins else np.empty(0, np.int64)
        perm = np.random.default_rng([self.seed, epoch, 2, group[0]]).permutation(slot.size)
        return _Pool(shards, slot[perm], win[perm])

    def batches(self, epoch: int, batch_size: int, scaler: Scaler, rank: int = 0, world: int = 1,
                drop_last: bool = True, num_workers: int = 0) -> Iterator[Batch]:
        """See :class:`WindowSource`; ``num_workers`` is not used (the next buffer is opened by a thread)."""
        order, take = self.epoch_plan(epoch)
        groups = [list(order[i:i + self.buffer_dates]) for i in range(0, len(order), self.buffer_dates)]
        carry_x = np.empty((0, LOOKBACK, len(self.feature_names)), np.float32)
        carry_y = np.empty((0, 2), np.float32)
        with ThreadPoolExecutor(1, thread_name_prefix="hfcast-stream") as ex:
            nxt = ex.submit(self._load_buffer, epoch, groups[0], take) if groups else None
            for g in range(len(groups)):
                pool = nxt.result()
                nxt = ex.submit(self._load_buffer, epoch, groups[g + 1], take) if g + 1 < len(groups) else None
                n_all = len(carry_y) + pool.slot.size
                n_full = n_all // batch_size
                for b in range(n_full):
                    yield self._batch(pool, carry_x, carry_y, b * batch_size, (b + 1) * batch_size, scaler, rank, world)
                if nxt is None:
                    if not drop_last and n_full * batch_size < n_all:
                        yield self._batch(pool, carry_x, carry_y, n_full * batch_size, n_all, scaler, rank, world)
                    break
                # the remainder (< one batch) is copied out (unscaled) and carried into the next buffer
                carry_x, carry_y = self._rows(pool, carry_x, carry_y, np.arange(n_full * batch_size, n_all))
                del pool

    @staticmethod
    def _rows(pool: _Pool, carry_x, carry_y, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unscaled windows and raw labels at combined positions (the carry first, then the pool)."""
        c = len(carry_y)
        from_carry, from_pool = pos[pos < c], pos[pos >= c] - c
        px, py = pool.raw(from_pool)
        if from_carry.size == 0:
            return px, py
        return np.concatenate([carry_x[from_carry], px]), np.concatenate([carry_y[from_carry], py])

    def _batch(self, pool, carry_x, carry_y, lo, hi, scaler: Scaler, rank: int, world: int) -> Batch:
        pos = np.arange(lo, hi)
        x, y = self._rows(pool, carry_x, carry_y, pos[rank::world])
        scaler.transform(x, inplace=True)
        c = len(carry_y)
        y_all = np.concatenate([carry_y[pos[pos < c]], pool.labels(pos[pos >= c] - c)])
        counts = _global_counts(scaler.scale_targets(y_all))  # labels only: cheap on every rank
        return torch.from_numpy(x), torch.from_numpy(scaler.scale_targets(y)), counts


# --- choosing ----------------------------------------------------------------------------------------

def features_rows_by_date(lake: Lake, dates: Sequence[str]) -> dict[str, int]:
    """Rows of each date's features partition, from the parquet footers (no data read)."""
    import pyarrow.parquet as pq

    out = {}
    for d in dates:
        fs, path = filesystem(lake.partition("features", d), lake.storage_options)
        with fs.open(path, "rb") as fh:
            out[d] = pq.ParquetFile(fh).metadata.num_rows
    return out


def features_rows(lake: Lake, dates: Sequence[str]) -> int:
    """Rows of the features partitions of ``dates``, from the parquet footers (no data read)."""
    return sum(features_rows_by_date(lake, dates).values())


class SpanReader:
    """Whole dates of features, from the lake or from one in-memory frame, a bounded chunk at a time.

    Why: a walk-forward span of a year does not fit in memory, but a date always does, and nothing
    the walk-forward computes crosses a date (a window is one session; the cross-sectional IC is
    per minute). Reading consecutive dates up to ``max_rows`` rows at once keeps small spans one
    frame (exactly the numbers of one frame) and large ones bounded by the budget.

    Args:
        lake: the lake with the ``features`` table (None when ``frame`` is given).
        frame: an in-memory features frame (tests, benchmarks) instead of the lake.
        market: the calendar whose trade dates a frame's rows belong to (``Settings.market``;
            None: XNYS): a value, so two readers over different calendars never mix.
    """

    def __init__(self, lake: Lake | None = None, frame: Any = None, market: Market | None = None):
        if (lake is None) == (frame is None):
            raise ValueError("SpanReader reads a lake or a frame: give exactly one")
        self.lake, self.frame, self.market = lake, None, resolve(market)
        if frame is not None:
            self.frame = frame.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
            self._day = pd.Series(self.market.trade_date(self.frame["ts"]))  # ISO trade date of every row

    def dates(self) -> list[str]:
        """Every date there is (the lake's features partitions; the frame's trade dates)."""
        if self.frame is None:
            return list(self.lake.dates("features"))
        return sorted(str(d) for d in self._day.dropna().unique())

    def rows(self, dates: Sequence[str]) -> dict[str, int]:
        """Rows per date (footers only for the lake)."""
        if self.frame is None:
            return features_rows_by_date(self.lake, dates)
        have = self._day.value_counts()
        return {d: int(have.get(str(d), 0)) for d in dates}

    def columns(self, date: str | None = None) -> list[str]:
        """The columns of the features (of ``date``'s partition; default the first date's)."""
        if self.frame is not None:
            return list(self.frame.columns)
        import pyarrow.parquet as pq

        fs, path = filesystem(self.lake.partition("features", date or self.dates()[0]), self.lake.storage_options)
        with fs.open(path, "rb") as fh:
            return list(pq.ParquetFile(fh).schema_arrow.names)

    def read(self, dates: Sequence[str], columns: Sequence[str] | None = None) -> Any:
        """The rows of ``dates`` as one frame sorted by (symbol, ts); ``columns`` besides symbol
        and ts (None = all)."""
        if self.frame is None:
            # through the module: a test counts what each read holds
            return engine.load_features(self.lake, list(dates), None if columns is None else list(columns))
        cols = None if columns is None else ["symbol", "ts", *[c for c in columns if c not in ("symbol", "ts")]]
        part = self.frame[self._day.isin([str(d) for d in dates]).to_numpy()]
        return (part if cols is None else part[cols]).reset_index(drop=True)

    def chunks(self, dates: Sequence[str], max_rows: int | None, columns: Sequence[str] | None = None
               ) -> Iterator[tuple[list[str], Any]]:
        """(dates, frame) of consecutive whole dates holding at most ``max_rows`` rows together (a
        larger date alone; None = every date at once)."""
        dates = sorted(str(d) for d in dates)
        if max_rows is None:
            groups = [dates] if dates else []
        else:
            counts, groups, cur, n = self.rows(dates), [], [], 0
            for d in dates:
                if cur and n + counts[d] > max_rows:
                    groups.append(cur)
                    cur, n = [], 0
                cur.append(d)
                n += counts[d]
            if cur:
                groups.append(cur)
        for group in groups:
            yield group, self.read(group, columns)


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
                               cfg.stream_buffer_dates, market, cfg.stream_cache_dir)

    wa = build_windows(load_features(lake, dates, [*feature_names, *LABEL_COLS]), feature_names, stride, market=market)
    return wa  # a WindowArrays: the trainer wraps it (and subsamples it) as before
