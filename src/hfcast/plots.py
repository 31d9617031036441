"""Figures of the reports, drawn off-screen into PNG files (backtest, explanations, the quant's page).

Rules every figure here keeps: each axis names its quantity and unit, dates are written as dates
(never an index), labels do not overlap (thinned and rotated), and every legend entry has its own
colour or line style. Colours are fixed per meaning (:data:`COLORS`) so the same thing looks the
same on every figure of a page.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

#: one colour per meaning, shared by the figures of the report
COLORS = {"served": "tab:blue", "floor": "tab:gray", "reference": "black", "ret": "tab:orange", "rv": "tab:purple",
          "drift": "tab:brown", "retrain": "tab:red", "champion": "tab:green", "train": "#9e9e9e",
          "val": "#f2b134", "test": "#8e63b5", "noise": "#d9d9d9"}


@contextmanager
def png_figure(path: Any, figsize: tuple[float, float], ncols: int = 1, dpi: int = 110,
               nrows: int = 1, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """Yield ``(fig, axes)`` of a new figure; on a clean exit lay it out tight and save it to ``path``.

    Why the Agg backend, chosen at call time: reports are drawn in servers, pipeline steps and
    tests, none of which has a display, and importing matplotlib at module level would slow
    every import of the core. The figure is closed either way, so a failed plot leaks no memory.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, **kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def date_ticks(ax: Any, labels: Sequence[str], max_labels: int = 12) -> None:
    """Label positions 0..n-1 with dates, thinned to ``max_labels`` and rotated so none overlap."""
    n = len(labels)
    step = max(1, int(np.ceil(n / max_labels)))
    idx = list(range(0, n, step))
    ax.set_xticks(idx, [str(labels[i]) for i in idx], rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.5, n - 0.5)


# --- live performance ---------------------------------------------------------------------------

def live_frame(history: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per monitored date: the served version, decision and the live scores the monitor
    recorded (NaN where a date has none: labels not matured, or a record older than the field)."""
    rows = []
    for r in history:
        if not r.get("date"):
            continue
        c = r.get("checks") or {}
        live = c.get("live") or {}
        trig = r.get("trigger") or {}
        rows.append({"date": str(r["date"]), "version": str(r.get("version")), "action": r.get("action"),
                     "drift_share": c.get("drift_share"), "promoted": trig.get("new_version") if trig.get("promoted") else None,
                     **{k: live.get(k) for k in ("vol_qlike", "vol_qlike_har_tod", "vol_qlike_ratio_har_tod", "ret_ic",
                                                 "n_eff", "ret_coverage", "rv_coverage", "rv_decile_ratio",
                                                 "ret_decile_ratio", "rv_conf_levels", "ret_conf_levels")},
                     "ref_vol_qlike": (c.get("reference") or {}).get("vol_qlike"),
                     "ref_ret_ic": (c.get("reference") or {}).get("ret_ic")})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    num = [c for c in df.columns if c not in ("date", "version", "action")]
    df[num] = df[num].apply(pd.to_numeric, errors="coerce")
    return df.sort_values("date").reset_index(drop=True)


_OUTSIDE = {"fontsize": 7, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}  # legends beside, never over data


def _events(ax: Any, df: pd.DataFrame, label: bool) -> None:
    """Retraining decisions (red dashes) and a change of the serving version (green line) at the
    date they happened; the serving version is written once per span, at the top."""
    for i in np.flatnonzero(df["action"].to_numpy() == "retrain"):
        ax.axvline(i, color=COLORS["retrain"], ls="--", lw=1)
    changed = np.flatnonzero(df["version"].ne(df["version"].shift()).to_numpy())
    for j, i in enumerate(changed):
        if j:
            ax.axvline(i - 0.5, color=COLORS["champion"], lw=2)
        if label:
            ax.annotate(f"served by v{df['version'].iloc[i]}", (i - 0.4, 0.97), xycoords=("data", "axes fraction"),
                        fontsize=7, color=COLORS["champion"], va="top",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})


def plot_live(history: Sequence[Mapping[str, Any]], path: Any, drift_threshold: float | None = None) -> Any | None:
    """Per monitored date, on one time axis: live QLIKE against the floor ``har_tod``, the return
    IC with its one-day noise band, 80% interval coverage, the confidence decile ratios and the
    feature drift share, with retraining decisions and changes of the serving version marked."""
    from matplotlib.lines import Line2D

    df = live_frame(history)
    if df.empty:
        return None
    x = np.arange(len(df))
    with png_figure(path, (12, 11.5), nrows=5, sharex=True) as (fig, axes):
        a = axes[0]
        a.plot(x, df["vol_qlike"], "o-", ms=3, color=COLORS["served"], label="served forecast")
        a.plot(x, df["vol_qlike_har_tod"], "s--", ms=3, color=COLORS["floor"], label="floor har_tod, same rows")
        a.plot(x, df["ref_vol_qlike"], ":", color=COLORS["reference"], label="served version's test QLIKE")
        a.set(ylabel="QLIKE of rv_10m\n(dimensionless, lower = better)", title="volatility forecast: live loss")
        a = axes[1]
        band = 2.0 / np.sqrt(np.maximum(df["n_eff"].to_numpy(float) - 3.0, 1.0))
        a.fill_between(x, -band, band, color=COLORS["noise"], lw=0, label="+-2 s.e. of one day's IC (noise)")
        a.plot(x, df["ret_ic"], "o-", ms=3, color=COLORS["served"], label="served forecast")
        a.plot(x, df["ref_ret_ic"], ":", color=COLORS["reference"], label="served version's test IC")
        a.axhline(0, color="grey", lw=0.6)
        a.set(ylabel="IC of ret_60m\n(correlation, higher = better)", title="return forecast: information coefficient")
        a = axes[2]
        a.plot(x, df["ret_coverage"], "o-", ms=3, color=COLORS["ret"], label="ret_60m interval")
        a.plot(x, df["rv_coverage"], "s-", ms=3, color=COLORS["rv"], label="rv_10m interval")
        a.axhline(0.8, color="black", lw=0.8, ls="--", label="nominal 80%")
        a.set(ylabel="share of outcomes\ninside the interval", ylim=(0, 1.05), title="80% interval coverage")
        a = axes[3]
        for key, col, mk in (("rv", COLORS["rv"], "s"), ("ret", COLORS["ret"], "o")):
            y = df[f"{key}_decile_ratio"].to_numpy(float)
            const = df[f"{key}_conf_levels"].to_numpy(float) <= 1
            a.plot(x, y, "-", color=col, lw=1)
            a.plot(x[~const], y[~const], mk, ms=4, color=col)
            a.plot(x[const], y[const], mk, ms=6, mfc="white", color=col)
        a.axhline(1.0, color="black", lw=0.8, ls="--")
        a.legend([Line2D([], [], color=COLORS["rv"], marker="s"), Line2D([], [], color=COLORS["ret"], marker="o"),
                  Line2D([], [], color="grey", marker="o", mfc="white", ls=""), Line2D([], [], color="black", ls="--")],
                 ["volatility: |rv/rv_hat - 1|", "return: missed sign", "confidence constant that day\n(ratio 1 by "
                  "construction)", "1 = confidence ranks nothing"], **_OUTSIDE)
        a.set(ylabel="error, most / least\nconfident decile (ratio)", title="does the confidence rank errors? "
              "(below 1 = yes)")
        a = axes[4]
        a.plot(x, df["drift_share"], "o-", ms=3, color=COLORS["drift"], label="feature drift share")
        if drift_threshold is not None:
            a.axhline(drift_threshold, color=COLORS["drift"], ls=":", lw=1, label=f"alarm threshold {drift_threshold:g}")
        a.set(ylabel="share of features\ndrifted (0-1)", ylim=(0, 1.05), title="feature drift (Evidently)")
        for i, ax in enumerate(axes):
            _events(ax, df, label=i == 0)
            ax.set_title(ax.get_title(), loc="left", fontsize=10)
            ax.set_title("", loc="center")
        handles = [Line2D([], [], color=COLORS["retrain"], ls="--"), Line2D([], [], color=COLORS["champion"], lw=2)]
        for i, ax in enumerate(axes):
            if i != 3:
                h, lab = ax.get_legend_handles_labels()
                ax.legend(h + (handles if i == 0 else []), lab + (["retraining decided", "new version serves"]
                                                                  if i == 0 else []), **_OUTSIDE)
        date_ticks(axes[-1], df["date"].tolist())
        axes[-1].set_xlabel("monitored date (trading days; the forecasts of that date, scored on its matured labels)")
    return path


# --- which version saw which dates --------------------------------------------------------------

def plot_timeline(versions: Sequence[Mapping[str, Any]], served: Mapping[str, tuple[str, str]], path: Any) -> Any | None:
    """Per version: the dates it trained, validated and was tested on (thin bars) and the dates it
    served (thick bar), from the version's lineage tags and the monitor's records."""
    from matplotlib import dates as mdates
    from matplotlib.patches import Patch

    spans = ("train", "val", "test")
    rows = [v for v in versions if any(_span(v, s) for s in spans) or str(v["version"]) in served]
    if not rows:
        return None
    with png_figure(path, (10, 0.55 * len(rows) + 1.9)) as (_, ax):
        for i, v in enumerate(rows):
            for k, s in enumerate(spans):
                span = _span(v, s)
                if span:
                    a, b = (mdates.date2num(pd.Timestamp(d)) for d in span)
                    ax.barh(i + 0.22 - 0.11 * k, b - a + 1, left=a, height=0.1, color=COLORS[s])
            if str(v["version"]) in served:
                a, b = (mdates.date2num(pd.Timestamp(d)) for d in served[str(v["version"])])
                ax.barh(i - 0.15, b - a + 1, left=a, height=0.3, color=COLORS["served"], alpha=0.85)
        ax.set_yticks(range(len(rows)), [f"v{v['version']} {v.get('arch', '')}\n{v.get('status', '')}".strip()
                                         for v in rows], fontsize=8)
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=10))
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
        ax.legend(handles=[Patch(color=COLORS["train"], label="trained on"), Patch(color=COLORS["val"], label="validated on"),
                           Patch(color=COLORS["test"], label="tested on (the gate's spans)"),
                           Patch(color=COLORS["served"], label="served (monitored as champion)")],
                  fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set(title="which data each version saw, and when it served", xlabel="date")
    return path


def _span(v: Mapping[str, Any], span: str) -> tuple[str, str] | None:
    tags = v.get("tags") or {}
    first = v.get(f"{span}_first") or tags.get(f"hfcast.{span}_first")
    last = v.get(f"{span}_last") or tags.get(f"hfcast.{span}_last")
    return (str(first), str(last)) if first and last and "?" not in (first, last) else None
