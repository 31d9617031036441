"""Baselines every model must beat, with the same outputs (PRED_COLUMNS) as the networks.

Inputs come from a features frame (symbol, ts, labels, optional truth). The realized-volatility
regressors are built from the frame's own labels lagged by their horizon: ``rv_10m`` of minute
``t - 10`` is the realized volatility of minutes ``t-9..t``, known at ``t``; likewise ``ret_60m`` of
``t - 60`` is the past hour's return. That is exactly causal (a lag is taken only inside one
symbol-day and only when the earlier row is exactly ``k`` minutes back) and depends on nothing but
the data contract, so the baselines do not move when the feature catalogue changes.

- ``zero``: return 0; volatility = realized vol of the last hour (random walk in volatility).
- ``persistence``: return = last hour's return; volatility = last 30 minutes' realized vol.
- ``har_rv``: return 0; HAR-RV (Corsi 2009) on log rv_10m with 10 / 30 / 60-minute and previous-day
  components plus the intraday seasonal profile, fitted by OLS on the training span.
- ``har_tod``: return 0; THE floor every model is compared with (and falls back to): HAR-RV in
  log-variance form on deseasonalised components. A per-5-minute time-of-day profile of log
  variance (fitted on train) is taken out of each lagged 10-minute variance at the minute it was
  measured, a shrunk per-symbol level is added, OLS is fitted separately for rows with a full hour
  of same-day lags and for the partial-lag open, the forecast is re-seasonalised at the target
  minutes and mean-corrected by smearing; its log-vol sigma varies by half-hour of the day.
- ``ewma``: return 0; RiskMetrics-style EWMA of lagged 10-minute variances (half-life in minutes).
- ``oracle``: the simulator's truth, ``true_ret_60m`` and ``sqrt(true_var_10m)`` (the ceiling).

Each baseline gets residual-based sigmas (fitted on train) and a :class:`Calibrator` fitted on the
validation span, so its confidences and intervals are scored like a model's.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from hfcast.calibration import Calibrator
from hfcast.contracts import INFO_COLUMNS, PRED_COLUMNS
from hfcast.data.schema import minute_of_session

log = logging.getLogger(__name__)

BASELINES = ("zero", "persistence", "har_rv", "har_tod", "ewma", "oracle")
FLOOR = "har_tod"  # the baseline every model is compared with and falls back to
_TINY = 1e-12


def _lag(df: pd.DataFrame, col: str, k: int) -> np.ndarray:
    """``col`` of the row exactly ``k`` minutes earlier in the same symbol-day, else NaN."""
    day = df["ts"].dt.floor("D")
    g = df.groupby([df["symbol"], day], sort=False)
    prev = g[col].shift(k)
    gap = df["ts"] - g["ts"].shift(k)
    return np.where(gap == pd.Timedelta(minutes=k), prev, np.nan).astype(np.float64)


def _nanmean(a: np.ndarray) -> np.ndarray:
    """Column means over the finite entries; NaN where a column has none (no warning)."""
    cnt = np.isfinite(a).sum(axis=0)
    return np.where(cnt > 0, np.nansum(a, axis=0) / np.maximum(cnt, 1), np.nan)


def baseline_inputs(df: pd.DataFrame, ewma_halflife: float = 30.0) -> pd.DataFrame:
    """Causal regressors for every baseline, one row per row of ``df`` (same index).

    Args:
        df: features frame sorted by (symbol, ts) with ``rv_10m`` and ``ret_60m`` (and the truth
            columns when simulated). Pass the whole history you have: lags and the EWMA need
            the minutes before the rows you score.
        ewma_halflife: EWMA half-life in minutes.
    """
    for col in ("symbol", "ts", "rv_10m", "ret_60m"):
        if col not in df:
            raise KeyError(f"baseline inputs need column {col!r}; frame has {list(df.columns)[:12]}...")
    out = pd.DataFrame(index=df.index)
    out["symbol"], out["ts"] = df["symbol"], df["ts"]
    var10 = df["rv_10m"].astype(np.float64) ** 2
    tmp = pd.DataFrame({"symbol": df["symbol"], "ts": df["ts"], "v": var10})
    lags = np.stack([_lag(tmp, "v", 10 * j) for j in (1, 2, 3, 4, 5, 6)])  # [6, N]
    out["v10"] = lags[0]
    for j in range(6):  # individual lags, for the deseasonalised HAR (har_tod)
        out[f"v10_l{j + 1}"] = lags[j]
    out["v30"] = _nanmean(lags[:3])
    out["v60"] = _nanmean(lags)
    day = df["ts"].dt.floor("D")
    daily = var10.groupby([df["symbol"], day]).mean().rename("vd").reset_index()
    daily.columns = ["symbol", "day", "vd"]
    daily["vday"] = daily.groupby("symbol")["vd"].shift(1)
    key = pd.DataFrame({"symbol": df["symbol"].to_numpy(), "day": day.to_numpy()})
    out["vday"] = key.merge(daily[["symbol", "day", "vday"]], on=["symbol", "day"], how="left")["vday"].to_numpy()
    out["tod"] = minute_of_session(df["ts"])
    lagged = pd.Series(lags[0], index=df.index)
    out["ewma_var"] = lagged.groupby(df["symbol"]).transform(
        lambda s: s.ewm(halflife=ewma_halflife, ignore_na=True).mean()).to_numpy()
    out["ret_past60"] = _lag(pd.DataFrame({"symbol": df["symbol"], "ts": df["ts"],
                                           "r": df["ret_60m"].astype(np.float64)}), "r", 60)
    for col in ("ret_60m", "rv_10m", "true_ret_60m", "true_var_10m"):
        if col in df:
            out[col] = df[col].astype(np.float64).to_numpy()
    return out


def _fill_chain(inp: pd.DataFrame, fallback: float) -> np.ndarray:
    """[N, 4] log variance components (10m, 30m, 60m, day), each gap filled by its neighbour."""
    cols = ["v10", "v30", "v60", "vday"]
    v = inp[cols].to_numpy(np.float64).copy()
    v[:, 3] = np.where(np.isfinite(v[:, 3]), v[:, 3], fallback)
    for j in (2, 1, 0):  # 60m <- day, 30m <- 60m, 10m <- 30m
        v[:, j] = np.where(np.isfinite(v[:, j]), v[:, j], v[:, j + 1])
    return np.log(np.maximum(v, _TINY))


class Baseline:
    """One baseline: ``fit(train_inputs, val_inputs)`` then ``predict(inputs) -> PRED_COLUMNS``."""

    def __init__(self, name: str, ewma_halflife: float = 30.0):
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")
        self.name = name
        self.ewma_halflife = ewma_halflife
        self.calibrator = Calibrator()
        self.coef: np.ndarray | None = None
        self.season: np.ndarray | None = None
        self.fallback_var = float("nan")
        self.ret_scale = 1.0   # ret sigma = ret_scale * sqrt(6) * rv_hat
        self.lrv_sigma = 1.0   # std of log(rv / rv_hat) on train
        self.har: HarTod | None = None  # the har_tod point model

    # -- point forecasts ---------------------------------------------------------------------
    def _design(self, inp: pd.DataFrame) -> np.ndarray:
        comps = _fill_chain(inp, self.fallback_var)
        season = self.season[np.clip(inp["tod"].to_numpy(), 0, len(self.season) - 1)]
        return np.column_stack([np.ones(len(inp)), comps, season])

    def _points(self, inp: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(ret_mu, rv_hat) before calibration."""
        n = len(inp)
        if self.name == "oracle":
            missing = [c for c in ("true_ret_60m", "true_var_10m") if c not in inp]
            if missing:
                raise KeyError(f"oracle baseline needs truth columns {missing} (simulated data only)")
            return inp["true_ret_60m"].to_numpy(), np.sqrt(np.maximum(inp["true_var_10m"].to_numpy(), 0))
        comps = np.exp(_fill_chain(inp, self.fallback_var))
        if self.name == "zero":
            return np.zeros(n), np.sqrt(comps[:, 2])
        if self.name == "persistence":
            return np.nan_to_num(inp["ret_past60"].to_numpy(), nan=0.0), np.sqrt(comps[:, 1])
        if self.name == "ewma":
            ew = inp["ewma_var"].to_numpy()
            return np.zeros(n), np.sqrt(np.where(np.isfinite(ew), ew, comps[:, 3]))
        if self.name == "har_tod":
            return np.zeros(n), self.har.rv_hat(inp)
        lrv = self._design(inp) @ self.coef  # har_rv: log rv_10m
        return np.zeros(n), np.exp(lrv + self.lrv_sigma**2)  # sqrt(E[rv^2]) under log-normal errors

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, train: pd.DataFrame, val: pd.DataFrame) -> "Baseline":
        """Fit the regression and residual scales on ``train``, the calibrator on ``val``."""
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
        if self.name == "har_tod":
            self.har = HarTod().fit(train)
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
            self._raw(val), val["ret_60m"].to_numpy(), val["rv_10m"].to_numpy())
        return self

    def _raw(self, inp: pd.DataFrame) -> dict[str, np.ndarray]:
        mu, rv_hat = self._points(inp)
        rv_hat = np.maximum(np.nan_to_num(rv_hat, nan=np.sqrt(self.fallback_var)), _TINY)
        lrv_sigma = (self.har.sigma(inp) if self.name == "har_tod"
                     else np.full(len(inp), max(self.lrv_sigma, 1e-6)))
        return {"ret_mu": mu, "ret_sigma": self.ret_scale * np.sqrt(6.0) * rv_hat,
                "rv_hat": rv_hat, "lrv_sigma": lrv_sigma}

    def predict(self, inp: pd.DataFrame, context: dict | None = None) -> pd.DataFrame:
        """PRED_COLUMNS + INFO_COLUMNS for the rows of ``inp`` (same index); ``context``
        (:data:`hfcast.calibration.CONTEXT_KEYS`, one value per row) for a calibrator fitted with it."""
        out = self.calibrator.apply(self._raw(inp), context)
        out = {c: out[c] for c in PRED_COLUMNS} | self.calibrator.info_columns(len(inp))
        return pd.DataFrame(out, index=inp.index, columns=[*PRED_COLUMNS, *INFO_COLUMNS])


def fit_baselines(train: pd.DataFrame, val: pd.DataFrame, names: tuple[str, ...] = BASELINES,
                  ewma_halflife: float = 30.0) -> dict[str, Baseline]:
    """Fit every named baseline on the same rows; ``oracle`` is skipped when truth is absent."""
    out: dict[str, Baseline] = {}
    for name in names:
        if name == "oracle" and "true_var_10m" not in train:
            log.info("no truth columns: skipping the oracle baseline")
            continue
        out[name] = Baseline(name, ewma_halflife).fit(train, val)
    return out


_PROFILE_STEP = 5  # minutes per time-of-day bucket of the har_tod profile
_SIGMA_STEP = 30  # minutes per bucket of the har_tod log-vol sigma
_SYMBOL_SHRINK = 500.0  # rows of prior weight pulling a symbol's level to the pooled one


class HarTod:
    """HAR-RV in log variance on components with the time-of-day profile taken out (``har_tod``).

    Why: the plain HAR regresses on raw lagged variances, so right after the open (high variance)
    it over-forecasts the calm midday and under-forecasts the close. Dividing each lagged
    10-minute variance by the profile at the minutes it covered, and multiplying the forecast by
    the profile at the minutes it forecasts, leaves the regression only the persistent level to
    learn. Everything is fitted on the rows it is given (the training span).
    """

    def __init__(self) -> None:
        self.profile = np.zeros(390)      # centred mean log variance by minute of session
        self.levels: dict[str, float] = {}  # shrunk per-symbol deseasonalised log-variance level
        self.level0 = 0.0
        self.coef_full = np.zeros(7)
        self.coef_part = np.zeros(7)
        self.smear = 1.0                  # E[rv^2 / exp(fitted log variance)] on train
        self.sig_tod = np.ones(390)       # std of log rv residual by half-hour of the day
        self.sigma_all = 1.0

    def _prof(self, m: np.ndarray) -> np.ndarray:
        return self.profile[np.clip(m, 0, 389)]

    def _design(self, inp: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """[N, 7] regressors (1, D10, D30, D60, Dday, symbol level, profile) and the full-lag mask."""
        m = inp["tod"].to_numpy()
        lags = np.stack([inp[f"v10_l{j}"].to_numpy(np.float64) for j in range(1, 7)], axis=1)
        d = np.log(np.maximum(lags, _TINY)) - np.stack([self._prof(m - 10 * j) for j in range(1, 7)], axis=1)
        d[~np.isfinite(lags) | (lags <= 0)] = np.nan
        e = np.exp(d)
        lvl = inp["symbol"].astype(object).map(self.levels).to_numpy(np.float64)
        lvl = np.where(np.isfinite(lvl), lvl, self.level0)
        vday = inp["vday"].to_numpy(np.float64)
        dday = np.where(np.isfinite(vday) & (vday > 0), np.log(np.maximum(vday, _TINY)) - self._mean_prof, lvl)
        comps = [np.log(_nanmean(e[:, :k].T)) if k > 1 else d[:, 0] for k in (1, 3, 6)]
        d60 = np.where(np.isfinite(comps[2]), comps[2], dday)
        d30 = np.where(np.isfinite(comps[1]), comps[1], d60)
        d10 = np.where(np.isfinite(comps[0]), comps[0], d30)
        X = np.column_stack([np.ones(len(inp)), d10, d30, d60, dday, lvl, self._prof(m)])
        return X, np.isfinite(d).all(axis=1)

    @property
    def _mean_prof(self) -> float:
        return float(np.log(np.mean(np.exp(self.profile))))

    def fit(self, train: pd.DataFrame) -> "HarTod":
        rv = train["rv_10m"].to_numpy(np.float64)
        ok = np.isfinite(rv) & (rv > 0)
        y = np.log(np.where(ok, rv, 1.0) ** 2)
        m = np.clip(train["tod"].to_numpy(), 0, 389)
        prof = pd.Series(y[ok]).groupby(m[ok] // _PROFILE_STEP).mean()
        nb = 390 // _PROFILE_STEP
        buckets = prof.reindex(range(nb)).interpolate(limit_direction="both").fillna(0.0).to_numpy()
        self.profile = np.repeat(buckets - buckets.mean(), _PROFILE_STEP)
        des = pd.Series(y[ok] - self.profile[m[ok]])
        sym = train["symbol"].astype(object).to_numpy()[ok]
        self.level0 = float(des.mean())
        g = des.groupby(sym).agg(["sum", "count"])
        shr = (g["sum"] + _SYMBOL_SHRINK * self.level0) / (g["count"] + _SYMBOL_SHRINK)
        self.levels = {str(k): float(v) for k, v in shr.items()}
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
        sd = sd.reindex(range(390 // _SIGMA_STEP + 1)).fillna(self.sigma_all).to_numpy()
        self.sig_tod = np.repeat(np.maximum(sd, 1e-3), _SIGMA_STEP)[:390]
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
        return self.sig_tod[np.clip(inp["tod"].to_numpy(), 0, 389)]

    def to_dict(self) -> dict:
        """Plain-JSON state (saved with a floored forecaster)."""
        return {"profile": self.profile.tolist(), "levels": self.levels, "level0": self.level0,
                "coef_full": self.coef_full.tolist(), "coef_part": self.coef_part.tolist(), "smear": self.smear,
                "sig_tod": self.sig_tod.tolist(), "sigma_all": self.sigma_all}

    @classmethod
    def from_dict(cls, d: dict) -> "HarTod":
        """Inverse of :meth:`to_dict`."""
        self = cls()
        self.profile = np.asarray(d["profile"], dtype=np.float64)
        self.levels = {str(k): float(v) for k, v in d["levels"].items()}
        self.level0, self.smear, self.sigma_all = float(d["level0"]), float(d["smear"]), float(d["sigma_all"])
        self.coef_full = np.asarray(d["coef_full"], dtype=np.float64)
        self.coef_part = np.asarray(d["coef_part"], dtype=np.float64)
        self.sig_tod = np.asarray(d["sig_tod"], dtype=np.float64)
        return self
