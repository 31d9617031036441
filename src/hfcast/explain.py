"""Why the model says what it says: global feature-group importance, attention, per-forecast attributions.

* **Global** - :func:`permutation_importance`: shuffle one feature group across the windows of a
  test span (all 30 minutes together, so the group's own time structure is kept) and measure how
  much the loss grows: return MSE and volatility QLIKE separately. Groups are the feature
  registry's (:mod:`hfcast.features.catalog`); a feature the registry does not know is a group
  of its own. :func:`attention_by_time_of_day` (attention architectures only) averages, by the
  time of day a forecast is made, how much the current minute attends to each of the 30 minutes.
* **Per forecast** - :func:`attribute`: Integrated Gradients (Captum) over the (minute, feature)
  cells of one window, for the return forecast (``ret_60m_pred`` up to the calibrator's constant
  offset) and for the log volatility forecast (``log rv_10m_pred``), both in natural units. The
  baseline is the all-zero scaled window, i.e. the training mean of every feature: attributions
  then sum to forecast minus the forecast of a "typical" window (completeness), and
  :func:`summarize` reports them by feature group, by minute, and the top (minute, feature) cells.

Nothing here changes a model or the plain predict path (the attention hook is off by default).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from hfcast.contracts import LOOKBACK
from hfcast.features.windows import WindowArrays
from hfcast.metrics import mse, qlike
from hfcast.plots import png_figure

log = logging.getLogger(__name__)

TARGETS = ("ret", "vol")


def feature_groups(names: Sequence[str], groups: Mapping[str, str] | None = None) -> dict[str, list[int]]:
    """Group name -> column indices, in first-appearance order.

    Args:
        names: the model's feature names.
        groups: optional feature -> group overrides; else the registry's group, else the name.
    """
    from hfcast.features.catalog import BY_NAME

    out: dict[str, list[int]] = {}
    for j, n in enumerate(names):
        g = (groups or {}).get(n) or (BY_NAME[n].group if n in BY_NAME else n)
        out.setdefault(g, []).append(j)
    return out


def _sample(wa: WindowArrays, max_windows: int, seed: int) -> np.ndarray:
    """Indices of labelled windows (both labels finite), a seeded subsample of at most max_windows."""
    y = wa.labels()
    keep = np.flatnonzero(np.isfinite(y).all(axis=1) & (y[:, 1] > 0))
    if keep.size == 0:
        raise ValueError(f"no window with both labels finite among {len(wa)}: choose dates whose labels matured")
    if keep.size > max_windows:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_windows, replace=False))
    return keep


def network_of(forecaster: Any) -> Any:
    """The network whose gradients an attribution follows: a served forecaster's main network
    (:meth:`hfcast.forecaster.Forecaster.primary_net`), or a trained network itself.

    Raises:
        ValueError: the forecaster serves a baseline (no network to attribute).
    """
    if callable(getattr(forecaster, "primary_net", None)):
        net = forecaster.primary_net()
        if net is None:
            raise ValueError(f"the forecaster serves {forecaster.kind}: it runs no network, so there are no "
                             "gradients to attribute (permutation importance still applies)")
        return net
    return forecaster


def losses(forecaster: Any, windows: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Return MSE and volatility QLIKE of the forecaster's served forecasts on unscaled windows."""
    pred = forecaster.predict(windows)
    return {"ret": mse(pred["ret_60m_pred"].to_numpy(), y[:, 0]),
            "vol": qlike(pred["rv_10m_pred"].to_numpy() ** 2, y[:, 1] ** 2)}


def permutation_importance(forecaster: Any, wa: WindowArrays, groups: Mapping[str, str] | None = None,
                           n_repeats: int = 3, max_windows: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Loss increase when a feature group is shuffled across windows, for returns and volatility.

    Args:
        forecaster: a :class:`hfcast.forecaster.Forecaster` (the served forecast) or a trained network.
        wa: test-span windows WITH labels (the span the model did not train on).
        groups: feature -> group overrides (default: the registry's groups).
        n_repeats: shuffles per group (mean and std reported).
        max_windows: windows scored (a seeded subsample; [M, 30, F] float32 is materialised).

    Returns:
        One row per group, sorted by return importance: ``ret_importance`` (MSE increase),
        ``ret_std``, ``vol_importance`` (QLIKE increase), ``vol_std``, and each relative to the
        unshuffled loss (``ret_rel``, ``vol_rel``).
    """
    idx = _sample(wa, max_windows, seed)
    X = np.asarray(wa.windows(idx), dtype=np.float32)  # [M, 30, F] unscaled: what is served reads it whole
    y = wa.labels()[idx].astype(np.float64)
    base = losses(forecaster, X, y)
    rng = np.random.default_rng(seed)
    rows = []
    for g, cols in feature_groups(wa.feature_names, groups).items():
        inc = {t: [] for t in TARGETS}
        for _ in range(n_repeats):
            Xp = X.copy()
            Xp[:, :, cols] = X[rng.permutation(len(X))][:, :, cols]  # whole windows of the group move together
            got = losses(forecaster, Xp, y)
            for t in TARGETS:
                inc[t].append(got[t] - base[t])
        rows.append({"group": g, "n_features": len(cols),
                     **{f"{t}_importance": float(np.mean(inc[t])) for t in TARGETS},
                     **{f"{t}_std": float(np.std(inc[t])) for t in TARGETS},
                     **{f"{t}_rel": float(np.mean(inc[t]) / base[t]) if base[t] else float("nan") for t in TARGETS}})
    out = pd.DataFrame(rows).sort_values("ret_importance", ascending=False, kind="stable").reset_index(drop=True)
    out.attrs.update(base_loss=base, windows=int(len(idx)))
    return out


# --- attention ----------------------------------------------------------------------------------

@contextlib.contextmanager
def kept_attention(net: torch.nn.Module) -> Iterator[list[torch.nn.Module]]:
    """Switch on the attention hook of every attention layer of ``net`` for the block."""
    from hfcast.models import SelfAttention

    layers = [m for m in net.modules() if isinstance(m, SelfAttention)]
    if not layers:
        raise ValueError(f"the {getattr(net, 'arch', type(net).__name__)} network has no attention layers; "
                         "attention maps exist for the transformer and hybrid architectures")
    for m in layers:
        m.keep_attention = True
    try:
        yield layers
    finally:
        for m in layers:
            m.keep_attention, m.last_attention = False, None


def attention_weights(forecaster: Any, X_scaled: np.ndarray, batch: int = 1024) -> np.ndarray:
    """[M, 30]: attention of each window's current minute over its 30 minutes (mean of heads, layers).

    Column j is minute ``j - 29`` relative to the forecast minute (the last column is "now").
    """
    net = network_of(forecaster).net.eval()
    out = []
    with kept_attention(net) as layers, torch.inference_mode():
        for a in range(0, len(X_scaled), batch):
            net(torch.as_tensor(X_scaled[a:a + batch], dtype=torch.float32))
            att = torch.stack([m.last_attention[:, :, -1, :] for m in layers])  # [L, B, H, T]
            out.append(att.mean(dim=(0, 2)).numpy())
    return np.concatenate(out) if out else np.empty((0, LOOKBACK))


def attention_by_time_of_day(forecaster: Any, wa: WindowArrays, bucket_minutes: int = 30,
                             max_windows: int = 20000, seed: int = 0) -> pd.DataFrame:
    """Mean attention over the 30 window minutes, by the time of day the forecast is made.

    Returns:
        Rows = buckets of minute-of-session (the bucket's first minute), columns = minute offsets
        -29..0; each row sums to 1.
    """
    from hfcast.data.schema import minute_of_session

    idx = np.arange(len(wa))
    if idx.size > max_windows:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_windows, replace=False))
    att = attention_weights(forecaster, network_of(forecaster).scaler.transform(wa.windows(idx)))
    minute = minute_of_session(pd.DatetimeIndex(wa.keys["ts"]).take(wa.ends[idx]))
    frame = pd.DataFrame(att, columns=list(range(-(LOOKBACK - 1), 1)))
    frame["bucket"] = (minute // bucket_minutes) * bucket_minutes
    return frame.groupby("bucket").mean()


# --- per-forecast attributions ------------------------------------------------------------------

class _Target(torch.nn.Module):
    """The net followed by the natural-unit forecast to attribute (a scalar per window)."""

    def __init__(self, forecaster: Any, target: str):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        net = network_of(forecaster)
        self.net, self.target, s = net.net, target, net.scaler
        self.ret_scale, self.lrv_std, self.lrv_mean = float(s.ret_scale), float(s.lrv_std), float(s.lrv_mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.net(x)  # [B, 4] = ret_mu, ret_log_sigma, lrv_mu, lrv_log_sigma (scaled units)
        if self.target == "ret":
            return raw[:, 0] * self.ret_scale  # ret_60m forecast (the calibrator only subtracts a constant)
        lrv_sigma = torch.exp(raw[:, 3]) * self.lrv_std
        return raw[:, 2] * self.lrv_std + self.lrv_mean + lrv_sigma**2  # log rv_10m_pred


@dataclass
class Attribution:
    """Integrated-gradients attributions of one target for a batch of windows."""

    target: str
    attributions: np.ndarray  # [B, 30, F]
    forecast: np.ndarray      # [B]
    baseline_forecast: np.ndarray  # [B]
    delta: np.ndarray         # [B] sum of attributions - (forecast - baseline_forecast)


def attribute(forecaster: Any, X_scaled: np.ndarray, target: str = "ret", n_steps: int = 64,
              baseline: np.ndarray | None = None) -> Attribution:
    """Integrated Gradients over (minute, feature) for scaled windows [B, 30, F].

    Args:
        baseline: scaled baseline window(s); default zeros (= the training mean of every feature).
        n_steps: Riemann / Gauss-Legendre steps; 64 keeps the completeness gap well under 1%.
    """
    from captum.attr import IntegratedGradients

    fn = _Target(forecaster, target).eval()
    x = torch.as_tensor(np.asarray(X_scaled, dtype=np.float32))
    if x.ndim == 2:
        x = x[None]
    b = torch.zeros_like(x) if baseline is None else torch.as_tensor(np.asarray(baseline, np.float32)).expand_as(x)
    with torch.no_grad():
        f_x, f_b = fn(x).numpy().astype(np.float64), fn(b).numpy().astype(np.float64)
    attr, delta = IntegratedGradients(fn).attribute(x, baselines=b, n_steps=n_steps, return_convergence_delta=True,
                                                    internal_batch_size=max(n_steps, 64))
    return Attribution(target, attr.detach().numpy().astype(np.float64), f_x, f_b,
                       delta.detach().numpy().astype(np.float64))


def summarize(attr: np.ndarray, feature_names: Sequence[str], window: np.ndarray | None = None, top: int = 10,
              groups: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One window's attributions [30, F] by feature group, by minute, and its top cells.

    Args:
        window: the scaled window (z-scores), to show the value behind each top cell.
    """
    by_group = {g: float(attr[:, cols].sum()) for g, cols in feature_groups(feature_names, groups).items()}
    order = np.argsort(-np.abs(attr), axis=None)[:top]
    cells = []
    for flat in order:
        t, j = np.unravel_index(flat, attr.shape)
        cell = {"feature": feature_names[j], "minute": int(t) - (attr.shape[0] - 1), "attribution": float(attr[t, j])}
        if window is not None:
            cell["value_z"] = float(window[t, j])
        cells.append(cell)
    return {"by_group": dict(sorted(by_group.items(), key=lambda kv: -abs(kv[1]))),
            "by_minute": [float(v) for v in attr.sum(axis=1)], "top": cells, "total": float(attr.sum())}


def explain_windows(forecaster: Any, X_scaled: np.ndarray, targets: Sequence[str] = TARGETS, n_steps: int = 64,
                    top: int = 10) -> list[dict[str, Any]]:
    """The per-forecast explanation of each window (what ``:explain`` answers), targets side by side."""
    out: list[dict[str, Any]] = [{} for _ in range(len(X_scaled))]
    for t in targets:
        a = attribute(forecaster, X_scaled, t, n_steps)
        for i in range(len(X_scaled)):
            out[i][t] = {"forecast": float(a.forecast[i]), "baseline_forecast": float(a.baseline_forecast[i]),
                         "completeness_gap": float(a.delta[i]),
                         **summarize(a.attributions[i], forecaster.feature_names, X_scaled[i], top)}
    return out


def mean_abs_attribution_by_group(forecaster: Any, X_scaled: np.ndarray, target: str = "ret", n_steps: int = 32,
                                  groups: Mapping[str, str] | None = None) -> pd.Series:
    """Mean |attribution| per feature group over many windows (the averaged attribution view)."""
    a = np.abs(attribute(forecaster, X_scaled, target, n_steps).attributions).mean(axis=0)  # [30, F]
    s = pd.Series({g: float(a[:, cols].sum()) for g, cols in feature_groups(forecaster.feature_names, groups).items()})
    return s.sort_values(ascending=False)


# --- reports ------------------------------------------------------------------------------------

def plot_importance(imp: pd.DataFrame, path: Any) -> Any:
    """Two bar charts (return MSE increase, volatility QLIKE increase) by feature group."""
    with png_figure(path, (11, 0.35 * len(imp) + 1.5), ncols=2) as (fig, axes):
        for ax, t, title in ((axes[0], "ret", "return: MSE increase"), (axes[1], "vol", "volatility: QLIKE increase")):
            d = imp.sort_values(f"{t}_rel")
            ax.barh(d["group"], d[f"{t}_rel"], xerr=d[f"{t}_std"] / imp.attrs["base_loss"][t], color="tab:blue")
            ax.set_title(f"{title} (relative)")
            ax.set_xlabel("loss increase when the group is shuffled\n(fraction of the unshuffled loss)")
            ax.axvline(0, color="grey", lw=0.6)
        fig.suptitle(f"permutation importance by feature group ({imp.attrs.get('windows', '?')} test windows)")
    return path


def plot_attention(att: pd.DataFrame, path: Any) -> Any:
    """Heatmap: time of day (rows) x minute offset in the window (columns)."""
    with png_figure(path, (9, 0.3 * len(att) + 1.8)) as (fig, ax):
        im = ax.imshow(att.to_numpy(), aspect="auto", cmap="viridis")
        ax.set_xticks(range(0, att.shape[1], 5), [str(c) for c in att.columns[::5]])
        ax.set_yticks(range(len(att)), [f"{(570 + int(b)) // 60:02d}:{(570 + int(b)) % 60:02d}" for b in att.index])
        ax.set_xlabel("minute in the window (0 = forecast minute)")
        ax.set_ylabel("time of day (ET)")
        ax.set_title("attention of the forecast minute, by time of day")
        fig.colorbar(im, ax=ax)
    return path


# --- from the lake ------------------------------------------------------------------------------

def labelled_windows(lake: Any, forecaster: Any, dates: Sequence[str]) -> WindowArrays:
    """The windows of ``dates`` with their labels, on the forecaster's features (for importance on a span)."""
    from hfcast.features.engine import load_features
    from hfcast.features.windows import build_windows

    df = load_features(lake, dates, [*forecaster.feature_names, "ret_60m", "rv_10m"])
    return build_windows(df, forecaster.feature_names)


def run_global(lake: Any, forecaster: Any, dates: Sequence[str], out_dir: Any, n_repeats: int = 3,
               max_windows: int = 4000, attribution_windows: int = 64, seed: int = 0) -> dict[str, Any]:
    """Global explanations on ``dates`` (a test span): importance, attention, mean attributions.

    Writes explain.json, importance.png and (attention architectures) attention.png to ``out_dir``.
    """
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wa = labelled_windows(lake, forecaster, dates)
    imp = permutation_importance(forecaster, wa, n_repeats=n_repeats, max_windows=max_windows, seed=seed)
    result: dict[str, Any] = {"dates": list(dates), "windows": imp.attrs["windows"], "base_loss": imp.attrs["base_loss"],
                              "permutation_importance": imp.to_dict(orient="records"),
                              "plots": [str(plot_importance(imp, out / "importance.png"))]}
    idx = _sample(wa, attribution_windows, seed)
    try:
        X = network_of(forecaster).scaler.transform(wa.windows(idx))
    except ValueError as exc:  # a baseline is served: importance only
        result["mean_abs_attribution"] = str(exc)
        X = None
    if X is not None:
        result["mean_abs_attribution"] = {t: mean_abs_attribution_by_group(forecaster, X, t).to_dict() for t in TARGETS}
    try:
        att = attention_by_time_of_day(forecaster, wa, seed=seed)
    except ValueError as exc:
        result["attention"] = str(exc)
    else:
        result["attention"] = {str(k): [float(v) for v in row] for k, row in att.iterrows()}
        result["plots"].append(str(plot_attention(att, out / "attention.png")))
    (out / "explain.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


def explain_forecast(lake: Any, forecaster: Any, symbol: str, ts: str, n_steps: int = 64, top: int = 10) -> dict[str, Any]:
    """The top drivers of one forecast: the window of ``symbol`` ending at minute ``ts`` (UTC)."""
    from hfcast.features.windows import build_windows

    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    date = t.tz_convert("America/New_York").date().isoformat()
    df = lake.read("features", date, ["symbol", "ts", *forecaster.feature_names])
    df = df[df["symbol"].astype(str) == symbol]
    if df.empty:
        raise ValueError(f"no features for symbol {symbol!r} on {date}")
    wa = build_windows(df, forecaster.feature_names, label_cols=None)
    hit = np.flatnonzero(pd.DatetimeIndex(wa.keys["ts"]).take(wa.ends) == t)
    if hit.size == 0:
        raise ValueError(f"no complete 30-minute window for {symbol} ending at {t.isoformat()} "
                         f"(the first forecast of a day is at its 30th minute)")
    X = network_of(forecaster).scaler.transform(wa.windows(hit[:1]))
    return {"symbol": symbol, "ts": t.isoformat(), **explain_windows(forecaster, X, n_steps=n_steps, top=top)[0]}
