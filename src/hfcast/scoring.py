"""Test scores accumulated a chunk of dates at a time, so a year of test rows is scored whole
without being held whole.

Why: :func:`hfcast.evaluate.score` reads one frame of every row. A walk-forward over a year of
1000 symbols has ~10^8 test rows per model; the comparison needs every model's pooled and
per-fold scores on ALL of them, and a predictions table a person can open. :class:`ScoreStream`
keeps, per model:

- the mergeable statistics of every score that allows it (QLIKE, MSE, IC and the truth scores as
  sums and co-moments; hit rate, coverage, confidence means; the ECE's fixed bins; the
  cross-sectional IC as a sum over minutes, which never span two dates); merged over chunks they
  give the score of all rows up to float rounding;
- a seeded sample of rows (:class:`BottomK`: the rows with the smallest hash of
  ``(symbol, ts)``, so every model keeps the SAME rows) for the scores that need every row at
  once - the rank IC and the error-by-confidence-decile figures - and for the predictions table
  and plots.

While the sample still holds every row of a fold (or of the whole run), that score is
:func:`hfcast.evaluate.score` of those rows in the usual (fold, symbol, ts) order: small data gets
exactly the numbers it always got; only above the sample size do the merged statistics and the
sample take over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from hfcast import metrics as M

_ORDER = ("fold", "symbol", "ts")  # the order a score reads rows in (ties in decile buckets)


def utc_index(ts: Any) -> pd.DatetimeIndex:
    """Timestamps as a UTC DatetimeIndex (naive ones are taken as UTC), without a Python object per
    row (``Series.to_numpy()`` of tz-aware stamps makes one)."""
    idx = ts if isinstance(ts, pd.DatetimeIndex) else pd.DatetimeIndex(ts)
    return idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")


def row_keys(symbol: Any, ts: Any, seed: int = 0) -> np.ndarray:
    """A seeded pseudo-random uint64 per row from its identity ``(symbol, ts)`` alone: the same
    row gets the same key in every model, chunk and process."""
    t = utc_index(ts).as_unit("ns").asi8
    frame = pd.DataFrame({"s": np.asarray(symbol, dtype=object).astype(str), "t": t})
    return pd.util.hash_pandas_object(frame, index=False, hash_key=f"{int(seed):016d}"[-16:]).to_numpy()


class BottomK:
    """The ``k`` rows with the smallest keys of everything added (all rows while fewer): a uniform
    seeded sample of fixed size, kept in the order rows arrived.

    Args:
        k: rows kept (None = every row).
    """

    def __init__(self, k: int | None):
        if k is not None and k < 1:
            raise ValueError(f"a row sample needs k >= 1 (or None for every row), got {k}")
        self.k = k
        self.seen = 0
        self._frame: pd.DataFrame | None = None
        self._keys = np.empty(0, np.uint64)

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, rows: pd.DataFrame, keys: np.ndarray) -> None:
        keys = np.asarray(keys, np.uint64)
        self.seen += len(rows)
        if self.k is not None and len(self._keys) >= self.k:  # full: only keys below the largest kept can enter
            m = keys < self._keys.max()
            rows, keys = rows[m], keys[m]
        if not len(rows):
            return
        frame = rows.reset_index(drop=True) if self._frame is None else pd.concat([self._frame, rows], ignore_index=True)
        keys = np.concatenate([self._keys, keys])
        if self.k is not None and len(keys) > self.k:
            keep = np.sort(np.argpartition(keys, self.k - 1)[:self.k])
            frame, keys = frame.iloc[keep].reset_index(drop=True), keys[keep]
        self._frame, self._keys = frame, keys

    def frame(self, sort_by: Iterable[str] = ()) -> pd.DataFrame | None:
        """The kept rows (None before any), stably sorted by the ``sort_by`` columns they have."""
        if self._frame is None:
            return None
        by = [c for c in sort_by if c in self._frame]
        return self._frame.sort_values(by, kind="stable").reset_index(drop=True) if by else self._frame


# -- mergeable statistics -------------------------------------------------------------------------

def _finite(*arrays: np.ndarray) -> np.ndarray:
    m = np.ones(len(arrays[0]), bool)
    for a in arrays:
        m &= np.isfinite(a)
    return m


@dataclass
class _Mean:
    """A mean as (sum, count); from a chunk's mean and count so each score keeps its one definition."""

    total: float = 0.0
    count: float = 0.0

    @classmethod
    def of(cls, mean: float, count: int) -> "_Mean":
        return cls(float(mean) * count if count else 0.0, float(count))

    def merge(self, o: "_Mean") -> "_Mean":
        return _Mean(self.total + o.total, self.count + o.count)

    def value(self) -> float:
        return self.total / self.count if self.count else float("nan")


@dataclass
class _Count:
    n: float = 0.0

    def merge(self, o: "_Count") -> "_Count":
        return _Count(self.n + o.n)

    def value(self) -> float:
        return self.n


@dataclass
class _Corr:
    """Pearson IC as co-moments (n, means, M2s, cross), merged pairwise (Chan et al.); the edge
    cases of :func:`hfcast.metrics.ic`: nan below 3 rows or for a constant outcome, 0 for a
    constant forecast."""

    n: float = 0.0
    mp: float = 0.0
    mt: float = 0.0
    sp: float = 0.0
    st: float = 0.0
    c: float = 0.0

    @classmethod
    def of(cls, p: np.ndarray, t: np.ndarray) -> "_Corr":
        ok = _finite(p, t)
        p, t = p[ok], t[ok]
        if not p.size:
            return cls()
        mp, mt = float(p.mean()), float(t.mean())
        dp, dt = p - mp, t - mt
        return cls(float(p.size), mp, mt, float(dp @ dp), float(dt @ dt), float(dp @ dt))

    def merge(self, o: "_Corr") -> "_Corr":
        n = self.n + o.n
        if not n:
            return _Corr()
        w = self.n * o.n / n
        dp, dt = o.mp - self.mp, o.mt - self.mt
        return _Corr(n, self.mp + dp * o.n / n, self.mt + dt * o.n / n, self.sp + o.sp + dp * dp * w,
                     self.st + o.st + dt * dt * w, self.c + o.c + dp * dt * w)

    def value(self) -> float:
        if self.n < 3 or self.st <= 0:
            return float("nan")
        return 0.0 if self.sp <= 0 else float(self.c / np.sqrt(self.sp * self.st))


@dataclass
class _Max:
    """``ret_served``: whether any return forecast is non-zero."""

    top: float = -1.0

    def merge(self, o: "_Max") -> "_Max":
        return _Max(max(self.top, o.top))

    def value(self) -> float:
        return float(self.top > 0)


@dataclass
class _CrossSection:
    total: float = 0.0
    minutes: float = 0.0
    varies: bool = False

    def merge(self, o: "_CrossSection") -> "_CrossSection":
        return _CrossSection(self.total + o.total, self.minutes + o.minutes, self.varies or o.varies)

    def value(self) -> float:
        if self.minutes:
            return self.total / self.minutes
        return 0.0 if self.varies else float("nan")


@dataclass
class _Bins:
    """The ECE's fixed confidence bins as (count, sum of confidence, sum of hits) per bin."""

    sums: np.ndarray

    @classmethod
    def of(cls, conf: np.ndarray, correct: np.ndarray) -> "_Bins":
        tab = M.reliability(conf, correct).fillna(0.0)
        n = tab["n"].to_numpy(np.float64)
        return cls(np.column_stack([n, tab["conf"].to_numpy() * n, tab["freq"].to_numpy() * n]))

    def merge(self, o: "_Bins") -> "_Bins":
        return _Bins(self.sums + o.sums)

    def value(self) -> float:
        n, sc, sk = self.sums[self.sums[:, 0] > 0].T
        if not n.size:
            return float("nan")
        return float(np.sum(n / n.sum() * np.abs(sc / n - sk / n)))


def chunk_stats(df: pd.DataFrame) -> dict[str, Any]:
    """The mergeable statistics of one chunk of a predictions frame, by score name (the names and
    definitions of :func:`hfcast.evaluate.score`)."""
    from hfcast.evaluate import _col, ret_correct, rv_correct

    rp, y, vp, rv = (_col(df, c) for c in ("ret_60m_pred", "ret_60m", "rv_10m_pred", "rv_10m"))
    st: dict[str, Any] = {"n": _Count(len(df)), "n_ret": _Count(np.isfinite(y).sum()),
                          "n_rv": _Count(np.isfinite(rv).sum())}
    st["vol_qlike"] = _Mean.of(M.qlike(vp**2, rv**2), _finite(vp**2, rv**2).sum())
    st["vol_mse"] = _Mean.of(M.mse(vp, rv), _finite(vp, rv).sum())
    st["ret_ic"] = _Corr.of(rp, y)
    fin = np.isfinite(rp)
    st["ret_served"] = _Max(float(np.max(np.abs(rp[fin]))) if fin.any() else -1.0)
    if "ts" in df:
        ics, varies = M.cross_sectional_ics(rp, y, utc_index(df["ts"]).asi8)  # minute ids
        st["ret_ic_cs"] = _CrossSection(float(ics.sum()), float(ics.size), varies)
    st["ret_hit"] = _Mean.of(M.hit_rate(rp, y), (_finite(rp, y) & (y != 0)).sum())
    st["ret_mse"] = _Mean.of(M.mse(rp, y), _finite(rp, y).sum())
    for name, target, obs in (("ret", "ret_60m", y), ("rv", "rv_10m", rv)):
        lo, hi = _col(df, f"{target}_lo"), _col(df, f"{target}_hi")
        st[f"{name}_coverage"] = _Mean.of(M.coverage(lo, hi, obs), _finite(lo, hi, obs).sum())
    st["ret_ece"] = _Bins.of(_col(df, "ret_60m_conf"), ret_correct(rp, y))
    st["rv_ece"] = _Bins.of(_col(df, "rv_10m_conf"), rv_correct(vp, rv))
    for name, col in (("ret_conf_mean", "ret_60m_conf"), ("rv_conf_mean", "rv_10m_conf")):
        c = _col(df, col)
        st[name] = _Mean(float(np.nansum(c)), float((~np.isnan(c)).sum()))
    if "true_var_10m" in df:
        tv = _col(df, "true_var_10m")
        st["vol_qlike_truth"] = _Mean.of(M.qlike(vp**2, tv), _finite(vp**2, tv).sum())
        tsd = np.sqrt(np.maximum(tv, 0))
        st["vol_mse_truth"] = _Mean.of(M.mse(vp, tsd), _finite(vp, tsd).sum())
    if "true_ret_60m" in df:
        st["ret_ic_truth"] = _Corr.of(rp, _col(df, "true_ret_60m"))
    return st


def merge_stats(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    if a is None:
        return b
    return {k: a[k].merge(v) if k in a else v for k, v in b.items()} | {k: v for k, v in a.items() if k not in b}


class ScoreStream:
    """One model's test scores, per fold and pooled, fed one chunk of test rows at a time.

    Args:
        sample_rows: rows kept for the table, the plots and the scores that need every row at once
            (None = every row: exactly :func:`hfcast.evaluate.score_folds`).
        seed: the sample's seed.
    """

    def __init__(self, sample_rows: int | None = None, seed: int = 0):
        self.seed = seed
        self._sample = BottomK(sample_rows)
        self._folds: dict[int, dict[str, Any]] = {}
        self._pooled: dict[str, Any] | None = None

    @property
    def n_rows(self) -> int:
        """Test rows scored so far."""
        return self._sample.seen

    def add(self, rows: pd.DataFrame, keys: np.ndarray | None = None) -> None:
        """Score a chunk: a predictions frame of ONE fold (its ``fold`` column; 0 without) holding
        every row of each of its minutes (whole dates do). ``keys``: :func:`row_keys` of its rows
        when the caller has them (every model of a chunk shares them)."""
        if not len(rows):
            return
        fold = int(rows["fold"].iloc[0]) if "fold" in rows else 0
        stats = chunk_stats(rows)
        self._folds[fold] = merge_stats(self._folds.get(fold), stats)
        self._pooled = merge_stats(self._pooled, stats)
        self._sample.add(rows, row_keys(rows["symbol"], rows["ts"], self.seed) if keys is None else keys)

    def frame(self) -> pd.DataFrame | None:
        """The sampled rows (every row while they fit) in (fold, symbol, ts) order."""
        return self._sample.frame(_ORDER)

    @property
    def sampled(self) -> bool:
        return len(self._sample) < self._sample.seen

    def pooled(self) -> dict[str, float]:
        """Scores over every row added (:func:`hfcast.evaluate.score`'s keys)."""
        if self._pooled is None:
            raise ValueError("no test rows were scored")
        return _finish(self.frame(), self._pooled)

    def per_fold(self) -> pd.DataFrame:
        """One row of scores per fold, ``fold`` first (:func:`hfcast.evaluate.score_folds`)."""
        rows = self.frame()
        has_fold = rows is not None and "fold" in rows
        return pd.DataFrame([{"fold": k, **_finish(rows[rows["fold"] == k] if has_fold else rows, st)}
                             for k, st in sorted(self._folds.items())])


def _finish(rows: pd.DataFrame, stats: dict[str, Any]) -> dict[str, float]:
    """:func:`hfcast.evaluate.score` of the rows; when they are a sample, every mergeable score
    replaced by its value over all rows."""
    from hfcast.evaluate import score

    out = score(rows)
    if len(rows) == stats["n"].value():
        return out
    for k, st in stats.items():
        if k in out:
            out[k] = float(st.value())
    return out
