"""The best forecast of realized variance ANY forecaster can make from what the market shows.

Why: the latent oracle of ``bench_robustness`` reads the CIR variance state itself, which no
forecaster sees; "room for 0.90x" measured against it may not exist for anything that reads data.
Here the generator's own model is inverted with its TRUE parameters (per-symbol base volatility
and noise, the intraday profile, the CIR mean reversion and vol-of-vol): a Bayesian filter on a
grid of the variance state, fed every observable that carries it in ``hfcast.data.dgp``'s
``cir_noise`` (the minute's volume, ``log volume = log 8000 + log u + log(v)/2 + N(0, 0.5^2)``;
the high/low excursion beyond the bar's two mids, a half-normal with scale ``sigma * mid / 2``;
the one-minute mid return, treated as ``N(0, sigma^2 (1 + 2 noise^2))`` - independence across
minutes is an approximation where quote noise makes returns an MA(1)). Depth, spread, trade
counts and trade signs carry nothing about the variance there. The forecast is the posterior
mean of the next 10 minutes' variance (what QLIKE rewards), mapped to the realized scale per
symbol on the validation span exactly as the realized-scale oracle is.

Two readings: ``window_30m`` restarts the filter from the stationary law 30 minutes back (what a
window of the data contract could at best carry), ``history`` runs it over every minute of every
day so far (the night maps the closing posterior through the generator's own ``0.7 v + 0.3``).
Both are ceilings that no learner reaches with finite data: they know the generator's parameters
exactly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.stats import norm

GRID = np.linspace(0.15, 2.6, 140)  # the CIR variance state (mean 1, stationary sd ~0.25)
WINDOW = 30
HORIZON = 10


def _config(params: dict):
    from hfcast.data.dgp import DGPConfig

    sec = dict(params.get("synth") or {})
    fields = {**{k: sec[k] for k in ("n_symbols", "n_days", "start_date", "seed") if k in sec}, **dict(sec.get("dgp") or {})}
    return DGPConfig(kind="cir_noise", **fields)


class _Filter:
    """Grid filter of the CIR state for one generator configuration."""

    def __init__(self, cfg):
        from hfcast.data.dgp import _phi, _State, profile

        st = _State(cfg)
        self.base, self.noise = st.base, st.noise
        self.u = profile("cir_noise")
        self.kappa = 1 - _phi(cfg.cir_halflife)
        xi = cfg.cir_volvol * np.sqrt(2 * self.kappa)
        mu, sd = GRID + self.kappa * (1 - GRID), xi * np.sqrt(GRID)
        P = norm.pdf(GRID[None, :], mu[:, None], sd[:, None])
        self.P = P / P.sum(axis=1, keepdims=True)
        pi = np.full(GRID.size, 1 / GRID.size)
        for _ in range(3000):
            pi = pi @ self.P
        self.stationary = pi
        self._night = np.abs(GRID[None, :] - (0.7 * GRID + 0.3)[:, None]).argmin(axis=1)
        self.open = self.night(pi[None, :])[0]

    def night(self, post: np.ndarray) -> np.ndarray:
        """[S, G] closing posteriors -> the next open's prior (v_open = 0.7 v_close + 0.3)."""
        out = np.zeros_like(post)
        for i, j in enumerate(self._night):
            out[:, j] += post[:, i]
        return out

    def loglik(self, bars: pd.DataFrame, n_sym: int) -> np.ndarray:
        """[S, T, G] log-likelihood of each minute's observables given the variance state."""
        T = self.u.size
        b = {c: bars[c].to_numpy(np.float64).reshape(n_sym, T) for c in ("bid", "ask", "volume", "mid_high")}
        mid = 0.5 * (b["bid"] + b["ask"])
        mid_prev = np.concatenate([mid[:, :1], mid[:, :-1]], axis=1)
        r = np.full_like(mid, np.nan)
        r[:, 1:] = np.log(mid[:, 1:] / mid[:, :-1])
        sig2 = (self.base ** 2)[:, None, None] * (self.u ** 2)[None, :, None] * GRID[None, None, :]
        lv = np.log(np.maximum(b["volume"], 1.0))
        ll = norm.logpdf(lv[:, :, None], (np.log(8000.0) + np.log(self.u))[None, :, None] + 0.5 * np.log(GRID), 0.5)
        s2r = sig2 * (1 + 2 * self.noise ** 2)[:, None, None]
        ll += np.where(np.isfinite(r)[:, :, None], -0.5 * np.log(s2r) - 0.5 * np.nan_to_num(r)[:, :, None] ** 2 / s2r, 0.0)
        wig = np.maximum(b["mid_high"] - np.maximum(mid, mid_prev), 0.0)
        sw = np.sqrt(sig2) * 0.5 * mid[:, :, None]
        return ll - np.log(sw) - 0.5 * (wig[:, :, None] / sw) ** 2

    def _update(self, prior: np.ndarray, ll: np.ndarray) -> np.ndarray:
        w = np.log(prior + 1e-300) + ll
        w = np.exp(w - w.max(axis=-1, keepdims=True))
        return w / w.sum(axis=-1, keepdims=True)

    def _forecast(self, post: np.ndarray, t: int) -> np.ndarray:
        """E[variance of minutes t+1..t+10] (efficient price) from the posterior at the end of minute t."""
        uk = self.u[t + 1:t + 1 + HORIZON]
        if uk.size < HORIZON:
            return np.full(post.shape[:-1], np.nan)
        ev = post @ GRID
        ev_next = ev + self.kappa * (1 - ev)
        k = np.arange(HORIZON)
        path = 1 + (1 - self.kappa) ** k * (ev_next[..., None] - 1)  # E[v_{t+1+k}]
        return self.base ** 2 * (path * uk ** 2).sum(axis=-1)

    def day(self, ll: np.ndarray, prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[S, T] forecasts of one day: (every minute so far, from ``prior`` at the open - the
        stationary night's when None -, the last 30 minutes only) and the closing posterior [S, G]."""
        S, T, _ = ll.shape
        whole, window = np.full((S, T), np.nan), np.full((S, T), np.nan)
        post = np.tile(self.open, (S, 1)) if prior is None else prior
        for t in range(T):
            post = self._update(post @ self.P if t else post, ll[:, t])
            whole[:, t] = self._forecast(post, t)
        closing = post
        ends = np.arange(WINDOW - 1, T - HORIZON)  # every window end at once: [E, S, G]
        starts = ends - (WINDOW - 1)
        post = np.where((starts == 0)[:, None, None], self.open, self.stationary).repeat(S, axis=1)  # [E, S, G]
        for j in range(WINDOW):
            if j:
                post = post @ self.P
            post = self._update(post, np.transpose(ll[:, starts + j], (1, 0, 2)))
        for i, t in enumerate(ends):
            window[:, t] = self._forecast(post[i], t)
        return whole, window, closing


def realized_map(x: np.ndarray, y2: np.ndarray, symbol: np.ndarray) -> dict[str, tuple[float, float]]:
    """Per symbol, ``a x + b`` mapping a variance forecast ``x`` to the REALIZED scale, fitted by
    QLIKE against ``y2`` (least squares would chase the fat tails); ``b`` is fitted in units of the
    symbol's mean ``x`` (well-conditioned). Used for the realized-scale oracle and this filter alike."""
    from hfcast import metrics as M

    x, y2, symbol = np.asarray(x, np.float64), np.asarray(y2, np.float64), np.asarray(symbol).astype(str)
    ok = np.isfinite(x) & np.isfinite(y2)
    coef = {}
    for s in np.unique(symbol[ok]):
        xs, ys = x[ok & (symbol == s)], y2[ok & (symbol == s)]
        m = float(np.mean(xs))
        q = lambda ab: M.qlike(np.exp(ab[0]) * xs + np.exp(ab[1]) * m, ys)  # noqa: E731
        ab = minimize(q, x0=[np.log(max(ys.mean() / m, 1e-6)), np.log(1e-3)], method="Nelder-Mead").x
        coef[str(s)] = (float(np.exp(ab[0])), float(np.exp(ab[1]) * m))
    return coef


def apply_map(coef: dict[str, tuple[float, float]], x: np.ndarray, symbol: np.ndarray) -> np.ndarray:
    """:func:`realized_map`'s coefficients applied row by row (NaN for a symbol it did not fit)."""
    ab = np.array([coef.get(str(s), (np.nan, np.nan)) for s in np.asarray(symbol)]).reshape(-1, 2)
    return ab[:, 0] * np.asarray(x, np.float64) + ab[:, 1]


def filter_forecasts(lake, params: dict) -> pd.DataFrame:
    """Every (symbol, ts) of the lake's days: ``history`` and ``window_30m`` filter forecasts."""
    from hfcast.data.dgp import iter_days

    cfg = _config(params)
    flt = _Filter(cfg)
    dates = lake.dates("raw")
    first_date, first, _ = next(iter_days(cfg))
    seen = lake.read("raw", first_date).sort_values(["symbol", "ts"], kind="stable") if first_date in dates else None
    if seen is None or len(seen) != len(first) or not np.allclose(seen["bid"].to_numpy(), first["bid"].to_numpy()):
        raise ValueError("the lake's raw bars are not the cir_noise market of params.yaml's synth section "
                         "(kind, size, seed): the filter would read the wrong parameters")
    parts, prior = [], None
    for date in dates:
        bars = lake.read("raw", date).sort_values(["symbol", "ts"], kind="stable")
        whole, window, closing = flt.day(flt.loglik(bars, cfg.n_symbols), prior)
        prior = flt.night(closing)
        parts.append(pd.DataFrame({"symbol": bars["symbol"].astype(str).to_numpy(), "ts": bars["ts"].to_numpy(),
                                   "history": whole.reshape(-1), "window_30m": window.reshape(-1)}))
    return pd.concat(parts, ignore_index=True)


def observable_bound(lake, params: dict, P: pd.DataFrame, val: pd.DataFrame) -> dict:
    """QLIKE against realized variance over ``har_tod``'s, on the test rows of ``P`` (the predictions
    ``hfcast train`` wrote), of the filter's forecasts mapped to the realized scale on ``val`` (the
    validation span's features, ``rv_10m`` included)."""
    from hfcast import metrics as M

    F = filter_forecasts(lake, params)
    F = F.assign(ts=pd.to_datetime(F["ts"], utc=True))
    keys = lambda d: d.assign(symbol=d["symbol"].astype(str), ts=pd.to_datetime(d["ts"], utc=True))  # noqa: E731
    fit = keys(val[["symbol", "ts", "rv_10m"]]).merge(F, on=["symbol", "ts"])
    test = keys(P[P["model"] == "har_tod"][["symbol", "ts", "rv_10m", "rv_10m_pred"]]).merge(F, on=["symbol", "ts"])
    y2, h = test["rv_10m"].to_numpy(np.float64) ** 2, test["rv_10m_pred"].to_numpy(np.float64) ** 2
    ok = np.isfinite(y2) & np.isfinite(h)
    out: dict = {"rows": int(ok.sum()), "parameters": "the generator's own (known to this bound only)"}
    for col in ("history", "window_30m"):
        coef = realized_map(fit[col].to_numpy(), fit["rv_10m"].to_numpy(np.float64) ** 2, fit["symbol"].to_numpy())
        f = apply_map(coef, test[col].to_numpy(), test["symbol"].to_numpy())
        good = ok & np.isfinite(f)
        out[f"{col}_qlike_over_har_tod"] = M.qlike(f[good], y2[good]) / M.qlike(h[good], y2[good])
        out[f"{col}_rows"] = int(good.sum())
    out["har_tod_qlike"] = M.qlike(h[ok], y2[ok])
    out["best"] = min(out["history_qlike_over_har_tod"], out["window_30m_qlike_over_har_tod"])
    return out
