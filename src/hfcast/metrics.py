"""Forecast scores: volatility loss, return correlation, interval coverage, calibration.

Every function drops the rows where any input is missing (a label that would cross the close is
NaN, not zero) and returns ``nan`` when nothing is left, so a fold with no labelled rows reports
"no score" rather than a misleading number.

Volatility is scored on VARIANCES: ``qlike(var_hat, var_true)`` takes squared volatilities. QLIKE
is the loss that ranks variance forecasts consistently even when the "truth" is a noisy realized
proxy (Patton 2011), which is why the comparison table leads with it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _clean(*arrays: np.ndarray) -> list[np.ndarray]:
    """Arrays as float64 with every row that has a NaN/inf in any of them removed."""
    arrs = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    n = {a.shape[0] for a in arrs}
    if len(n) != 1:
        raise ValueError(f"metric inputs must have the same length, got {[a.shape[0] for a in arrs]}")
    mask = np.ones(arrs[0].shape[0], dtype=bool)
    for a in arrs:
        mask &= np.isfinite(a)
    return [a[mask] for a in arrs]


def qlike(var_hat: np.ndarray, var_true: np.ndarray, floor: float = 1e-18) -> float:
    """QLIKE loss on variances: ``mean(r/h - log(r/h) - 1)`` with ``r`` true, ``h`` forecast.

    Zero for a perfect forecast and positive otherwise; it punishes under-forecasting volatility
    more than over-forecasting. Rows whose realized variance is not positive (a flat 10 minutes:
    the quote never left its tick) are left out, as QLIKE needs a positive proxy: flooring ``r``
    instead adds ``-log(floor)`` (41 at 1e-18) per such row, a constant that swamps every ratio of
    two QLIKEs (0.3% flat rows on the simulator moved har_x over har_tod from 0.78 to 0.84; a
    thinly traded symbol has far more). :func:`flat_share` says how many rows that was. Forecasts
    are floored at ``floor`` so the log stays finite.

    Args:
        var_hat: forecast variances (e.g. ``rv_10m_pred ** 2``).
        var_true: realized or latent variances.
    """
    loss = qlike_rows(var_hat, var_true, floor)
    loss = loss[np.isfinite(loss)]
    return float(loss.mean()) if loss.size else float("nan")


def qlike_rows(var_hat: np.ndarray, var_true: np.ndarray, floor: float = 1e-18) -> np.ndarray:
    """:func:`qlike`'s loss per row, aligned with the inputs: NaN where it scores nothing (a
    missing value, or a realized variance that is not positive). For paired tests of two
    forecasts of the same rows (the gain bound of :func:`hfcast.selection.vol_candidates`)."""
    h = np.asarray(var_hat, np.float64).ravel()
    r = np.asarray(var_true, np.float64).ravel()
    if h.shape != r.shape:
        raise ValueError(f"metric inputs must have the same length, got {[h.shape[0], r.shape[0]]}")
    out = np.full(h.shape, np.nan)
    keep = np.isfinite(h) & np.isfinite(r) & (r > 0)
    ratio = r[keep] / np.maximum(h[keep], floor)
    out[keep] = ratio - np.log(ratio) - 1.0
    return out


def flat_share(var_true: np.ndarray) -> float:
    """Share of the labelled rows whose realized variance is not positive (left out of :func:`qlike`)."""
    r = np.asarray(var_true, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    return float(np.mean(r <= 0)) if r.size else float("nan")


def mse(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean squared error."""
    p, t = _clean(pred, true)
    return float(np.mean((p - t) ** 2)) if p.size else float("nan")


def ic(pred: np.ndarray, true: np.ndarray) -> float:
    """Information coefficient: Pearson correlation of forecast and outcome (pooled).

    A constant forecast (the zero-return baseline) carries no information: its IC is 0, not NaN,
    so it can sit in a comparison table.
    """
    p, t = _clean(pred, true)
    if p.size < 3 or t.std() == 0:
        return float("nan")
    if p.std() == 0:
        return 0.0
    return float(np.corrcoef(p, t)[0, 1])


def rank_ic(pred: np.ndarray, true: np.ndarray) -> float:
    """Spearman rank correlation (IC of ranks): robust to the fat tails of minute returns."""
    p, t = _clean(pred, true)
    if p.size < 3:
        return float("nan")
    return ic(pd.Series(p).rank().to_numpy(), pd.Series(t).rank().to_numpy())


def cross_sectional_ic(pred: np.ndarray, true: np.ndarray, groups: np.ndarray, min_names: int = 5) -> float:
    """Mean over minutes of the cross-sectional Pearson IC (the number a long-short book earns on).

    Args:
        groups: the minute (``ts``) of each row; minutes with fewer than ``min_names`` labelled
            symbols are skipped.
    """
    ics, varies = cross_sectional_ics(pred, true, groups, min_names)
    if ics.size:
        return float(pd.Series(ics).mean())
    return 0.0 if varies else float("nan")  # constant forecast: no information


def cross_sectional_ics(pred: np.ndarray, true: np.ndarray, groups: np.ndarray,
                        min_names: int = 5) -> tuple[np.ndarray, bool]:
    """The per-minute ICs behind :func:`cross_sectional_ic` and whether any qualifying minute's
    outcomes vary. Why apart: minutes never span two dates, so a scorer that reads a span date by
    date (hfcast.scoring) sums these per chunk and gets the pooled mean exactly."""
    df = pd.DataFrame({"p": np.asarray(pred, dtype=np.float64), "t": np.asarray(true, dtype=np.float64),
                       "g": np.asarray(groups)})
    df = df[np.isfinite(df["p"]) & np.isfinite(df["t"])]
    if not df.empty:
        df = df[df.groupby("g", sort=False)["p"].transform("size") >= min_names]
    if df.empty:
        return np.empty(0), False
    dp = df["p"] - df.groupby("g")["p"].transform("mean")
    dt = df["t"] - df.groupby("g")["t"].transform("mean")
    s = pd.DataFrame({"g": df["g"], "xy": dp * dt, "xx": dp * dp, "yy": dt * dt}).groupby("g").sum()
    ok = (s["xx"] > 0) & (s["yy"] > 0)
    return (s["xy"][ok] / np.sqrt(s["xx"][ok] * s["yy"][ok])).to_numpy(np.float64), bool((s["yy"] > 0).any())


def hit_rate(pred: np.ndarray, true: np.ndarray) -> float:
    """Share of rows where the forecast sign equals the outcome sign.

    Zero outcomes are dropped; a zero forecast makes no call and counts as half a hit (a coin
    flip), so the zero-return baseline scores 0.5, not 0.
    """
    p, t = _clean(pred, true)
    keep = t != 0
    if not keep.any():
        return float("nan")
    p, t = p[keep], t[keep]
    return float(np.mean(np.where(p == 0, 0.5, np.sign(p) == np.sign(t))))


def coverage(lo: np.ndarray, hi: np.ndarray, y: np.ndarray) -> float:
    """Share of outcomes inside ``[lo, hi]`` (an 80% interval should give about 0.8)."""
    a, b, v = _clean(lo, hi, y)
    return float(np.mean((v >= a) & (v <= b))) if v.size else float("nan")


def reliability(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Calibration curve: per equal-width confidence bin, mean confidence, hit frequency, count."""
    c, k = _clean(conf, correct)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(c, edges[1:-1], right=False), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        m = idx == b
        rows.append({"bin": b, "lo": edges[b], "hi": edges[b + 1], "n": int(m.sum()),
                     "conf": float(c[m].mean()) if m.any() else float("nan"),
                     "freq": float(k[m].mean()) if m.any() else float("nan")})
    return pd.DataFrame(rows)


def ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error: count-weighted mean |mean confidence - hit frequency| over bins.

    Args:
        conf: predicted probabilities in [0, 1].
        correct: 1 where the event happened (sign right, rv within +-25%), else 0.
    """
    tab = reliability(conf, correct, n_bins)
    tab = tab[tab["n"] > 0]
    if tab.empty:
        return float("nan")
    w = tab["n"] / tab["n"].sum()
    return float((w * (tab["conf"] - tab["freq"]).abs()).sum())


def error_by_decile(conf: np.ndarray, abs_err: np.ndarray, n: int = 10) -> pd.DataFrame:
    """Mean absolute error per confidence quantile bucket (decile 0 = least confident).

    A useful confidence makes the error fall from the first decile to the last. Ties in the
    confidence (an isotonic map is a step function; a confidence that ranks nothing is one value)
    are broken in a fixed pseudo-random order, so buckets stay equal-sized and tied rows are not
    split by where they happen to sit in the file (row order is symbol order: a constant
    confidence would otherwise "rank" symbols).
    """
    c, e = _clean(conf, abs_err)
    if c.size == 0:
        return pd.DataFrame(columns=["decile", "conf", "abs_err", "n"])
    order = np.lexsort((np.random.default_rng(0).permutation(c.size), c))
    bucket = np.empty(c.size, dtype=np.int64)
    bucket[order] = np.minimum((np.arange(c.size) * n) // c.size, n - 1)
    df = pd.DataFrame({"decile": bucket, "conf": c, "abs_err": e})
    out = df.groupby("decile").agg(conf=("conf", "mean"), abs_err=("abs_err", "mean"), n=("conf", "size"))
    return out.reset_index()
