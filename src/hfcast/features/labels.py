"""Forecast targets. The only code in hfcast.features that reads the future, by exactly its horizon.

* ``ret_60m[t] = log(mid[t+60] / mid[t])``
* ``rv_10m[t] = sqrt(sum_{k=t+1..t+10} (log mid[k] - log mid[k-1])^2)``

``mid[t]`` is the mid at the end of minute t on the session grid (forward-filled over missing
bars). A label whose horizon crosses the close (t + h > n - 1, n = that day's session minutes,
early closes included) or a break in the session (a lunch break) is NaN, never taken from the next
session or segment; so is one whose window holds a missing price (before the symbol's first bar of the day).
Horizons come from ``hfcast.data.schema.LABEL_HORIZONS`` so the embargo in walk-forward and the
labels cannot disagree.
"""

from __future__ import annotations

import numpy as np

from typing import Sequence

from hfcast.data.schema import LABEL_HORIZONS


def forward_return(logmid: np.ndarray, h: int) -> np.ndarray:
    """log(mid[t+h]) - log(mid[t]) on [S, T]; NaN for t + h >= T."""
    out = np.full_like(logmid, np.nan)
    out[:, :-h] = logmid[:, h:] - logmid[:, :-h]
    return out


def forward_rv(logmid: np.ndarray, h: int) -> np.ndarray:
    """sqrt of the sum of squared one-minute returns over t+1..t+h on [S, T]; NaN past the close.

    Summed directly over each window (not as a prefix-sum difference), so the label depends on
    returns r_{t+1}..r_{t+h} (prices t..t+h) only, bit for bit. NaN if any of them is missing.
    """
    r = np.full_like(logmid, np.nan)
    r[:, 1:] = logmid[:, 1:] - logmid[:, :-1]
    win = np.lib.stride_tricks.sliding_window_view(r[:, 1:] ** 2, h, axis=1)  # [S, T-h, h]: r_{t+1..t+h}
    out = np.full_like(logmid, np.nan)
    out[:, :-h] = np.sqrt(win.sum(axis=-1))  # NaN propagates: an incomplete window gives NaN
    return out


def make_labels(mid: np.ndarray, segment_starts: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """Labels of one session from the gridded mid.

    Args:
        mid: [S, T] mid prices (forward-filled; NaN before a symbol's first bar); T = the
            session's minutes that day (390 on a regular XNYS day).
        segment_starts: grid positions where trading resumes after a break; a label whose
            horizon reaches past one is NaN.

    Returns:
        ``{"ret_60m": [S, T] float64, "rv_10m": [S, T] float64}``.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        logmid = np.log(np.asarray(mid, dtype=np.float64))
    out = {}
    t = np.arange(logmid.shape[1])
    for name, fn in (("ret_60m", forward_return), ("rv_10m", forward_rv)):
        h = LABEL_HORIZONS[name]
        lab = fn(logmid, h) if logmid.shape[1] > h else np.full_like(logmid, np.nan)
        for b in segment_starts:
            lab[:, (t < b) & (t + h >= b)] = np.nan
        out[name] = lab
    return out
