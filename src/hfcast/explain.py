"""Why the model says what it says: global feature-group importance, attention, per-forecast attributions.

* **Global** - :func:`permutation_importance`: shuffle one feature group across the windows of a
  test span (all 30 minutes together, so the group's own time structure is kept) and measure how
  much the loss grows: return MSE and volatility QLIKE separately. Groups are the feature
  registry's (:mod:`hfcast.features.catalog`); a feature the registry does not know is a group
  of its own. :func:`attention_by_time_of_day` (attention architectures only) averages, by the
  time of day a forecast is made, how much the current minute attends to each of the 30 minutes.
* **Per forecast** - :func:`explain_forecasts`: the SERVED forecast (the number ``predict`` and the
  server return, from the same runner's outputs and the same post-step) split into additive parts
  (:func:`served_parts`): for the return, in log-return units, the network head's forecast and the
  calibrator's centring offset (or the zero forecast: nothing to attribute); for the volatility,
  in natural log of rv_10m, the networks' weighted log volatility, the ``har_tod`` floor's share
  (or the served baseline's whole forecast, with its window inputs) and the variance scale. The
  networks' part is then attributed by Integrated Gradients (Captum, :func:`attribute`) over the
  window's (minute, feature) cells through the forecaster's graph. The IG reference is the
  all-zero scaled window, i.e. the training mean of every feature: attributions sum to the
  networks' part minus its value at that "typical" window (completeness), and :func:`summarize`
  reports them by feature group, by minute, and the top (minute, feature) cells.

Nothing here changes a model or the plain predict path (the attention hook is off by default).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from hfcast.contracts import COLUMN_UNITS, LOOKBACK
from hfcast.data.schema import minute_of_session
from hfcast.features.catalog import BY_NAME
from hfcast.features.engine import load_features
from hfcast.features.windows import WindowArrays, build_windows
from hfcast.market import resolve as resolve_market
from hfcast.forecaster import Forecaster
from hfcast.metrics import mse, qlike
from hfcast.models import SelfAttention
from hfcast.models.base import RAW_OUTPUTS
from hfcast.models.baselines import FLOOR, HARX_ACTIVITY, HARX_LAST, HARX_RAW
from hfcast.plots import png_figure

log = logging.getLogger(__name__)

TARGETS = ("ret", "vol")


def feature_groups(names: Sequence[str], groups: Mapping[str, str] | None = None) -> dict[str, list[int]]:
    """Group name -> column indices, in first-appearance order.

    Args:
        names: the model's feature names.
        groups: optional feature -> group overrides; else the registry's group, else the name.
    """
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
    idx = np.arange(len(wa))
    if idx.size > max_windows:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_windows, replace=False))
    att = attention_weights(forecaster, network_of(forecaster).scaler.transform(wa.windows(idx)))
    minute = minute_of_session(pd.DatetimeIndex(wa.keys["ts"]).take(wa.ends[idx]))
    frame = pd.DataFrame(att, columns=list(range(-(LOOKBACK - 1), 1)))
    frame["bucket"] = (minute // bucket_minutes) * bucket_minutes
    return frame.groupby("bucket").mean()


# --- per-forecast attributions ------------------------------------------------------------------

#: the unit of the quantity each target's explanation decomposes and attributes
EXPLAINED = {
    "ret": ("ret_60m_pred", "log return over 60 minutes (the unit of ret_60m_pred itself)"),
    "vol": ("log rv_10m_pred", "natural log of rv_10m (log volatility per 10 minutes): parts and attributions "
                               "are log-volatility differences, +0.1 = a volatility about 10.5% higher"),
}
SERVED_COLUMN = {"ret": "ret_60m_pred", "vol": "rv_10m_pred"}
#: units of the window inputs the baselines read (:mod:`hfcast.models.baselines`), shown when a
#: baseline makes part of the served forecast
BASELINE_INPUT_UNITS = {
    "tod": "minute of the session",
    "v10_l1": "realized variance of minutes t-9..t (squared log returns per 10 minutes)",
    "v10_l2": "realized variance of minutes t-19..t-10 (per 10 minutes)",
    "v10_l3": "realized variance of minutes t-29..t-20 (per 10 minutes)",
    "v_back": "mean realized variance of minutes t-59..t-30 (per 10 minutes)",
    "vday": "previous day's mean realized variance (per 10 minutes)",
    "vweek": "last <= 5 days' mean realized variance (per 10 minutes)",
    "ewma_var": "EWMA variance, half-life 60 minutes (per 10 minutes)",
    "ret_past60": "log return of the last 60 minutes",
}
#: and the covariates ``har_x`` reads besides (shown when it is served)
HARX_INPUT_UNITS = {
    "ac1": "first-order autocorrelation of the window's 30 one-minute returns (har_x)",
    **{f"x_{f}": f"feature {f} at the window's last row (har_x; the catalogue's unit)" for f in (*HARX_LAST, *HARX_RAW)},
    **{f"{pre}{f}": f"feature {f} {where} (har_x; the catalogue's unit)" for f in HARX_ACTIVITY
       for pre, where in (("a_", "at the last row"), ("m10_", "averaged over the last 10 rows"),
                          ("m30_", "averaged over the 30 rows"))},
}


def as_forecaster(model: Any) -> Any:
    """A served forecaster as it is; a bare trained network served as itself (its own calibrator)."""
    if hasattr(model, "choice"):
        return model
    return Forecaster.from_net(model)


def network_terms(forecaster: Any, target: str) -> list[tuple[str, int, float]]:
    """``(arch, member index in the graph, weight)`` of each network in the part of the served
    forecast the networks compute (:func:`hfcast.forecaster.compose`); empty when none does.

    Return: the chosen head's ``ret_mu`` (weight 1), or nothing for the zero forecast. Volatility,
    in log rv: each member's ``w / K`` (K members, ``w`` its weight against ``har_tod``), or
    nothing when a baseline is served.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    fc = as_forecaster(forecaster)
    index = {a: i for i, a in enumerate(fc.members)}
    if target == "ret":
        return [] if fc.choice.ret == "zero" else [(fc.choice.ret, index[fc.choice.ret], 1.0)]
    k = len(fc.choice.members)
    return [(a, index[a], min(float(w), 1.0) / k) for a, w in fc.choice.members.items()]


def _nothing_to_attribute(fc: Any, target: str) -> str:
    if target == "ret":
        return ("the return forecast is the zero forecast (no network showed validated skill on the return): "
                "no network computes it, so there is nothing to attribute")
    return (f"the volatility forecast is the {fc.choice.vol} baseline, which runs no network: there are no "
            "gradients to attribute; its window inputs are given instead")


class _NetworkPart(torch.nn.Module):
    """Scaled window -> the networks' part of the served forecast (:func:`network_terms`), through
    the forecaster's graph: ``ret_mu`` of the return head, or the weighted log rv of the members."""

    def __init__(self, forecaster: Any, target: str):
        super().__init__()
        fc = as_forecaster(forecaster)
        self.terms = network_terms(fc, target)
        if not self.terms:
            raise ValueError(_nothing_to_attribute(fc, target))
        self.graph, self.target = fc.graph(), target
        self.scales = {a: fc.members[a].scaler for a, _, _ in self.terms}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(RAW_OUTPUTS)
        raw = self.graph(x)  # [B, 30, F] -> [B, 4 members]: ret_mu, ret_log_sigma, lrv_mu, lrv_log_sigma (scaled)
        out = torch.zeros(raw.shape[0], dtype=raw.dtype)
        for arch, i, w in self.terms:
            r, s = raw[:, i * k:(i + 1) * k], self.scales[arch]
            if self.target == "ret":
                out = out + w * r[:, 0] * float(s.ret_scale)
            else:  # log rv_hat = m + s^2 (hfcast.models.base.natural_units)
                lrv_sigma = torch.exp(r[:, 3]) * float(s.lrv_std)
                out = out + w * (r[:, 2] * float(s.lrv_std) + float(s.lrv_mean) + lrv_sigma**2)
        return out


@dataclass
class Attribution:
    """Integrated-gradients attributions of the networks' part of one target, for a batch of windows."""

    target: str
    attributions: np.ndarray  # [B, 30, F]
    forecast: np.ndarray      # [B] the networks' part at the window (EXPLAINED units)
    reference: np.ndarray     # [B] the same at the reference window (the training mean of every feature)
    delta: np.ndarray         # [B] sum of attributions - (forecast - reference)


def attribute(forecaster: Any, X_scaled: np.ndarray, target: str = "ret", n_steps: int = 64,
              baseline: np.ndarray | None = None) -> Attribution:
    """Integrated Gradients over (minute, feature) of the networks' part of a target, for scaled
    windows [B, 30, F].

    Args:
        forecaster: a served :class:`hfcast.forecaster.Forecaster` or a trained network.
        baseline: scaled reference window(s); default zeros (= the training mean of every feature).
        n_steps: Riemann / Gauss-Legendre steps; 64 keeps the completeness gap well under 1%.

    Raises:
        ValueError: no network computes any of the target (a zero return, a baseline volatility).
    """
    from captum.attr import IntegratedGradients

    fn = _NetworkPart(forecaster, target).eval()
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


def served_parts(forecaster: Any, raw: np.ndarray, side: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    """Per target, the served forecast and its additive parts (arrays [B]) from the graph's raw
    outputs and the windows' side inputs: the same numbers :meth:`Forecaster.postprocess` serves.

    ``value`` (the explained quantity, :data:`EXPLAINED`) is the sum of ``parts``: for the return,
    ``network`` (the head's ret_mu; ``zero`` for the zero forecast) + ``centring`` (minus the
    calibrator's offset); for the
    volatility, in log rv, ``network`` (sum of w/K log rv of the members) + the baseline's share
    (``har_tod``: sum of (1-w)/K log rv of har_tod, or the served baseline's log rv) + ``scale``
    (half the log of the variance scale chosen on validation). ``weights`` is the share of each
    source in the explained quantity.
    """
    fc = as_forecaster(forecaster)
    served = fc.postprocess(raw, side)
    nat = fc.member_natural(raw)
    base = fc.baseline_natural(side) if side is not None and fc.baselines else {}
    n = len(served["ret_60m_pred"])
    offset = float(fc.calibrator.ret_offset) if fc.calibrator is not None else 0.0
    ret_terms = network_terms(fc, "ret")
    ret_net = sum((w * np.asarray(nat[a]["ret_mu"], np.float64) for a, _, w in ret_terms), np.zeros(n))
    out = {"ret": {"forecast": served["ret_60m_pred"], "value": served["ret_60m_pred"],
                   "parts": {"network" if ret_terms else "zero": ret_net, "centring": np.full(n, 0.0 - offset)},
                   "weights": {a: w for a, _, w in ret_terms}}}

    def log_rv(d: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.log(np.maximum(np.asarray(d["rv_hat"], np.float64), 1e-12))

    vol_terms = network_terms(fc, "vol")
    vol_net = sum((w * log_rv(nat[a]) for a, _, w in vol_terms), np.zeros(n))
    if fc.choice.vol in fc.baselines:  # a baseline is served
        base_name, base_w = fc.choice.vol, 1.0
    else:
        base_name, base_w = FLOOR, sum((1.0 - min(float(w), 1.0)) / len(fc.choice.members)
                                            for w in fc.choice.members.values())
    parts = {"network": vol_net} if vol_terms else {}
    if base_w > 0:
        parts[base_name] = base_w * log_rv(base[base_name])
    parts["scale"] = np.full(n, 0.5 * np.log(fc.choice.scale))
    out["vol"] = {"forecast": served["rv_10m_pred"], "value": np.log(np.maximum(served["rv_10m_pred"], 1e-300)),
                  "parts": parts, "weights": {**{a: w for a, _, w in vol_terms}, **({base_name: base_w} if base_w else {})}}
    return out


def explain_forecasts(forecaster: Any, windows: np.ndarray, raw: np.ndarray | None = None,
                      scaled: np.ndarray | None = None, targets: Sequence[str] = TARGETS, n_steps: int = 64,
                      top: int = 10) -> list[dict[str, Any]]:
    """The per-forecast explanation of each unscaled window (what ``:explain`` answers).

    Each target's ``forecast`` is the SERVED number (``ret_60m_pred``, ``rv_10m_pred``) computed
    from ``raw``, the graph's outputs of the runner that served it (default: the forecaster's torch
    graph), with the same post-step. ``value`` (in ``explained_unit``) is split into ``parts``
    (:func:`served_parts`); the integrated gradients attribute the ``network`` part over the
    window's (minute, feature) cells against the reference window (the training mean of every
    feature): ``total`` = sum of the attributions = ``parts.network - reference`` up to the
    ``completeness_gap``. Where no network computes a target (the zero return, a baseline
    volatility) ``note`` says so and ``attributions`` is null; the baseline's window inputs are
    given with their units whenever a baseline makes part of the forecast.

    Args:
        windows: unscaled windows [B, 30, F] (what ``predict`` takes).
        raw: the graph's raw outputs [B, 4 k] for these windows (a runner's); None: torch.
        scaled: the scaled windows the runner read (default: the forecaster's scaler on ``windows``).
    """
    fc = as_forecaster(forecaster)
    w = np.asarray(windows, dtype=np.float32)
    X = fc.scaler.transform(w) if scaled is None else np.asarray(scaled, dtype=np.float32)
    raw = fc.predict_raw(X) if raw is None else np.asarray(raw, dtype=np.float32)
    side = fc.side_inputs(w)
    parts = served_parts(fc, raw, side)
    out: list[dict[str, Any]] = [{} for _ in range(len(w))]
    for t in targets:
        col, (what, unit) = SERVED_COLUMN[t], EXPLAINED[t]
        p = parts[t]
        try:
            a = attribute(fc, X, t, n_steps)
            note = None
        except ValueError as exc:
            a, note = None, str(exc)
        for i in range(len(w)):
            e = {"forecast": float(p["forecast"][i]), "column": col, "unit": COLUMN_UNITS[col],
                 "explained": what, "explained_unit": unit, "value": float(p["value"][i]),
                 "parts": {k: float(v[i]) for k, v in p["parts"].items()},
                 "weights": dict(p["weights"]), "network_share": float(sum(p["weights"].get(x, 0.0) for x in fc.members))}
            if a is None:
                e.update(note=note, attributions=None)
            else:
                e.update(reference=float(a.reference[i]), completeness_gap=float(a.delta[i]),
                         **summarize(a.attributions[i], fc.feature_names, X[i], top))
            if side is not None and any(k in fc.baselines for k in p["weights"]):
                units = {**BASELINE_INPUT_UNITS, **(HARX_INPUT_UNITS if "har_x" in p["weights"] else {})}
                e["baseline_inputs"] = {k: _finite(side[k].iloc[i]) for k in units if k in side}
                e["baseline_input_units"] = units
            out[i][t] = e
    return out


def _finite(v: Any) -> float | None:
    f = float(v)
    return f if np.isfinite(f) else None


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
    df = load_features(lake, dates, [*forecaster.feature_names, "ret_60m", "rv_10m"])
    return build_windows(df, forecaster.feature_names, market=lake.market)


def run_global(lake: Any, forecaster: Any, dates: Sequence[str], out_dir: Any, n_repeats: int = 3,
               max_windows: int = 4000, attribution_windows: int = 64, seed: int = 0) -> dict[str, Any]:
    """Global explanations on ``dates`` (a test span): importance, attention, mean attributions.

    Writes explain.json, importance.png and (attention architectures) attention.png to ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wa = labelled_windows(lake, forecaster, dates)
    imp = permutation_importance(forecaster, wa, n_repeats=n_repeats, max_windows=max_windows, seed=seed)
    result: dict[str, Any] = {"dates": list(dates), "windows": imp.attrs["windows"], "base_loss": imp.attrs["base_loss"],
                              "permutation_importance": imp.to_dict(orient="records"),
                              "plots": [str(plot_importance(imp, out / "importance.png"))]}
    X = as_forecaster(forecaster).scaler.transform(wa.windows(_sample(wa, attribution_windows, seed)))
    result["mean_abs_attribution"] = {}
    for t in TARGETS:
        try:
            result["mean_abs_attribution"][t] = mean_abs_attribution_by_group(forecaster, X, t).to_dict()
        except ValueError as exc:  # no network computes this target: importance only
            result["mean_abs_attribution"][t] = str(exc)
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
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    date = str(resolve_market(lake.market).trade_date(pd.Series([t]))[0])  # the lake's calendar
    df = lake.read("features", date, ["symbol", "ts", *forecaster.feature_names])
    df = df[df["symbol"].astype(str) == symbol]
    if df.empty:
        raise ValueError(f"no features for symbol {symbol!r} on {date}")
    wa = build_windows(df, forecaster.feature_names, label_cols=None, market=lake.market)
    hit = np.flatnonzero(pd.DatetimeIndex(wa.keys["ts"]).take(wa.ends) == t)
    if hit.size == 0:
        raise ValueError(f"no complete 30-minute window for {symbol} ending at {t.isoformat()} "
                         f"(the first forecast of a day is at its 30th minute)")
    return {"symbol": symbol, "ts": t.isoformat(),
            **explain_forecasts(forecaster, wa.windows(hit[:1]), n_steps=n_steps, top=top)[0]}
