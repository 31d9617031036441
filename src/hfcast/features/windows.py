"""30-minute windows as zero-copy views, the feature/target scaler, and a lazy torch Dataset.

A window is the 30 rows (minutes) of one symbol ending at minute t, shape [30, F]. Materialising
every window would copy each row 30 times (~30x the feature matrix), so the features live in ONE
C-contiguous float32 array ``X`` [N, F] sorted by (symbol, ts) - each symbol-day is a contiguous
slice of it - and a window is a strided view ``X[e-29 : e+1]`` taken through
``numpy.lib.stride_tricks.sliding_window_view``. ``ends`` lists the last-row index of every window
whose 30 rows are one symbol, one session (trade date of the market calendar), and consecutive
minutes (so never across a lunch break or overnight); nothing else is ever allocated per
window, so a training epoch over millions of windows costs the feature matrix plus ~8 bytes a window.

The :class:`Scaler` is fitted on training rows only (no look-ahead from validation or test spans)
and travels with the weights as JSON.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import DataLoader, Dataset, Sampler

from hfcast.contracts import LOOKBACK
from hfcast.data.schema import session_minutes_utc, trading_days
from hfcast.market import resolve as resolve_market

log = logging.getLogger(__name__)

LABEL_COLS = ("ret_60m", "rv_10m")
_MINUTE = np.timedelta64(60_000_000, "us")


@dataclass
class WindowArrays:
    """Features of N rows plus the end rows of M valid windows (windows are views, never copies).

    Attributes:
        X: float32 [N, F], C-contiguous, rows sorted by (symbol, ts).
        ends: int64 [M], row index of the LAST row of each window.
        y: float32 [N, 2] labels (``ret_60m``, ``rv_10m``) or None when the frame has none.
        keys: (symbol, ts) of the N rows.
        feature_names: the F column names of ``X``.
    """

    X: np.ndarray
    ends: np.ndarray
    y: np.ndarray | None
    keys: pd.DataFrame
    feature_names: list[str]
    _view: np.ndarray | None = field(default=None, repr=False, compare=False)
    market: object = field(default=None, repr=False, compare=False)  # hfcast.market.Market (None = XNYS)

    def __post_init__(self) -> None:
        if self.X.ndim != 2 or self.X.dtype != np.float32 or not self.X.flags.c_contiguous:
            raise ValueError(f"X must be a C-contiguous float32 [N, F] array, got {self.X.dtype} {self.X.shape}")
        self.ends = np.asarray(self.ends, dtype=np.int64)
        if self.ends.size and (self.ends.min() < LOOKBACK - 1 or self.ends.max() >= len(self.X)):
            raise ValueError(f"window ends must lie in [{LOOKBACK - 1}, {len(self.X) - 1}]")

    def __len__(self) -> int:
        return int(self.ends.size)

    @property
    def view(self) -> np.ndarray:
        """[N-29, 30, F] strided view: ``view[r - 29]`` is the window ending at row r (no copy)."""
        if self._view is None:
            if len(self.X) < LOOKBACK:
                self._view = np.empty((0, LOOKBACK, self.X.shape[1]), np.float32)
            else:  # [N-29, F, 30] -> [N-29, 30, F], both views of X
                self._view = sliding_window_view(self.X, LOOKBACK, axis=0).transpose(0, 2, 1)
        return self._view

    def window(self, i: int) -> np.ndarray:
        """Window number ``i`` (0 <= i < M): the 30 rows ending at row ``ends[i]``, a view [30, F]."""
        return self.view[self.ends[i] - (LOOKBACK - 1)]

    def windows(self, idx: np.ndarray | slice | Sequence[int]) -> np.ndarray:
        """Windows ``idx`` as [k, 30, F]: one gather from the view (a copy the size of the batch only)."""
        return self.view[self.ends[idx] - (LOOKBACK - 1)]

    def labels(self) -> np.ndarray:
        """Labels at the window ends, float32 [M, 2] (NaN where a label is missing)."""
        if self.y is None:
            raise ValueError("these windows were built from a frame without label columns")
        return self.y[self.ends]

    def end_days(self) -> np.ndarray:
        """Session date (exchange time) of each window's end, datetime64[D] [M]."""
        return _session_days(pd.DatetimeIndex(self.keys["ts"])[self.ends], self.market)

    def end_dates(self) -> np.ndarray:
        """Session date of each window's end as ISO strings [M]."""
        return np.datetime_as_string(self.end_days(), unit="D")

    def select(self, idx: np.ndarray) -> "WindowArrays":
        """The same rows with only windows ``idx`` (shares X, y and keys: no copy)."""
        return WindowArrays(self.X, self.ends[idx], self.y, self.keys, self.feature_names, self._view,
                            market=self.market)

    def subset_dates(self, dates: Sequence[str]) -> "WindowArrays":
        """Windows whose end falls on one of ``dates`` (ISO strings); rows are shared, not copied."""
        wanted = np.array([np.datetime64(pd.Timestamp(str(d)).date(), "D") for d in dates], dtype="datetime64[D]")
        return self.select(np.flatnonzero(np.isin(self.end_days(), wanted)))

    def rows_covered(self) -> np.ndarray:
        """Boolean [N]: rows inside at least one window (the rows a scaler may be fitted on)."""
        delta = np.zeros(len(self.X) + 1, dtype=np.int64)
        np.add.at(delta, self.ends - (LOOKBACK - 1), 1)
        np.add.at(delta, self.ends + 1, -1)
        return np.cumsum(delta[:-1]) > 0


def _session_days(ts: pd.DatetimeIndex, market: object = None) -> np.ndarray:
    """datetime64[D] trade date of each timestamp (market calendar; naive stamps are taken as UTC)."""
    if ts.tz is None:
        ts = ts.tz_localize("UTC")
    days = resolve_market(market).trade_date(ts)
    return pd.to_datetime(pd.Series(days, dtype=object)).to_numpy().astype("datetime64[D]")


def window_ends(keys: pd.DataFrame, stride: int = 1, market: object = None) -> np.ndarray:
    """Last-row indices of all windows that stay inside one symbol-day and have no minute gap.

    Args:
        keys: (symbol, ts) sorted by symbol then ts.
        stride: 1 = every minute (dense); 10 = minutes with (minute_of_session - 29) % 10 == 0.
        market: the calendar (hfcast.market; None = XNYS) that says which session a row is in.
    """
    n = len(keys)
    if n < LOOKBACK:
        return np.empty(0, dtype=np.int64)
    sym = pd.factorize(keys["symbol"])[0]
    ts = pd.DatetimeIndex(keys["ts"]).as_unit("us")
    t = ts.asi8
    mk = resolve_market(market)
    day = _session_days(ts, mk)
    brk = np.ones(n, dtype=bool)  # row r starts a new run of consecutive minutes
    brk[1:] = (sym[1:] != sym[:-1]) | (day[1:] != day[:-1]) | (np.diff(t) != _MINUTE.astype(np.int64))
    r = np.arange(n, dtype=np.int64)
    run_start = np.maximum.accumulate(np.where(brk, r, 0))
    ok = (r - run_start) >= LOOKBACK - 1
    if stride > 1:
        ok &= (mk.minute_of_session(ts) - (LOOKBACK - 1)) % stride == 0
    return np.flatnonzero(ok).astype(np.int64)


def build_windows(df: pd.DataFrame, feature_names: Sequence[str], stride: int = 1,
                  label_cols: Sequence[str] | None = LABEL_COLS, market: object = None) -> WindowArrays:
    """Pack a features frame into one float32 matrix and the list of valid window ends.

    Args:
        df: a features frame (``symbol``, ``ts``, feature columns, optional labels); sorted here
            by (symbol, ts) if it is not already.
        feature_names: feature columns in model order.
        stride: 1 for dense windows (every minute), 10 for sparse (every 10th minute).
        label_cols: label columns to carry as ``y``; ignored (y=None) if any is absent.

    Raises:
        ValueError: a feature column is missing, or stride < 1.
    """
    missing = [c for c in ["symbol", "ts", *feature_names] if c not in df.columns]
    if missing:
        raise ValueError(f"features frame is missing column(s) {missing}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    code = pd.factorize(df["symbol"], sort=True)[0]
    t = pd.DatetimeIndex(df["ts"]).as_unit("us").asi8
    dc, dt_ = np.diff(code), np.diff(t)
    if not np.all((dc > 0) | ((dc == 0) & (dt_ >= 0))):
        log.info("sorting %d feature rows by (symbol, ts)", len(df))
        df = df.iloc[np.lexsort((t, code))]
    X = np.empty((len(df), len(feature_names)), dtype=np.float32)
    for j, name in enumerate(feature_names):  # column by column: peak memory stays ~1x X
        X[:, j] = df[name].to_numpy(dtype=np.float32, na_value=np.nan)
    y = None
    if label_cols and all(c in df.columns for c in label_cols):
        y = np.stack([df[c].to_numpy(dtype=np.float32, na_value=np.nan) for c in label_cols], axis=1)
    keys = pd.DataFrame({"symbol": df["symbol"].reset_index(drop=True), "ts": df["ts"].reset_index(drop=True)})
    ends = window_ends(keys, stride, market)
    log.debug("built %d windows (stride %d) over %d rows x %d features", ends.size, stride, *X.shape)
    return WindowArrays(X, ends, y, keys, list(feature_names), market=market)


def nan_moments(X: np.ndarray, rows: np.ndarray, chunk_elems: int = 2**18) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column NaN-aware (count, mean, sum of squared deviations) of X[rows] in two chunked passes.

    Sums accumulate in float64, blocks stay float32 and small (~1 MB), so fitting on a training
    span of any size never allocates a copy of it. The triple is what
    :func:`merge_moments` combines, so a streamed fit (hfcast.features.stream) agrees with one pass.
    """
    f = X.shape[1]
    step = max(1, chunk_elems // max(1, f))
    s, n = np.zeros(f), np.zeros(f)
    for a in range(0, rows.size, step):
        block = X[rows[a:a + step]]
        bad = ~np.isfinite(block)
        np.copyto(block, 0, where=bad)
        s += block.sum(0, dtype=np.float64)
        n += block.shape[0] - bad.sum(0)
    mean = np.divide(s, n, out=np.zeros(f), where=n > 0)
    ss = np.zeros(f)
    for a in range(0, rows.size, step):
        block = X[rows[a:a + step]]
        block -= mean.astype(np.float32)
        np.copyto(block, 0, where=~np.isfinite(block))
        ss += np.square(block, out=block).sum(0, dtype=np.float64)
    return n, mean, ss


def merge_moments(a: tuple, b: tuple) -> tuple:
    """Chan et al.'s pairwise update of two (count, mean, M2) triples (arrays or floats)."""
    na, ma, sa = a
    nb, mb, sb = b
    n = na + nb
    delta = mb - ma
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(n > 0, nb / np.where(n > 0, n, 1), 0.0)
        mean = ma + delta * w
        m2 = sa + sb + delta * delta * na * w
    return n, mean, m2


def _moments_1d(v: np.ndarray) -> tuple[float, float, float]:
    if v.size == 0:
        return 0.0, 0.0, 0.0
    mean = float(v.mean())
    return float(v.size), mean, float(np.square(v - mean).sum())


def label_moments(y_rows: np.ndarray) -> tuple[tuple, tuple]:
    """(count, mean, M2) of the finite ``ret_60m`` and of ``log rv_10m`` where rv_10m > 0, in float64."""
    ret = np.asarray(y_rows[:, 0], np.float64)
    rv = np.asarray(y_rows[:, 1], np.float64)
    return _moments_1d(ret[np.isfinite(ret)]), _moments_1d(np.log(rv[np.isfinite(rv) & (rv > 0)]))


@dataclass
class Scaler:
    """Per-feature standardisation + target scales, fitted on the training span only.

    ``transform`` maps x -> clip((x - mean) / std, +-clip) as float32 with NaN -> 0 (0 is the
    training mean, so a missing lookback reads as "typical"). Target statistics put both labels
    on unit scale for the loss: ret_60m / ret_scale and (log rv_10m - lrv_mean) / lrv_std.
    """

    mean: np.ndarray | None = None  # [F] float64
    std: np.ndarray | None = None   # [F] float64, constant features get 1
    clip: float = 10.0
    ret_scale: float = 1.0
    lrv_mean: float = 0.0
    lrv_std: float = 1.0
    feature_names: list[str] | None = None

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def fit(self, X_rows: np.ndarray, y_rows: np.ndarray | None = None, rows: np.ndarray | None = None,
            feature_names: Sequence[str] | None = None) -> "Scaler":
        """Fit feature statistics on ``X_rows[rows]`` and target statistics on ``y_rows``.

        Args:
            X_rows: [N, F] features (NaN ignored).
            y_rows: [M, 2] (ret_60m, rv_10m) training labels; None keeps unit target scales.
            rows: optional row indices into X_rows (avoids copying the training rows).
            feature_names: stored so a bundle can check the column order at load time.
        """
        rows = np.arange(len(X_rows)) if rows is None else np.asarray(rows)
        if rows.size == 0:
            raise ValueError("Scaler.fit got no training rows")
        ret, lrv = label_moments(y_rows) if y_rows is not None else (None, None)
        return self.set_moments(nan_moments(X_rows, rows), ret, lrv, feature_names)

    def set_moments(self, features: tuple, ret: tuple | None = None, lrv: tuple | None = None,
                    feature_names: Sequence[str] | None = None) -> "Scaler":
        """Set the statistics from (count, mean, M2) triples: the one place that turns moments into
        scales, shared by :meth:`fit` and the streamed fit (``hfcast.features.stream``).

        Args:
            features: per-column (count, mean, M2) of the training rows (std uses ddof=1).
            ret, lrv: (count, mean, M2) of the finite ``ret_60m`` / positive ``log rv_10m`` labels
                (std with ddof=0); None keeps unit target scales.
        """
        n, mean, ss = (np.asarray(v, np.float64) for v in features)
        std = np.sqrt(np.divide(ss, n - 1, out=np.zeros_like(ss), where=n > 1))
        std[~(std > 1e-12)] = 1.0
        self.mean, self.std = mean, std
        self.feature_names = list(feature_names) if feature_names is not None else None
        if ret is not None:
            rn, _, rm2 = ret
            rs = math.sqrt(rm2 / rn) if rn > 1 else float("nan")
            self.ret_scale = rs if math.isfinite(rs) and rs > 0 else 1.0
        if lrv is not None and lrv[0] > 0:
            ln, lmean, lm2 = lrv
            lstd = math.sqrt(lm2 / ln)
            self.lrv_mean = float(lmean)
            self.lrv_std = lstd if ln > 1 and lstd > 0 else 1.0
        return self

    def transform(self, X: np.ndarray, inplace: bool = False) -> np.ndarray:
        """Standardise, clip, NaN -> 0; float32, same shape as ``X`` ([..., F]).

        Args:
            X: features in the last axis.
            inplace: overwrite ``X`` (must be float32) instead of allocating: the Dataset uses it
                on its freshly gathered batch so a batch costs one copy, not three.
        """
        if not self.fitted:
            raise RuntimeError("Scaler.transform called before fit/load")
        if X.shape[-1] != self.mean.size:
            raise ValueError(f"expected {self.mean.size} features in the last axis, got shape {X.shape}")
        if inplace and X.dtype != np.float32:
            raise ValueError(f"in-place transform needs float32 input, got {X.dtype}")
        out = X if inplace else np.array(X, dtype=np.float32, copy=True)
        out -= self.mean.astype(np.float32)
        out /= self.std.astype(np.float32)
        np.clip(out, -self.clip, self.clip, out=out)  # also maps +-inf to +-clip
        np.copyto(out, 0.0, where=np.isnan(out))
        return out

    def scale_targets(self, y: np.ndarray) -> np.ndarray:
        """(ret_60m, rv_10m) -> model units (ret / ret_scale, (log rv - lrv_mean) / lrv_std); NaN stays NaN."""
        y = np.asarray(y, np.float32)
        ret = y[..., 0] / np.float32(self.ret_scale)
        rv = y[..., 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            lrv = np.where(rv > 0, (np.log(rv) - np.float32(self.lrv_mean)) / np.float32(self.lrv_std), np.nan)
        return np.stack([ret, lrv], axis=-1).astype(np.float32)

    def to_dict(self) -> dict:
        if not self.fitted:
            raise RuntimeError("Scaler.to_dict called before fit")
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "clip": self.clip,
                "ret_scale": self.ret_scale, "lrv_mean": self.lrv_mean, "lrv_std": self.lrv_std,
                "feature_names": self.feature_names}

    @classmethod
    def from_dict(cls, d: dict) -> "Scaler":
        try:
            return cls(mean=np.asarray(d["mean"], np.float64), std=np.asarray(d["std"], np.float64),
                       clip=float(d["clip"]), ret_scale=float(d["ret_scale"]), lrv_mean=float(d["lrv_mean"]),
                       lrv_std=float(d["lrv_std"]), feature_names=d.get("feature_names"))
        except KeyError as exc:
            raise ValueError(f"scaler dict is missing key {exc}; keys present: {sorted(d)}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Scaler":
        return cls.from_dict(json.loads(Path(path).read_text()))


def fit_scaler(wa: WindowArrays) -> Scaler:
    """A Scaler fitted on the rows covered by ``wa``'s windows and the labels at their ends."""
    y = wa.labels() if wa.y is not None else None
    return Scaler().fit(wa.X, y, rows=np.flatnonzero(wa.rows_covered()), feature_names=wa.feature_names)


class WindowDataset(Dataset):
    """Torch Dataset over ``wa``'s windows; scales each requested batch on the fly (nothing up front).

    ``ds[i]`` -> (x [30, F] float32 scaled, y [2] float32 in model units, NaN = missing label).
    ``ds[list_of_i]`` returns a whole batch [k, 30, F] / [k, 2] with one gather, which is what
    :func:`make_loader` uses (a per-item collate would call Python 256 times per batch).
    """

    def __init__(self, wa: WindowArrays, scaler: Scaler):
        self.wa, self.scaler = wa, scaler
        self._y = scaler.scale_targets(wa.labels()) if wa.y is not None else None  # [M, 2], tiny

    def __len__(self) -> int:
        return len(self.wa)

    def __getitem__(self, i):
        w = self.wa.windows(i)  # a single window is a view of X: copy it before scaling in place
        w = w.copy() if np.may_share_memory(w, self.wa.X) else w
        x = torch.from_numpy(self.scaler.transform(np.ascontiguousarray(w), inplace=True))
        if self._y is None:
            y = torch.full((*x.shape[:-2], 2), float("nan"))
        else:
            y = torch.from_numpy(np.ascontiguousarray(self._y[i]))
        return x, y


class BatchIndexSampler(Sampler):
    """Yields index arrays of one batch each (a seeded permutation when shuffling).

    Index arrays rather than torch's per-item Python lists: a list of ints costs ~40 bytes a
    window, more than the window itself costs here.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool):
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(int(self.seed))).numpy()
        else:
            order = np.arange(self.n)
        for b in range(len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


def make_loader(ds: WindowDataset, batch_size: int = 256, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, num_workers: int = 0) -> DataLoader:
    """A DataLoader yielding (x [B, 30, F], y [B, 2]) batches; shuffling is seeded (reproducible)."""
    sampler = BatchIndexSampler(len(ds), batch_size, shuffle, seed, drop_last)
    return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=num_workers)


#: the catalogue features :func:`synthetic_feature_frame` computes beside its ``f*`` columns (what the
#: baselines and the floor read from every window: hfcast.models.baselines)
SYNTHETIC_SIDE_FEATURES = ("past_ret_1m", "past_ret_60m", "rv_5m", "rv_30m", "rv_60m", "ewma_vol_10", "ewma_vol_60",
                           "har_rv_d", "har_rv_w", "tod_sin", "tod_cos", "minutes_to_close")


def synthetic_feature_names(n_features: int = 8) -> list[str]:
    """The feature columns of :func:`synthetic_feature_frame`, in order."""
    return [*(f"f{j}" for j in range(n_features)), *SYNTHETIC_SIDE_FEATURES]


def _ewm(x: np.ndarray, halflife: float) -> np.ndarray:
    """pandas ``ewm(halflife, adjust=False)`` over the finite values from the first one (the catalogue's)."""
    return pd.Series(x).ewm(halflife=halflife, adjust=False, ignore_na=True).mean().to_numpy()


def _rolling_rv(r2: np.ndarray, k: int) -> np.ndarray:
    """sqrt(k * mean of r^2 over the last k minutes, NaN excluded): the catalogue's rv_k."""
    return np.sqrt(k * pd.Series(r2).rolling(k, min_periods=1).mean().to_numpy())


def synthetic_feature_frame(n_symbols: int = 4, n_days: int = 2, n_features: int = 8, seed: int = 0,
                            start: str = "2024-01-02") -> pd.DataFrame:
    """A features-partition-shaped frame with a planted signal, for tests, benchmarks and demos.

    One-minute log mid returns are simulated with a drift ``f0`` predicts and a volatility ``f1``
    drives (both AR(1) series), around a per-symbol level that persists across days; the labels are
    computed from those returns exactly as the features engine does (``ret_60m``, ``rv_10m``, missing
    near the close), and so are the catalogue features the baselines read from every window
    (:data:`SYNTHETIC_SIDE_FEATURES`). The other ``f*`` features are noise.
    """
    rng = np.random.default_rng(seed)
    frames = []
    levels = np.log(3e-4) + 0.3 * rng.standard_normal(n_symbols)  # per-minute vol level of each symbol
    daily_rv: list[list[float]] = [[] for _ in range(n_symbols)]
    for day in trading_days(start, n_days):
        ts = session_minutes_utc(day)
        m = ts.size
        t = np.arange(m)
        for s in range(n_symbols):
            f = rng.standard_normal((m, n_features)).astype(np.float32)
            for j, phi in ((0, 0.95), (1, 0.97)):  # smooth signal features: AR(1)
                for i in range(1, m):
                    f[i, j] = phi * f[i - 1, j] + math.sqrt(1 - phi * phi) * f[i, j]
            levels[s] = 0.8 * levels[s] + 0.2 * np.log(3e-4) + 0.1 * rng.standard_normal()
            u_shape = 0.4 * (2 * t / (m - 1) - 1) ** 2
            sigma = np.exp(levels[s] + 0.8 * f[:, 1] + u_shape)
            r = 2.5e-4 * f[:, 0] + sigma * rng.standard_normal(m)
            r[0] = np.nan  # no overnight return
            p = np.concatenate([[0.0], np.cumsum(r[1:])])
            r2 = r * r
            df = pd.DataFrame(f, columns=[f"f{j}" for j in range(n_features)])
            df.insert(0, "ts", ts)
            df.insert(0, "symbol", f"S{s:03d}")
            df["past_ret_1m"] = r
            df["past_ret_60m"] = np.where(t > 0, p - p[np.maximum(t - 60, 0)], np.nan)
            for k in (5, 30, 60):
                df[f"rv_{k}m"] = _rolling_rv(r2, k)
            for h in (10, 60):
                df[f"ewma_vol_{h}"] = np.sqrt(_ewm(r2, h))
            hist = daily_rv[s]
            df["har_rv_d"] = np.sqrt(hist[-1]) if hist else np.nan
            df["har_rv_w"] = np.sqrt(np.mean(hist[-5:])) if hist else np.nan
            ang = 2 * np.pi * t / m
            df["tod_sin"], df["tod_cos"], df["minutes_to_close"] = np.sin(ang), np.cos(ang), m - 1.0 - t
            fwd = np.concatenate([np.nan_to_num(r2), np.zeros(10)])
            csum = np.concatenate([[0.0], np.cumsum(fwd)])
            df["ret_60m"] = np.where(t < m - 60, p[np.minimum(t + 60, m - 1)] - p, np.nan)
            df["rv_10m"] = np.where(t < m - 10, np.sqrt(csum[t + 11] - csum[t + 1]), np.nan)
            hist.append(float(np.nansum(r2)))
            frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    for c in SYNTHETIC_SIDE_FEATURES:
        out[c] = out[c].astype(np.float32)
    out["symbol"] = out["symbol"].astype("string")
    return out.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
