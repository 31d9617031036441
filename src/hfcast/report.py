"""One HTML report a quant can read: models against baselines, calibration, drift, champions.

Why its own module: the scores, the registry and the monitor's decisions each have their own
command, but a reader wants one page that answers "is the model any good, can I trust its
confidences, and what happened to it over time". ``hfcast report --out DIR`` writes it for any
lake and registry; the demo writes it at the end.

Rules of the page: numbers rounded (4 significant digits), links relative (the folder can be
zipped and opened elsewhere), every plot a PNG beside ``index.html`` (matplotlib Agg), and a plain
sentence wherever a confidence carries no information, instead of leaving the reader to find a
spike in a histogram.
"""

from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: the columns of the comparison table, with what a reader needs to know about each
COLUMNS = {"vol_qlike": "QLIKE (vol, lower is better)", "ret_ic": "IC (return, higher is better)",
           "ret_coverage": "80% interval coverage, return", "rv_coverage": "80% interval coverage, vol",
           "ret_ece": "ECE return confidence", "rv_ece": "ECE vol confidence", "n": "test rows"}
TRAIN_FIRST_TAGS = ("hfcast.train_first", "train_first")
TRAIN_LAST_TAGS = ("hfcast.train_last", "train_last")
_RANGE = re.compile(r"(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})")


@dataclass
class ReportInputs:
    """What the page is made of; each part may be missing (the page says so instead)."""

    aggregate: pd.DataFrame | None = None  # models x scores on the same test spans (hfcast compare)
    predictions: pd.DataFrame | None = None  # test predictions with a ``model`` column
    versions: list[dict[str, Any]] = field(default_factory=list)  # registry rows + train dates
    history: list[dict[str, Any]] = field(default_factory=list)  # monitoring decisions, oldest first
    source: str = ""  # where the comparison came from


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


def registry_versions(settings: Any) -> list[dict[str, Any]]:
    """Every registered version with the dates it trained on (empty when there is no registry)."""
    from hfcast import registry

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
    return rows


def registry_scores(settings: Any, versions: Sequence[Mapping[str, Any]]) -> pd.DataFrame | None:
    """Each version's logged test scores, with the champion's baselines scored on ITS test spans.

    The fallback when no ``hfcast compare`` folder exists (the demo, a cluster): the scores the
    gate compared, read back from each run's ``eval/scores.json``.
    """
    from hfcast import registry

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


def live_predictions(settings: Any, history: Sequence[Mapping[str, Any]], limit_dates: int = 40) -> pd.DataFrame | None:
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
        import io

        pred = pd.read_csv(io.BytesIO(storage.read_bytes(url, lake.storage_options)))
        lab = lake.read("features", r["date"], ["symbol", "ts", "ret_60m", "rv_10m"])
        pred["ts"] = pd.to_datetime(pred["ts"], utc=True).astype(lab["ts"].dtype)
        pred = pred.drop(columns=[c for c in ("ret_60m", "rv_10m") if c in pred])
        parts.append(pred.merge(lab, on=["symbol", "ts"]).assign(model=f"v{r.get('version')} live"))
    return pd.concat(parts, ignore_index=True) if parts else None


def gather(settings: Any, comparison: str | Path | None = None) -> ReportInputs:
    """Collect the report's inputs from the settings' registry, lake and reports folder."""
    from hfcast.monitoring.decision import load_history
    from hfcast.storage import Lake

    inputs = ReportInputs()
    folder = Path(comparison) if comparison else latest_comparison(Path(settings.home))
    if folder is not None and (folder / "aggregate.csv").is_file():
        inputs.aggregate, inputs.predictions = load_comparison(folder)
        inputs.source = str(folder)
    inputs.versions = registry_versions(settings)
    try:
        inputs.history = load_history(Lake.from_settings(settings), settings.model_name)
    except Exception as exc:
        log.info("report: no monitoring history (%s)", exc)
    if inputs.aggregate is None and inputs.versions:
        inputs.aggregate, inputs.source = registry_scores(settings, inputs.versions), "registry scores"
    if inputs.predictions is None and inputs.history:
        try:
            inputs.predictions = live_predictions(settings, inputs.history)
        except Exception as exc:
            log.info("report: no live predictions (%s)", exc)
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
        for col, what, skill in (("ret_60m_conf", "return", "return"), ("rv_10m_conf", "volatility", "volatility")):
            if col not in g:
                continue
            v = g[col].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            if v.size == 0:
                continue
            distinct = np.unique(np.round(v, 3))
            if v.max() - v.min() < 1e-6:
                notes.append(f"{model}: {what} confidence is {v[0]:.2f} everywhere: the model showed no validated "
                             f"{skill} skill, so it claims none.")
            elif distinct.size <= 3:
                notes.append(f"{model}: {what} confidence takes only {distinct.size} values "
                             f"({distinct.min():.3f} to {distinct.max():.3f}): it barely tells a good forecast from a "
                             f"bad one, so read it as a constant.")
    return notes


# -- plots --------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_drift(history: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Drift share per monitored date; retraining decisions and champion changes marked."""
    rows = [(r["date"], (r.get("checks") or {}).get("drift_share"), r.get("action"), str(r.get("version")))
            for r in history if r.get("date")]
    if not rows:
        return None
    plt = _plt()
    df = pd.DataFrame(rows, columns=["date", "share", "action", "version"]).sort_values("date")
    x = pd.to_datetime(df["date"])
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.plot(x, df["share"].astype(float), "o-", ms=3, label="feature drift share")
    for xi in x[df["action"] == "retrain"]:
        ax.axvline(xi, color="tab:red", ls="--", lw=1)
    changed = df["version"].ne(df["version"].shift()) & df["version"].shift().notna()
    for xi, v in zip(x[changed], df["version"][changed]):
        ax.axvline(xi, color="tab:green", lw=2)
        ax.annotate(f"v{v} champion", (xi, 1.0), fontsize=7, color="tab:green", rotation=90, va="top")
    ax.plot([], [], color="tab:red", ls="--", label="retraining decided")
    ax.plot([], [], color="tab:green", label="new champion monitored")
    ax.set(ylim=(0, 1.05), ylabel="share of drifted features", title="feature drift over time")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def plot_timeline(versions: Sequence[Mapping[str, Any]], history: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Per version: the dates it trained on (thin bar) and the dates it was monitored as champion."""
    served = _served(history)
    rows = [v for v in versions if v.get("train_first", "?") != "?" or str(v["version"]) in served]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.5))
    for i, v in enumerate(rows):
        if v.get("train_first", "?") != "?" and v.get("train_last", "?") != "?":
            a, b = pd.Timestamp(v["train_first"]), pd.Timestamp(v["train_last"])
            ax.barh(i, (b - a).days + 1, left=a, height=0.25, color="tab:gray")
        if str(v["version"]) in served:
            a, b = (pd.Timestamp(d) for d in served[str(v["version"])])
            ax.barh(i, (b - a).days + 1, left=a, height=0.6, color="tab:blue", alpha=0.8)
    ax.set_yticks(range(len(rows)), [f"v{v['version']} {v.get('arch', '')}" for v in rows])
    ax.barh([], [], color="tab:gray", label="data seen (train..test)")
    ax.barh([], [], color="tab:blue", label="champion (monitored)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set(title="champion timeline")
    fig.autofmt_xdate()
    return _save(fig, path)


def _served(history: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    out: dict[str, list[str]] = {}
    for r in history:
        if r.get("date"):
            out.setdefault(str(r.get("version")), []).append(r["date"])
    return {v: (min(d), max(d)) for v, d in out.items()}


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
    return path


# -- HTML ---------------------------------------------------------------------------------------

def table_html(df: pd.DataFrame, columns: Mapping[str, str] | None = None) -> str:
    """A plain HTML table with rounded numbers (header titles explain the columns)."""
    cols = [c for c in (columns or {c: c for c in df.columns}) if c in df.columns]
    head = "".join(f"<th title='{html.escape((columns or {}).get(c, c))}'>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr><th>" + html.escape(str(i)) + "</th>" + "".join(f"<td>{fmt(r[c])}</td>" for c in cols)
                   + "</tr>" for i, r in df.iterrows())
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _versions_html(versions: Sequence[Mapping[str, Any]], history: Sequence[Mapping[str, Any]]) -> str:
    served = _served(history)
    rows = []
    for v in versions:
        s = served.get(str(v["version"]))
        rows.append({"version": f"v{v['version']}", "arch": v.get("arch", ""),
                     "aliases": ", ".join(v.get("aliases", [])) or "-",
                     "data seen": f"{v.get('train_first', '?')} .. {v.get('train_last', '?')}",
                     "champion on": f"{s[0]} .. {s[1]}" if s else "-", "gate": v.get("gate") or "-",
                     **{k: v.get("metrics", {}).get(k) for k in ("vol_qlike", "ret_ic")}})
    if not rows:
        return "<p>No registered versions.</p>"
    return table_html(pd.DataFrame(rows).set_index("version"))


def _drift_html(history: Sequence[Mapping[str, Any]]) -> str:
    rows = [{"date": r["date"], "version": f"v{r.get('version')}",
             "drift share": (r.get("checks") or {}).get("drift_share"), "decision": r.get("action"),
             "why": "; ".join(r.get("reasons") or [])[:160] or "within limits"} for r in history if r.get("date")]
    return table_html(pd.DataFrame(rows).set_index("date")) if rows else "<p>The monitor has not run.</p>"


CSS = ("body{font-family:sans-serif;max-width:1100px;margin:20px auto;color:#222}"
       "table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 7px;"
       "text-align:right}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}"
       ".note{background:#fff6d6;padding:6px 10px;border-left:4px solid #e0b000;margin:6px 0}")


def render(inputs: ReportInputs, out_dir: str | Path, title: str = "hfcast report",
           links: Mapping[str, str] | None = None) -> Path:
    """Write ``index.html`` and its PNGs into ``out_dir``; ``links`` = extra files (relative paths)."""
    from hfcast.evaluate import plot_all
    from hfcast.models.baselines import BASELINES

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    notes = confidence_notes(inputs.predictions, BASELINES)
    parts.append("<h2>Models against baselines (same test spans)</h2>")
    if inputs.aggregate is not None:
        parts.append(f"<p>Source: {html.escape(Path(inputs.source).name if '/' in inputs.source else inputs.source)}"
                     "</p>" + table_html(inputs.aggregate, COLUMNS))
        parts.append("<p>QLIKE: loss of the volatility forecast; IC: correlation of the return forecast with the "
                     "realized return; coverage: share of outcomes inside the 80% interval; ECE: gap between "
                     "stated confidence and observed frequency.</p>")
    else:
        parts.append("<p>No comparison found: run <code>hfcast compare</code> first.</p>")
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    if inputs.predictions is not None and "model" in inputs.predictions:
        frames = {str(m): g for m, g in inputs.predictions.groupby("model", sort=False) if m != "oracle"}
        for p in plot_all(frames, out):
            parts.append(f"<h3>{html.escape(p.stem.replace('_', ' '))}</h3><img src='{p.name}' alt='{p.stem}'>")
    parts.append("<h2>Drift over time</h2>")
    drift = plot_drift(inputs.history, out / "drift.png")
    parts += [f"<img src='{drift.name}' alt='drift'>"] if drift else []
    parts.append(_drift_html(inputs.history))
    parts.append("<h2>Champion timeline</h2>")
    tl = plot_timeline(inputs.versions, inputs.history, out / "champion_timeline.png")
    parts += [f"<img src='{tl.name}' alt='timeline'>"] if tl else []
    parts.append(_versions_html(inputs.versions, inputs.history))
    if links:
        parts.append("<h2>Files</h2><ul>" + "".join(f"<li><a href='{html.escape(h)}'>{html.escape(t)}</a></li>"
                                                    for t, h in links.items()) + "</ul>")
    (out / "report.json").write_text(json.dumps({"notes": notes, "source": inputs.source,
                                                 "aggregate": None if inputs.aggregate is None else
                                                 inputs.aggregate.to_dict(orient="index")}, indent=1, default=str))
    page = f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head>" \
           f"<body>{''.join(parts)}</body></html>"
    index = out / "index.html"
    index.write_text(page)
    return index


def copy_drift_reports(settings: Any, history: Sequence[Mapping[str, Any]], out_dir: Path) -> dict[str, str]:
    """Copy each monitored date's Evidently HTML into ``<out>/drift/`` (local or S3 lake); relative links."""
    from hfcast import storage
    from hfcast.storage import Lake

    lake = Lake.from_settings(settings)
    links = {}
    for r in history:
        folder = lake.monitoring(settings.model_name, str(r.get("version")), r["date"])
        for kind in ("features", "predictions"):
            url = storage.join(folder, f"{kind}_drift.html")
            if storage.exists(url, lake.storage_options):
                rel = f"drift/{r['date']}-{kind}.html"
                (out_dir / "drift").mkdir(parents=True, exist_ok=True)
                (out_dir / rel).write_bytes(storage.read_bytes(url, lake.storage_options))
                links[f"{r['date']} {kind} drift (Evidently, v{r.get('version')})"] = rel
    return links


def write(settings: Any, out_dir: str | Path, comparison: str | Path | None = None,
          title: str = "hfcast report", links: Mapping[str, str] | None = None) -> Path:
    """Gather everything from the settings' lake and registry and render the report."""
    inputs = gather(settings, comparison)
    try:
        drift_links = copy_drift_reports(settings, inputs.history, Path(out_dir))
    except Exception as exc:  # the page is still worth having without the Evidently copies
        log.warning("report: could not copy the drift reports (%s)", exc)
        drift_links = {}
    return render(inputs, out_dir, title, {**drift_links, **(links or {})})
