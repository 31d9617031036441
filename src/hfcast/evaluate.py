"""Score a predictions frame and draw the report: the numbers every comparison quotes.

A predictions frame has the PRED_COLUMNS, the labels ``ret_60m`` / ``rv_10m``, optionally the
simulator's truth (``true_ret_60m``, ``true_var_10m``), ``ts`` (for the cross-sectional IC) and a
``fold`` column. Rows whose label is missing are dropped per metric, never zero-filled.

Scores (all on test spans):
- volatility: QLIKE on variances and MSE on volatility, vs realized ``rv_10m`` and vs the latent
  ``sqrt(true_var_10m)``;
- return: Pearson IC (pooled and per-minute cross-sectional), rank IC, hit rate, IC vs the true
  expected return;
- calibration: 80% interval coverage and ECE of both confidences; mean absolute error by
  confidence decile (it should fall from the least to the most confident decile): for volatility
  the relative error |rv/rv_hat - 1|, for the return both |error| and the sign-miss rate (the
  return confidence is about the sign; |error| mostly tracks the volatility level).
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from hfcast import metrics as M
from hfcast.calibration import sign_right
from hfcast.contracts import PRED_COLUMNS, VOL_TOLERANCE

log = logging.getLogger(__name__)


def column_array(df: pd.DataFrame, name: str) -> np.ndarray:
    return df[name].to_numpy(np.float64) if name in df else np.full(len(df), np.nan)


def ret_correct(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 where the predicted sign is right, 0 where wrong, 0.5 for a zero forecast, NaN where the
    outcome is unlabelled or exactly zero."""
    y = np.asarray(y, dtype=np.float64)
    out = sign_right(pred, y)
    out[~np.isfinite(y) | (y == 0)] = np.nan
    return out


def rv_correct(pred: np.ndarray, rv: np.ndarray) -> np.ndarray:
    """1 where realized vol lands within +-25% of the forecast, NaN where unlabelled."""
    rv = np.asarray(rv, dtype=np.float64)
    out = (np.abs(rv / np.maximum(pred, 1e-300) - 1.0) <= VOL_TOLERANCE).astype(np.float64)
    out[~np.isfinite(rv)] = np.nan
    return out


def score(df: pd.DataFrame) -> dict[str, float]:
    """Every scalar score of one predictions frame (one fold, or pooled folds)."""
    missing = [c for c in (*PRED_COLUMNS, "ret_60m", "rv_10m") if c not in df]
    if missing:
        raise KeyError(f"predictions frame is missing {missing}")
    rp, y = column_array(df, "ret_60m_pred"), column_array(df, "ret_60m")
    vp, rv = column_array(df, "rv_10m_pred"), column_array(df, "rv_10m")
    out: dict[str, float] = {"n": float(len(df)), "n_ret": float(np.isfinite(y).sum()),
                             "n_rv": float(np.isfinite(rv).sum())}
    out["vol_qlike"] = M.qlike(vp**2, rv**2)
    out["rv_flat_share"] = M.flat_share(rv)  # rows QLIKE leaves out (a flat 10 minutes)
    out["vol_mse"] = M.mse(vp, rv)
    out["ret_ic"] = M.ic(rp, y)
    # 0 when the return forecast is the zero forecast (no validated skill): the gate then judges the
    # volatility alone and only asks that a champion's return skill is not dropped
    out["ret_served"] = float(bool(np.nanmax(np.abs(rp)) > 0)) if np.isfinite(rp).any() else 0.0
    out["ret_rank_ic"] = M.rank_ic(rp, y)
    out["ret_ic_cs"] = M.cross_sectional_ic(rp, y, df["ts"].to_numpy()) if "ts" in df else float("nan")
    out["ret_hit"] = M.hit_rate(rp, y)
    out["ret_mse"] = M.mse(rp, y)
    out["ret_coverage"] = M.coverage(column_array(df, "ret_60m_lo"), column_array(df, "ret_60m_hi"), y)
    out["rv_coverage"] = M.coverage(column_array(df, "rv_10m_lo"), column_array(df, "rv_10m_hi"), rv)
    rc, vc = ret_correct(rp, y), rv_correct(vp, rv)
    out["ret_ece"] = M.ece(column_array(df, "ret_60m_conf"), rc)
    out["rv_ece"] = M.ece(column_array(df, "rv_10m_conf"), vc)
    out["ret_conf_mean"] = float(np.nanmean(column_array(df, "ret_60m_conf")))
    out["rv_conf_mean"] = float(np.nanmean(column_array(df, "rv_10m_conf")))
    # error_by_decile breaks confidence ties by row order; rows are sorted by symbol, so a constant
    # (or coarsely stepped) confidence would rank SYMBOLS. A fixed random permutation first makes
    # tied rows land in deciles at random: a confidence that says nothing then shows flat deciles.
    perm = np.random.default_rng(0).permutation(len(df))
    for name, conf, err in (("ret", column_array(df, "ret_60m_conf"), np.abs(rp - y)),
                            ("rv", column_array(df, "rv_10m_conf"), np.abs(rv / np.maximum(vp, 1e-300) - 1))):
        dec = M.error_by_decile(conf[perm], err[perm])
        if len(dec) >= 2:
            out[f"{name}_err_low_conf"] = float(dec["abs_err"].iloc[0])
            out[f"{name}_err_high_conf"] = float(dec["abs_err"].iloc[-1])
    miss = M.error_by_decile(column_array(df, "ret_60m_conf")[perm], 1.0 - rc[perm])  # what the return confidence is about
    if len(miss) >= 2:
        out["ret_miss_low_conf"] = float(miss["abs_err"].iloc[0])
        out["ret_miss_high_conf"] = float(miss["abs_err"].iloc[-1])
    if "true_var_10m" in df:
        tv = column_array(df, "true_var_10m")
        out["vol_qlike_truth"] = M.qlike(vp**2, tv)
        out["vol_mse_truth"] = M.mse(vp, np.sqrt(np.maximum(tv, 0)))
    if "true_ret_60m" in df:
        out["ret_ic_truth"] = M.ic(rp, column_array(df, "true_ret_60m"))
    return out


def score_folds(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """Scores per fold (``fold`` column) and pooled over all test rows (folds never overlap)."""
    if "fold" not in df:
        return pd.DataFrame([{"fold": 0, **score(df)}]), score(df)
    per = pd.DataFrame([{"fold": int(k), **score(g)} for k, g in df.groupby("fold", sort=True)])
    return per, score(df)


def deciles(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Error-by-confidence-decile tables for both targets (for plots and reports)."""
    rp, y = column_array(df, "ret_60m_pred"), column_array(df, "ret_60m")
    vp, rv = column_array(df, "rv_10m_pred"), column_array(df, "rv_10m")
    return {"ret": M.error_by_decile(column_array(df, "ret_60m_conf"), np.abs(rp - y)),
            "rv": M.error_by_decile(column_array(df, "rv_10m_conf"), np.abs(rv / np.maximum(vp, 1e-300) - 1))}


# -- plots and report --------------------------------------------------------------------------

def plot_all(frames: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Three PNGs comparing the named prediction frames: forecast vs realized, calibration, error
    by decile. Uses the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, df in frames.items():
        vp, rv = column_array(df, "rv_10m_pred"), column_array(df, "rv_10m")
        ok = np.isfinite(vp) & np.isfinite(rv) & (vp > 0)
        if ok.sum() >= 20:
            q = pd.qcut(vp[ok], 20, labels=False, duplicates="drop")
            g = pd.DataFrame({"p": vp[ok], "r": rv[ok], "q": q}).groupby("q").mean()
            axes[0].loglog(g["p"], g["r"], "o-", ms=3, label=name)
        rp, y = column_array(df, "ret_60m_pred"), column_array(df, "ret_60m")
        ok = np.isfinite(rp) & np.isfinite(y)
        if ok.sum() >= 20 and np.std(rp[ok]) > 0:
            q = pd.qcut(rp[ok], 20, labels=False, duplicates="drop")
            g = pd.DataFrame({"p": rp[ok], "r": y[ok], "q": q}).groupby("q").mean()
            axes[1].plot(g["p"], g["r"], "o-", ms=3, label=name)
    axes[0].set(title="rv_10m: realized vs forecast (20 bins)", xlabel="forecast rv_10m (volatility per 10 min)",
                ylabel="realized rv_10m (volatility per 10 min)")
    axes[1].set(title="ret_60m: realized vs forecast (20 bins)", xlabel="forecast ret_60m (log return over 60 min)",
                ylabel="realized ret_60m (log return over 60 min)")
    lim = axes[0].get_xlim()
    axes[0].plot(lim, lim, "k:", lw=1)
    axes[0].legend(fontsize=7); axes[1].legend(fontsize=7)
    paths.append(_save(fig, out / "forecast_vs_realized.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, df in frames.items():
        for ax, conf, corr in ((axes[0], "ret_60m_conf", ret_correct(column_array(df, "ret_60m_pred"), column_array(df, "ret_60m"))),
                               (axes[1], "rv_10m_conf", rv_correct(column_array(df, "rv_10m_pred"), column_array(df, "rv_10m")))):
            tab = M.reliability(column_array(df, conf), corr, 20)
            tab = tab[tab["n"] > 0]
            line, = ax.plot(tab["conf"], tab["freq"], "o-", ms=3, label=name)
            if len(tab) == 1:  # one dot: say why where it is drawn
                ax.annotate(f"{name}: one value everywhere\n(no validated skill, so none claimed)",
                            (tab["conf"].iloc[0], tab["freq"].iloc[0]), xytext=(8, -22), textcoords="offset points",
                            fontsize=7, color=line.get_color())
    for ax, t in zip(axes, ("return: P(sign right)", "volatility: P(|rv/rv_hat-1| <= 25%)")):
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set(title=f"calibration, {t}", xlabel="stated confidence (probability)",
               ylabel="observed frequency (share of rows)")
        ax.legend(fontsize=7)
    paths.append(_save(fig, out / "calibration.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, df in frames.items():
        d = deciles(df)
        axes[0].plot(d["ret"]["decile"], d["ret"]["abs_err"], "o-", ms=3, label=name)
        axes[1].plot(d["rv"]["decile"], d["rv"]["abs_err"], "o-", ms=3, label=name)
    axes[0].set(title="return |error| by confidence decile", xlabel="confidence decile (0 = least confident)",
                ylabel="mean |ret_60m_pred - ret_60m| (log return)")
    axes[1].set(title="volatility |rv/rv_hat - 1| by confidence decile", xlabel="confidence decile (0 = least confident)",
                ylabel="mean relative error (ratio)")
    axes[0].legend(fontsize=7); axes[1].legend(fontsize=7)
    paths.append(_save(fig, out / "error_by_decile.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(table: pd.DataFrame, images: list[Path], path: str | Path, title: str = "hfcast evaluation") -> Path:
    """One self-contained HTML file: the score table and the PNGs embedded as base64."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs = "".join(
        f'<h3>{html.escape(p.stem)}</h3><img src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"/>' for p in images)
    body = (f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1>{table.to_html(float_format=lambda v: f'{v:.4g}')}{imgs}"
            "</body></html>")
    path.write_text(body)
    return path


def evaluate_file(predictions: str | Path, out_dir: str | Path) -> dict:
    """Score a saved predictions file (parquet or CSV; optional ``model`` column) and write
    ``metrics.json``, the PNGs and ``report.html`` into ``out_dir``."""
    p = Path(predictions)
    if not p.exists():
        raise FileNotFoundError(f"predictions file {p} does not exist")
    df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, parse_dates=["ts"])
    frames = dict(tuple(df.groupby("model"))) if "model" in df else {"model": df}
    result = {}
    for name, f in frames.items():
        per, agg = score_folds(f)
        result[str(name)] = {"aggregate": agg, "per_fold": per.to_dict(orient="records")}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=float))
    table = pd.DataFrame({k: v["aggregate"] for k, v in result.items()}).T
    write_report(table, plot_all(frames, out), out / "report.html")
    return result


#: columns of the comparison table, in the order printed
TABLE_COLUMNS = ("vol_qlike", "vol_qlike_truth", "vol_mse", "ret_ic", "ret_ic_truth", "ret_ic_cs",
                 "ret_rank_ic", "ret_hit", "ret_coverage", "rv_coverage", "ret_ece", "rv_ece")


def write_comparison(aggregate: pd.DataFrame, per_fold: pd.DataFrame, predictions: pd.DataFrame,
                     out_dir: str | Path, title: str = "hfcast walk-forward comparison") -> dict[str, Path]:
    """Save a walk-forward comparison: tables (CSV + JSON), predictions (parquet), PNGs, HTML."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"aggregate": out / "aggregate.csv", "per_fold": out / "per_fold.csv",
             "predictions": out / "predictions.parquet", "metrics": out / "metrics.json"}
    aggregate.to_csv(paths["aggregate"])
    per_fold.to_csv(paths["per_fold"], index=False)
    predictions.to_parquet(paths["predictions"], index=False)
    paths["metrics"].write_text(json.dumps({"aggregate": aggregate.to_dict(orient="index"),
                                            "per_fold": per_fold.to_dict(orient="records")}, indent=1, default=float))
    frames = {str(m): g for m, g in predictions.groupby("model", sort=False)}
    images = plot_all(frames, out)
    cols = [c for c in TABLE_COLUMNS if c in aggregate]
    paths["report"] = write_report(aggregate[cols], images, out / "report.html", title)
    for p in images:
        paths[p.stem] = p
    return paths
