"""One HTML page a quant reads: live performance, the gate's comparison, the backtest, attributions.

Why its own module: the scores, the registry, the monitor and the backtest each have their own
command, but a reader wants one page that answers "how does the forecaster I get do live, why was
each version promoted or rejected, does it make money after costs and how sure are we, and what
drives it". ``hfcast report --out DIR`` writes it for any lake and registry; the demo writes it
at the end.

Rules of the page: numbers rounded (4 significant digits); every plot a PNG beside ``index.html``
(matplotlib Agg) with its units and one sentence on how to read it; a plain sentence wherever a
confidence carries no information or a figure rests on too few days; opens offline. Evidently's
drift pages (4-8 MB each, each with the same 7 MB of scripts) are linked where they lie in a local
lake, and only the latest date's are copied (with one shared copy of the scripts) from a remote
one, so the folder stays small.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from hfcast import provenance, registry
from hfcast.config import Settings
from hfcast.contracts import COLUMN_UNITS, TARGET_UNITS
from hfcast.evaluate import plot_all
from hfcast.plots import live_frame, plot_live, plot_timeline

log = logging.getLogger(__name__)

#: the columns of the comparison table, with what a reader needs to know about each
COLUMNS = {"vol_qlike": "QLIKE of the rv_10m variance forecast (dimensionless, 0 = perfect, lower is better)",
           "ret_ic": "IC: correlation of ret_60m forecast and outcome (higher is better)",
           "ret_coverage": "share of ret_60m outcomes inside the 80% interval (0.8 = nominal)",
           "rv_coverage": "share of rv_10m outcomes inside the 80% interval (0.8 = nominal)",
           "ret_ece": "expected calibration error of the return confidence (probability, 0 = calibrated)",
           "rv_ece": "expected calibration error of the volatility confidence (probability, 0 = calibrated)",
           "n": "test rows (stock-minutes)"}
TRAIN_FIRST_TAGS = ("hfcast.train_first", "train_first")
TRAIN_LAST_TAGS = ("hfcast.train_last", "train_last")
_RANGE = re.compile(r"(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})")
IMPORTANCE_DATES = 3  # latest monitored dates the attributions are measured on (keeps the report cheap)


@dataclass
class ReportInputs:
    """What the page is made of; each part may be missing (the page says so instead)."""

    aggregate: pd.DataFrame | None = None  # models x scores on the same test spans (hfcast compare)
    predictions: pd.DataFrame | None = None  # test predictions with a ``model`` column
    versions: list[dict[str, Any]] = field(default_factory=list)  # registry rows + train dates
    history: list[dict[str, Any]] = field(default_factory=list)  # monitoring decisions, oldest first
    source: str = ""  # where the comparison came from
    backtest: Any = None  # hfcast.backtest.BacktestResult of the served forecasts
    importance: pd.DataFrame | None = None  # hfcast.explain.permutation_importance of the champion
    meta: dict[str, str] = field(default_factory=dict)  # generated, commit, model, tracking, lake
    missing: dict[str, str] = field(default_factory=dict)  # section -> why it could not be made
    drift_threshold: float | None = None  # monitor.drift_share
    drift_links: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)  # date -> (version, kind -> href)


def fmt(v: Any, digits: int = 4) -> str:
    """A number rounded for reading (4 significant digits), '-' for missing."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return html.escape(str(v)) if v not in (None, "") else "-"
    if not np.isfinite(f):
        return "-"
    if f == int(f) and abs(f) >= 1:
        return f"{int(f):,}"
    return f"{f:.{digits}g}"


# -- gathering ----------------------------------------------------------------------------------

def load_comparison(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``aggregate.csv`` (+ ``predictions.parquet`` when present) written by ``hfcast compare``."""
    folder = Path(folder)
    agg = pd.read_csv(folder / "aggregate.csv", index_col=0)
    pred = folder / "predictions.parquet"
    return agg, (pd.read_parquet(pred) if pred.is_file() else None)


def latest_comparison(home: Path) -> Path | None:
    """The newest folder under ``<home>/reports`` holding a comparison (``aggregate.csv``)."""
    found = sorted((home / "reports").glob("*/aggregate.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def train_dates(version: Mapping[str, Any], run_tags: Mapping[str, str], run_name: str = "") -> tuple[str, str]:
    """The dates a version trained on: hfcast.train_first/last tags, else the run's name range."""
    tags = {**run_tags, **(version.get("tags") or {})}
    first = next((tags[k] for k in TRAIN_FIRST_TAGS if tags.get(k)), "")
    last = next((tags[k] for k in TRAIN_LAST_TAGS if tags.get(k)), "")
    if not (first and last):
        m = _RANGE.search(run_name or "")
        if m:
            first, last = first or m.group(1), last or m.group(2)
    return first or "?", last or "?"


def registry_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every registered version with the dates it trained on (empty when there is no registry)."""
    try:
        rows = registry.list_versions(settings)
    except Exception as exc:  # no registry yet: the page says so
        log.info("report: no registry versions (%s)", exc)
        return []
    with registry.tracking(settings) as t:
        for row in rows:
            try:
                run = t.client.get_run(row["run_id"])
                tags, name = run.data.tags, run.info.run_name or ""
            except Exception:
                tags, name = {}, ""
            row["train_first"], row["train_last"] = train_dates(row, tags, name)
            row["commit"] = tags.get("mlflow.source.git.commit", "")
    return rows


def registry_scores(settings: Settings, versions: Sequence[Mapping[str, Any]]) -> pd.DataFrame | None:
    """Each version's logged test scores, with the champion's baselines scored on ITS test spans.

    The fallback when no ``hfcast compare`` folder exists (the demo, a cluster): the scores the
    gate compared, read back from each run's ``eval/scores.json``.
    """
    champ = next((v for v in versions if "champion" in v.get("aliases", [])), versions[-1] if versions else None)
    docs = {}
    for v in versions:
        try:
            docs[str(v["version"])] = registry.run_scores(settings, v["run_id"])
        except Exception as exc:
            log.info("report: no scores for v%s (%s)", v.get("version"), exc)
    if champ is None or str(champ["version"]) not in docs:
        return None
    sha = docs[str(champ["version"])].get("test_spans_sha")
    rows: dict[str, dict[str, Any]] = {}
    for v in versions:
        doc = docs.get(str(v["version"]))
        if doc is not None:  # a version scored on other spans is labelled so: its numbers are not comparable
            other = "" if doc.get("test_spans_sha") == sha else " (other test spans)"
            rows[f"v{v['version']} {v.get('arch', '')}".strip() + other] = dict(doc.get("model") or {})
    rows.update({str(b): dict(s) for b, s in (docs[str(champ["version"])].get("baselines") or {}).items()})
    return pd.DataFrame(rows).T


def served_versions(history: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``{date: version}``: which version made each monitored date's forecasts (the champion then)."""
    return {str(r["date"]): str(r.get("version")) for r in history if r.get("date")}


def live_predictions(settings: Settings, history: Sequence[Mapping[str, Any]], limit_dates: int = 40) -> pd.DataFrame | None:
    """The served predictions of the monitored dates joined with their realized labels.

    Model = "v<N> live": what the champion of each date actually forecast, against what happened.
    """
    from hfcast import storage
    from hfcast.storage import Lake

    lake = Lake.from_settings(settings)
    parts = []
    for r in list(history)[-limit_dates:]:
        url = lake.predictions(settings.model_name, str(r.get("version")), r["date"])
        if not (storage.exists(url, lake.storage_options) and lake.exists("features", r["date"])):
            continue
        pred = pd.read_csv(io.BytesIO(storage.read_bytes(url, lake.storage_options)))
        lab = lake.read("features", r["date"], ["symbol", "ts", "ret_60m", "rv_10m"])
        pred["ts"] = pd.to_datetime(pred["ts"], utc=True).astype(lab["ts"].dtype)
        pred = pred.drop(columns=[c for c in ("ret_60m", "rv_10m") if c in pred])
        parts.append(pred.merge(lab, on=["symbol", "ts"]).assign(model=f"v{r.get('version')} live"))
    return pd.concat(parts, ignore_index=True) if parts else None


def served_backtest(settings: Settings, history: Sequence[Mapping[str, Any]]) -> Any:
    """The backtest of what was served: each monitored date with the version that predicted it."""
    from hfcast.backtest import BacktestConfig, run_backtest
    from hfcast.storage import Lake

    served = served_versions(history)
    if not served:
        raise ValueError("no monitored dates: nothing was served yet")
    cfg = settings.section(BacktestConfig)
    return run_backtest(Lake.from_settings(settings), settings.model_name, served, None, cfg)


def champion_importance(settings: Settings, history: Sequence[Mapping[str, Any]], max_windows: int = 1500,
                        n_repeats: int = 2) -> pd.DataFrame:
    """Permutation importance by feature group of the champion on the latest dates it served
    (dates after its training: what it was not fitted on), kept cheap: a seeded sample of windows."""
    from hfcast import explain, registry
    from hfcast.storage import Lake

    fc = registry.load_forecaster(settings)
    version = str(fc.meta.get("model_version"))
    dates = [d for d, v in served_versions(history).items() if v == version][-IMPORTANCE_DATES:]
    if not dates:
        raise ValueError(f"the champion v{version} has not served a monitored date yet")
    wa = explain.labelled_windows(Lake.from_settings(settings), fc, dates)
    imp = explain.permutation_importance(fc, wa, n_repeats=n_repeats, max_windows=max_windows)
    imp.attrs.update(dates=dates, version=version)
    return imp


def _meta(settings: Settings, versions: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    from hfcast.storage import redact

    champ = next((v for v in versions if "champion" in v.get("aliases", [])), None)
    return {"generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "code": f"hfcast {provenance.package_version()}, commit {provenance.describe()}",
            "model": f"{settings.model_name}: champion " + (f"v{champ['version']} ({champ.get('arch', '')})" if champ
                                                            else "none yet"),
            "versions": "; ".join(f"v{v['version']} {v.get('status', '')}".strip() for v in versions) or "none",
            "tracking": redact(re.sub(r"//[^/@]+@", "//***@", str(settings.mlflow_uri)), settings),
            "lake": redact(str(settings.lake_url), settings)}


def gather(settings: Settings, comparison: str | Path | None = None, backtest: bool = True,
           attributions: bool = True) -> ReportInputs:
    """Collect the report's inputs from the settings' registry, lake and reports folder.

    Args:
        comparison: a ``hfcast compare`` folder (default: the newest under ``<home>/reports``,
            else the registry's logged scores).
        backtest: backtest the served forecasts (seconds for a few symbols and weeks).
        attributions: permutation importance of the champion on its latest served dates.
    """
    from hfcast.monitoring.decision import MonitorConfig, load_history
    from hfcast.storage import Lake

    inputs = ReportInputs()
    folder = Path(comparison) if comparison else latest_comparison(Path(settings.home))
    if folder is not None and (folder / "aggregate.csv").is_file():
        inputs.aggregate, inputs.predictions = load_comparison(folder)
        inputs.source = str(folder)
    inputs.versions = registry_versions(settings)
    inputs.meta = _meta(settings, inputs.versions)
    try:
        inputs.history = load_history(Lake.from_settings(settings), settings.model_name)
        inputs.drift_threshold = settings.section(MonitorConfig).rule("drift").drift_share
    except Exception as exc:
        log.info("report: no monitoring history (%s)", exc)
    if inputs.aggregate is None and inputs.versions:
        inputs.aggregate, inputs.source = registry_scores(settings, inputs.versions), "registry scores"
    steps = [("predictions", lambda: live_predictions(settings, inputs.history))]
    steps += [("backtest", lambda: served_backtest(settings, inputs.history))] if backtest else []
    steps += [("importance", lambda: champion_importance(settings, inputs.history))] if attributions else []
    for name, make in steps:
        if name == "predictions" and inputs.predictions is not None:
            continue
        try:
            setattr(inputs, name, make())
        except Exception as exc:  # the rest of the page is still worth having; it says what is missing
            log.warning("report: no %s section (%s: %s)", name, type(exc).__name__, exc)
            inputs.missing[name] = f"{type(exc).__name__}: {exc}"
    return inputs


# -- what the confidences say -------------------------------------------------------------------

def confidence_notes(predictions: pd.DataFrame | None, baselines: Sequence[str] = ()) -> list[str]:
    """Plain sentences for confidences that carry no (or almost no) information, per model."""
    if predictions is None or "model" not in predictions:
        return []
    notes = []
    for model, g in predictions.groupby("model", sort=False):
        if str(model) in baselines:
            continue
        # a constant return confidence: the zero forecast (no validated return skill); a constant
        # volatility confidence: the forecast may well have skill, its confidence ranked no errors
        for col, what, why in (("ret_60m_conf", "return", "the model showed no validated return skill"),
                               ("rv_10m_conf", "volatility", "on validation it did not tell the larger "
                                                             "volatility errors from the smaller")):
            if col not in g:
                continue
            v = g[col].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            if v.size == 0:
                continue
            distinct = np.unique(np.round(v, 3))
            if v.max() - v.min() < 1e-6:
                notes.append(f"{model}: {what} confidence is {v[0]:.2f} everywhere: {why}, so it claims none.")
            elif distinct.size <= 3:
                notes.append(f"{model}: {what} confidence takes only {distinct.size} values "
                             f"({distinct.min():.3f} to {distinct.max():.3f}): it barely tells a good forecast from a "
                             f"bad one, so read it as a constant.")
    return notes


# -- HTML pieces --------------------------------------------------------------------------------

def table_html(df: pd.DataFrame, columns: Mapping[str, str] | None = None, left: Sequence[str] = ()) -> str:
    """A plain HTML table with rounded numbers (header titles explain the columns); ``left``:
    text columns, left-aligned and wrapped (never cut)."""
    cols = [c for c in (columns or {c: c for c in df.columns}) if c in df.columns]
    head = "".join(f"<th title='{html.escape((columns or {}).get(c, c))}'{' class=text' if c in left else ''}>"
                   f"{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr><th>" + html.escape(str(i)) + "</th>" + "".join(
        f"<td class='text'>{html.escape(str(r[c]))}</td>" if c in left else f"<td>{fmt(r[c])}</td>" for c in cols)
        + "</tr>" for i, r in df.iterrows())
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _figure(name: str, read: str, units: str, alt: str) -> str:
    """An image with its units and a sentence on how to read it."""
    return (f"<figure><img src='{html.escape(name)}' alt='{html.escape(alt)}'><figcaption><b>How to read it:</b> "
            f"{html.escape(read)}<br><b>Units:</b> {html.escape(units)}</figcaption></figure>")


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def _missing(inputs: ReportInputs, key: str, fallback: str) -> str:
    why = inputs.missing.get(key)
    return _note(f"{fallback}{f' ({why})' if why else ''}.")


def _live_html(inputs: ReportInputs, out: Path) -> str:
    df = live_frame(inputs.history)
    if df.empty:
        return "<p>The monitor has not run.</p>"
    parts = [_figure(plot_live(inputs.history, out / "live_performance.png", inputs.drift_threshold).name,
                     "each column is one trading day, scored once its labels matured, for the version that served it "
                     "(green line: a new version serves; red dashes: the monitor decided to retrain). The served "
                     "forecast should sit below the grey floor (har_tod) in QLIKE, above the grey noise band in IC, "
                     "near the dashed 80% line in coverage, and below 1 in the decile ratio; a hollow marker is a day "
                     "whose confidence was one constant value, where the ratio is 1 by construction.",
                     "QLIKE of the 10-minute variance forecast, dimensionless (0 = perfect); IC is a correlation "
                     "(-1..1); coverage a share (0..1); the decile ratio a ratio of mean errors (relative error "
                     "|rv/rv_hat - 1| for volatility, share of missed signs for the return); drift share a share of "
                     f"features. Targets: rv_10m = {TARGET_UNITS['rv_10m']}; ret_60m = {TARGET_UNITS['ret_60m']}.",
                     "live performance")]
    const = df[(df["rv_conf_levels"] <= 1) | (df["ret_conf_levels"] <= 1)]
    if len(const):
        parts.append(_note(f"On {len(const)} of {len(df)} dates a confidence was one constant value (the served "
                           "version's confidence showed no validated skill, so it claims none): its decile ratio is 1 "
                           "by construction, not a measurement."))
    why = {str(r["date"]): _why(r) for r in inputs.history if r.get("date")}
    rows = pd.DataFrame({"served by": "v" + df["version"], "QLIKE": df["vol_qlike"],
                         "QLIKE / har_tod": df["vol_qlike_ratio_har_tod"], "IC": df["ret_ic"],
                         "ret cov.": df["ret_coverage"], "rv cov.": df["rv_coverage"],
                         "rv decile ratio": df["rv_decile_ratio"], "drift share": df["drift_share"],
                         "decision": df["action"], "why": df["date"].map(why)}).set_index(df["date"].rename(None))
    parts.append(table_html(rows, {c: c for c in rows.columns}, left=("served by", "decision", "why")))
    return "".join(parts)


def _why(record: Mapping[str, Any]) -> str:
    from hfcast.monitoring.decision import trigger_outcome

    text = "; ".join(record.get("reasons") or []) or "within limits"
    outcome = trigger_outcome(record.get("trigger"))
    return f"{text} -> {outcome}" if outcome else text


def _gate_html(versions: Sequence[Mapping[str, Any]]) -> str:
    """Per gated version: the decision, the reasons and the numbers it compared (gate.comparisons)."""
    parts = []
    for v in versions:
        tags = v.get("tags") or {}
        if not tags.get("gate.decision"):
            continue
        spans = f"{tags.get('hfcast.test_first', '?')}..{tags.get('hfcast.test_last', '?')}"
        parts.append(f"<h3>v{v['version']} {html.escape(str(v.get('arch', '')))}: {html.escape(v.get('status', ''))}"
                     f" (gate {html.escape(tags['gate.decision'])}, {html.escape(tags.get('gate.at', '?'))})</h3>"
                     f"<p>Compared on v{v['version']}'s test span {html.escape(spans)}.</p>")
        try:
            comp = [c for c in json.loads(tags.get("gate.comparisons", "[]")) if "metric" in c]
        except ValueError:
            comp = []
        if comp:
            df = pd.DataFrame(comp).rename(columns={"reference": "against", "reference_value": "their score",
                                                    "challenger": f"v{v['version']} score"})
            df["passed"] = df["passed"].map({True: "yes", False: "NO"})
            parts.append(table_html(df.set_index("metric"), left=("against", "passed")))
        try:
            reasons = json.loads(tags.get("gate.reasons", "[]"))
        except ValueError:
            reasons = [tags.get("gate.reasons", "")]
        parts.append("<ul>" + "".join(f"<li>{html.escape(str(r))}</li>" for r in reasons) + "</ul>")
    if not parts:
        return "<p>No version has been through the gate.</p>"
    return ("<p>The gate promotes a challenger only when it beats the champion and every baseline on every primary "
            "metric, scored on the challenger's own test span (QLIKE: lower is better; IC: higher is better; "
            "improvement must exceed the margin).</p>" + "".join(parts))


def _backtest_html(inputs: ReportInputs, out: Path) -> str:
    from hfcast.backtest import terminal_tables, write_outputs

    res = inputs.backtest
    if res is None:
        return _missing(inputs, "backtest", "No backtest of the served forecasts")
    paths = write_outputs(res, out / "backtest")
    parts = [_note(n) for n in res.notes]
    for title, header, rows in terminal_tables(res):
        df = pd.DataFrame(rows, columns=header).set_index(header[0])
        parts.append(f"<h3>{html.escape(title)}</h3>" + table_html(df, left=("yardstick", "figure")))
    parts.append("<p>Sharpe ratios are annualised (252 sessions x the holding periods found per session); annual "
                 "returns compound (CAGR) and are fractions of the gross notional (long + short legs = 1); costs are "
                 "half the quoted spread plus the fee, in basis points of the gross notional per day; intervals are "
                 "95% bootstrap intervals over whole days (BCa). Files: <a href='backtest/backtest.json'>"
                 "backtest.json</a>, <a href='backtest/table.csv'>table.csv</a>.</p>")
    parts.append(_figure(f"backtest/{paths['equity'].name}",
                         "the solid lines are what each long-short book earned after costs, the dotted ones before; "
                         "a model line that stays inside the grey band is indistinguishable from a book with no edge "
                         "and the same day-to-day risk.",
                         "cumulative sum of period returns, % of the gross notional; x: session dates, nights left out.",
                         "equity"))
    parts.append(_figure(f"backtest/{paths['tracking'].name}",
                         "positions sized by each volatility forecast should realize exactly the target (ratio 1); "
                         "the closer the median and 90% quantile stay to 1 across the day, the better the forecast "
                         "sizes risk.", "realized over target volatility, a ratio; x: minutes after the session's "
                         "first minute.", "volatility targeting"))
    return "".join(parts)


def _importance_html(inputs: ReportInputs, out: Path) -> str:
    from hfcast.explain import plot_importance

    imp = inputs.importance
    if imp is None:
        return _missing(inputs, "importance", "No attributions")
    path = plot_importance(imp, out / "importance.png")
    dates = imp.attrs.get("dates", [])
    return (f"<p>Champion v{imp.attrs.get('version', '?')} on its latest served dates "
            f"{html.escape(', '.join(dates))} ({imp.attrs.get('windows', '?')} windows).</p>" +
            _figure(Path(path).name, "each bar is how much worse a forecast gets when one feature group is shuffled "
                    "across windows (its 30 minutes kept together): long bars are what the model relies on; a bar "
                    "near 0 (or below) is a group it ignores.",
                    "relative increase of the loss (return: MSE of ret_60m in squared log return; volatility: QLIKE "
                    "of the rv_10m variance), as a fraction of the unshuffled loss; error bars: one standard deviation "
                    "over the shuffles.", "attributions"))


def _scores_html(inputs: ReportInputs, out: Path) -> str:
    from hfcast.models.baselines import BASELINES

    parts = []
    if inputs.aggregate is not None:
        src = Path(inputs.source).name if "/" in inputs.source else inputs.source
        parts.append(f"<p>Source: {html.escape(src)}. Hover a column title for its unit.</p>"
                     + table_html(inputs.aggregate, COLUMNS))
        parts.append("<p>" + "; ".join(f"<b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in COLUMNS.items())
                     + ".</p>")
    else:
        parts.append("<p>No comparison found: run <code>hfcast compare</code> first.</p>")
    notes = confidence_notes(inputs.predictions, BASELINES)
    if inputs.predictions is not None and "model" in inputs.predictions:
        frames = {str(m): g for m, g in inputs.predictions.groupby("model", sort=False) if m != "oracle"}
        read = {"forecast_vs_realized": ("points on the dotted diagonal mean forecasts are right on average in each "
                                         "of 20 forecast bins.", f"rv_10m: {COLUMN_UNITS['rv_10m_pred']} (log "
                                         f"scale); ret_60m: {COLUMN_UNITS['ret_60m_pred']}."),
                "calibration": ("a calibrated confidence lies on the diagonal: of the forecasts stated at 0.6, 60% "
                                "come true. A confidence that is one value everywhere is one dot (see the notes "
                                "below): it claims no skill, which is honest when there is none.",
                                f"confidence: {COLUMN_UNITS['ret_60m_conf']}; {COLUMN_UNITS['rv_10m_conf']}. "
                                "Observed frequency: a share (0..1)."),
                "error_by_decile": ("a useful confidence makes the error fall from decile 0 (least confident) to 9; "
                                    "a flat line means the confidence ranks nothing. With a constant confidence "
                                    "the deciles are random groups of rows: the line is noise around a flat one.",
                                    "return: mean |ret_60m_pred - ret_60m|, log return over 60 minutes; volatility: "
                                    "mean |rv/rv_hat - 1|, a relative error.")}
        for p in plot_all(frames, out):
            r, u = read.get(p.stem, ("", ""))
            parts.append(f"<h3>{html.escape(p.stem.replace('_', ' '))}</h3>" + _figure(p.name, r, u, p.stem))
            if p.stem == "calibration":
                parts += [_note(n) for n in notes]
    else:
        parts += [_note(n) for n in notes]
    return "".join(parts)


def _served(history: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    out: dict[str, list[str]] = {}
    for d, v in served_versions(history).items():
        out.setdefault(v, []).append(d)
    return {v: (min(d), max(d)) for v, d in out.items()}


def _versions_html(versions: Sequence[Mapping[str, Any]], history: Sequence[Mapping[str, Any]]) -> str:
    served = _served(history)
    rows = []
    for v in versions:
        s = served.get(str(v["version"]))
        rows.append({"version": f"v{v['version']}", "arch": v.get("arch", ""), "status": v.get("status") or "-",
                     "aliases": ", ".join(v.get("aliases", [])) or "-",
                     "trained on": f"{v.get('train_first', '?')} .. {v.get('train_last', '?')}",
                     "served": f"{s[0]} .. {s[1]}" if s else "-", "commit": (v.get("commit") or "-")[:10],
                     **{k: v.get("metrics", {}).get(k) for k in ("vol_qlike", "ret_ic")}})
    if not rows:
        return "<p>No registered versions.</p>"
    return table_html(pd.DataFrame(rows).set_index("version"),
                      left=("arch", "status", "aliases", "trained on", "served", "commit"))


def _files_html(links: Mapping[str, str], inputs: ReportInputs) -> str:
    """Other files as a list; Evidently's drift pages (``drift_links``) as one row per date."""
    def a(href: str, text: str) -> str:
        return f"<a href='{html.escape(href)}'>{html.escape(text)}</a>"

    other = dict(links)
    if inputs.backtest is not None:
        other.update({"backtest of the served forecasts (JSON)": "backtest/backtest.json",
                      "backtest table (CSV)": "backtest/table.csv"})
    parts = ["<ul>" + "".join(f"<li>{a(h, t)}</li>" for t, h in other.items()) + "</ul>" if other else ""]
    drift = inputs.drift_links
    if drift:
        rows = "".join(f"<tr><th>{html.escape(d)}</th><td class='text'>v{html.escape(str(v))}</td>"
                       + "".join(f"<td class='text'>{a(k[kind], kind + ' drift') if kind in k else '-'}</td>"
                                 for kind in ("features", "predictions")) + "</tr>"
                       for d, (v, k) in sorted(drift.items()))
        parts.append("<p>Evidently's drift report of each monitored date, against the serving version's "
                     "training reference (opens offline).</p><table><tr><th>date</th><th class=text>version</th>"
                     f"<th class=text>features</th><th class=text>predictions</th></tr>{rows}</table>")
    elif inputs.history:
        parts.append("<p>No Evidently drift pages found in the lake.</p>")
    return "".join(parts) or "<p>None.</p>"


CSS = ("body{font-family:sans-serif;max-width:1100px;margin:20px auto;color:#222;line-height:1.35}"
       "table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 7px;"
       "text-align:right;vertical-align:top}th{background:#f3f3f3}td.text{text-align:left;white-space:normal;"
       "max-width:560px;overflow-wrap:break-word}th.text{text-align:left}tr>th:first-child{white-space:nowrap}img{max-width:100%;border:1px solid #eee}"
       "figure{margin:10px 0}figcaption{font-size:13px;color:#444;margin-top:4px}"
       ".note{background:#fff6d6;padding:6px 10px;border-left:4px solid #e0b000;margin:6px 0}"
       ".meta{font-size:13px;color:#444}nav a{margin-right:12px}")

SECTIONS = (("live", "Live performance of the served forecaster"), ("gate", "What the gate compared"),
            ("backtest", "Backtest of the served forecasts, with confidence intervals"),
            ("attributions", "What drives the forecasts"), ("scores", "Models against baselines (same test spans)"),
            ("timeline", "Which data each version saw, and when it served"), ("files", "Files and drift reports"))


def render(inputs: ReportInputs, out_dir: str | Path, title: str = "hfcast report",
           links: Mapping[str, str] | None = None) -> Path:
    """Write ``index.html`` and its PNGs into ``out_dir``; ``links`` = extra files (relative paths)."""
    from hfcast.models.baselines import BASELINES

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = inputs.meta or {"generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    parts = [f"<h1>{html.escape(title)}</h1><p class='meta'>"
             + "<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(str(v))}" for k, v in meta.items()) + "</p>",
             "<nav>" + "".join(f"<a href='#{k}'>{html.escape(t.split(',')[0])}</a>" for k, t in SECTIONS) + "</nav>"]
    for key, heading in SECTIONS:
        parts.append(f"<h2 id='{key}'>{html.escape(heading)}</h2>")
        if key == "live":
            parts.append(_live_html(inputs, out))
        elif key == "gate":
            parts.append(_gate_html(inputs.versions))
        elif key == "backtest":
            parts.append(_backtest_html(inputs, out))
        elif key == "attributions":
            parts.append(_importance_html(inputs, out))
        elif key == "scores":
            parts.append(_scores_html(inputs, out))
        elif key == "timeline":
            tl = plot_timeline(inputs.versions, _served(inputs.history), out / "champion_timeline.png")
            if tl:
                parts.append(_figure(tl.name, "thin bars: the dates a version trained, validated and was tested on "
                                     "(its lineage tags); thick bar: the dates it served. A version never trains on "
                                     "a date it serves.", "calendar dates.", "timeline"))
            parts.append(_versions_html(inputs.versions, inputs.history))
        elif key == "files":
            parts.append(_files_html(links or {}, inputs))
    notes = confidence_notes(inputs.predictions, BASELINES)
    (out / "report.json").write_text(json.dumps({
        "notes": notes, "source": inputs.source, "meta": meta, "missing": inputs.missing,
        "aggregate": None if inputs.aggregate is None else inputs.aggregate.to_dict(orient="index"),
        "backtest": None if inputs.backtest is None else inputs.backtest.to_dict()}, indent=1, default=str))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    index = out / "index.html"
    index.write_text(page)
    return index


# -- Evidently's drift pages ----------------------------------------------------------------------

SHARED_MIN_BYTES = 64 * 1024  # inline scripts/styles at least this large are Evidently's library
_OPEN = re.compile(r"<(script|style)(\s[^>]*)?>", re.I)


def share_assets(page: str, folder: Path) -> str:
    """Move an Evidently page's large inline scripts and styles into shared files in ``folder``.

    Every Evidently 0.7 page inlines the same ~7 MB of JavaScript and fonts; the per-page data is
    a separate, smaller script (``var metric_... = {...}``) and stays. Each large block is written
    once as ``evidently-<sha>.js|css`` and referenced (classic scripts load from file:// pages),
    so N pages cost the library once. A script's content ends at the first ``</script`` (HTML's
    rule), so the scan never mistakes a ``<script>`` inside JavaScript for a tag.
    """
    out, pos = [], 0
    while (m := _OPEN.search(page, pos)) is not None:
        tag = m.group(1).lower()
        end = page.lower().find(f"</{tag}", m.end())
        if end < 0:
            break
        body = page[m.end():end]
        close = page.index(">", end) + 1
        out.append(page[pos:m.start()])
        if len(body) >= SHARED_MIN_BYTES and not re.match(r"\s*var metric_", body) and not (m.group(2) or "").strip():
            ext = "js" if tag == "script" else "css"
            name = f"evidently-{hashlib.sha256(body.encode()).hexdigest()[:16]}.{ext}"
            if not (folder / name).is_file():
                (folder / name).write_text(body, encoding="utf-8")
            out.append(f"<script src='{name}'></script>" if tag == "script" else f"<link rel='stylesheet' href='{name}'>")
        else:
            out.append(page[m.start():close])
        pos = close
    out.append(page[pos:])
    return "".join(out)


def evidently_links(settings: Settings, history: Sequence[Mapping[str, Any]], out_dir: Path,
                    copy_latest: int = 1) -> dict[str, tuple[str, dict[str, str]]]:
    """``{date: (version, {kind: href})}`` for each monitored date's Evidently pages.

    A local lake is linked where it lies (relative links, nothing copied: the pages are 4-8 MB
    each). From a remote lake, which a browser cannot open, the latest ``copy_latest`` dates'
    pages are copied into ``<out>/drift/`` with their scripts shared (:func:`share_assets`); the
    other dates stay in the lake and in their monitoring runs' ``evidently/`` artifacts.
    """
    from hfcast import storage
    from hfcast.storage import Lake

    lake = Lake.from_settings(settings)
    links: dict[str, tuple[str, dict[str, str]]] = {}
    dated = [r for r in history if r.get("date")]
    for i, r in enumerate(dated):
        folder = lake.monitoring(settings.model_name, str(r.get("version")), r["date"])
        kinds: dict[str, str] = {}
        for kind in ("features", "predictions"):
            url = storage.join(folder, f"{kind}_drift.html")
            if not storage.exists(url, lake.storage_options):
                continue
            if not storage.is_remote(url):
                kinds[kind] = os.path.relpath(storage.local_path(url), out_dir.resolve())
            elif i >= len(dated) - copy_latest:
                (out_dir / "drift").mkdir(parents=True, exist_ok=True)
                page = storage.read_bytes(url, lake.storage_options).decode("utf-8")
                kinds[kind] = f"drift/{r['date']}-{kind}.html"
                (out_dir / kinds[kind]).write_text(share_assets(page, out_dir / "drift"), encoding="utf-8")
        if kinds:
            links[str(r["date"])] = (str(r.get("version")), kinds)
    return links


def write(settings: Settings, out_dir: str | Path, comparison: str | Path | None = None,
          title: str = "hfcast report", links: Mapping[str, str] | None = None, backtest: bool = True,
          attributions: bool = True) -> Path:
    """Gather everything from the settings' lake and registry and render the report (see :func:`gather`)."""
    inputs = gather(settings, comparison, backtest=backtest, attributions=attributions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        inputs.drift_links = evidently_links(settings, inputs.history, out)
    except Exception as exc:  # the page is still worth having without the Evidently pages
        log.warning("report: could not link the drift reports (%s)", exc)
    return render(inputs, out, title, links)
