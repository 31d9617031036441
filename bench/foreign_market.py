"""A market written as a vendor's files, by a model family hfcast's simulators do not use.

Why: every other generator of the robustness suite enters through ``hfcast synth``; real data
enter through ``hfcast ingest``, with what real minute quotes carry and a simulator of ours may
not: the exchange's own calendar (holidays, 13:00 early closes), missing minutes of thin names,
trading halts, prices on a 1-cent grid from $3 to $400, quotes whose mid is not the efficient
price. This module writes such a market as BBO minute files in a vendor's layout (one CSV per
session, local exchange time, no truth) for ``hfcast ingest --format bbo``.

The process (nothing in ``hfcast.data`` is used): a two-factor stochastic volatility (a slow daily
log-variance = a market factor + an idiosyncratic one, both AR(1) over days; a fast intraday
log-variance, an Ornstein-Uhlenbeck with a 30-minute half-life), a U-shaped day scaled to the
session's length, Student-t(4) minute shocks with a market component, about one price jump every
three sessions per name followed by a decaying volatility burst, overnight gaps; bid and ask are
the efficient price minus/plus a half spread (a few basis points, wider when volatile), rounded
outward to the cent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CALENDAR = "XNYS"
LAST_SESSION = "2024-12-31"  # the span ends with the Christmas week: Nov 29 and Dec 24 close at 13:00


def sessions(days: int, last: str = LAST_SESSION) -> pd.DataFrame:
    """The exchange's last ``days`` sessions up to ``last``: open and close in local time."""
    import exchange_calendars as xcals

    cal = xcals.get_calendar(CALENDAR)
    s = cal.sessions_in_range("2024-01-02", last)[-days:]
    tz = cal.tz
    return pd.DataFrame({"date": s, "open": [cal.session_open(d).tz_convert(tz).tz_localize(None) for d in s],
                         "close": [cal.session_close(d).tz_convert(tz).tz_localize(None) for d in s]})


def write(out: Path, symbols: int, days: int, seed: int) -> list[Path]:
    """One CSV per session under ``out`` (symbol, ts, bid, ask, bid_size, ask_size); their paths."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    S = symbols
    price = np.exp(rng.uniform(np.log(3.0), np.log(400.0), S))
    base_var = (np.exp(rng.normal(np.log(0.018), 0.35, S)) ** 2) / 390.0  # daily vol 1-4%, per minute
    beta = rng.uniform(0.2, 0.6, S)
    thin = rng.random(S) < 0.3  # thin names: minutes without a bar
    f_mkt, f_idio = 0.0, rng.normal(0.0, 0.3, S)
    fast = rng.normal(0.0, 0.35, S)
    phi_fast = 0.5 ** (1.0 / 30.0)
    files = []
    for _, row in sessions(days).iterrows():
        n = int((row["close"] - row["open"]) / pd.Timedelta(minutes=1))
        m = np.arange(n)
        u_shape = 0.75 + 1.4 * np.exp(-m / 25.0) + 0.6 * np.exp(-(n - 1 - m) / 35.0)
        f_mkt = 0.85 * f_mkt + rng.normal(0.0, 0.25)
        f_idio = 0.93 * f_idio + rng.normal(0.0, 0.2, S)
        day_var = base_var * np.exp(f_mkt + f_idio)
        price *= np.exp(rng.normal(0.0, 0.4 * np.sqrt(day_var * 390.0)))  # overnight gap
        burst = np.ones((S, n))
        jump = np.zeros((S, n))
        for s in np.flatnonzero(rng.random(S) < 0.33):
            t = int(rng.integers(5, n - 5))
            jump[s, t] = rng.choice([-1, 1]) * rng.uniform(8, 20) * np.sqrt(day_var[s])
            burst[s, t:] += 2.5 * np.exp(-(m[t:] - t) / 20.0)
        logp = np.empty((S, n))
        lp = np.log(price)
        z_mkt = rng.standard_t(4, n) / np.sqrt(2.0)
        for t in range(n):
            fast = phi_fast * fast + np.sqrt(1 - phi_fast**2) * 0.35 * rng.normal(0.0, 1.0, S)
            sd = np.sqrt(day_var * u_shape[t] * burst[:, t] * np.exp(fast - 0.35**2 / 2))
            z = beta * z_mkt[t] + np.sqrt(1 - beta**2) * rng.standard_t(4, S) / np.sqrt(2.0)
            lp = lp + sd * z + jump[:, t]
            logp[:, t] = lp
        price = np.exp(lp)
        p = np.exp(logp)
        half = p * (2e-4 + 0.6 * np.sqrt(day_var)[:, None] * np.sqrt(u_shape)[None, :]) * rng.uniform(0.5, 1.5, (S, n))
        bid = np.floor((p - half) * 100.0) / 100.0
        ask = np.ceil((p + half) * 100.0) / 100.0
        ask = np.where(ask - bid < 0.01, bid + 0.01, ask)
        keep = np.ones((S, n), bool)
        keep[thin] &= rng.random((int(thin.sum()), n)) > 0.05
        for s in np.flatnonzero(rng.random(S) < 0.03):  # a 10-minute halt
            t = int(rng.integers(30, n - 40))
            keep[s, t:t + 10] = False
        ts = row["open"] + pd.to_timedelta(m, unit="min")
        si, ti = np.nonzero(keep)
        frame = pd.DataFrame({"symbol": np.array([f"F{i:03d}" for i in range(S)])[si],
                              "ts": ts[ti].strftime("%Y-%m-%d %H:%M:%S"),
                              "bid": np.round(bid[si, ti], 2), "ask": np.round(ask[si, ti], 2),
                              "bid_size": rng.integers(1, 40, si.size) * 100,
                              "ask_size": rng.integers(1, 40, si.size) * 100})
        path = out / f"bbo_{row['date']:%Y%m%d}.csv"
        frame.to_csv(path, index=False)
        files.append(path)
    return files
