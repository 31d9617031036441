"""Turn a model's raw uncertainty into calibrated probabilities and 80% intervals.

A network's heteroscedastic head gives a sigma, not a probability. On the validation span (never
the test span) the :class:`Calibrator` learns:

- return confidence = P(predicted sign is right) as an isotonic, increasing function of the
  signal-to-noise ``|mu| / sigma``;
- volatility confidence = P(|rv / rv_hat - 1| <= 0.25) as an isotonic, decreasing function of the
  forecast's log-vol uncertainty ``lrv_sigma``;
- 80% intervals by split-conformal scaling: ``q`` is the conformal 0.8 quantile of the normalised
  residuals, so ``mu +- q sigma`` (return) and ``exp(log rv_hat +- q lrv_sigma)`` (volatility)
  cover about 80% of new outcomes whenever validation and test are exchangeable.

Everything it stores is a short list of floats, so ``to_dict`` is plain JSON (no pickle).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

#: output columns of every forecaster; the same tuple as ``hfcast.models.base.PRED_COLUMNS``
#: (defined here too because the model base imports this module: importing it back would cycle)
PRED_COLUMNS = ("ret_60m_pred", "ret_60m_conf", "ret_60m_lo", "ret_60m_hi",
                "rv_10m_pred", "rv_10m_conf", "rv_10m_lo", "rv_10m_hi")
PRED_KEYS = ("ret_mu", "ret_sigma", "rv_hat", "lrv_sigma")
VOL_TOLERANCE = 0.25  # "rv within +-25% of the forecast"
_EPS = 1e-12


def pava(y: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: the increasing least-squares fit to ``y`` (already sorted by x).

    Returns:
        (start, end, value) of each block: rows ``start[i]..end[i]`` (inclusive) share ``value[i]``.
    """
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=np.float64)
    vals, wts, starts, ends = [], [], [], []
    for i in range(y.size):
        vals.append(y[i]); wts.append(w[i]); starts.append(i); ends.append(i)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            wsum = wts[-2] + wts[-1]
            v = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wsum
            e = ends[-1]
            del vals[-1], wts[-1], starts[-1], ends[-1]
            vals[-1], wts[-1], ends[-1] = v, wsum, e
    return np.asarray(starts), np.asarray(ends), np.asarray(vals)


@dataclass
class IsotonicMap:
    """A monotone piecewise-linear map x -> p stored as knots (JSON-able)."""

    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, x: np.ndarray, target: np.ndarray, increasing: bool = True, max_bins: int = 100,
            clip: tuple[float, float] = (0.0, 1.0)) -> "IsotonicMap":
        """Fit on (x, 0/1 target). Rows are pre-pooled into at most ``max_bins`` equal-count bins of
        x: PAVA stays fast on millions of rows, and no step rests on a handful of validation rows
        (an isotonic fit on raw 0/1 outcomes overfits its extremes, which shows up as test ECE)."""
        x = np.asarray(x, dtype=np.float64)
        t = np.asarray(target, dtype=np.float64)
        ok = np.isfinite(x) & np.isfinite(t)
        x, t = x[ok], t[ok]
        if x.size == 0:
            raise ValueError("isotonic calibration needs at least one finite (x, target) row")
        order = np.argsort(x, kind="stable")
        x, t = x[order], t[order]
        nb = min(max_bins, x.size)
        cut = np.linspace(0, x.size, nb + 1).astype(np.int64)
        bx = np.add.reduceat(x, cut[:-1]) / np.diff(cut)
        bt = np.add.reduceat(t, cut[:-1]) / np.diff(cut)
        bw = np.diff(cut).astype(np.float64)
        ux, inv = np.unique(bx, return_inverse=True)  # pool tied x: a map must be a function
        if ux.size < bx.size:
            w = np.bincount(inv, weights=bw)
            bt = np.bincount(inv, weights=bt * bw) / w
            bx, bw = ux, w
        sign = 1.0 if increasing else -1.0
        s, e, v = pava(sign * bt, bw)
        v = sign * v
        xs, ys = [], []
        for a, b, val in zip(s, e, v):
            xs += [bx[a], bx[b]]
            ys += [val, val]
        ys = np.clip(ys, *clip)
        return cls(x=[float(a) for a in xs], y=[float(b) for b in ys])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not self.x:
            raise RuntimeError("IsotonicMap is not fitted")
        return np.interp(np.asarray(x, dtype=np.float64), self.x, self.y)


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """Split-conformal quantile: the ceil((n+1) level)-th smallest score (inf scores allowed)."""
    s = np.sort(np.asarray(scores, dtype=np.float64)[~np.isnan(scores)])
    if s.size == 0:
        raise ValueError("conformal calibration needs at least one finite residual")
    k = min(int(math.ceil((s.size + 1) * level)), s.size)
    q = float(s[k - 1])
    if not np.isfinite(q):
        raise ValueError(f"conformal {level:.0%} quantile is infinite: more than {1 - level:.0%} of "
                         "residuals are infinite (zero realized volatility?)")
    return q


def _arrays(pred: dict) -> dict[str, np.ndarray]:
    missing = [k for k in PRED_KEYS if k not in pred]
    if missing:
        raise KeyError(f"calibrator input is missing {missing}; expected keys {PRED_KEYS}")
    return {k: np.asarray(pred[k], dtype=np.float64).ravel() for k in PRED_KEYS}


@dataclass
class Calibrator:
    """Calibration maps fitted on validation rows; ``apply`` gives every PRED_COLUMNS output."""

    level: float = 0.8
    ret_conf: IsotonicMap = field(default_factory=IsotonicMap)
    vol_conf: IsotonicMap = field(default_factory=IsotonicMap)
    q_ret: float = float("nan")
    q_rv: float = float("nan")
    n_fit: int = 0

    @property
    def fitted(self) -> bool:
        return bool(self.ret_conf.x) and bool(self.vol_conf.x)

    def fit(self, pred: dict, y_ret: np.ndarray, y_rv: np.ndarray) -> "Calibrator":
        """Learn the maps from validation forecasts and their labels (NaN labels are dropped).

        Args:
            pred: ``{"ret_mu", "ret_sigma", "rv_hat", "lrv_sigma"}`` arrays in natural units.
            y_ret: realized ``ret_60m``.
            y_rv: realized ``rv_10m``.
        """
        p = _arrays(pred)
        y_ret = np.asarray(y_ret, dtype=np.float64).ravel()
        y_rv = np.asarray(y_rv, dtype=np.float64).ravel()
        n = p["ret_mu"].size
        if y_ret.size != n or y_rv.size != n:
            raise ValueError(f"labels ({y_ret.size}, {y_rv.size}) and forecasts ({n}) differ in length")
        sig = np.maximum(p["ret_sigma"], _EPS)
        m = np.isfinite(y_ret) & np.isfinite(p["ret_mu"]) & np.isfinite(sig) & (y_ret != 0)
        if m.sum() < 10:
            raise ValueError(f"return calibration needs >= 10 labelled validation rows, got {int(m.sum())}")
        z = np.abs(p["ret_mu"][m]) / sig[m]
        right = sign_right(p["ret_mu"][m], y_ret[m])
        self.ret_conf = IsotonicMap.fit(z, right, increasing=True)
        self.q_ret = conformal_quantile(np.abs(y_ret[m] - p["ret_mu"][m]) / sig[m], self.level)

        rv_hat = np.maximum(p["rv_hat"], _EPS)
        ls = np.maximum(p["lrv_sigma"], _EPS)
        mv = np.isfinite(y_rv) & np.isfinite(rv_hat) & np.isfinite(ls) & (y_rv >= 0)
        if mv.sum() < 10:
            raise ValueError(f"volatility calibration needs >= 10 labelled validation rows, got {int(mv.sum())}")
        within = (np.abs(y_rv[mv] / rv_hat[mv] - 1.0) <= VOL_TOLERANCE).astype(np.float64)
        self.vol_conf = IsotonicMap.fit(ls[mv], within, increasing=False)
        with np.errstate(divide="ignore"):
            resid = np.abs(np.log(y_rv[mv]) - np.log(rv_hat[mv])) / ls[mv]
        self.q_rv = conformal_quantile(resid, self.level)
        self.n_fit = int(m.sum())
        log.debug("calibrated on %d rows: q_ret=%.3f q_rv=%.3f", self.n_fit, self.q_ret, self.q_rv)
        return self

    def apply(self, pred: dict) -> dict[str, np.ndarray]:
        """Calibrated forecasts, confidences and 80% intervals keyed by PRED_COLUMNS."""
        if not self.fitted:
            raise RuntimeError("Calibrator.apply called before fit/from_dict")
        p = _arrays(pred)
        mu, sig = p["ret_mu"], np.maximum(p["ret_sigma"], _EPS)
        rv_hat = np.maximum(p["rv_hat"], _EPS)
        ls = np.maximum(p["lrv_sigma"], _EPS)
        lrv = np.log(rv_hat)
        return {
            "ret_60m_pred": mu,
            "ret_60m_conf": self.ret_conf(np.abs(mu) / sig),
            "ret_60m_lo": mu - self.q_ret * sig,
            "ret_60m_hi": mu + self.q_ret * sig,
            "rv_10m_pred": rv_hat,
            "rv_10m_conf": self.vol_conf(ls),
            "rv_10m_lo": np.exp(lrv - self.q_rv * ls),
            "rv_10m_hi": np.exp(lrv + self.q_rv * ls),
        }

    def to_dict(self) -> dict:
        """Plain-JSON state (lists and floats only)."""
        return {"level": self.level, "q_ret": self.q_ret, "q_rv": self.q_rv, "n_fit": self.n_fit,
                "ret_conf": {"x": self.ret_conf.x, "y": self.ret_conf.y},
                "vol_conf": {"x": self.vol_conf.x, "y": self.vol_conf.y}}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibrator":
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(level=float(d["level"]), q_ret=float(d["q_ret"]), q_rv=float(d["q_rv"]),
                       n_fit=int(d.get("n_fit", 0)),
                       ret_conf=IsotonicMap(list(d["ret_conf"]["x"]), list(d["ret_conf"]["y"])),
                       vol_conf=IsotonicMap(list(d["vol_conf"]["x"]), list(d["vol_conf"]["y"])))
        except KeyError as exc:
            raise ValueError(f"calibration dict is missing key {exc}; keys present: {sorted(d)}") from None


def sign_right(mu: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 where the forecast sign matches the outcome, 0 where it is opposite, 0.5 for a zero
    forecast (no directional call: a coin flip is right half the time, so a zero forecast's
    honest confidence is 0.5 whatever the market did)."""
    mu = np.asarray(mu, dtype=np.float64)
    out = (np.sign(mu) == np.sign(y)).astype(np.float64)
    out[mu == 0] = 0.5
    return out
