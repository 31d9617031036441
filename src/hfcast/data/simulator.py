"""The market simulator: minute BBO bars with a known hidden state, and the oracle beside them.

Real tick data cannot be downloaded here, so every model is scored against a process whose truth
is known. Arrays are ``[S, 390]`` per day (S symbols, minute i = 0..389 of the session); the whole
day is drawn at once (AR(1) recursions run in C through ``scipy.signal.lfilter``), and only a few
numbers per symbol (log-vol, price level) carry over the night, so memory does not grow with the
number of days. Each day has its own random stream (``SeedSequence([seed, 1, day])``).

Data-generating process (per symbol s; market terms shared by all symbols; minute i; day d)::

    log-vol     a_i = phi_a a_{i-1} + q_a eta^a_i       slow: half-life 780 min, sd 0.30 (carried overnight)
                b_i = phi_b b_{i-1} + q_b eta^b_i       fast: half-life 30 min,  sd 0.30
                eta = sqrt(rho_v) eta_mkt + sqrt(1 - rho_v) eta_idio            (rho_v = 0.5)
    volatility  sigma_i = base_s * R_d * U_d(i) * exp(a_i - sd_a^2 + b_i - sd_b^2)
                base_s = daily_vol_s / sqrt(390); R_d = shift_vol_mult after the shift day;
                U_d = 1 + A_o exp(-i/20) + A_c exp(-(389-i)/20), scaled so mean(U^2) = 1
                (A_o, A_c times shift_intraday after the shift day)  =>  E[exp(2(a+b-...))] = 1
    order flow  f_i = phi_f f_{i-1} + sqrt(1 - phi_f^2) zeta_i            (N(0,1), half-life 20 min)
    efficient   m_i = m_{i-1} + kappa f_{i-1} sigma_i + sigma_i sqrt(1-w) z_i + J_i
    log price   x_i = phi_x x_{i-1} + sigma_i sqrt(w) z'_i                 (transient, half-life 6 min)
                p_i = m_i + x_i ;  z = rho_fz zeta + sqrt(1 - rho_fz^2) (sqrt(rho_r) z_mkt + ...)
                J_i ~ N(0, (k_J sigma_i)^2) with probability p_J, else 0
    drift       mu_i = E[p_{i+1} - p_i | F_i] = kappa f_i E[sigma_{i+1}|F_i] + (phi_x - 1) x_i

So the planted predictable drift has two parts, both visible in the last 30 minutes of bars:
persistent order flow ``f`` (it tilts the bid/ask sizes, ``imb = tanh(0.6 f + 0.8 eps)``, the trade
signs, ``P(buy) = Phi(0.5 f)`` seen in ``last`` and ``vwap`` against the mid, and, through
rho_fz, the sign of mid changes) and a transient price component ``x`` whose reversal shows in
the last minutes' returns. The oracle reads ``f`` and ``x`` directly; a model must infer them.

Observed quotes: half-spread (relative) = spread_bps_s/2 * (sigma_i/base_s)^0.7 * shift_spread_mult
* LN(0.25); the quote centre is P_i exp(nu_i) with nu_i ~ N(0, (0.5 half-spread)^2) (microstructure
noise); bid = floor, ask = ceil on the tick grid (tick 0.01) and ask >= bid + tick, so a quote is
never crossed or locked. Displayed depth falls with volatility, volume rises with it
(volume ~ (sigma/base)^1.0 * LN(0.5)), trades ~ 1 + Poisson(volume / 120); ``mid_high``/``mid_low``
come from the exact Brownian-bridge extremes of the efficient path inside the minute.

Truth (closed form, from the state at the END of minute t, never from the realized path; a and b
are Gaussian AR(1), so E[exp(c a_{t+k})] is a log-normal moment)::

    true_var_10m = (1 + p_J k_J^2) * sum_{k=1..10} E[sigma_{t+k}^2 | F_t]
    true_ret_60m = kappa f_t sum_{k=1..60} phi_f^(k-1) E[sigma_{t+k} | F_t] + (phi_x^60 - 1) x_t

(NaN where the horizon crosses the close.) ``true_var_10m`` is the expected quadratic variation;
the squared drift adds about 1% to E[sum of squared efficient returns]. ``latent_sigma`` is
sigma_t and ``latent_drift`` is mu_t (at the last minute with U(389) standing in for the minute
after the close). Overnight: the slow log-vol carries on (decayed over 1050 minutes), the fast one
is nearly redrawn, flow f restarts from N(0, 1), x from 0, and the price gaps by N(0, (0.5 x daily
vol)^2). Regime shift (day >= K): sigma x shift_vol_mult, spreads x shift_spread_mult, the U-shape
amplitude x shift_intraday; ``regime`` = 1 in the truth. Holidays are not modelled.

Measured on seed 7, 50 symbols x 10 days (``bench/bench_simulator.py`` -> ``oracle`` in
bench/results/simulator.json)::

    oracle R^2 of the 60-minute log MID return     0.027  (IC 0.16; with the other part switched
                                                   off: flow 0.009, transient 0.020)
    oracle R^2 of the 60-minute efficient return   0.027, regression slope 0.96 (unbiased)
    mean realized / expected 10-min variance       1.013 on the efficient price (drift^2 ~1%)
                                                   1.099 on the observed mid (noise + ticks;
                                                   1.055 as a ratio of means)
    R^2 of true_var_10m for the realized one       0.63 (vol is predictable, but not fully)

A plain linear fit on seven EWMA features of the bars (size imbalance, vwap and last against the
mid, recent mid returns over the recent realized vol) reached an out-of-sample R^2 of about 0.013
against the oracle's 0.021 on the same vol-scaled returns: the drift is learnable in part, not
given away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.signal import lfilter
from scipy.special import ndtr

from hfcast.config import checked_section
from hfcast.data import schema
from hfcast.market import resolve

log = logging.getLogger(__name__)

T = schema.MINUTES_PER_SESSION
LN2 = float(np.log(2.0))


@dataclass
class SimConfig:
    """Everything that defines a simulated market; same config + seed -> same bytes."""

    n_symbols: int = 20
    n_days: int = 30
    start_date: str = "2024-01-02"
    seed: int = 7
    tick: float = 0.01
    regime_shift_day: int | None = None  # index of the first shifted day (None = stationary)
    shift_vol_mult: float = 1.8          # volatility level x this from the shift day on
    shift_spread_mult: float = 1.5       # spreads x this (on top of their response to volatility)
    shift_intraday: float = 1.0          # U-shape amplitude x this (0 = flat day, >1 = deeper U)
    # volatility: level, cross-section, two log-vol AR(1) components, market factor
    daily_vol: float = 0.018             # median daily vol of the efficient log price
    vol_dispersion: float = 0.35         # sd of log(daily vol) across symbols
    slow_halflife: float = 780.0         # minutes (2 sessions): clustering across days
    slow_sd: float = 0.30                # stationary sd of the slow log-vol
    fast_halflife: float = 30.0          # minutes: intraday bursts
    fast_sd: float = 0.30
    vol_market_corr: float = 0.5         # share of log-vol shocks that are market-wide
    overnight_minutes: float = 1050.0    # log-vol decay over the night, in minutes
    overnight_vol: float = 0.5           # overnight return sd, as a fraction of the daily vol
    # intraday seasonality
    open_amp: float = 1.2
    open_decay: float = 20.0             # minutes
    close_amp: float = 0.8
    close_decay: float = 20.0
    # returns
    ret_market_corr: float = 0.3         # share of return shock variance that is market-wide
    jump_prob: float = 0.002             # per minute
    jump_scale: float = 4.0              # jump sd in units of sigma_i
    # the planted drift
    flow_halflife: float = 20.0          # order-flow persistence, minutes
    flow_drift: float = 0.04             # kappa: drift per minute = kappa * f * sigma
    flow_impact_corr: float = 0.3        # corr(return shock, flow innovation): flow shows in mid changes
    transient_share: float = 0.15        # w: share of return variance that later reverts
    transient_halflife: float = 6.0      # minutes
    imbalance_loading: float = 0.6       # size imbalance = tanh(loading * f + noise * eps)
    imbalance_noise: float = 0.8
    trade_sign_loading: float = 0.5      # P(buyer-initiated) = Phi(loading * f)
    # microstructure
    spread_bps: float = 3.0              # median quoted spread before tick rounding, bps
    spread_vol_elasticity: float = 0.7
    spread_noise: float = 0.25
    noise_to_half_spread: float = 0.5    # sd of the quote-centre noise in half-spreads
    depth_shares: float = 1500.0
    depth_vol_elasticity: float = 0.5
    volume_shares: float = 10000.0       # median volume per minute
    volume_vol_elasticity: float = 1.0
    volume_noise: float = 0.5
    avg_trade_size: float = 120.0
    price_median: float = 50.0
    price_dispersion: float = 0.8
    calendar: str | None = None          # market calendar name (None: the market passed in, XNYS by default)

    def __post_init__(self) -> None:
        if self.n_symbols < 1 or self.n_days < 1:
            raise ValueError(f"synth needs n_symbols >= 1 and n_days >= 1, got {self.n_symbols}, {self.n_days}")
        if not 0.0 < self.tick:
            raise ValueError(f"tick must be positive, got {self.tick}")
        try:
            pd.Timestamp(self.start_date)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"start_date must be YYYY-MM-DD, got {self.start_date!r}") from exc
        if self.regime_shift_day is not None and self.regime_shift_day < 0:
            raise ValueError(f"regime_shift_day must be >= 0 or None, got {self.regime_shift_day}")
        if not 0.0 <= self.transient_share < 1.0:
            raise ValueError(f"transient_share must be in [0, 1), got {self.transient_share}")

    @classmethod
    def from_params(cls, params: dict[str, Any] | None, **overrides: Any) -> "SimConfig":
        """Build from the ``synth:`` section of params.yaml (unknown keys are an error, not ignored)."""
        merged = {**(params or {}), **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**checked_section(cls, merged, "synth parameter(s)"))

    def phi(self, halflife: float) -> float:
        return float(np.exp(-LN2 / halflife))


@dataclass
class DayArrays:
    """One simulated day as ``[S, 390]`` arrays (plus the efficient log price, for tests)."""

    date: str
    regime: int
    p_eff: np.ndarray
    sigma: np.ndarray
    bars: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]


def intraday_shape(cfg: SimConfig, amp_mult: float = 1.0) -> np.ndarray:
    """U(i), i = 0..389, scaled so that mean(U^2) = 1 (the shape moves variance, not its level)."""
    i = np.arange(T, dtype=np.float64)
    u = 1.0 + amp_mult * (cfg.open_amp * np.exp(-i / cfg.open_decay)
                          + cfg.close_amp * np.exp(-(T - 1 - i) / cfg.close_decay))
    return u / np.sqrt(np.mean(u**2))


def _ar1(shocks: np.ndarray, phi: float, q: float, start: np.ndarray) -> np.ndarray:
    """y_i = phi y_{i-1} + q shocks_i along axis 1 with y_{-1} = start; one C loop for all symbols."""
    return lfilter([q], [1.0, -phi], shocks, axis=1, zi=(phi * start)[:, None])[0]


class _Market:
    """Static per-symbol parameters and the small state carried from one day to the next."""

    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
        s = cfg.n_symbols
        self.base = cfg.daily_vol * np.exp(cfg.vol_dispersion * rng.standard_normal(s)) / np.sqrt(T)
        self.spread = cfg.spread_bps * np.exp(0.4 * rng.standard_normal(s)) * 1e-4
        self.depth = cfg.depth_shares * np.exp(0.5 * rng.standard_normal(s))
        self.volume = cfg.volume_shares * np.exp(0.6 * rng.standard_normal(s))
        price0 = cfg.price_median * np.exp(cfg.price_dispersion * rng.standard_normal(s))
        self.logp = np.log(np.clip(price0, 5.0, 1000.0))
        self.phi_a, self.phi_b = cfg.phi(cfg.slow_halflife), cfg.phi(cfg.fast_halflife)
        self.a = cfg.slow_sd * rng.standard_normal(s)  # stationary start
        self.b = cfg.fast_sd * rng.standard_normal(s)


def _sum_expected_sigma_pow(mk: _Market, cfg: SimConfig, c: float, a: np.ndarray, b: np.ndarray,
                            level: np.ndarray, u: np.ndarray, weights: np.ndarray, n_t: int) -> np.ndarray:
    """sum_{k>=1} weights[k-1] * E[sigma_{t+k}^c | F_t] for t = 0..n_t-1, in closed form.

    sigma = level_s * U(i) * exp(a + b - sd_a^2 - sd_b^2) with a, b Gaussian AR(1), so each term is
    a log-normal moment: E[exp(c a_{t+k})|a_t] = exp(c phi^k a_t + c^2 sd^2 (1 - phi^(2k)) / 2).
    One pass per horizon k over ``[S, n_t]`` (no per-symbol or per-minute loop); ``u`` must cover
    minute n_t - 1 + len(weights).
    """
    a0, b0 = np.ascontiguousarray(a[:, :n_t]), np.ascontiguousarray(b[:, :n_t])
    acc, tmp, tmp2 = np.zeros_like(a0), np.empty_like(a0), np.empty_like(a0)
    sa, sb = cfg.slow_sd**2, cfg.fast_sd**2
    for k, w in enumerate(weights, start=1):
        pa, pb = mk.phi_a**k, mk.phi_b**k
        const = -c * (sa + sb) + 0.5 * c * c * (sa * (1 - pa**2) + sb * (1 - pb**2))
        np.multiply(a0, c * pa, out=tmp)
        np.multiply(b0, c * pb, out=tmp2)
        tmp += tmp2
        np.exp(tmp, out=tmp)
        tmp *= (w * np.exp(const)) * u[k:k + n_t] ** c                   # [S, n_t] *= [n_t]
        acc += tmp
    return acc * (level**c)[:, None]


def _truth(mk: _Market, cfg: SimConfig, a, b, f, x, level, u) -> dict[str, np.ndarray]:
    """The oracle: closed-form conditional expectations from the state at the end of each minute."""
    s = a.shape[0]
    jump = 1.0 + cfg.jump_prob * cfg.jump_scale**2
    phi_f, phi_x = cfg.phi(cfg.flow_halflife), cfg.phi(cfg.transient_halflife)
    var10 = np.full((s, T), np.nan)
    var10[:, :T - 10] = jump * _sum_expected_sigma_pow(mk, cfg, 2.0, a, b, level, u, np.ones(10), T - 10)
    sig60 = _sum_expected_sigma_pow(mk, cfg, 1.0, a, b, level, u, phi_f ** np.arange(60.0), T - 60)
    ret60 = np.full((s, T), np.nan)
    ret60[:, :T - 60] = cfg.flow_drift * f[:, :T - 60] * sig60 + (phi_x**60 - 1.0) * x[:, :T - 60]
    # next-minute drift; the last minute borrows U(389) for a minute past the close
    sig1 = _sum_expected_sigma_pow(mk, cfg, 1.0, a, b, level, np.append(u, u[-1]), np.ones(1), T)
    drift = cfg.flow_drift * f * sig1 + (phi_x - 1.0) * x
    return {"true_var_10m": var10, "true_ret_60m": ret60, "latent_drift": drift}


def _simulate_day(mk: _Market, cfg: SimConfig, day: int, date: str) -> DayArrays:
    """Draw one session for all symbols at once and advance the carried state."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1, day]))
    s, n = cfg.n_symbols, (cfg.n_symbols, T)
    shifted = cfg.regime_shift_day is not None and day >= cfg.regime_shift_day
    vol_mult = cfg.shift_vol_mult if shifted else 1.0
    spread_mult = cfg.shift_spread_mult if shifted else 1.0
    u = intraday_shape(cfg, cfg.shift_intraday if shifted else 1.0)
    scale = mk.base[:, None] * vol_mult * u[None, :]                     # [S, T]

    def mixed(rho: float) -> np.ndarray:  # market-wide + idiosyncratic unit shocks, [S, T]
        return np.sqrt(rho) * rng.standard_normal(T)[None, :] + np.sqrt(1 - rho) * rng.standard_normal(n)

    # overnight: carry the slow log-vol, decay the fast one, gap the price
    k_on = cfg.overnight_minutes
    if day > 0:
        for name, phi, sd in (("a", mk.phi_a, cfg.slow_sd), ("b", mk.phi_b, cfg.fast_sd)):
            prev = getattr(mk, name)
            setattr(mk, name, phi**k_on * prev + sd * np.sqrt(1 - phi ** (2 * k_on)) * rng.standard_normal(s))
        mk.logp = mk.logp + cfg.overnight_vol * mk.base * np.sqrt(T) * vol_mult * rng.standard_normal(s)
    a = _ar1(mixed(cfg.vol_market_corr), mk.phi_a, cfg.slow_sd * np.sqrt(1 - mk.phi_a**2), mk.a)
    b = _ar1(mixed(cfg.vol_market_corr), mk.phi_b, cfg.fast_sd * np.sqrt(1 - mk.phi_b**2), mk.b)
    sigma = scale * np.exp(a + b - cfg.slow_sd**2 - cfg.fast_sd**2)     # [S, T] per-minute vol

    phi_f, phi_x, w = cfg.phi(cfg.flow_halflife), cfg.phi(cfg.transient_halflife), cfg.transient_share
    zeta = rng.standard_normal(n)
    f_start = rng.standard_normal(s)                                    # flow is reset each morning
    f = _ar1(zeta, phi_f, np.sqrt(1 - phi_f**2), f_start)
    f_prev = np.concatenate([f_start[:, None], f[:, :-1]], axis=1)
    rho = cfg.flow_impact_corr
    z = rho * zeta + np.sqrt(1 - rho**2) * mixed(cfg.ret_market_corr)
    jumps = (rng.random(n) < cfg.jump_prob) * cfg.jump_scale * sigma * rng.standard_normal(n)
    x = _ar1(np.sqrt(w) * sigma * rng.standard_normal(n), phi_x, 1.0, np.zeros(s))
    dm = cfg.flow_drift * f_prev * sigma + np.sqrt(1 - w) * sigma * z + jumps
    p_open = mk.logp.copy()
    p = p_open[:, None] + np.cumsum(dm, axis=1) + x                     # efficient log price

    truth = _truth(mk, cfg, a, b, f, x, mk.base * vol_mult, u)
    truth.update(latent_sigma=sigma, regime=np.full(n, int(shifted), dtype=np.int64))
    bars = _quotes(mk, cfg, rng, p, p_open, sigma, f, spread_mult)
    mk.a, mk.b, mk.logp = a[:, -1].copy(), b[:, -1].copy(), p[:, -1].copy()
    return DayArrays(date=date, regime=int(shifted), p_eff=p, sigma=sigma, bars=bars, truth=truth)


def _quotes(mk: _Market, cfg: SimConfig, rng: np.random.Generator, p: np.ndarray, p_open: np.ndarray,
            sigma: np.ndarray, f: np.ndarray, spread_mult: float) -> dict[str, np.ndarray]:
    """Observed BBO, sizes, trades and ranges on the tick grid from the efficient path."""
    n = p.shape
    per_tick = 1.0 / cfg.tick
    inv = round(per_tick) if abs(per_tick - round(per_tick)) < 1e-9 else None
    on_grid = (lambda t: t / inv) if inv else (lambda t: t * cfg.tick)
    rel_vol = sigma / mk.base[:, None]
    half = (0.5 * mk.spread[:, None] * spread_mult * rel_vol**cfg.spread_vol_elasticity
            * np.exp(cfg.spread_noise * rng.standard_normal(n)))
    price = np.exp(p)
    centre = price * np.exp(cfg.noise_to_half_spread * half * rng.standard_normal(n))
    bid_t = np.maximum(np.floor(centre * (1 - half) * per_tick + 1e-9), 1.0)
    ask_t = np.maximum(np.ceil(centre * (1 + half) * per_tick - 1e-9), bid_t + 1.0)
    bid, ask = on_grid(bid_t), on_grid(ask_t)
    mid = on_grid(bid_t + ask_t) / 2.0
    depth = (mk.depth[:, None] * rel_vol ** (-cfg.depth_vol_elasticity)
             * np.exp(0.3 * rng.standard_normal(n)))
    imb = np.tanh(cfg.imbalance_loading * f + cfg.imbalance_noise * rng.standard_normal(n))
    bid_size = np.maximum(np.round(depth * (1 + imb) / 100.0), 1.0) * 100.0
    ask_size = np.maximum(np.round(depth * (1 - imb) / 100.0), 1.0) * 100.0
    vol = (mk.volume[:, None] * rel_vol**cfg.volume_vol_elasticity
           * np.exp(cfg.volume_noise * rng.standard_normal(n)))
    trades = 1.0 + rng.poisson(vol / cfg.avg_trade_size).astype(np.float64)
    volume = np.maximum(np.round(vol), trades)
    q_buy = ndtr(cfg.trade_sign_loading * f)
    last = np.where(rng.random(n) < q_buy, ask, bid)
    # exact Brownian-bridge extremes of the efficient log price inside the minute
    p_prev = np.concatenate([p_open[:, None], p[:, :-1]], axis=1)
    step = p - p_prev
    var = sigma**2
    hi = p_prev + 0.5 * (step + np.sqrt(step**2 - 2 * var * np.log(rng.random(n))))
    lo = p_prev + 0.5 * (step - np.sqrt(step**2 - 2 * var * np.log(rng.random(n))))
    mid_prev = np.concatenate([mid[:, :1], mid[:, :-1]], axis=1)
    half_grid = 2.0 * per_tick
    mid_high = np.maximum(np.maximum(mid, mid_prev), np.round(np.exp(hi) * half_grid) / half_grid)
    mid_low = np.minimum(np.minimum(mid, mid_prev), np.round(np.exp(lo) * half_grid) / half_grid)
    half_q = 0.5 * (ask - bid)
    vwap = 0.5 * (mid + mid_prev) + 0.8 * (2 * q_buy - 1) * half_q
    vwap = np.round(np.clip(vwap, mid_low - half_q, mid_high + half_q), 4)
    return {"bid": bid, "ask": ask, "bid_size": bid_size, "ask_size": ask_size, "last": last,
            "volume": volume, "trades": trades, "vwap": vwap, "mid_high": mid_high, "mid_low": mid_low}


def simulate(cfg: SimConfig, market: Any = None) -> Iterator[DayArrays]:
    """Stream the days as arrays (the efficient price included): the simulator's inner API.

    The dates are the calendar's sessions (holidays skipped). Each day is drawn on the regular
    390-minute clock and cut at that day's close (an early close keeps its first minutes); the
    truth that would reach past the cut is NaN, as the labels are. A calendar whose sessions are
    not 390 minutes long is simulated on its own session length.
    """
    global T
    mkt = _calendar(cfg, market)
    dates = schema.trading_days(cfg.start_date, cfg.n_days, mkt)
    lengths = [mkt.n_minutes(d) for d in dates]
    regular = T if max(lengths) <= T else max(lengths)
    saved = T
    try:  # the module clock T is the regular session length while this market is drawn
        T = regular
        mk = _Market(cfg)
    finally:
        T = saved
    for day, (date, n) in enumerate(zip(dates, lengths)):
        try:
            T = regular
            arrays = _simulate_day(mk, cfg, day, date)
        finally:
            T = saved
        yield _cut(arrays, n) if n < regular else arrays


def _calendar(cfg: SimConfig, market: Any) -> Any:
    return resolve(cfg.calendar or market)


def _cut(day: DayArrays, n: int) -> DayArrays:
    """The day's first ``n`` minutes (an early close); truth whose horizon passes the cut is NaN."""
    truth = {k: v[:, :n].copy() for k, v in day.truth.items()}
    truth["true_var_10m"][:, max(0, n - 10):] = np.nan
    truth["true_ret_60m"][:, max(0, n - 60):] = np.nan
    return DayArrays(date=day.date, regime=day.regime, p_eff=day.p_eff[:, :n], sigma=day.sigma[:, :n],
                     bars={k: v[:, :n] for k, v in day.bars.items()}, truth=truth)


def symbols(n: int) -> list[str]:
    """S0000, S0001, ... (zero-padded so that string order is numeric order)."""
    width = max(4, len(str(n - 1)))
    return [f"S{i:0{width}d}" for i in range(n)]


def to_frames(day: DayArrays, sym: pd.api.extensions.ExtensionArray,
              market: Any = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(bars, truth) in the data contract, rows sorted by (symbol, ts)."""
    s = day.p_eff.shape[0]
    minutes = schema.session_minutes_utc(day.date, market).tz_convert(None).to_numpy()
    ts = pd.DatetimeIndex(np.tile(minutes, s)).tz_localize("UTC")
    bars = pd.DataFrame({"symbol": sym, "ts": ts})
    for col in schema.BAR_COLUMNS[2:]:
        bars[col] = day.bars[col].reshape(-1).astype(np.float64)
    truth = pd.DataFrame({"symbol": sym, "ts": ts})
    for col, dtype in schema.TRUTH_COLUMNS.items():
        truth[col] = day.truth[col].reshape(-1).astype(dtype)
    return bars, truth


def iter_days(cfg: SimConfig, market: Any = None) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """Yield (date, bars, truth) per trading day of the calendar; memory stays one day's worth."""
    names = np.array(symbols(cfg.n_symbols), dtype=object)
    sym_of: dict[int, Any] = {}
    mkt = _calendar(cfg, market)
    for day in simulate(cfg, mkt):
        n = day.p_eff.shape[1]
        if n not in sym_of:
            sym_of[n] = pd.array(np.repeat(names, n), dtype="string")
        bars, truth = to_frames(day, sym_of[n], mkt)
        yield day.date, bars, truth


def write_synth(cfg: SimConfig, lake, progress: bool = True, market: Any = None) -> dict[str, Any]:
    """Write ``raw`` and ``truth`` partitions for every simulated date; returns a summary.

    Args:
        cfg: the market to simulate.
        lake: an :class:`hfcast.storage.Lake`.
        progress: show a rich progress bar (off in tests and pipelines).
        market: the calendar whose sessions are simulated (hfcast.market; None = XNYS).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    t0, rows, dates = time.perf_counter(), 0, []
    cols = [TextColumn("synth {task.fields[date]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn()]
    def write(date: str, bars: pd.DataFrame, truth: pd.DataFrame) -> None:
        lake.write("raw", date, bars)
        lake.write("truth", date, truth)

    # parquet encoding releases the GIL: write day d on a second core while day d+1 is drawn;
    # at most one day is in flight, so memory stays two days' worth whatever n_days is
    with Progress(*cols, disable=not progress, transient=True) as bar, ThreadPoolExecutor(1) as pool:
        task = bar.add_task("synth", total=cfg.n_days, date="")
        pending = None
        for date, bars, truth in iter_days(cfg, market):
            if pending is not None:
                pending.result()
                bar.update(task, advance=1, date=dates[-1])
            pending = pool.submit(write, date, bars, truth)
            rows += len(bars)
            dates.append(date)
        if pending is not None:
            pending.result()
            bar.update(task, advance=1, date=dates[-1])
    seconds = time.perf_counter() - t0
    log.info("synth: %d symbols x %d days -> %d rows in %.1f s (%s)", cfg.n_symbols, len(dates), rows,
             seconds, lake.url)
    return {"dates": dates, "rows": rows, "seconds": round(seconds, 3), "n_symbols": cfg.n_symbols,
            "regime_shift_day": cfg.regime_shift_day, "seed": cfg.seed}
