"""Causal array operations on a [S, T] panel (symbols x minutes of one session).

Every operation here reads column t only from columns <= t, so a feature built from them is
causal by construction (the look-ahead test checks it bit for bit). Rolling windows are
prefix-sum differences: numpy's cumsum is sequential, so a prefix never changes when later
values do. NaN marks "no observation"; windows use the observations they have.
"""

from __future__ import annotations

import numpy as np


class Prefix:
    """Prefix sums of one [S, T] series, reused for windows of several lengths.

    ``sum(w)`` / ``count(w)`` / ``mean(w)`` cover the valid values of minutes max(0, t-w+1)..t.
    """

    def __init__(self, x: np.ndarray):
        valid = ~np.isnan(x)
        s, t = x.shape
        self.t = t
        self.csum = np.zeros((s, t + 1))
        np.cumsum(np.where(valid, x, 0.0), axis=1, out=self.csum[:, 1:])
        self.ccnt = None
        if not valid.all():  # counts are analytic when nothing is missing (the common case)
            self.ccnt = np.zeros((s, t + 1))
            np.cumsum(valid, axis=1, out=self.ccnt[:, 1:])

    def sum(self, w: int) -> np.ndarray:
        return self.csum[:, 1:] - self.csum[:, _lo(self.t, w)]

    def count(self, w: int) -> np.ndarray:
        if self.ccnt is None:
            return np.broadcast_to(np.minimum(np.arange(1, self.t + 1), w).astype(float)[None, :],
                                   (self.csum.shape[0], self.t))
        return self.ccnt[:, 1:] - self.ccnt[:, _lo(self.t, w)]

    def mean(self, w: int) -> np.ndarray:
        n = self.count(w)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.sum(w) / n, np.nan)


def _lo(t: int, w: int) -> np.ndarray:
    """Prefix index where a window of w minutes ending at each t starts (partial early on)."""
    return np.maximum(np.arange(t) + 1 - w, 0)


def roll_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Mean of the valid values in the (partial) window; NaN where it holds none."""
    return Prefix(x).mean(w)


def first_valid(x: np.ndarray) -> np.ndarray:
    """Index of the first non-NaN value of each row ([S]); T where the row is all NaN."""
    valid = ~np.isnan(x)
    return np.where(valid.any(axis=1), valid.argmax(axis=1), x.shape[1])


def roll_constant(x: np.ndarray, w: int) -> np.ndarray:
    """True where the window's valid values are all equal (exact, so a z-score is never noise / noise).

    Counts changes between consecutive valid values (carried over NaN gaps) strictly inside the
    window; a window whose only value is one observation is constant.
    """
    xf = ffill(x)
    change = np.zeros_like(x)
    with np.errstate(invalid="ignore"):
        change[:, 1:] = ~np.isnan(xf[:, :-1]) & (xf[:, 1:] != xf[:, :-1])
    csum = np.zeros((x.shape[0], x.shape[1] + 1))
    np.cumsum(change, axis=1, out=csum[:, 1:])
    lo = _lo(x.shape[1], w) + 1  # changes at minutes max(0,t-w+1)+1 .. t
    return (csum[:, 1:] - csum[:, lo]) == 0


def roll_mean_std(x: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rolling mean, population std and an exact "window is constant" mask.

    The row is shifted by its first valid value (a causal constant) before the prefix sums, which
    keeps E[x^2] - E[x]^2 accurate for prices (~100) with small intraday moves.
    """
    f = first_valid(x)
    rows = np.arange(x.shape[0])
    shift = x[rows, np.minimum(f, x.shape[1] - 1)]
    shift = np.where(np.isnan(shift), 0.0, shift)[:, None]
    xs = x - shift
    p1 = Prefix(xs)
    s1, n = p1.sum(w), p1.count(w)
    s2 = Prefix(xs * xs).sum(w)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(n > 0, s1 / n, np.nan)
        var = np.maximum(s2 / n - m * m, 0.0)
    return m + shift, np.sqrt(var), roll_constant(x, w)


def zscore(x: np.ndarray, w: int) -> np.ndarray:
    """(x - mean) / std over the window; 0 where the window is constant."""
    m, sd, const = roll_mean_std(x, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (x - m) / sd
    return np.where(const & ~np.isnan(x), 0.0, z)


def lag_diff(x: np.ndarray, k: int) -> np.ndarray:
    """x_t - x_max(t-k, f), f = the row's first valid minute; NaN for t <= f (nothing to compare)."""
    s, t = x.shape
    f = first_valid(x)[:, None]
    cols = np.arange(t)[None, :]
    ref = np.maximum(cols - k, f)
    ref = np.minimum(ref, t - 1)
    out = x - np.take_along_axis(x, ref, axis=1)
    return np.where(cols > f, out, np.nan)


def lag(x: np.ndarray, k: int = 1) -> np.ndarray:
    """x shifted k minutes later within the day (NaN for the first k minutes)."""
    out = np.full_like(x, np.nan)
    out[:, k:] = x[:, :-k]
    return out


def ewm(x: np.ndarray, alpha: float) -> np.ndarray:
    """EWMA with pandas ``adjust=False`` semantics: starts at the first valid value; NaN holds the state."""
    out = np.empty_like(x)
    state = np.full(x.shape[0], np.nan)
    for t in range(x.shape[1]):
        xt = x[:, t]
        upd = (1.0 - alpha) * state + alpha * xt
        state = np.where(np.isnan(state), xt, np.where(np.isnan(xt), state, upd))
        out[:, t] = state
    return out


def halflife_alpha(halflife: float) -> float:
    return 1.0 - np.exp(-np.log(2.0) / halflife)


def span_alpha(span: float) -> float:
    return 2.0 / (span + 1.0)


def ffill(x: np.ndarray) -> np.ndarray:
    """Forward-fill NaN along minutes (causal); leading NaN stays NaN."""
    valid = ~np.isnan(x)
    idx = np.where(valid, np.arange(x.shape[1])[None, :], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    return np.take_along_axis(x, idx, axis=1)


def xs_mean(x: np.ndarray) -> np.ndarray:
    """Mean over symbols at each minute ([S, T] -> [1, T]); NaN where no symbol has a value."""
    s, n = np.nansum(x, axis=0), (~np.isnan(x)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / n, np.nan)[None, :]


def xs_pct_rank(x: np.ndarray) -> np.ndarray:
    """(average rank - 1) / (n - 1) across symbols at each minute; 0.5 when n = 1; NaN stays NaN.

    Sorted per minute (NaN sort last); ties share the average of their positions.
    """
    xt = np.ascontiguousarray(x.T)  # [T, S]
    t, s = xt.shape
    order = np.argsort(xt, axis=1, kind="stable")
    v = np.take_along_axis(xt, order, axis=1)
    n = (~np.isnan(xt)).sum(axis=1, keepdims=True)
    pos = np.broadcast_to(np.arange(s)[None, :], (t, s))
    new_grp = np.ones((t, s), dtype=bool)
    new_grp[:, 1:] = v[:, 1:] != v[:, :-1]  # NaN != NaN: NaN positions are their own groups
    start = np.maximum.accumulate(np.where(new_grp, pos, 0), axis=1)
    end_grp = np.ones((t, s), dtype=bool)
    end_grp[:, :-1] = new_grp[:, 1:]
    end = np.minimum.accumulate(np.where(end_grp, pos, s)[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(n > 1, (start + end) / 2.0 / (n - 1), 0.5)
    pct = np.where(np.isnan(v), np.nan, pct)
    out = np.empty_like(xt)
    np.put_along_axis(out, order, pct, axis=1)
    return out.T
