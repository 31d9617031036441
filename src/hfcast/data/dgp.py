"""Data-generating processes built differently from ``hfcast.data.simulator``, for robustness checks.

Why: the networks and the floor were developed on the project's simulator; a model can fit one
generator's quirks. These processes share only the data contract with it (``raw/`` bars and
``truth/`` per date, the same columns, written to the same lake layout), so the same walk-forward
comparison runs on them unchanged.

- ``garch_t``: per-symbol minute GARCH(1,1) on deseasonalised efficient returns with Student-t
  shocks (nu = 4.5, unit variance), a reverse-J intraday profile (a tall, fast-decaying open and a
  mild rise into the close), overnight variance jumps (the GARCH state is multiplied by a
  log-normal factor on 30% of nights) and a drift planted in displayed depth imbalance
  (``imb = tanh(1.2 g + 0.6 eps)``, drift ``kappa g sigma``, g an AR(1) with a 15-minute half-life).
- ``cir_noise``: square-root (CIR) stochastic variance per minute with Gaussian shocks, a W-shaped
  day (open and close peaks, a lunch lull, a mid-morning bump) and microstructure noise on the mid
  whose size, per symbol, runs from none to heavy (0 to 2 x the one-minute volatility, spread evenly
  across symbols); a drift planted in trade signs (``last`` and ``vwap`` against the mid).

Truth, as in the simulator: ``true_var_10m`` is the expected integrated variance of the EFFICIENT
log price over t+1..t+10 given the latent state at the end of minute t (closed form: GARCH and
CIR have linear variance forecasts), ``true_ret_60m`` the expected efficient return over the next
hour (Jensen terms neglected), ``latent_sigma`` / ``latent_drift`` the minute's volatility and
drift, ``regime`` 0. NaN where the horizon crosses the close. Deterministic for a seed; streamed day
by day (only a few numbers per symbol carry over the night).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from hfcast.data import schema
from hfcast.data.simulator import symbols

log = logging.getLogger(__name__)

T = schema.MINUTES_PER_SESSION
KINDS = ("garch_t", "cir_noise")


@dataclass
class DGPConfig:
    """One robustness market; ``kind`` picks the process (:data:`KINDS`)."""

    kind: str = "garch_t"
    n_symbols: int = 20
    n_days: int = 30
    start_date: str = "2024-01-02"
    seed: int = 11
    tick: float = 0.01
    daily_vol: float = 0.02
    vol_dispersion: float = 0.3
    price_median: float = 60.0
    spread_bps: float = 4.0
    # garch_t
    garch_alpha: float = 0.06
    garch_beta: float = 0.92
    t_dof: float = 4.5
    overnight_jump_prob: float = 0.3
    overnight_jump_sd: float = 0.6       # sd of the log variance multiplier on a news night
    imb_halflife: float = 15.0
    imb_drift: float = 0.05              # kappa: drift per minute = kappa * g * sigma
    # cir_noise
    cir_halflife: float = 60.0           # minutes
    cir_volvol: float = 0.25             # stationary sd of v / its mean (about)
    noise_max: float = 2.0               # heaviest microstructure noise, x one-minute vol
    flow_halflife: float = 20.0
    flow_drift: float = 0.04

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown DGP kind {self.kind!r}; choose from {KINDS}")
        if self.n_symbols < 1 or self.n_days < 1:
            raise ValueError("a DGP needs n_symbols >= 1 and n_days >= 1")
        if self.garch_alpha + self.garch_beta >= 1:
            raise ValueError("garch_alpha + garch_beta must be < 1 (stationary variance)")
        if self.t_dof <= 2:
            raise ValueError("t_dof must be > 2 (finite variance)")


def _phi(halflife: float) -> float:
    return float(np.exp(-np.log(2.0) / halflife))


def profile(kind: str) -> np.ndarray:
    """Intraday volatility multiplier per minute, scaled so mean(profile^2) = 1."""
    i = np.arange(T, dtype=np.float64)
    if kind == "garch_t":  # reverse J: tall fast open, flat day, mild close
        u = 1 + 2.0 * np.exp(-i / 8.0) + 0.5 * np.exp(-i / 60.0) + 0.35 * (i / (T - 1)) ** 6
    else:  # W: open and close peaks, lunch lull, mid-morning bump
        u = (1 + 0.9 * np.exp(-i / 25.0) + 0.7 * np.exp(-(T - 1 - i) / 25.0)
             - 0.35 * np.exp(-0.5 * ((i - 195) / 40.0) ** 2) + 0.25 * np.exp(-0.5 * ((i - 75) / 12.0) ** 2))
    return u / np.sqrt(np.mean(u**2))


class _State:
    """What carries over the night: per-symbol scale, price, variance state."""

    def __init__(self, cfg: DGPConfig):
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
        s = cfg.n_symbols
        self.base = cfg.daily_vol / np.sqrt(T) * np.exp(cfg.vol_dispersion * rng.standard_normal(s))
        self.logp = np.log(cfg.price_median) + 0.6 * rng.standard_normal(s)
        self.h = np.ones(s)          # deseasonalised variance state, mean 1
        self.noise = np.linspace(0.0, cfg.noise_max, s) if s > 1 else np.zeros(1)


def _future_variance(base: np.ndarray, u: np.ndarray, factor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The true conditional variance of each of the next 60 minutes and its 10-minute sum.

    Args:
        base: [S] each symbol's base volatility.
        u: [T] the intraday profile of the day.
        factor: [S, T, 60] the expected variance factor of minute t+k given minute t (GARCH or CIR).

    Returns:
        ``ev`` [S, T, 60] (NaN past the close) and ``true_var`` [S, T] (NaN in the last 10 minutes).
    """
    uk = np.full((T, 60), np.nan)  # uk[t, j] = u[t + j + 1]: the profile of the minutes ahead
    for j in range(60):
        uk[: T - j - 1, j] = u[j + 1:]
    ev = base[:, None, None] ** 2 * uk[None] ** 2 * factor
    true_var = np.nansum(ev[:, :, :10], axis=2)
    true_var[:, T - 10:] = np.nan
    return ev, true_var


def _garch_day(cfg: DGPConfig, st: _State, rng: np.random.Generator) -> dict[str, np.ndarray]:
    s, a, b = cfg.n_symbols, cfg.garch_alpha, cfg.garch_beta
    omega = 1 - a - b
    jump = rng.random(s) < cfg.overnight_jump_prob
    st.h = st.h * np.exp(np.where(jump, cfg.overnight_jump_sd * rng.standard_normal(s), 0.0))
    nu = cfg.t_dof
    z = rng.standard_t(nu, (s, T)) / np.sqrt(nu / (nu - 2))
    u = profile("garch_t")
    h = np.empty((s, T))
    hh = st.h
    for i in range(T):  # the GARCH recursion is sequential in time, vectorised over symbols
        h[:, i] = hh
        hh = omega + a * hh * z[:, i] ** 2 + b * hh
    st.h = hh
    sig = st.base[:, None] * u[None, :] * np.sqrt(h)
    phi_g = _phi(cfg.imb_halflife)
    g = lfilter([np.sqrt(1 - phi_g**2)], [1, -phi_g], rng.standard_normal((s, T)), axis=1)
    drift = cfg.imb_drift * g * sig
    ret = np.concatenate([np.zeros((s, 1)), drift[:, :-1]], axis=1) + sig * z
    # E[h_{t+k} | F_t] = 1 + (a+b)^(k-1) (h_{t+1} - 1), h_{t+1} known at t
    h_next = np.concatenate([h[:, 1:], hh[:, None]], axis=1)
    k = np.arange(1, 61)
    eh = 1 + (a + b) ** (k - 1)[None, None, :] * (h_next[:, :, None] - 1)  # [S, T, 60]
    ev, true_var = _future_variance(st.base, u, eh)
    gk = phi_g ** k  # E[g_{t+k}] / g_t ... drift of minute t+k is paid in the return of t+k+1
    true_ret = cfg.imb_drift * g * np.nansum(np.concatenate([np.ones((1, 1)), gk[None, :-1]], axis=1)[None]
                                            * np.sqrt(ev), axis=2)
    true_ret[:, T - 60:] = np.nan
    imb = np.tanh(1.2 * g + 0.6 * rng.standard_normal((s, T)))
    return {"ret": ret, "sigma": sig, "drift": drift, "true_var": true_var, "true_ret": true_ret,
            "imb": imb, "flow": np.zeros((s, T)), "noise": np.zeros(s)}


def _cir_day(cfg: DGPConfig, st: _State, rng: np.random.Generator) -> dict[str, np.ndarray]:
    s = cfg.n_symbols
    kappa = 1 - _phi(cfg.cir_halflife)
    xi = cfg.cir_volvol * np.sqrt(2 * kappa)  # stationary var of v ~ xi^2 / (2 kappa) for mean 1
    v = np.empty((s, T))
    vv = 0.7 * st.h + 0.3  # the night pulls the variance partly back to its mean
    shocks = rng.standard_normal((s, T))
    for i in range(T):
        v[:, i] = vv
        vv = np.maximum(vv + kappa * (1 - vv) + xi * np.sqrt(np.maximum(vv, 0)) * shocks[:, i], 1e-4)
    st.h = vv
    u = profile("cir_noise")
    sig = st.base[:, None] * u[None, :] * np.sqrt(v)
    phi_f = _phi(cfg.flow_halflife)
    f = lfilter([np.sqrt(1 - phi_f**2)], [1, -phi_f], rng.standard_normal((s, T)), axis=1)
    drift = cfg.flow_drift * f * sig
    ret = np.concatenate([np.zeros((s, 1)), drift[:, :-1]], axis=1) + sig * rng.standard_normal((s, T))
    k = np.arange(1, 61)
    v_next = np.concatenate([v[:, 1:], vv[:, None]], axis=1)
    ev_k = 1 + (1 - kappa) ** (k - 1)[None, None, :] * (v_next[:, :, None] - 1)
    ev, true_var = _future_variance(st.base, u, ev_k)
    fk = np.concatenate([[1.0], phi_f ** k[:-1]])
    true_ret = cfg.flow_drift * f * np.nansum(fk[None, None, :] * np.sqrt(ev), axis=2)
    true_ret[:, T - 60:] = np.nan
    return {"ret": ret, "sigma": sig, "drift": drift, "true_var": true_var, "true_ret": true_ret,
            "imb": np.tanh(0.8 * rng.standard_normal((s, T))), "flow": f, "noise": st.noise}


def _bars(cfg: DGPConfig, st: _State, d: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Quotes on the tick grid around the (noisy) observed mid; sizes, volume, trades, vwap, range."""
    s = cfg.n_symbols
    st.logp = st.logp + 0.5 * cfg.daily_vol * rng.standard_normal(s)  # overnight gap
    logm = st.logp[:, None] + np.cumsum(d["ret"], axis=1)
    st.logp = logm[:, -1]
    noise = d["noise"][:, None] * d["sigma"] * rng.standard_normal((s, T))
    p = np.exp(logm + noise)
    half = np.maximum(p * cfg.spread_bps * 1e-4 / 2 * np.exp(0.2 * rng.standard_normal((s, T))), cfg.tick / 2)
    bid = np.floor((p - half) / cfg.tick) * cfg.tick
    ask = np.maximum(np.ceil((p + half) / cfg.tick) * cfg.tick, bid + cfg.tick)
    bid, ask = np.round(bid, 6), np.round(ask, 6)
    depth = 1500 * np.exp(0.4 * rng.standard_normal((s, T)))
    bid_size = np.maximum(np.round(depth * (1 + d["imb"])), 100.0)
    ask_size = np.maximum(np.round(depth * (1 - d["imb"])), 100.0)
    rel = d["sigma"] / st.base[:, None]
    volume = np.round(8000 * rel * np.exp(0.5 * rng.standard_normal((s, T))))
    trades = 1 + rng.poisson(volume / 150)
    mid = 0.5 * (bid + ask)
    buy = rng.random((s, T)) < 1 / (1 + np.exp(-1.0 * d["flow"]))
    last = np.where(buy, ask, bid)
    mid_prev = np.concatenate([mid[:, :1], mid[:, :-1]], axis=1)
    wig = np.abs(rng.standard_normal((s, T))) * 0.5 * d["sigma"] * mid
    mid_high = np.maximum(mid, mid_prev) + wig
    mid_low = np.maximum(np.minimum(mid, mid_prev) - wig, cfg.tick)
    vwap = np.clip(0.5 * (mid + mid_prev) + 0.3 * np.where(buy, 1, -1) * (ask - bid) / 2, mid_low, mid_high)
    return {"bid": bid, "ask": ask, "bid_size": bid_size, "ask_size": ask_size, "last": last,
            "volume": volume, "trades": trades.astype(np.float64), "vwap": np.round(vwap, 4),
            "mid_high": mid_high, "mid_low": mid_low}


def iter_days(cfg: DGPConfig) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """Yield (date, bars, truth) per trading day in the data contract, rows sorted by (symbol, ts)."""
    st = _State(cfg)
    sym = pd.array(np.repeat(np.array(symbols(cfg.n_symbols), dtype=object), T), dtype="string")
    day_fn = _garch_day if cfg.kind == "garch_t" else _cir_day
    for k, date in enumerate(schema.trading_days(cfg.start_date, cfg.n_days)):
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1, k]))
        d = day_fn(cfg, st, rng)
        bars_arr = _bars(cfg, st, d, rng)
        minutes = schema.session_minutes_utc(date).tz_convert(None).to_numpy()
        ts = pd.DatetimeIndex(np.tile(minutes, cfg.n_symbols)).tz_localize("UTC").as_unit("us")
        bars = pd.DataFrame({"symbol": sym, "ts": ts})
        for col in schema.BAR_COLUMNS[2:]:
            bars[col] = bars_arr[col].reshape(-1).astype(np.float64)
        truth = pd.DataFrame({"symbol": sym, "ts": ts, "true_var_10m": d["true_var"].reshape(-1),
                              "true_ret_60m": d["true_ret"].reshape(-1), "latent_sigma": d["sigma"].reshape(-1),
                              "latent_drift": d["drift"].reshape(-1), "regime": np.zeros(sym.size, np.int64)})
        yield date, bars, truth


def write_dgp(cfg: DGPConfig, lake) -> dict:
    """Write ``raw`` and ``truth`` partitions of every date (same layout as ``write_synth``)."""
    dates = []
    for date, bars, truth in iter_days(cfg):
        lake.write("raw", date, bars)
        lake.write("truth", date, truth)
        dates.append(date)
    log.info("dgp %s: %d symbols x %d days -> %s", cfg.kind, cfg.n_symbols, len(dates), lake.url)
    return {"kind": cfg.kind, "dates": dates, "n_symbols": cfg.n_symbols, "seed": cfg.seed}
