"""Baselines every model must beat, computed from the 30-minute window alone, like the networks.

Why from the window: a baseline that reads anything else (lagged labels, a symbol table) cannot be
served by the same graph and the same request as the network, so the forecaster that wins in
evaluation (a network floored on ``har_tod``, an ensemble, or ``har_tod`` itself) could not be the
one that ships. Every input below is a feature of the window (unscaled) - the one-minute returns of
its 30 rows and a few features of its last row - so a window request carries all of it and the
walk-forward, the batch CSVs, the server and the monitor compute the same numbers with the same
function (:func:`side_inputs`).

Window inputs (one row per window; variances are of log mid returns over 10 minutes):

- ``v10_l1``, ``v10_l2``, ``v10_l3``: realized variance of minutes t-9..t, t-19..t-10, t-29..t-20
  (sums of ``past_ret_1m`` squared over the window's three 10-row blocks; a block with 5..9 finite
  returns is scaled to 10 minutes, fewer is missing);
- ``v_back``: mean 10-minute variance of minutes t-59..t-30, ``(rv_60m^2 - rv_30m^2) / 3``, only
  where the last hour is inside today's session (minute of session >= 60), else missing;
- ``vday``, ``vweek``: mean 10-minute variance of the previous day and of the last <= 5 days
  (``har_rv_d``, ``har_rv_w`` scaled from a day to 10 minutes);
- ``ewma_var``: 10 x the EWMA of squared one-minute returns (``ewma_vol_60``, half-life 60 minutes);
- ``ret_past60``: the last hour's return (``past_ret_60m``); ``tod``: minute of session from
  ``tod_sin``/``tod_cos``/``minutes_to_close``;
- the calibration context (:data:`hfcast.calibration.CONTEXT_KEYS`) from the last row;
- ``har_x``'s covariates: ``x_<f>`` the volatility features of :data:`HARX_LAST` and the noise
  signature of :data:`HARX_RAW` (the month's mean return autocorrelation) at the last row,
  ``a_<f>`` / ``m10_<f>`` / ``m30_<f>`` the activity features of :data:`HARX_ACTIVITY` at the last
  row and averaged over the last 10 and all 30 rows, and ``ac1`` the first-order autocorrelation of
  the 30 one-minute returns (near -0.5 where quote noise dominates the mid's moves).

Baselines:

- ``zero``: return 0; volatility = realized vol of the last hour (random walk in volatility).
- ``persistence``: return = last hour's return; volatility = the last 30 minutes' realized vol.
- ``har_rv``: return 0; HAR-RV (Corsi 2009) on log rv with 10 / 30 / 60-minute and previous-day
  components plus an intraday seasonal profile, OLS on the training span.
- ``har_tod``: return 0; THE floor every model is compared with: HAR-RV in log-variance form on
  deseasonalised components (a per-5-minute time-of-day profile of log variance, fitted on train,
  taken out of each 10-minute block at the minute it was measured and put back at the target
  minute), a weekly level, separate OLS for rows with a full hour of same-day history and for the
  partial-history open, mean-corrected by smearing; its log-vol sigma varies by half-hour.
- ``ewma``: return 0; RiskMetrics-style EWMA variance (half-life 60 minutes), carried on from the
  previous day's level (the feature restarts at the open).
- ``har_x``: return 0; HAR-X: ``har_tod``'s variance times a log-linear correction on the window's
  covariates (other volatility estimators, noise signature, trading activity, the half-hour),
  fitted by QLIKE itself (:class:`HarX`).
- ``oracle``: the simulator's truth, ``true_ret_60m`` and ``sqrt(true_var_10m)`` (the ceiling; not
  deployable, evaluation only).

Each baseline gets residual-based sigmas (fitted on train) and a :class:`Calibrator` fitted on the
validation span, so its confidences and intervals are scored like a model's.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from hfcast.calibration import CONTEXT_KEYS, Calibrator
from hfcast.contracts import INFO_COLUMNS, LOOKBACK, PRED_COLUMNS

log = logging.getLogger(__name__)

BASELINES = ("zero", "persistence", "har_rv", "har_tod", "har_x", "ewma", "oracle")
DEPLOYABLE = ("har_tod", "har_rv", "har_x", "ewma")  # baselines a forecaster may serve (the oracle needs the truth)
FLOOR = "har_tod"  # the baseline every model is compared with and falls back to
_TINY = 1e-12
_BLOCK = 10  # minutes per realized-variance block
EWMA_HALFLIFE = 60.0  # minutes: the half-life of ewma_vol_60, which the ewma baseline reads
#: features the window inputs read: the one-minute return over all 30 rows, the rest at the last row
RETURN_FEATURE = "past_ret_1m"
LAST_ROW_FEATURES = ("rv_30m", "rv_60m", "har_rv_d", "har_rv_w", "ewma_vol_60", "past_ret_60m",
                     "tod_sin", "tod_cos", "minutes_to_close")
#: context key -> feature at the window's last row (``tod`` is computed, see :func:`minute_from_features`)
CONTEXT_FEATURES = {"spread_bps": "spread_bps", "jump_ratio": "jump_ratio_30m", "log_volume": "log_volume",
                    "park_5m": "park_5m", "park_15m": "park_15m", "rv_5m": "rv_5m", "ewma_vol_10": "ewma_vol_10"}
REQUIRED_FEATURES = (RETURN_FEATURE, *LAST_ROW_FEATURES[:6], "tod_sin", "tod_cos")
#: har_x's covariates (each where the feature set has it): volatility estimators at the last row ...
HARX_LAST = ("rv_5m", "rv_15m", "rv_30m", "rv_60m", "park_5m", "park_15m", "park_30m", "bpv_15m", "bpv_30m",
             "ewma_vol_10", "ewma_vol_60", "har_rv_d", "har_rv_w", "har_rv_m", "har_rv_today", "range_bps_1m")
#: ... features at the last row taken as they are (not volatilities: no log relative to har_tod)
HARX_RAW = ("noise_ac1_m",)
#: ... and trading activity over the window (volume and volatility move together)
HARX_ACTIVITY = ("log_volume", "log_trades", "spread_bps", "jump_ratio_30m")
SIDE_COLUMNS = ("tod", "v10_l1", "v10_l2", "v10_l3", "v_back", "vday", "vweek", "ewma_var", "ret_past60")
LABELS = ("ret_60m", "rv_10m")
TRUTH = ("true_ret_60m", "true_var_10m")


def check_features(feature_names: Sequence[str]) -> None:
    """Refuse a feature list without the inputs the baselines (and so the floor) read."""
    missing = [f for f in REQUIRED_FEATURES if f not in feature_names]
    if missing:
        raise ValueError(f"the window lacks feature(s) {missing} that har_tod and the other baselines read; "
                         f"featurize with the catalogue (hfcast featurize) so every window carries them")


def minute_from_features(tod_sin: np.ndarray, tod_cos: np.ndarray, to_close: np.ndarray | None) -> np.ndarray:
    """Minute of session from ``tod_sin``, ``tod_cos`` (angle 2 pi m / n) and ``minutes_to_close``
    (n - 1 - m): m = a (mtc + 1) / (1 - a), a = angle / 2 pi; n = 390 when ``to_close`` is absent."""
    a = np.mod(np.arctan2(np.asarray(tod_sin, np.float64), np.asarray(tod_cos, np.float64)), 2 * np.pi) / (2 * np.pi)
    if to_close is None:
        m = a * 390.0
    else:
        mtc = np.asarray(to_close, np.float64)
        m = np.where(np.isfinite(mtc), a * (mtc + 1.0) / np.maximum(1.0 - a, 1e-9), a * 390.0)
    return np.clip(np.round(np.nan_to_num(m, nan=0.0)), 0, None).astype(np.int64)


def _block_variances(r: np.ndarray) -> np.ndarray:
    """[B, 30] one-minute returns -> [B, 3] realized variance of the last, middle and first 10 rows."""
    out = np.full((r.shape[0], 3), np.nan)
    for j in range(3):
        block = r[:, LOOKBACK - _BLOCK * (j + 1): LOOKBACK - _BLOCK * j]
        fin = np.isfinite(block)
        n = fin.sum(axis=1)
        s = np.where(fin, block * block, 0.0).sum(axis=1)
        out[:, j] = np.where(n >= _BLOCK // 2, s * _BLOCK / np.maximum(n, 1), np.nan)
    return out


def _autocorrelation(r: np.ndarray) -> np.ndarray:
    """First-order autocorrelation (about zero mean) of each row of one-minute returns [B, 30]."""
    z = np.nan_to_num(r)
    s2 = (z * z).sum(axis=1)
    return np.where(s2 > 0, (z[:, 1:] * z[:, :-1]).sum(axis=1) / np.maximum(s2, _TINY), 0.0)


def _activity(window: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``a_``/``m10_``/``m30_`` columns of :data:`HARX_ACTIVITY` features given over the window [B, 30]."""
    out = {}
    for f, w in window.items():
        w = np.asarray(w, np.float64)
        out[f"a_{f}"], out[f"m10_{f}"], out[f"m30_{f}"] = w[:, -1], _nanmean(w[:, -_BLOCK:]), _nanmean(w)
    return out


def side_inputs(returns: np.ndarray, last: Mapping[str, np.ndarray],
                window: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """The window inputs of the module docstring from the window's one-minute returns [B, 30], its
    last row's features and (``window``) the :data:`HARX_ACTIVITY` features over all 30 rows
    (unscaled; missing optional features may be absent)."""
    r = np.asarray(returns, np.float64)
    if r.ndim != 2 or r.shape[1] != LOOKBACK:
        raise ValueError(f"returns must be [B, {LOOKBACK}], got {r.shape}")
    g = {k: np.asarray(v, np.float64) for k, v in last.items()}
    m = minute_from_features(g["tod_sin"], g["tod_cos"], g.get("minutes_to_close"))
    n_day = m + 1 + g["minutes_to_close"] if "minutes_to_close" in g else np.full(len(m), 390.0)
    n_day = np.where(np.isfinite(n_day) & (n_day > 0), n_day, 390.0)
    blocks = _block_variances(r)
    with np.errstate(invalid="ignore"):
        back = np.maximum(g["rv_60m"] ** 2 - g["rv_30m"] ** 2, 0.0) / 3.0
    out = pd.DataFrame({"tod": m, "v10_l1": blocks[:, 0], "v10_l2": blocks[:, 1], "v10_l3": blocks[:, 2],
                        "v_back": np.where(m >= 60, back, np.nan),
                        "vday": g["har_rv_d"] ** 2 * _BLOCK / n_day, "vweek": g["har_rv_w"] ** 2 * _BLOCK / n_day,
                        "ewma_var": _BLOCK * g["ewma_vol_60"] ** 2, "ret_past60": g["past_ret_60m"]})
    for key, feat in CONTEXT_FEATURES.items():
        if feat in g:
            out[key] = g[feat]
    extra = {f"x_{f}": g[f] for f in (*HARX_LAST, *HARX_RAW) if f in g}
    extra["ac1"] = _autocorrelation(r)
    extra.update(_activity(window or {}))
    return pd.concat([out, pd.DataFrame(extra, index=out.index)], axis=1)


#: features the window inputs read at the last row, and over the whole window
WINDOW_FEATURES = tuple(dict.fromkeys([RETURN_FEATURE, *LAST_ROW_FEATURES, *CONTEXT_FEATURES.values(), *HARX_LAST,
                                       *HARX_RAW, *HARX_ACTIVITY]))


def _columns(feature_names: Sequence[str]) -> tuple[int, dict[str, int], dict[str, int]]:
    names = list(feature_names)
    check_features(names)
    wanted = [*LAST_ROW_FEATURES, *CONTEXT_FEATURES.values(), *HARX_LAST, *HARX_RAW]
    return (names.index(RETURN_FEATURE), {f: names.index(f) for f in wanted if f in names},
            {f: names.index(f) for f in HARX_ACTIVITY if f in names})


def side_from_windows(windows: np.ndarray, feature_names: Sequence[str]) -> pd.DataFrame:
    """:func:`side_inputs` of unscaled windows [B, 30, F] (features in ``feature_names`` order)."""
    w = np.asarray(windows)
    ir, cols, over = _columns(feature_names)
    return side_inputs(w[:, :, ir], {f: w[:, -1, j] for f, j in cols.items()}, {f: w[:, :, j] for f, j in over.items()})


def side_from_arrays(wa: Any, chunk: int = 65536) -> pd.DataFrame:
    """:func:`side_inputs` of every window of a :class:`hfcast.features.windows.WindowArrays` (same
    order), gathering only the columns it reads; labels and truth are not included."""
    ir, cols, over = _columns(wa.feature_names)
    ends = np.asarray(wa.ends)
    parts = []
    for a in range(0, len(ends), chunk):
        e = ends[a:a + chunk]
        rows = e[:, None] - np.arange(LOOKBACK - 1, -1, -1)[None, :]  # [k, 30] row of each window minute
        parts.append(side_inputs(wa.X[rows, ir], {f: wa.X[e, j] for f, j in cols.items()},
                                 {f: wa.X[rows, j] for f, j in over.items()}))
    if not parts:
        return side_inputs(np.empty((0, LOOKBACK)), {f: np.empty(0) for f in cols},
                           {f: np.empty((0, LOOKBACK)) for f in over})
    return pd.concat(parts, ignore_index=True)


def baseline_inputs(wa: Any, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """Window inputs of every window of ``wa`` indexed by its end row, with the labels (and the
    simulator's truth from ``frame``, a features frame in ``wa``'s row order) beside them."""
    out = side_from_arrays(wa)
    out.index = pd.Index(np.asarray(wa.ends), name="row")
    if wa.y is not None:
        lab = wa.y[wa.ends]
        out["ret_60m"], out["rv_10m"] = lab[:, 0].astype(np.float64), lab[:, 1].astype(np.float64)
    if frame is not None:
        for col in TRUTH:
            if col in frame:
                out[col] = frame[col].to_numpy(np.float64)[wa.ends]
    return out


def context(inp: pd.DataFrame) -> dict[str, np.ndarray]:
    """The calibration context (:data:`CONTEXT_KEYS`) of window inputs."""
    return {k: inp[k].to_numpy(np.float64) for k in CONTEXT_KEYS if k in inp}


def _nanmean(a: np.ndarray, axis: int = 1) -> np.ndarray:
    """Means over the finite entries; NaN where there is none (no warning)."""
    cnt = np.isfinite(a).sum(axis=axis)
    return np.where(cnt > 0, np.nansum(a, axis=axis) / np.maximum(cnt, 1), np.nan)


def _components(inp: pd.DataFrame, fallback: float) -> np.ndarray:
    """[N, 4] raw variance components (10m, 30m, 60m, day), each gap filled by its longer neighbour.

    A block whose realized variance is 0 (a mid that did not move on the tick grid) is missing, not
    a forecast of zero volatility."""
    b = inp[["v10_l1", "v10_l2", "v10_l3"]].to_numpy(np.float64)
    back = inp["v_back"].to_numpy(np.float64)
    b = np.where(b > 0, b, np.nan)
    back = np.where(back > 0, back, np.nan)
    v60 = _nanmean(np.column_stack([b, back, back, back]))
    v = np.column_stack([b[:, 0], _nanmean(b), v60, inp["vday"].to_numpy(np.float64)])
    v[:, 3] = np.where(np.isfinite(v[:, 3]) & (v[:, 3] > 0), v[:, 3], fallback)
    for j in (2, 1, 0):
        v[:, j] = np.where(np.isfinite(v[:, j]), v[:, j], v[:, j + 1])
    return np.maximum(v, _TINY)


class Baseline:
    """One baseline: ``fit(train_inputs, val_inputs)`` then ``predict(inputs) -> PRED_COLUMNS``.

    ``inputs`` are window inputs (:func:`baseline_inputs`) with the labels for fitting."""

    def __init__(self, name: str):
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")
        self.name = name
        self.calibrator = Calibrator()
        self.coef: np.ndarray | None = None
        self.season: np.ndarray | None = None
        self.fallback_var = float("nan")
        self.ret_scale = 1.0   # ret sigma = ret_scale * sqrt(6) * rv_hat
        self.lrv_sigma = 1.0   # std of log(rv / rv_hat) on train
        self.har: HarTod | None = None  # the har_tod point model (har_tod, and under har_x)
        self.harx: HarX | None = None   # har_x's correction of it

    # -- point forecasts ---------------------------------------------------------------------
    def _design(self, inp: pd.DataFrame) -> np.ndarray:
        comps = np.log(_components(inp, self.fallback_var))
        season = self.season[np.clip(inp["tod"].to_numpy(), 0, len(self.season) - 1)]
        return np.column_stack([np.ones(len(inp)), comps, season])

    def _points(self, inp: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(ret_mu, rv_hat) before calibration."""
        n = len(inp)
        if self.name == "oracle":
            missing = [c for c in TRUTH if c not in inp]
            if missing:
                raise KeyError(f"oracle baseline needs truth columns {missing} (simulated data only)")
            return inp["true_ret_60m"].to_numpy(), np.sqrt(np.maximum(inp["true_var_10m"].to_numpy(), 0))
        comps = _components(inp, self.fallback_var)
        if self.name == "zero":
            return np.zeros(n), np.sqrt(comps[:, 2])
        if self.name == "persistence":
            return np.nan_to_num(inp["ret_past60"].to_numpy(np.float64), nan=0.0), np.sqrt(comps[:, 1])
        if self.name == "ewma":
            # the day's EWMA starts at the open; carried on from the previous day, its start would be
            # that day's level, decayed with the same half-life: a = the weight today's minutes have
            ew = inp["ewma_var"].to_numpy(np.float64)
            a = 1.0 - 0.5 ** (inp["tod"].to_numpy(np.float64) / EWMA_HALFLIFE)
            vday = inp["vday"].to_numpy(np.float64)
            ew = np.where(np.isfinite(vday) & (vday > 0), a * ew + (1 - a) * vday, ew)
            return np.zeros(n), np.sqrt(np.where(np.isfinite(ew) & (ew > 0), ew, comps[:, 3]))
        if self.name == "har_tod":
            return np.zeros(n), self.har.rv_hat(inp)
        if self.name == "har_x":
            return np.zeros(n), np.sqrt(self.harx.variance(inp))
        lrv = self._design(inp) @ self.coef  # har_rv: log rv_10m
        return np.zeros(n), np.exp(lrv + self.lrv_sigma**2)  # sqrt(E[rv^2]) under log-normal errors

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, train: pd.DataFrame, val: pd.DataFrame, context_val: Mapping[str, np.ndarray] | None = None,
            groups_val: np.ndarray | None = None) -> "Baseline":
        """Fit the regression and residual scales on ``train``, the calibrator on ``val`` (with the
        validation context and hour clusters when given, as the networks' calibrators are)."""
        rv = train["rv_10m"].to_numpy(np.float64)
        ok = np.isfinite(rv) & (rv > 0)
        if ok.sum() < 50:
            raise ValueError(f"baseline {self.name}: only {int(ok.sum())} labelled training rows")
        self.fallback_var = float(np.mean(rv[ok] ** 2))
        lrv = np.log(rv[ok])
        tod = np.clip(train["tod"].to_numpy()[ok], 0, 389)
        prof = pd.Series(lrv).groupby(tod // 10).mean()
        buckets = prof.reindex(range(39)).interpolate(limit_direction="both").to_numpy()
        self.season = np.repeat(buckets - np.nanmean(buckets), 10)
        if self.name in ("har_tod", "har_x"):
            self.har = HarTod().fit(train)
        if self.name == "har_x":
            self.harx = HarX(self.har).fit(train)
        elif self.name == "har_rv":
            X = self._design(train)[ok]
            self.coef, *_ = np.linalg.lstsq(X, lrv, rcond=None)
            self.lrv_sigma = float(np.std(lrv - X @ self.coef))
        mu, rv_hat = self._points(train)
        if self.name == "har_tod":
            self.lrv_sigma = self.har.sigma_all
        elif self.name != "har_rv":
            fin = ok & np.isfinite(rv_hat) & (rv_hat > 0)
            self.lrv_sigma = float(np.std(np.log(rv[fin]) - np.log(rv_hat[fin])))
        y = train["ret_60m"].to_numpy(np.float64)
        scale = np.sqrt(6.0) * np.maximum(rv_hat, _TINY)
        fin = np.isfinite(y) & np.isfinite(scale)
        self.ret_scale = float(np.sqrt(np.mean(((y[fin] - mu[fin]) / scale[fin]) ** 2)))
        # the oracle is the truth itself: its return forecast is never re-centred
        self.calibrator = Calibrator(center_ret=self.name != "oracle").fit(
            self.natural(val), val["ret_60m"].to_numpy(), val["rv_10m"].to_numpy(), groups=groups_val,
            context=dict(context_val) if context_val is not None else None)
        return self

    def natural(self, inp: pd.DataFrame) -> dict[str, np.ndarray]:
        """Natural-unit forecasts (``ret_mu``, ``ret_sigma``, ``rv_hat``, ``lrv_sigma``) before calibration."""
        mu, rv_hat = self._points(inp)
        rv_hat = np.maximum(np.nan_to_num(rv_hat, nan=np.sqrt(self.fallback_var)), _TINY)
        lrv_sigma = (self.har.sigma(inp) if self.name == "har_tod"
                     else np.full(len(inp), max(self.lrv_sigma, 1e-6)))
        return {"ret_mu": mu, "ret_sigma": self.ret_scale * np.sqrt(6.0) * rv_hat,
                "rv_hat": rv_hat, "lrv_sigma": lrv_sigma}

    def predict(self, inp: pd.DataFrame, ctx: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
        """PRED_COLUMNS + INFO_COLUMNS for the rows of ``inp`` (same index); ``ctx``
        (:data:`hfcast.calibration.CONTEXT_KEYS`, one value per row) for a calibrator fitted with it."""
        out = self.calibrator.apply(self.natural(inp), dict(ctx) if ctx is not None else None)
        out = {c: out[c] for c in PRED_COLUMNS} | self.calibrator.info_columns(len(inp))
        return pd.DataFrame(out, index=inp.index, columns=[*PRED_COLUMNS, *INFO_COLUMNS])

    def to_dict(self) -> dict[str, Any]:
        """The point model as plain JSON (the calibrator is not part of it: a forecaster calibrates
        what it serves as a whole)."""
        if self.name == "oracle":
            raise ValueError("the oracle reads the simulator's truth: it cannot be saved or served")
        return {"name": self.name, "coef": None if self.coef is None else self.coef.tolist(),
                "season": None if self.season is None else self.season.tolist(),
                "fallback_var": self.fallback_var, "ret_scale": self.ret_scale, "lrv_sigma": self.lrv_sigma,
                "har": self.har.to_dict() if self.har is not None else None,
                "harx": self.harx.to_dict() if self.harx is not None else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Baseline":
        """Inverse of :meth:`to_dict`."""
        self = cls(str(d["name"]))
        self.coef = None if d.get("coef") is None else np.asarray(d["coef"], np.float64)
        self.season = None if d.get("season") is None else np.asarray(d["season"], np.float64)
        self.fallback_var, self.ret_scale = float(d["fallback_var"]), float(d["ret_scale"])
        self.lrv_sigma = float(d["lrv_sigma"])
        self.har = HarTod.from_dict(d["har"]) if d.get("har") else None
        self.harx = HarX.from_dict(self.har, d["harx"]) if d.get("harx") else None
        return self


def fit_baselines(train: pd.DataFrame, val: pd.DataFrame, names: tuple[str, ...] = BASELINES,
                  context_val: Mapping[str, np.ndarray] | None = None,
                  groups_val: np.ndarray | None = None) -> dict[str, Baseline]:
    """Fit every named baseline on the same rows; ``oracle`` is skipped when truth is absent."""
    out: dict[str, Baseline] = {}
    for name in names:
        if name == "oracle" and "true_var_10m" not in train:
            log.info("no truth columns: skipping the oracle baseline")
            continue
        out[name] = Baseline(name).fit(train, val, context_val, groups_val)
    return out


_PROFILE_STEP = 5  # minutes per time-of-day bucket of the har_tod profile
_SIGMA_STEP = 30  # minutes per bucket of the har_tod log-vol sigma
_PROFILE_LEN = 390  # minutes of the profile at least (a longer session's training data extends it)


class HarTod:
    """HAR-RV in log variance on components with the time-of-day profile taken out (``har_tod``).

    Why: the plain HAR regresses on raw lagged variances, so right after the open (high variance)
    it over-forecasts the calm midday and under-forecasts the close. Dividing each 10-minute block's
    variance by the profile at the minutes it covered, and multiplying the forecast by the profile at
    the minutes it forecasts, leaves the regression only the persistent level to learn. The weekly
    level (``vweek``) carries the symbol's own level, so nothing is keyed by symbol name: a window
    is all the model reads. Everything is fitted on the rows it is given (the training span).
    """

    def __init__(self) -> None:
        self.profile = np.zeros(_PROFILE_LEN)  # centred mean log variance by minute of session
        self.level0 = 0.0                    # pooled deseasonalised log-variance level (no history)
        self.coef_full = np.zeros(7)
        self.coef_part = np.zeros(7)
        self.smear = 1.0                     # E[rv^2 / exp(fitted log variance)] on train
        self.sig_tod = np.ones(_PROFILE_LEN)  # std of log rv residual by half-hour of the day
        self.sigma_all = 1.0

    def _prof(self, m: np.ndarray) -> np.ndarray:
        return self.profile[np.clip(m, 0, len(self.profile) - 1)]

    @property
    def _mean_prof(self) -> float:
        return float(np.log(np.mean(np.exp(self.profile))))

    def _design(self, inp: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """[N, 7] regressors (1, D10, D30, D60, Dday, Dweek, profile) and the full-history mask."""
        m = inp["tod"].to_numpy()
        blocks = inp[["v10_l1", "v10_l2", "v10_l3"]].to_numpy(np.float64)
        back = inp["v_back"].to_numpy(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.log(np.maximum(blocks, _TINY)) - np.stack([self._prof(m - 10 * j) for j in (1, 2, 3)], axis=1)
            back_prof = np.log(np.mean(np.exp(np.stack([self._prof(m - 10 * j) for j in (4, 5, 6)])), axis=0))
            db = np.log(np.maximum(back, _TINY)) - back_prof
        d[~np.isfinite(blocks) | (blocks <= 0)] = np.nan
        db[~np.isfinite(back) | (back <= 0)] = np.nan
        e, eb = np.exp(d), np.exp(db)
        vweek = inp["vweek"].to_numpy(np.float64)
        lvl = np.where(np.isfinite(vweek) & (vweek > 0), np.log(np.maximum(vweek, _TINY)) - self._mean_prof, self.level0)
        vday = inp["vday"].to_numpy(np.float64)
        dday = np.where(np.isfinite(vday) & (vday > 0), np.log(np.maximum(vday, _TINY)) - self._mean_prof, lvl)
        with np.errstate(divide="ignore"):
            d60 = np.log(_nanmean(np.column_stack([e, eb, eb, eb])))
            d30 = np.log(_nanmean(e))
        d60 = np.where(np.isfinite(d60), d60, dday)
        d30 = np.where(np.isfinite(d30), d30, d60)
        d10 = np.where(np.isfinite(d[:, 0]), d[:, 0], d30)
        X = np.column_stack([np.ones(len(inp)), d10, d30, d60, dday, lvl, self._prof(m)])
        return X, np.isfinite(d).all(axis=1) & np.isfinite(db)

    def fit(self, train: pd.DataFrame) -> "HarTod":
        rv = train["rv_10m"].to_numpy(np.float64)
        ok = np.isfinite(rv) & (rv > 0)
        y = np.log(np.where(ok, rv, 1.0) ** 2)
        # a session longer than XNYS's 390 minutes (XETR, futures) gets a profile as long as it is
        length = max(_PROFILE_LEN, int(np.max(train["tod"].to_numpy(), initial=0)) + 1)
        length = -(-length // _SIGMA_STEP) * _SIGMA_STEP
        m = np.clip(train["tod"].to_numpy(), 0, length - 1)
        prof = pd.Series(y[ok]).groupby(m[ok] // _PROFILE_STEP).mean()
        nb = length // _PROFILE_STEP
        buckets = prof.reindex(range(nb)).interpolate(limit_direction="both").fillna(0.0).to_numpy()
        self.profile = np.repeat(buckets - buckets.mean(), _PROFILE_STEP)
        self.level0 = float(np.mean(y[ok] - self.profile[m[ok]]))
        X, full = self._design(train)
        fin = ok & np.isfinite(X).all(axis=1)
        for attr, rows in (("coef_full", fin & full), ("coef_part", fin & ~full)):
            use = rows if rows.sum() >= 50 else fin
            setattr(self, attr, np.linalg.lstsq(X[use], y[use], rcond=None)[0])
        lv = self._logvar(X, full)
        self.smear = float(np.mean(np.exp(y[fin] - lv[fin])))
        res = 0.5 * (y[fin] - lv[fin])  # log rv residual
        self.sigma_all = float(np.std(res))
        sd = pd.Series(res).groupby(m[fin] // _SIGMA_STEP).std()
        sd = sd.reindex(range(length // _SIGMA_STEP + 1)).fillna(self.sigma_all).to_numpy()
        self.sig_tod = np.repeat(np.maximum(sd, 1e-3), _SIGMA_STEP)[:length]
        return self

    def _logvar(self, X: np.ndarray, full: np.ndarray) -> np.ndarray:
        return np.where(full, X @ self.coef_full, X @ self.coef_part)

    def log_var(self, inp: pd.DataFrame) -> np.ndarray:
        """Fitted log variance (the log median, before the smearing correction)."""
        X, full = self._design(inp)
        return self._logvar(np.nan_to_num(X, nan=self.level0), full)

    def rv_hat(self, inp: pd.DataFrame) -> np.ndarray:
        """sqrt(E[rv^2]): the smeared variance forecast's square root (what QLIKE rewards)."""
        return np.sqrt(self.smear * np.exp(self.log_var(inp)))

    def sigma(self, inp: pd.DataFrame) -> np.ndarray:
        return self.sig_tod[np.clip(inp["tod"].to_numpy(), 0, len(self.sig_tod) - 1)]

    def to_dict(self) -> dict:
        """Plain-JSON state."""
        return {"profile": self.profile.tolist(), "level0": self.level0, "coef_full": self.coef_full.tolist(),
                "coef_part": self.coef_part.tolist(), "smear": self.smear, "sig_tod": self.sig_tod.tolist(),
                "sigma_all": self.sigma_all}

    @classmethod
    def from_dict(cls, d: dict) -> "HarTod":
        """Inverse of :meth:`to_dict`."""
        self = cls()
        self.profile = np.asarray(d["profile"], dtype=np.float64)
        self.level0, self.smear, self.sigma_all = float(d["level0"]), float(d["smear"]), float(d["sigma_all"])
        self.coef_full = np.asarray(d["coef_full"], dtype=np.float64)
        self.coef_part = np.asarray(d["coef_part"], dtype=np.float64)
        self.sig_tod = np.asarray(d["sig_tod"], dtype=np.float64)
        return self


_HARX_SIDE = ("v10_l1", "v10_l2", "v10_l3", "v_back", "vday", "vweek", "ewma_var")
_HARX_TOD_STEP = 30  # minutes per time-of-day dummy of har_x
_HARX_CLIP = 8.0     # standardised covariates are clipped to +-8 (a live window far outside training)
_HARX_LOG_CLIP = 3.0  # and the correction to a factor of e^+-3 on har_tod's variance
_HARX_FIT_ROWS = 400_000  # rows the correction is fitted on at most (a seeded sample)


class HarX:
    """HAR-X: ``har_tod``'s variance times ``exp(b0 + z . b)``, ``z`` the window's covariates
    standardised on the training span, ``b`` fitted by QLIKE itself (a gamma GLM with log link on
    ``rv^2 / har_tod``: its deviance is twice the QLIKE of the corrected forecast; scikit-learn's
    ``GammaRegressor``, ridge-penalised).

    Why: ``har_tod`` reads only the 10-minute block variances and the day's and week's levels. The
    window carries more that predicts the next ten minutes' variance: range- and bipower-based
    estimators (less noisy than squared returns), the autocorrelation of the one-minute returns
    (how much of the mid's moves is quote noise, which realized variance keeps) in the window and
    over the symbol's last month (``noise_ac1_m``: 30 returns tell a symbol's noise share poorly),
    the month's level (``har_rv_m``: the long-run mean a mean-reverting variance returns to),
    trading activity (volume and volatility move together) and the half-hour. HAR with exogenous regressors is the
    field's standard extension (e.g. HAR-X with volume or implied volatility); fitted by the loss it
    is scored with, on the training span only, and chosen only where it wins on validation. Every
    covariate is in a window request, so the server's post-step computes it like ``har_tod``.
    """

    def __init__(self, har: HarTod):
        self.har = har
        self.columns: list[str] = []    # the covariates, in design order (those the training rows had)
        self.n_tod = 0                  # time-of-day dummies (one per half-hour but the first)
        self.fill = np.zeros(0)         # training median of each covariate (what a missing value becomes)
        self.mean = np.zeros(0)
        self.scale = np.ones(0)
        self.coef = np.zeros(0)
        self.intercept = 0.0

    def _raw(self, inp: pd.DataFrame, lv: np.ndarray,
             columns: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
        """The covariates (NaN where missing), variances in log units relative to har_tod's ``lv``."""
        cols: dict[str, np.ndarray] = {"lv_har": lv, "ac1": inp["ac1"].to_numpy(np.float64)}

        def rel(values: np.ndarray) -> np.ndarray:
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(values > 0, np.log(np.where(values > 0, values, 1.0)) - lv, np.nan)
        for f in HARX_LAST:
            if f"x_{f}" in inp:
                cols[f"x_{f}"] = rel(inp[f"x_{f}"].to_numpy(np.float64) ** 2)
        for f in HARX_RAW:
            if f"x_{f}" in inp:
                cols[f"x_{f}"] = inp[f"x_{f}"].to_numpy(np.float64)
        for c in _HARX_SIDE:
            cols[c] = rel(inp[c].to_numpy(np.float64))
        for f in HARX_ACTIVITY:
            for pre in ("a_", "m10_", "m30_"):
                if f"{pre}{f}" in inp:
                    cols[f"{pre}{f}"] = inp[f"{pre}{f}"].to_numpy(np.float64)
        names = list(cols) if columns is None else list(columns)
        n = len(inp)
        X = np.column_stack([cols.get(c, np.full(n, np.nan)) for c in names]) if names else np.empty((n, 0))
        return np.where(np.isfinite(X), X, np.nan), names

    def _tod(self, inp: pd.DataFrame) -> np.ndarray:
        b = np.clip(inp["tod"].to_numpy() // _HARX_TOD_STEP, 0, self.n_tod)
        return (b[:, None] == np.arange(1, self.n_tod + 1)[None, :]).astype(np.float64)

    def _design(self, inp: pd.DataFrame, lv: np.ndarray) -> np.ndarray:
        X, _ = self._raw(inp, lv, self.columns)
        X = np.where(np.isnan(X), self.fill, X)
        z = np.clip((X - self.mean) / self.scale, -_HARX_CLIP, _HARX_CLIP)
        return np.column_stack([z, self._tod(inp)])

    def fit(self, train: pd.DataFrame) -> "HarX":
        """Fit on the training rows (their ``rv_10m``), har_tod already fitted on the same rows."""
        from sklearn.linear_model import GammaRegressor

        rv = train["rv_10m"].to_numpy(np.float64)
        lv = self.har.log_var(train)
        h = self.har.smear * np.exp(lv)  # har_tod's variance forecast (rv_hat^2)
        ok = np.isfinite(rv) & (rv > 0) & np.isfinite(h) & (h > 0)
        if ok.sum() > _HARX_FIT_ROWS:  # a seeded sample: the GLM has ~60 coefficients
            keep = np.zeros(len(ok), bool)
            keep[np.random.default_rng(0).choice(np.flatnonzero(ok), _HARX_FIT_ROWS, replace=False)] = True
            ok &= keep
        X, names = self._raw(train, lv)
        have = np.isfinite(X[ok]).mean(axis=0) >= 0.5  # a covariate mostly missing on train is left out
        self.columns = [c for c, k in zip(names, have) if k]
        X = X[:, have]
        with np.errstate(all="ignore"):
            self.fill = np.nan_to_num(np.nanmedian(X[ok], axis=0)) if X.shape[1] else np.zeros(0)
        X = np.where(np.isnan(X), self.fill, X)
        self.mean = X[ok].mean(axis=0)
        self.scale = np.where(X[ok].std(axis=0) > 1e-12, X[ok].std(axis=0), 1.0)
        self.n_tod = int(np.max(train["tod"].to_numpy()[ok], initial=0)) // _HARX_TOD_STEP
        D = self._design(train, lv)[ok]
        glm = GammaRegressor(alpha=1e-3, max_iter=1000).fit(D, rv[ok] ** 2 / h[ok])
        self.coef, self.intercept = np.asarray(glm.coef_, np.float64), float(glm.intercept_)
        return self

    def variance(self, inp: pd.DataFrame) -> np.ndarray:
        """The corrected variance forecast of rv_10m^2."""
        lv = self.har.log_var(inp)  # once: the covariates are relative to it
        corr = np.clip(self.intercept + self._design(inp, lv) @ self.coef, -_HARX_LOG_CLIP, _HARX_LOG_CLIP)
        return self.har.smear * np.exp(lv + corr)

    def to_dict(self) -> dict:
        """Plain-JSON state (the har_tod under it is saved by its Baseline)."""
        return {"columns": self.columns, "n_tod": self.n_tod, "fill": self.fill.tolist(), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "coef": self.coef.tolist(), "intercept": self.intercept}

    @classmethod
    def from_dict(cls, har: HarTod, d: dict) -> "HarX":
        """Inverse of :meth:`to_dict`."""
        self = cls(har)
        self.columns, self.n_tod = list(d["columns"]), int(d["n_tod"])
        self.fill, self.mean, self.scale, self.coef = (np.asarray(d[k], np.float64) for k in ("fill", "mean", "scale", "coef"))
        self.intercept = float(d["intercept"])
        return self
