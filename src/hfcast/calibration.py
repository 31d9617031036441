"""Turn a model's raw uncertainty into calibrated probabilities and 80% intervals.

A network's heteroscedastic head gives a sigma, not a probability. On the validation span (never
the test span) the :class:`Calibrator` learns:

- return confidence = P(predicted sign is right) = ``Phi(a * s)``, a ONE-parameter probit in a
  signal score ``s >= 0`` with slope ``a >= 0``. Under a Gaussian forecast the hit probability is
  exactly ``Phi(|E y| / sd(y))``, so ``s = |mu| / sigma`` with ``a = 1`` is the ideal; ``a`` absorbs
  the shrinkage a noisy mu needs. The score is picked on validation among ``|mu|/sigma``,
  ``|mu|`` and ``|mu|/rv_hat`` (:data:`RET_SCORES`) by likelihood. Why not a free isotonic map:
  sign hits are strongly correlated (all symbols share a market factor in a minute and 60-minute
  returns of neighbouring minutes overlap), so a few validation days hold only some tens of
  independent outcomes; a free map fitted on them chases noise and was anti-informative on test.
  The slope is therefore shrunk toward 0 (the 0.5 coin flip) by its cluster-robust standard error
  (clusters = hour of the day across symbols, or blocks of consecutive rows when no timestamps
  are given): ``a <- a * t^2 / (1 + t^2)`` with ``t = a / se``. A score that does not rank sign
  accuracy on validation gives a confidence of about 0.5 everywhere, which is honest.
- volatility confidence = P(|rv / rv_hat - 1| <= 0.25) as an isotonic, decreasing function of the
  forecast's log-vol uncertainty ``lrv_sigma`` on a few (20) equal-count bins, or of a context
  score (:class:`VolContextConfidence`) when context is given and that score ranks errors out of
  fold; "ranks" = the top/bottom-decile error ratio on validation lies below 0.95 (the most
  confident tenth of the forecasts at least 5% closer than the least confident) at a one-sided
  97.5% bound from a bootstrap over hour clusters (:func:`decile_ratio_bound`). Why 0.95, not 1: a
  ranking worth a few percent of the error does not survive the move from validation to test days
  (the robustness bench's forecasters whose bound lay in 0.97-1.00 ranked 0.95-1.04 on their test
  days, two of seven not at all), so claiming it would mislead a user. Where neither
  ranks errors, the validation base rate P(within) for every row (flagged
  ``rv_10m_conf_informative = 0``);
- 80% intervals by split-conformal scaling: ``q`` is the conformal 0.8 quantile of the normalised
  residuals, so ``mu +- q sigma`` (return) and ``exp(log rv_hat +- q lrv_sigma)`` (volatility)
  cover about 80% of new outcomes whenever validation and test are exchangeable. Where more than
  20% of the validation rows had a flat 10 minutes (zero realized volatility: a thinly traded or
  tick-bound symbol), the volatility interval is ``[0, exp(log rv_hat + q lrv_sigma)]`` with ``q``
  the one-sided 0.8 quantile of the signed residual (``rv_lo_zero``).

Everything it stores is a short list of floats, so ``to_dict`` is plain JSON (no pickle).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from hfcast.contracts import INFO_COLUMNS, PRED_COLUMNS, VOL_TOLERANCE  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

PRED_KEYS = ("ret_mu", "ret_sigma", "rv_hat", "lrv_sigma")
VOL_BINS = 20  # equal-count bins of lrv_sigma before the isotonic vol-confidence fit
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


#: candidate signal scores for the return confidence: name -> f(|mu|, sigma, rv_hat)
RET_SCORES = {
    "z": lambda amu, sig, rv: amu / sig,           # signal-to-noise of the Gaussian forecast
    "abs_mu": lambda amu, sig, rv: amu,            # the forecast's size alone
    "mu_over_vol": lambda amu, sig, rv: amu / rv,  # size relative to the 10-minute vol forecast
}
CENTER_MIN = 0.1  # centre the return forecast when |median| > this x its sd (networks: 0.3-1.2; oracle: <= 0.05)
ROW_BLOCK = 390  # rows per cluster when fit() gets no groups: about one symbol-day of windows


def _cluster_ids(n: int, groups: np.ndarray | None) -> np.ndarray:
    if groups is None:
        return np.arange(n) // ROW_BLOCK
    g = np.asarray(groups).ravel()
    if g.size != n:
        raise ValueError(f"groups has {g.size} entries, forecasts {n}")
    return np.unique(g, return_inverse=True)[1].ravel()


@dataclass
class SignProbit:
    """P(sign right) = Phi(a * s): one slope ``a >= 0`` on a named score (JSON-able).

    One parameter cannot overfit a few validation days the way a free monotone map does, and
    ``s = 0`` (no call) maps to 0.5 by construction.
    """

    score: str = "z"
    a: float = float("nan")       # shrunk slope (used)
    a_ml: float = float("nan")    # maximum-likelihood slope before shrinkage
    se: float = float("nan")      # its cluster-robust standard error
    n_clusters: int = 0

    @property
    def fitted(self) -> bool:
        return bool(np.isfinite(self.a))

    @staticmethod
    def scores(mu: np.ndarray, sigma: np.ndarray, rv_hat: np.ndarray, score: str) -> np.ndarray:
        if score not in RET_SCORES:
            raise ValueError(f"unknown return-confidence score {score!r}; known: {sorted(RET_SCORES)}")
        return RET_SCORES[score](np.abs(mu), np.maximum(sigma, _EPS), np.maximum(rv_hat, _EPS))

    @classmethod
    def fit(cls, s: np.ndarray, hit: np.ndarray, clusters: np.ndarray, score: str = "z") -> "SignProbit":
        """Maximum likelihood for ``a`` on (score, 0/0.5/1 hit) rows, then shrinkage by ``se``.

        The standard error sums each cluster's score contributions (a sandwich estimator), so
        rows that move together count once, not hundreds of times.
        """
        from scipy.optimize import minimize_scalar
        from scipy.special import log_ndtr, ndtr

        s = np.asarray(s, dtype=np.float64)
        t = np.asarray(hit, dtype=np.float64)
        scale = float(np.sqrt(np.mean(s**2))) if s.size else 0.0
        if not np.isfinite(scale) or scale <= 0:
            return cls(score=score, a=0.0, a_ml=0.0, se=float("inf"), n_clusters=int(np.unique(clusters).size))
        x = s / scale

        def nll(b: float) -> float:
            return -float(np.sum(t * log_ndtr(b * x) + (1 - t) * log_ndtr(-b * x)))

        b = float(minimize_scalar(nll, bounds=(0.0, 20.0), method="bounded", options={"xatol": 1e-6}).x)
        p = np.clip(ndtr(b * x), 1e-9, 1 - 1e-9)
        dens = np.exp(-0.5 * (b * x) ** 2) / math.sqrt(2 * math.pi)
        grad = x * dens * (t - p) / (p * (1 - p))
        info = float(np.sum((x * dens) ** 2 / (p * (1 - p))))
        gsum = np.bincount(clusters, weights=grad)
        se = float(np.sqrt(np.sum(gsum**2)) / info) if info > 0 else float("inf")
        tstat2 = (b / se) ** 2 if se > 0 else float("inf")
        shrunk = b * tstat2 / (1.0 + tstat2) if np.isfinite(tstat2) else b
        return cls(score=score, a=shrunk / scale, a_ml=b / scale, se=se / scale, n_clusters=int(gsum.size))

    def __call__(self, s: np.ndarray) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError("SignProbit is not fitted")
        from scipy.special import ndtr

        return ndtr(self.a * np.asarray(s, dtype=np.float64))

    def log_lik(self, s: np.ndarray, hit: np.ndarray) -> float:
        p = np.clip(self(s), 1e-12, 1 - 1e-12)
        return float(np.sum(hit * np.log(p) + (1 - hit) * np.log1p(-p)))

    def to_dict(self) -> dict:
        return {"kind": "probit", "score": self.score, "a": self.a, "a_ml": self.a_ml, "se": self.se,
                "n_clusters": self.n_clusters}

    @classmethod
    def from_dict(cls, d: dict) -> "SignProbit":
        return cls(score=str(d["score"]), a=float(d["a"]), a_ml=float(d.get("a_ml", d["a"])),
                   se=float(d.get("se", "nan")), n_clusters=int(d.get("n_clusters", 0)))


def _quantile(scores: np.ndarray, level: float) -> float:
    """The ceil((n+1) level)-th smallest score (infinite scores allowed, and so an infinite result)."""
    s = np.sort(np.asarray(scores, dtype=np.float64)[~np.isnan(scores)])
    if s.size == 0:
        raise ValueError("conformal calibration needs at least one finite residual")
    return float(s[min(int(math.ceil((s.size + 1) * level)), s.size) - 1])


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """Split-conformal quantile: the ceil((n+1) level)-th smallest score (inf scores allowed)."""
    q = _quantile(scores, level)
    if not np.isfinite(q):
        raise ValueError(f"conformal {level:.0%} quantile is infinite: more than {1 - level:.0%} of "
                         "residuals are infinite (zero realized volatility?)")
    return q


#: the upper quantile where a bucket's validation rows were (nearly) all flat: hi = rv_hat e^(-10 sigma)
RV_Q_MIN = -10.0


def upper_quantile(scores: np.ndarray, level: float) -> float:
    """One-sided split-conformal quantile of SIGNED scores, ``-inf`` allowed (a flat 10 minutes lies
    below every upper bound of an interval that starts at 0)."""
    return max(_quantile(scores, level), RV_Q_MIN)


def _arrays(pred: dict) -> dict[str, np.ndarray]:
    missing = [k for k in PRED_KEYS if k not in pred]
    if missing:
        raise KeyError(f"calibrator input is missing {missing}; expected keys {PRED_KEYS}")
    return {k: np.asarray(pred[k], dtype=np.float64).ravel() for k in PRED_KEYS}


@dataclass
class Calibrator:
    """Calibration maps fitted on validation rows; ``apply`` gives every PRED_COLUMNS output."""

    level: float = 0.8
    ret_conf: SignProbit = field(default_factory=SignProbit)
    vol_conf: IsotonicMap = field(default_factory=IsotonicMap)
    q_ret: float = float("nan")
    q_rv: float = float("nan")
    n_fit: int = 0
    ret_offset: float = 0.0  # median validation ret_mu, subtracted from every return forecast
    center_ret: bool = True
    vol_ctx: "VolContextConfidence | None" = None  # context vol confidence (when fitted with context)
    q_ret_tod: list = field(default_factory=list)   # conformal quantiles by time-of-day bucket
    q_rv_tod: list = field(default_factory=list)
    vol_base_rate: float = float("nan")    # validation share of rows within VOL_TOLERANCE (NaN: older fit)
    vol_sigma_ratio: float = float("nan")     # validation decile error ratio of the sigma-only ranking
    vol_sigma_ratio_hi: float = float("nan")  # its one-sided upper bound (RV_BOUND_LEVEL, hour-cluster bootstrap)
    # the volatility interval starts at 0: more than 1 - level of the validation rows (pooled or in a
    # time-of-day bucket) had a flat 10 minutes, which no interval of positive bounds covers; q_rv is
    # then the one-sided quantile of the signed log residual
    rv_lo_zero: bool = False
    # targets ("ret", "rv") whose flag live dates contradicted (monitoring's ``conf`` rule, a version
    # tag read at load): never part of the bundle, which stays what was registered
    demoted: tuple[str, ...] = ()

    def demote(self, targets: "Sequence[str]") -> "Calibrator":
        """A copy whose confidences for ``targets`` claim nothing (constant, flag 0), as if validation
        had found no skill: what a confidence that live data contradicted must say."""
        bad = sorted(set(targets) - set(CONF_TARGETS))
        if bad:
            raise ValueError(f"unknown confidence target(s) {bad}; known: {CONF_TARGETS}")
        return replace(self, demoted=tuple(sorted({*self.demoted, *targets})))

    @property
    def ret_informative(self) -> bool:
        """Does the return confidence rank sign accuracy on validation (slope t-stat >= 2), and has
        no live check demoted it?"""
        rc = self.ret_conf
        return bool("ret" not in self.demoted and rc.fitted and rc.a > 0 and np.isfinite(rc.se)
                    and rc.a_ml >= RET_INFORMATIVE_T * rc.se)

    @property
    def rv_informative(self) -> bool:
        """Does the served vol confidence rank errors on validation: is the top/bottom-decile error
        ratio below RV_MATERIAL at RV_BOUND_LEVEL (the context model out of fold, else the forecast's sigma)?"""
        return self._ctx_informative or self._sigma_informative

    @property
    def _ctx_informative(self) -> bool:
        v = self.vol_ctx
        return "rv" not in self.demoted and v is not None and ranks_errors(v.oof_ratio, v.oof_ratio_hi)

    @property
    def _sigma_informative(self) -> bool:
        return "rv" not in self.demoted and ranks_errors(self.vol_sigma_ratio, self.vol_sigma_ratio_hi)

    @property
    def fitted(self) -> bool:
        return self.ret_conf.fitted and bool(self.vol_conf.x)

    def fit(self, pred: dict, y_ret: np.ndarray, y_rv: np.ndarray, groups: np.ndarray | None = None,
            ret_scores: tuple[str, ...] = ("z",), context: dict | None = None) -> "Calibrator":
        """Learn the maps from validation forecasts and their labels (NaN labels are dropped).

        Args:
            pred: ``{"ret_mu", "ret_sigma", "rv_hat", "lrv_sigma"}`` arrays in natural units.
            y_ret: realized ``ret_60m``.
            y_rv: realized ``rv_10m``.
            groups: optional cluster label per row for the return-confidence standard error
                (best: the window's end time floored to the hour, shared by all symbols); default
                blocks of ``ROW_BLOCK`` consecutive rows.
            ret_scores: candidate scores (:data:`RET_SCORES`); the one with the highest
                validation likelihood after shrinkage is kept. Default ``("z",)`` only: on the
                networks' validation spans the three candidates ranked sign accuracy about equally
                (rank correlation with hits 0.02-0.08 each, winner changing by fold), so picking
                among them per fit would add variance and no skill.
            context: optional arrays per row (:data:`CONTEXT_KEYS`); with them the volatility
                confidence is conditioned on context and the intervals are conformal by
                time-of-day bucket (pass the same keys to :meth:`apply`).
        """
        p = _arrays(pred)
        y_ret = np.asarray(y_ret, dtype=np.float64).ravel()
        y_rv = np.asarray(y_rv, dtype=np.float64).ravel()
        n = p["ret_mu"].size
        if y_ret.size != n or y_rv.size != n:
            raise ValueError(f"labels ({y_ret.size}, {y_rv.size}) and forecasts ({n}) differ in length")
        tod = None if context is None or "tod" not in context else np.asarray(context["tod"], np.float64).ravel()
        m = self._fit_return(p, y_ret, groups, ret_scores, tod)
        self._fit_volatility(p, y_rv, groups, context, tod)
        self.n_fit = int(m.sum())
        log.debug("calibrated on %d rows: q_ret=%.3f q_rv=%.3f", self.n_fit, self.q_ret, self.q_rv)
        return self

    def _fit_return(self, p: dict[str, np.ndarray], y_ret: np.ndarray, groups: np.ndarray | None,
                    ret_scores: tuple[str, ...], tod: np.ndarray | None) -> np.ndarray:
        """The centring offset, the sign-probit confidence and the return interval quantiles.

        ``p["ret_mu"]`` is centred in place. Returns the mask of the rows used (labelled, finite).
        """
        sig = np.maximum(p["ret_sigma"], _EPS)
        finite_mu = p["ret_mu"][np.isfinite(p["ret_mu"])]
        self.ret_offset = 0.0
        if self.center_ret and finite_mu.size > 1:
            med, sd = float(np.median(finite_mu)), float(np.std(finite_mu))
            if abs(med) > CENTER_MIN * sd:  # a material common directional call, not noise
                self.ret_offset = med
        p["ret_mu"] = p["ret_mu"] - self.ret_offset
        m = np.isfinite(y_ret) & np.isfinite(p["ret_mu"]) & np.isfinite(sig) & (y_ret != 0)
        if m.sum() < 10:
            raise ValueError(f"return calibration needs >= 10 labelled validation rows, got {int(m.sum())}")
        right = sign_right(p["ret_mu"][m], y_ret[m])
        cl = np.unique(_cluster_ids(y_ret.size, groups)[m], return_inverse=True)[1].ravel()
        fits = []
        for name in ret_scores:
            s = SignProbit.scores(p["ret_mu"][m], sig[m], p["rv_hat"][m], name)
            ok = np.isfinite(s)
            f = SignProbit.fit(s[ok], right[ok], cl[ok], score=name)
            fits.append((f.log_lik(s[ok], right[ok]), f))
        self.ret_conf = max(fits, key=lambda lf: lf[0])[1]
        log.debug("return confidence: %s", [(f.score, round(ll, 2), f.a_ml, f.se) for ll, f in fits])
        self.q_ret = conformal_quantile(np.abs(y_ret[m] - p["ret_mu"][m]) / sig[m], self.level)
        if tod is not None:
            self.q_ret_tod = tod_quantiles(tod[m], np.abs(y_ret[m] - p["ret_mu"][m]) / sig[m], self.level, self.q_ret)
        return m

    def _fit_volatility(self, p: dict[str, np.ndarray], y_rv: np.ndarray, groups: np.ndarray | None,
                        context: dict | None, tod: np.ndarray | None) -> None:
        """The volatility confidence (isotonic, and by context when given) and interval quantiles."""
        rv_hat = np.maximum(p["rv_hat"], _EPS)
        ls = np.maximum(p["lrv_sigma"], _EPS)
        mv = np.isfinite(y_rv) & np.isfinite(rv_hat) & np.isfinite(ls) & (y_rv >= 0)
        if mv.sum() < 10:
            raise ValueError(f"volatility calibration needs >= 10 labelled validation rows, got {int(mv.sum())}")
        relerr = np.abs(y_rv[mv] / rv_hat[mv] - 1.0)
        within = (relerr <= VOL_TOLERANCE).astype(np.float64)
        self.vol_conf = IsotonicMap.fit(ls[mv], within, increasing=False, max_bins=VOL_BINS)
        self.vol_base_rate = float(within.mean())
        clusters = _cluster_ids(y_rv.size, groups)[mv]
        # a fixed ranking (nothing fitted to overfit), but a noisy one on a few validation days
        self.vol_sigma_ratio, self.vol_sigma_ratio_hi = decile_ratio_bound(-ls[mv], relerr, clusters)
        with np.errstate(divide="ignore"):
            signed = (np.log(y_rv[mv]) - np.log(rv_hat[mv])) / ls[mv]  # -inf: a flat 10 minutes
        resid = np.abs(signed)
        by_tod = context is not None and tod is not None
        self.q_rv = _quantile(resid, self.level)
        q_tod = tod_quantiles(tod[mv], resid, self.level, self.q_rv, _quantile) if by_tod else []
        # a thinly traded symbol (or a tick-bound quote) leaves many 10-minute spans flat: where more
        # than 1 - level of them are, no interval of positive bounds covers 80%, so it starts at 0
        self.rv_lo_zero = not np.all(np.isfinite([self.q_rv, *q_tod]))
        if self.rv_lo_zero:
            log.debug("%.1f%% of the validation rows had a flat 10 minutes (zero realized volatility): the "
                      "volatility interval starts at 0", 100 * float(np.mean(y_rv[mv] == 0)))
            self.q_rv = upper_quantile(signed, self.level)
            q_tod = tod_quantiles(tod[mv], signed, self.level, self.q_rv, upper_quantile) if by_tod else []
        if context is not None:
            X = _context_matrix(p, context)
            self.vol_ctx = VolContextConfidence.fit(X[mv], within, relerr, clusters)
            if tod is not None:
                self.q_rv_tod = q_tod

    def apply(self, pred: dict, context: dict | None = None) -> dict[str, np.ndarray]:
        """Calibrated forecasts, confidences and 80% intervals keyed by PRED_COLUMNS.

        ``context`` (:data:`CONTEXT_KEYS`) switches on the context vol confidence and the
        time-of-day interval quantiles when the calibrator was fitted with them."""
        if not self.fitted:
            raise RuntimeError("Calibrator.apply called before fit/from_dict")
        p = _arrays(pred)
        mu, sig = p["ret_mu"] - self.ret_offset, np.maximum(p["ret_sigma"], _EPS)
        rv_hat = np.maximum(p["rv_hat"], _EPS)
        ls = np.maximum(p["lrv_sigma"], _EPS)
        lrv = np.log(rv_hat)
        tod = None if context is None or "tod" not in context else context["tod"]
        q_ret = bucket_q(self.q_ret_tod, tod, self.q_ret, mu.size)
        q_rv = bucket_q(self.q_rv_tod, tod, self.q_rv, mu.size)
        # the context model is served only where it discriminated out of fold on validation, else the
        # sigma-only map where that did; where neither did, the validation base rate for every row: a
        # confidence that ranks nothing says so (a map fitted to noise would only add calibration noise)
        if self._ctx_informative and context is not None:
            rv_conf = self.vol_ctx(_context_matrix({**p, "rv_hat": rv_hat}, context))
        elif self._sigma_informative or (not np.isfinite(self.vol_base_rate) and "rv" not in self.demoted):
            # (a NaN base rate: fitted before the base rate existed, served as the sigma map)
            rv_conf = self.vol_conf(ls)
        else:
            rv_conf = np.full(mu.size, self.vol_base_rate if np.isfinite(self.vol_base_rate) else 0.5)
        return {
            "ret_60m_pred": mu,
            # a return confidence that did not rank sign accuracy on validation claims nothing: a
            # constant 0.5 (a shrunk but non-zero slope still varied, and was anti-informative on test)
            "ret_60m_conf": (self.ret_conf(SignProbit.scores(mu, sig, rv_hat, self.ret_conf.score))
                             if self.ret_informative else np.full(mu.size, 0.5)),
            "ret_60m_lo": mu - q_ret * sig,
            "ret_60m_hi": mu + q_ret * sig,
            "rv_10m_pred": rv_hat,
            "rv_10m_conf": rv_conf,
            "rv_10m_lo": np.zeros(mu.size) if self.rv_lo_zero else np.exp(lrv - q_rv * ls),
            "rv_10m_hi": np.exp(lrv + q_rv * ls),
        }

    def info_columns(self, n: int) -> dict[str, np.ndarray]:
        """INFO_COLUMNS for ``n`` rows: 1.0 where this version's confidence is informative, else 0.0
        (a downstream system should ignore a confidence flagged 0)."""
        return {"ret_60m_conf_informative": np.full(n, float(self.ret_informative)),
                "rv_10m_conf_informative": np.full(n, float(self.rv_informative))}

    def to_dict(self) -> dict:
        """Plain-JSON state (lists and floats only)."""
        return {"level": self.level, "q_ret": self.q_ret, "q_rv": self.q_rv, "n_fit": self.n_fit,
                "ret_offset": self.ret_offset, "center_ret": self.center_ret,
                "ret_conf": self.ret_conf.to_dict(),
                "vol_conf": {"x": self.vol_conf.x, "y": self.vol_conf.y},
                # version 2 (optional keys; a version-1 reader ignores them, version-1 files load here)
                "format": 2, "ret_conf_informative": self.ret_informative,
                "ret_conf_slope": self.ret_conf.a, "rv_conf_informative": self.rv_informative,
                "vol_ctx": self.vol_ctx.to_dict() if self.vol_ctx is not None else None,
                "q_ret_tod": self.q_ret_tod, "q_rv_tod": self.q_rv_tod,
                "vol_base_rate": self.vol_base_rate, "vol_sigma_ratio": self.vol_sigma_ratio,
                "vol_sigma_ratio_hi": self.vol_sigma_ratio_hi, "rv_lo_zero": self.rv_lo_zero}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibrator":
        """Inverse of :meth:`to_dict`."""
        rc = d.get("ret_conf")
        if isinstance(rc, dict) and "kind" not in rc and "x" in rc:
            raise ValueError("calibration dict holds the old isotonic return-confidence map (ret_conf x/y); "
                             "re-fit the Calibrator on the model's validation span")
        try:
            return cls(level=float(d["level"]), q_ret=float(d["q_ret"]), q_rv=float(d["q_rv"]),
                       n_fit=int(d.get("n_fit", 0)), ret_offset=float(d.get("ret_offset", 0.0)),
                       center_ret=bool(d.get("center_ret", True)),
                       ret_conf=SignProbit.from_dict(d["ret_conf"]),
                       vol_conf=IsotonicMap(list(d["vol_conf"]["x"]), list(d["vol_conf"]["y"])),
                       vol_ctx=VolContextConfidence.from_dict(d["vol_ctx"]) if d.get("vol_ctx") else None,
                       q_ret_tod=[float(v) for v in d.get("q_ret_tod") or []],
                       q_rv_tod=[float(v) for v in d.get("q_rv_tod") or []],
                       vol_base_rate=float(d.get("vol_base_rate", "nan")),
                       vol_sigma_ratio=float(d.get("vol_sigma_ratio", "nan")),
                       vol_sigma_ratio_hi=float(d.get("vol_sigma_ratio_hi", "nan")),
                       rv_lo_zero=bool(d.get("rv_lo_zero", False)))
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


# -- context-conditioned volatility confidence, time-of-day conformal, informativeness flags ----

#: context a forecaster can pass with its forecasts (arrays per row; any may be missing or NaN):
#: minute of session, quoted spread (bps), jump share of recent variance, log volume of the minute,
#: and the recent volatility estimates (RECENT_VOL_KEYS) the forecast is compared with
RECENT_VOL_KEYS = ("park_5m", "park_15m", "rv_5m", "ewma_vol_10")
CONTEXT_KEYS = ("tod", "spread_bps", "jump_ratio", "log_volume", *RECENT_VOL_KEYS)
TOD_BUCKET = 30          # minutes per conformal time-of-day bucket
TOD_MIN_ROWS = 200       # a bucket with fewer validation rows uses the pooled quantile
#: the two confidences a flag describes: the return's (``ret_60m_conf``) and the volatility's (``rv_10m_conf``)
CONF_TARGETS = ("ret", "rv")
RET_INFORMATIVE_T = 2.0  # return confidence counts as informative when a_ml / se >= this
RV_INFORMATIVE_RATIO = 0.9  # older fits (no bootstrap bound): informative when the decile error ratio <= this
RV_BOUND_LEVEL = 0.975      # one-sided level of the bootstrap bound that must lie below RV_MATERIAL (~ t >= 2, as for returns)
RV_MATERIAL = 0.95          # ... the decile error ratio a confidence must beat to rank errors materially (see above)
RV_BOOTSTRAP = 400          # cluster-bootstrap replicates
RELERR_CAP = 3.0         # relative errors above this (jumps) count as this in the error regression


def _context_matrix(pred: dict[str, np.ndarray], ctx: dict | None) -> np.ndarray:
    """[N, 24] inputs of the vol-confidence model: the forecast's own sigma and level, a smooth
    time-of-day basis (with open and close bumps), log spread, jump share, log volume, the spread
    against the forecast, and for each recent volatility estimate its log ratio z to the forecast
    with |z| and z^2 (a forecast far from what the last minutes showed is more often wrong, in
    either direction: the error grows with |z|, which a linear score needs spelled out)."""
    n = pred["rv_hat"].size
    get = lambda k: (np.asarray(ctx[k], dtype=np.float64).ravel() if ctx is not None and k in ctx  # noqa: E731
                     else np.full(n, np.nan))
    m = get("tod")
    ang = 2 * np.pi * m / 390.0
    lrv = np.log(np.maximum(pred["rv_hat"], _EPS))
    cols = [np.log(np.maximum(pred["lrv_sigma"], _EPS)), lrv,
            np.sin(ang), np.cos(ang), np.sin(2 * ang), np.cos(2 * ang),
            np.exp(-m / 15.0), np.exp(-(389.0 - m) / 15.0),
            np.log(np.maximum(get("spread_bps"), 1e-3)), get("jump_ratio"), get("log_volume"),
            np.log(np.maximum(get("spread_bps"), 1e-3)) - lrv]
    for key in RECENT_VOL_KEYS:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log(get(key)) - lrv  # NaN / -inf where absent or <= 0: standardised to 0 (no information)
        cols += [z, np.abs(z), z * z]
    return np.column_stack(cols)


@dataclass
class VolContextConfidence:
    """P(|rv / rv_hat - 1| <= 25%) from a linear score on context, then isotonic-calibrated.

    Why: the forecast's own log-vol sigma barely ranks how close realized volatility lands (a
    10-minute realized volatility is noisy in a way the model's sigma does not see: tick size
    against volatility, jumps, the open, a forecast lagging what the last minutes showed). The
    score is a ridge regression of the NEGATIVE relative error (capped at RELERR_CAP) on the
    standardised context: it ranks rows by their expected error, which is what the confidence must
    order (bench/results/robustness.json, the project's simulator's test days: a top/bottom-decile
    error ratio of 0.74 for the ``har_tod`` forecast, which lags what the last minutes showed; the
    networks' forecasts already read the recent volatility and what is left of their error is not
    predictable - fitted on the test days themselves this ridge reaches only 0.89 - so there it
    does not discriminate out of fold on validation and is not served). An isotonic map of the
    score, fitted on the validation rows, turns it into the calibrated probability. ``oof_ratio``
    is the out-of-fold (two halves of validation) mean relative error in the most confident decile
    over the least confident one (< 1: the confidence discriminates), ``oof_ratio_hi`` its bound.
    """

    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)   # intercept first; score = coef . [1, z]
    iso: IsotonicMap = field(default_factory=IsotonicMap)
    oof_ratio: float = float("nan")
    oof_ratio_hi: float = float("nan")  # one-sided upper bound (RV_BOUND_LEVEL, cluster bootstrap)

    @property
    def fitted(self) -> bool:
        return bool(self.coef) and bool(self.iso.x)

    @staticmethod
    def _ridge(Z: np.ndarray, t: np.ndarray, l2: float = 1.0) -> np.ndarray:
        """Least squares of ``t`` on [1, Z] with an L2 penalty ``l2`` on the slopes (closed form)."""
        X = np.column_stack([np.ones(len(Z)), Z])
        pen = np.full(X.shape[1], float(l2))
        pen[0] = 0.0
        return np.linalg.solve(X.T @ X + np.diag(pen), X.T @ t)

    def _z(self, X: np.ndarray) -> np.ndarray:
        k = len(self.mean)  # a model fitted on fewer context columns (an older bundle) reads the first k
        return np.nan_to_num((X[:, :k] - np.asarray(self.mean)) / np.asarray(self.std), nan=0.0, posinf=0.0, neginf=0.0)

    def score(self, X: np.ndarray) -> np.ndarray:
        b = np.asarray(self.coef)
        return b[0] + self._z(X) @ b[1:]

    @classmethod
    def fit(cls, X: np.ndarray, within: np.ndarray, relerr: np.ndarray, blocks: np.ndarray) -> "VolContextConfidence":
        fin = np.isfinite(X)
        cnt = np.maximum(fin.sum(axis=0), 1)
        mean = np.where(fin, X, 0.0).sum(axis=0) / cnt  # absent context columns: mean 0, std 1
        std = np.sqrt(np.where(fin, (X - mean) ** 2, 0.0).sum(axis=0) / cnt)
        std = np.where(std > 0, std, 1.0)
        self = cls(mean=[float(v) for v in mean], std=[float(v) for v in std])
        target = -np.minimum(relerr, RELERR_CAP)
        half = (blocks % 2).astype(bool)
        oof = np.full(len(within), np.nan)
        for tr in (half, ~half):
            if tr.sum() >= 100 and (~tr).sum() >= 100:
                self.coef = [float(v) for v in cls._ridge(self._z(X[tr]), target[tr])]
                oof[~tr] = self.score(X[~tr])
        self.oof_ratio, self.oof_ratio_hi = decile_ratio_bound(oof, relerr, blocks)
        self.coef = [float(v) for v in cls._ridge(self._z(X), target)]
        self.iso = IsotonicMap.fit(self.score(X), within, increasing=True, max_bins=VOL_BINS)
        return self

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return self.iso(self.score(X))

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "coef": self.coef, "oof_ratio": self.oof_ratio,
                "oof_ratio_hi": self.oof_ratio_hi, "iso": {"x": self.iso.x, "y": self.iso.y}}

    @classmethod
    def from_dict(cls, d: dict) -> "VolContextConfidence":
        return cls(mean=list(d["mean"]), std=list(d["std"]), coef=list(d["coef"]),
                   oof_ratio=float(d.get("oof_ratio", "nan")), oof_ratio_hi=float(d.get("oof_ratio_hi", "nan")),
                   iso=IsotonicMap(list(d["iso"]["x"]), list(d["iso"]["y"])))


def decile_ratio_bound(score: np.ndarray, err: np.ndarray, clusters: np.ndarray,
                       level: float = RV_BOUND_LEVEL, n_boot: int = RV_BOOTSTRAP) -> tuple[float, float]:
    """The mean error of the top ``score`` decile over the bottom one, and its one-sided ``level``
    upper bound.

    Why a bound: errors of neighbouring minutes and of all symbols in one hour move together, so a
    few validation days hold few independent outcomes; the sigma ranking's ratio on validation
    and on test were unrelated on the robustness data (exploratory, outside bench/: 0.89 -> 1.07,
    1.08 -> 0.87). The bound resamples whole clusters (hours) with replacement, the decile
    membership held fixed (2,000+ rows: the membership moves little). (NaN, NaN) with under 100
    rows; (1, NaN) when the top and bottom deciles are tied in ``score`` (a constant ranks
    nothing); (ratio, NaN) with fewer than 10 clusters.
    """
    ok = np.isfinite(score) & np.isfinite(err)
    if ok.sum() < 100:
        return float("nan"), float("nan")
    s, e = score[ok], err[ok]
    order = np.argsort(s + 1e-12 * np.random.default_rng(0).standard_normal(s.size), kind="stable")
    k = max(1, s.size // 10)
    if s[order[-k]] <= s[order[k - 1]]:
        return 1.0, float("nan")
    point = float(np.mean(e[order[-k:]]) / max(np.mean(e[order[:k]]), _EPS))
    cl = np.unique(np.asarray(clusters)[ok], return_inverse=True)[1].ravel()
    n_cl = int(cl.max()) + 1
    if n_cl < 10:
        return point, float("nan")
    top, bot = np.zeros(s.size), np.zeros(s.size)
    top[order[-k:]], bot[order[:k]] = 1.0, 1.0
    T = np.stack([np.bincount(cl, e * top), np.bincount(cl, top), np.bincount(cl, e * bot), np.bincount(cl, bot)], axis=1)
    W = np.random.default_rng(1).multinomial(n_cl, np.full(n_cl, 1.0 / n_cl), size=n_boot).astype(np.float64)
    S = W @ T
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = (S[:, 0] / S[:, 1]) / (S[:, 2] / S[:, 3])
    boot = boot[np.isfinite(boot)]
    return point, float(np.quantile(boot, level)) if boot.size else float("nan")


def ranks_errors(ratio: float, ratio_hi: float) -> bool:
    """Informative: the bound lies below :data:`RV_MATERIAL` (no bound - an older fit, or too few
    clusters to resample: the ratio <= 0.9)."""
    if np.isfinite(ratio_hi):
        return bool(ratio_hi < RV_MATERIAL)
    return bool(np.isfinite(ratio) and ratio <= RV_INFORMATIVE_RATIO)


def tod_quantiles(tod: np.ndarray, resid: np.ndarray, level: float, pooled: float,
                  quantile=conformal_quantile) -> list[float]:
    """Split-conformal quantile of ``resid`` per TOD_BUCKET-minute bucket (pooled where thin).

    Why: fat tails concentrate at the open and around jumps; one pooled quantile then
    over-covers midday and under-covers the open. Per-bucket quantiles keep 80% in each bucket.
    """
    nb = 390 // TOD_BUCKET + 1
    b = np.clip(np.asarray(tod, dtype=np.float64), 0, 389) // TOD_BUCKET
    out = []
    for k in range(nb):
        r = resid[(b == k) & ~np.isnan(resid)]
        out.append(quantile(r, level) if r.size >= TOD_MIN_ROWS else pooled)
    return out


def bucket_q(qs: list[float], tod: np.ndarray | None, pooled: float, n: int) -> np.ndarray:
    """Per-row quantile: the row's time-of-day bucket's, or the pooled one without tod."""
    if not qs or tod is None:
        return np.full(n, pooled)
    m = np.asarray(tod, dtype=np.float64).ravel()
    idx = np.clip(np.nan_to_num(m, nan=-1), 0, 389).astype(int) // TOD_BUCKET
    return np.where(np.isfinite(m), np.asarray(qs)[idx], pooled)
