"""The monitoring reference of a model version: what it learned from, sampled, with its predictions.

Why apart from :mod:`hfcast.monitoring.drift`: a new champion's reference is built when it is
promoted (:mod:`hfcast.lifecycle`), and the monitor reads it; keeping it here lets both use it
without the lifecycle depending on the monitor that starts retrainings.

``<lake>/monitoring/<model>/<version>/reference.parquet`` holds sampled training-span feature rows
with the model's predictions on them; ``reference.json`` the reference spans' test scores.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from hfcast.config import Settings
from hfcast import metrics as M, storage
from hfcast.backtest import baseline_vols
from hfcast.calibration import decile_ratio_bound
from hfcast.evaluate import ret_correct
from hfcast.features.engine import load_features
from hfcast.monitoring.decision import MonitorConfig
from hfcast.registry import load_forecaster, resolve, run_scores
from hfcast.storage import Lake

log = logging.getLogger(__name__)


def reference_urls(lake: Lake, model: str, version: str | int) -> tuple[str, str]:
    base = storage.join(lake.url, "monitoring", model, str(version))
    return storage.join(base, "reference.parquet"), storage.join(base, "reference.json")


def _model_id(forecaster: Any, model: tuple[str, str] | None) -> tuple[str, str]:
    if model is not None:
        return str(model[0]), str(model[1])
    meta = getattr(forecaster, "meta", {}) or {}
    if "model_name" not in meta or "model_version" not in meta:
        raise ValueError("build_reference: pass model=(name, version) or a forecaster whose meta has them")
    return str(meta["model_name"]), str(meta["model_version"])


def build_reference(settings: Settings, forecaster_or_bundle: Any, train_dates: Sequence[str], n_rows: int = 20000,
                    seed: int = 0, model: tuple[str, str] | None = None, test_dates: Sequence[str] | None = None,
                    test_scores: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Sample the training span, predict it, and store it with the model version.

    Reads one date at a time (memory stays one date), samples ``n_rows / len(train_dates)``
    window ends per date, and predicts those windows.

    Args:
        forecaster_or_bundle: a Forecaster or a bundle folder.
        train_dates: the dates the model was trained on.
        model: (name, version); default: the forecaster's meta.
        test_dates: held-out dates to score the model on for reference.json (if ``test_scores`` is None).
        test_scores: the reference spans' test scores (``vol_qlike``, ``ret_ic``), e.g. from the run.

    Returns:
        The reference.json document.
    """
    from hfcast.features.windows import build_windows
    from hfcast.forecaster import Forecaster

    fc = Forecaster.load(str(forecaster_or_bundle)) if isinstance(forecaster_or_bundle, (str, bytes)) or hasattr(
        forecaster_or_bundle, "__fspath__") else forecaster_or_bundle
    name, version = _model_id(fc, model)
    lake = Lake.from_settings(settings)
    dates = sorted(set(train_dates))
    if not dates:
        raise ValueError("build_reference: train_dates is empty")
    rng = np.random.default_rng(seed)
    per_date = max(1, int(np.ceil(n_rows / len(dates))))
    parts = []
    for d in dates:
        df = lake.read("features", d)
        wa = build_windows(df, fc.feature_names, label_cols=None, market=settings.market)
        pick = np.sort(rng.choice(len(wa), size=min(per_date, len(wa)), replace=False))
        pred = fc.predict(wa.windows(pick))
        rows = df.iloc[wa.ends[pick]][["symbol", "ts", *fc.feature_names]].reset_index(drop=True)
        parts.append(pd.concat([rows, pred], axis=1))
    ref = pd.concat(parts, ignore_index=True)
    if len(ref) > n_rows:
        ref = ref.sample(n_rows, random_state=seed).sort_values(["symbol", "ts"]).reset_index(drop=True)
    if test_scores is None and test_dates:
        test_scores = _score_dates(lake, fc, test_dates, settings.market)
    doc = {"model": name, "version": version, "train_dates": dates, "rows": len(ref), "seed": seed,
           "features": list(fc.feature_names), "test_dates": list(test_dates or []),
           "test_scores": {k: float(v) for k, v in (test_scores or {}).items() if k in ("vol_qlike", "ret_ic")},
           "built_at": pd.Timestamp.now(tz="UTC").isoformat()}
    pq_url, js_url = reference_urls(lake, name, version)
    storage.write_parquet(ref, pq_url, lake.storage_options)
    storage.write_text(js_url, json.dumps(doc, indent=1), lake.storage_options)
    log.info("reference for %s v%s: %d rows from %d training date(s)", name, version, len(ref), len(dates))
    return doc


def _score_dates(lake: Lake, fc: Any, dates: Sequence[str], market: Any) -> dict[str, float]:
    from hfcast.features.windows import build_windows

    frame = load_features(lake, dates)
    wa = build_windows(frame, fc.feature_names, market=market)
    pred = pd.concat([fc.predict(wa.windows(np.arange(a, min(a + 8192, len(wa))))) for a in range(0, len(wa), 8192)],
                     ignore_index=True)
    labels = frame.loc[wa.ends, ["ts", "ret_60m", "rv_10m"]].reset_index(drop=True)
    return live_scores(labels.join(pred))


def load_reference(lake: Lake, model: str, version: str | int) -> tuple[pd.DataFrame, dict[str, Any]]:
    pq_url, js_url = reference_urls(lake, model, version)
    if not storage.exists(js_url, lake.storage_options):
        raise FileNotFoundError(f"no monitoring reference for {model} v{version} at {js_url}: "
                                f"run `hfcast monitor reference --model {model}/{version}`")
    return storage.read_parquet(pq_url, lake.storage_options), json.loads(storage.read_text(js_url, lake.storage_options))


def live_scores(frame: pd.DataFrame) -> dict[str, float]:
    """Live scores of a frame holding predictions and matured labels: vol QLIKE and return IC, the
    80% interval coverage of both targets, and how well each confidence ranks errors.

    ``*_decile_ratio``: the error of the most confident decile over the least confident one
    (:func:`hfcast.calibration.decile_ratio_bound`; below 1 = the confidence ranks errors; exactly
    1 when the confidence is one constant value). Its bootstrap bound over hour clusters is left
    out: one session holds fewer than the 10 hours it needs. For volatility the error is
    ``|rv / rv_hat - 1|``, for the return a missed sign. ``*_conf_levels``: distinct confidence
    values (rounded to 3 decimals), so a reader knows when a confidence is a constant.
    """
    vp, rv = frame["rv_10m_pred"].to_numpy(float), frame["rv_10m"].to_numpy(float)
    rp, y = frame["ret_60m_pred"].to_numpy(float), frame["ret_60m"].to_numpy(float)
    ok = np.isfinite(vp) & np.isfinite(rv) & np.isfinite(rp) & np.isfinite(y)
    n = int(ok.sum())
    # n_eff: non-overlapping 60-minute outcomes, for the standard error of a day's IC
    out = {"vol_qlike": M.qlike(vp**2, rv**2), "ret_ic": M.ic(rp, y), "n_labels": n, "n_eff": n / 60.0}
    for name, target, label in (("ret", "ret_60m", y), ("rv", "rv_10m", rv)):
        if {f"{target}_lo", f"{target}_hi"} <= set(frame.columns):
            out[f"{name}_coverage"] = M.coverage(frame[f"{target}_lo"].to_numpy(float),
                                                 frame[f"{target}_hi"].to_numpy(float), label)
    hours = pd.to_datetime(frame["ts"], utc=True).dt.floor("h").to_numpy() if "ts" in frame else None
    with np.errstate(divide="ignore", invalid="ignore"):
        errors = {"rv": np.abs(rv / np.maximum(vp, 1e-300) - 1.0), "ret": 1.0 - ret_correct(rp, y)}
    for name, col in (("rv", "rv_10m_conf"), ("ret", "ret_60m_conf")):
        err = errors[name]
        if col not in frame or hours is None:
            continue
        conf = frame[col].to_numpy(float)
        out[f"{name}_decile_ratio"] = decile_ratio_bound(conf, err, hours, n_boot=0)[0]
        out[f"{name}_conf_levels"] = float(np.unique(np.round(conf[np.isfinite(conf)], 3)).size)
    return out


def floor_scores(lake: Lake, date: str, frame: pd.DataFrame, fit_days: int = 5) -> dict[str, float]:
    """QLIKE of the floor baseline ``har_tod`` on the rows of ``frame`` (the date's scored rows) and
    the served forecast's QLIKE over it: what "better than the floor" means for one live date.

    ``har_tod`` is fitted on up to ``fit_days`` feature dates BEFORE ``date`` (honest time; none:
    {} and a log line). Returns ``vol_qlike_har_tod`` and ``vol_qlike_ratio_har_tod`` (below 1 =
    the served forecast beat the floor that day), on the rows where both forecasts are finite.
    """
    base, notes = baseline_vols(lake, [date], fit_days=fit_days, names=("har_tod",), require_history=True)
    if base is None:
        log.info("%s: no har_tod floor for the live scores (%s)", date, "; ".join(notes))
        return {}
    rows = frame[["symbol", "ts", "rv_10m_pred", "rv_10m"]].copy()
    rows["symbol"] = rows["symbol"].astype(str)
    rows["ts"] = pd.to_datetime(rows["ts"], utc=True)
    base = base.assign(ts=pd.to_datetime(base["ts"], utc=True))
    j = rows.merge(base[["symbol", "ts", "rv_har_tod"]], on=["symbol", "ts"], how="inner")
    vp, fl, rv = (j[c].to_numpy(float) for c in ("rv_10m_pred", "rv_har_tod", "rv_10m"))
    ok = np.isfinite(vp) & np.isfinite(fl) & np.isfinite(rv) & (vp > 0) & (fl > 0)
    if ok.sum() == 0:
        return {}
    q_floor, q_model = M.qlike(fl[ok] ** 2, rv[ok] ** 2), M.qlike(vp[ok] ** 2, rv[ok] ** 2)
    return {"vol_qlike_har_tod": q_floor, "vol_qlike_ratio_har_tod": q_model / q_floor if q_floor > 0 else float("nan")}


def reference_from_registry(settings: Settings, ref: str, cfg: MonitorConfig | None = None) -> dict[str, Any]:
    """Build a registered version's reference from the registry: its training dates and its logged
    test scores.

    The training dates are the version's lineage tags (``hfcast.train_first`` .. ``hfcast.train_last``,
    the span of the data it was trained on), so the reference is the one built when the version was
    promoted with its training in memory (:func:`hfcast.lifecycle.gate_version`): a retraining
    resumed after a kill, which has only the registry, monitors against the same rows. A version
    without lineage tags falls back to the dates before its last test span, less validation and
    embargo.
    """
    from hfcast.walkforward import WalkForwardConfig

    cfg = cfg or settings.section(MonitorConfig)
    mv = resolve(settings, ref)
    scores = run_scores(settings, mv.run_id)
    dates = Lake.from_settings(settings).dates("features")
    first, last = mv.tags.get("hfcast.train_first"), mv.tags.get("hfcast.train_last")
    if first and last:
        train = [d for d in dates if first <= d <= last]
    else:
        last_start = str(scores["test_spans"][-1][0])
        wf = WalkForwardConfig.from_params(settings.param("walkforward", {}), settings.market)
        before = [d for d in dates if d < last_start]
        train = before[: max(0, len(before) - (2 * wf.embargo_days + wf.val_days))]
    if not train:
        raise ValueError(f"{mv.name} v{mv.version}: no training dates in the lake for its reference")
    fc = load_forecaster(settings, f"{mv.name}/{mv.version}")
    return build_reference(settings, fc, train, n_rows=cfg.reference_sample_rows, seed=cfg.seed,
                           model=(mv.name, str(mv.version)), test_scores=scores.get("model"))
