"""The ``hfcast`` command: one sub-command per lifecycle stage.

``serve``, ``pipeline`` and ``demo`` need KServe or Kubeflow, so the outer packages add them
through the ``hfcast.cli`` entry point group (:func:`main` / :func:`build_app`).

Every command is a thin shell over a documented function in the library (imported inside the
command so that ``hfcast --help`` stays fast and nothing heavy runs at import time).
Each section below belongs to one module; keep the logic in that module, not here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler


def _with_user_errors(run):
    """Run the command line: a problem the user can fix is shown as two lines (exit 2), with the
    traceback only under ``-v`` (see hfcast.errors)."""
    import sys

    from hfcast.errors import explain

    try:
        return run()
    except Exception as exc:
        err = explain(exc)
        if err is None or "-v" in sys.argv[1:] or "--verbose" in sys.argv[1:]:
            raise
        for line in err.lines():
            Console(stderr=True, highlight=False, soft_wrap=True).print(line, markup=False)
        raise SystemExit(err.exit_code) from None


class _Typer(typer.Typer):
    """Typer whose call goes through :func:`_with_user_errors` (whichever entry point is installed)."""

    def __call__(self, *args, **kwargs):
        return _with_user_errors(lambda: super(_Typer, self).__call__(*args, **kwargs))


# options that several commands share, defined once (same flag, same help everywhere)
CalendarOption = Annotated[Optional[str], typer.Option(
    "--calendar", help="Market calendar: XNYS, XETR, XLON, CME_Equity, ... or custom (params.yaml market:). "
                       "Default: params.yaml market.calendar, else XNYS.")]
LakeOption = Annotated[Optional[str], typer.Option("--lake", help="Lake URL, file:///... or s3://... (default: settings).")]
NoProgressOption = Annotated[bool, typer.Option("--no-progress", help="No progress bars.")]
ModelRefOption = Annotated[str, typer.Option("--model", help="Registry reference: NAME@alias or NAME/version.")]
BundleOption = Annotated[Optional[Path], typer.Option("--bundle", help="A local forecaster bundle instead of the registry.")]

app = _Typer(add_completion=False, no_args_is_help=True,
             help="hfcast: minute-level return and volatility forecasts with calibrated confidence.")
console = Console()


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)],
    )
    for noisy in ("botocore", "s3fs", "urllib3", "aiobotocore", "alembic", "numba", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _settings():
    from hfcast.config import get_settings

    try:  # get_settings also makes params.yaml market: the calendar of every stage (hfcast.market)
        return get_settings()
    except ValueError as exc:
        _fail(f"bad settings (params.yaml): {exc}")


def _market(settings, calendar: Optional[str]):
    """The market calendar from params.yaml ``market:`` and the --calendar option (which wins)."""
    from hfcast.market import Market, set_default_market

    try:
        return set_default_market(Market.from_params(settings.param("market", {}) or {}, calendar))
    except (ValueError, KeyError) as exc:
        _fail(f"bad market calendar: {exc}")


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


# --- data: synth (hfcast.data.simulator) -------------------------------------------------------

@app.command("synth")
def synth(
    symbols: Optional[int] = typer.Option(None, "--symbols", help="Number of symbols (S0000...). Default: params.yaml synth.n_symbols."),
    days: Optional[int] = typer.Option(None, "--days", help="Number of trading days (weekdays). Default: params.yaml synth.n_days."),
    start: Optional[str] = typer.Option(None, "--start", help="First date, YYYY-MM-DD. Default: params.yaml synth.start_date."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed: same seed, same bytes. Default: params.yaml synth.seed."),
    shift_day: Optional[int] = typer.Option(None, "--shift-day", help="Index of the first day of the shifted regime. Default: params.yaml synth.regime_shift_day."),
    no_shift: bool = typer.Option(False, "--no-shift", help="Stationary market: ignore any configured regime shift."),
    shift_vol: Optional[float] = typer.Option(None, "--shift-vol", help="Volatility multiplier from the shift day. Default: params.yaml synth.shift_vol_mult."),
    shift_spread: Optional[float] = typer.Option(None, "--shift-spread", help="Spread multiplier from the shift day. Default: params.yaml synth.shift_spread_mult."),
    shift_intraday: Optional[float] = typer.Option(None, "--shift-intraday", help="U-shape amplitude multiplier from the shift day (0 = flat). Default: params.yaml synth.shift_intraday."),
    lake: LakeOption = None,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    calendar: CalendarOption = None,
) -> None:
    """Simulate a market with known truth: writes raw/ bars and truth/ per date into the lake."""
    from hfcast.data.simulator import SimConfig, write_synth
    from hfcast.storage import Lake

    settings = _settings()
    try:
        cfg = SimConfig.from_params(
            settings.param("synth", {}), n_symbols=symbols, n_days=days, start_date=start, seed=seed,
            regime_shift_day=shift_day, shift_vol_mult=shift_vol, shift_spread_mult=shift_spread,
            shift_intraday=shift_intraday)
    except (TypeError, ValueError) as exc:
        _fail(f"bad synth parameters: {exc}")
    if no_shift:
        cfg.regime_shift_day = None
    if lake:
        from hfcast.config import s3_storage_options

        opts = s3_storage_options(settings.s3_endpoint, settings.s3_key, settings.s3_secret) if lake.startswith("s3://") else {}
        target = Lake(lake, opts or None)
    else:
        target = Lake.from_settings(settings)
    summary = write_synth(cfg, target, progress=progress, market=_market(settings, calendar))
    shift = "none" if cfg.regime_shift_day is None else f"day {cfg.regime_shift_day}"
    console.print(f"[green]synth[/] {cfg.n_symbols} symbols x {len(summary['dates'])} days = {summary['rows']:,} rows "
                  f"in {summary['seconds']:.1f} s -> {target.url} (seed {cfg.seed}, regime shift {shift})")


# --- data: ingest, validate (hfcast.data.ingest, hfcast.data.validate) -------------------------

def _lake(settings, lake_url: Optional[str]):
    from hfcast.storage import Lake

    return Lake(lake_url, settings.storage_options or None) if lake_url else Lake.from_settings(settings)


def _print_counts(title: str, totals: dict) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("reason")
    table.add_column("rows", justify="right")
    for reason, n in totals["reasons"].items():
        table.add_row(reason, str(n), style="red" if n else None)
    table.add_row("clean", str(totals["clean_rows"]), style="green")
    table.add_row("input", str(totals["input_rows"] if "input_rows" in totals else totals["bars"]), style="bold")
    console.print(table)


@app.command()
def ingest(
    paths: list[str] = typer.Argument(..., help="Source files or URLs (LOBSTER: message and orderbook files)."),
    fmt: str = typer.Option(..., "--format", "-f", help="bbo | ohlcv | trades | lobster"),
    column_map: Optional[str] = typer.Option(None, "--map", help="CONTRACT=SOURCE column names, e.g. ts=Timestamp,bid=BidPx"),
    tz: Optional[str] = typer.Option(None, "--tz", help="Time zone of naive timestamps (default: the calendar's)."),
    stamp: str = typer.Option("start", "--stamp", help="start | end: what minute a bar's timestamp marks (end: shifted back 1 minute)."),
    epoch_unit: Optional[str] = typer.Option(None, "--epoch-unit", help="s | ms | us | ns for numeric timestamps (default: from their magnitude)."),
    calendar: CalendarOption = None,
    symbol: Optional[str] = typer.Option(None, "--symbol", help="Symbol for files without a symbol column."),
    quotes: Optional[list[str]] = typer.Option(None, "--quotes", help="Quote tick file(s) to go with --format trades."),
    date: Optional[str] = typer.Option(None, "--date", help="Session date of LOBSTER files not named by the standard."),
    lake_url: LakeOption = None,
    no_progress: NoProgressOption = False,
) -> None:
    """Read real data into the lake (raw/), then validate it into validated/ + quarantine/."""
    from hfcast.data.ingest import IngestError, ingest as run_ingest, parse_column_map
    from hfcast.data.validate import DEFAULT_JUMP_LIMIT

    settings = _settings()
    try:
        totals = run_ingest(list(paths), fmt, _lake(settings, lake_url), tz=tz,  # type: ignore[arg-type]
                            column_map=parse_column_map(column_map), symbol=symbol,
                            quotes_paths=list(quotes or []), date=date, progress=not no_progress,
                            jump_limit=float(settings.param("validate.jump_limit", DEFAULT_JUMP_LIMIT)),
                            market=_market(settings, calendar), stamp=stamp, epoch_unit=epoch_unit)
    except IngestError as exc:
        _fail(str(exc))
    if not totals["dates"]:
        _fail("the input held no rows")
    _print_counts(f"ingest {fmt}: {len(totals['dates'])} date(s)", totals)
    if totals.get("ticks_quarantined"):
        console.print(f"[yellow]{totals['ticks_quarantined']} tick row(s) quarantined[/] (quarantine_ticks/)")
    for note in [*totals.get("notes", []), *[f"{d}: {t}" for d, t in totals.get("diagnoses", {}).items()]]:
        console.print(f"[yellow]{note}[/]")


@app.command()
def validate(
    dates: Optional[str] = typer.Option(None, "--dates", help="Comma-separated dates (default: every raw date)."),
    lake_url: LakeOption = None,
    no_progress: NoProgressOption = False,
    calendar: CalendarOption = None,
) -> None:
    """Validate raw/ partitions: clean rows to validated/, bad rows to quarantine/ with a reason."""
    from hfcast.data.validate import DEFAULT_JUMP_LIMIT, run_validate

    settings = _settings()
    wanted = [d.strip() for d in dates.split(",") if d.strip()] if dates else None
    try:
        totals = run_validate(_lake(settings, lake_url), wanted, progress=not no_progress,
                              jump_limit=float(settings.param("validate.jump_limit", DEFAULT_JUMP_LIMIT)),
                              market=_market(settings, calendar))
    except FileNotFoundError as exc:
        _fail(str(exc))
    if not totals["dates"]:
        _fail("no raw partitions to validate (run `hfcast synth` or `hfcast ingest` first)")
    _print_counts(f"validate: {len(totals['dates'])} date(s)", totals)
    for d, text in totals.get("diagnoses", {}).items():
        console.print(f"[yellow]{d}: {text}[/]")


# --- features: featurize (hfcast.features.engine) ----------------------------------------------

@app.command()
def featurize(
    dates: Optional[list[str]] = typer.Option(None, "--dates", help="Dates (YYYY-MM-DD) to featurize; default all."),
    lake: LakeOption = None,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes (default params featurize.workers)."),
    calendar: CalendarOption = None,
) -> None:
    """Compute the catalogue's causal features and the labels, one date at a time, into features/."""
    from hfcast.features.engine import run_featurize
    from hfcast.storage import Lake

    s = _settings()
    lk = Lake(lake, s.storage_options or None) if lake else Lake.from_settings(s)
    chosen = dates or s.param("featurize.dates", None)
    try:
        summary = run_featurize(lk, dates=chosen, progress=progress,
                                workers=int(workers or s.param("featurize.workers", 1)),
                                market=_market(s, calendar))
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    console.print(
        f"[green]featurized[/] {summary['dates']} date(s) {summary['first']}..{summary['last']}: "
        f"{summary['rows']:,} rows x {summary['n_features']} features "
        f"(quotes {'yes' if summary['quotes_available'] else 'NO: quote features unavailable'}), "
        f"{summary['seconds']:.1f}s, {summary['rows_per_s']:,.0f} rows/s with {summary['workers']} worker(s); "
        f"sources {summary['sources']}")


# --- feature store: materialize (hfcast.feature_store) -----------------------------------------

@app.command()
def materialize(
    date: Optional[str] = typer.Option(None, "--date", help="As-of date YYYY-MM-DD (default: last features date)."),
) -> None:
    """Apply the Feast repo, load the minute features online and each symbol's latest 30-minute window."""
    import datetime as dt

    from hfcast import feature_store
    from hfcast.storage import Lake

    settings = _settings()
    try:
        feature_store.apply(settings)
        dates = Lake.from_settings(settings).dates("features")
        as_of = date or (dates[-1] if dates else None)
        if as_of is None:
            _fail("no features partitions in the lake (run `hfcast featurize` first)")
        end = dt.datetime.fromisoformat(as_of).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
        feature_store.materialize(settings, end - dt.timedelta(days=2), end)
        windows = feature_store.materialize_windows(settings, as_of)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"[green]materialized[/] {len(windows)} symbol window(s) as of {as_of} into {settings.feast_repo}")


# --- train, compare, evaluate (hfcast.train, hfcast.walkforward, hfcast.evaluate) --------------

def _walkforward(settings, archs: list[str], lake_url: Optional[str], out: Optional[Path], stage: str,
                 on_epoch=None):
    """Run archs + baselines over the params.yaml folds; save tables, plots and the HTML report."""
    from hfcast.evaluate import write_comparison
    from hfcast.storage import Lake
    from hfcast.train import TrainConfig
    from hfcast.walkforward import WalkForwardConfig, model_configs, run_walkforward

    lake = Lake(lake_url, settings.storage_options or None) if lake_url else Lake.from_settings(settings)
    section = settings.param("walkforward", {})
    result = run_walkforward(lake, archs, WalkForwardConfig.from_params(section),
                             TrainConfig.from_params(settings.param("train", {})),
                             model_configs=model_configs(section), on_epoch=on_epoch)
    out_dir = out or settings.home / "reports" / stage
    paths = write_comparison(result.aggregate, result.per_fold, result.predictions, out_dir,
                             title=f"hfcast {stage}: {', '.join(archs) or 'baselines'}")
    return lake, result, paths


def _print_table(result, title: str) -> None:
    from rich.table import Table

    short = {"vol_qlike": "qlike", "vol_qlike_truth": "qlike*", "ret_ic": "ic", "ret_ic_truth": "ic*",
             "ret_hit": "hit", "ret_coverage": "cov_r", "rv_coverage": "cov_v", "ret_ece": "ece_r", "rv_ece": "ece_v"}
    table = Table(title=title, caption="* = vs the simulator's latent truth; cov = 80% interval coverage; "
                                       "_r return, _v volatility; win/s = training windows per second")
    table.add_column("model")
    cols = [c for c in short if c in result.aggregate]
    for c in cols:
        table.add_column(short[c], justify="right")
    table.add_column("win/s", justify="right")
    for model, row in result.aggregate.iterrows():
        thr = result.throughput.get(model)
        table.add_row(str(model), *[f"{row[c]:.3f}" for c in cols], f"{thr:.0f}" if thr else "-")
    # never truncate numbers: a pipe or log file gets a fixed 120-column console instead of 80
    (console if console.is_terminal else Console(width=120)).print(table)


def _distributed_settings(settings):
    """(settings, rank) under torchrun: checkpoints on by default (``<home>/checkpoints``), so a
    killed data-parallel training resumes at its next epoch; unchanged for one process."""
    from hfcast.config import deep_merge
    from hfcast.distributed import env_rank, env_world

    if env_world() > 1:
        import atexit

        from hfcast.distributed import shutdown

        atexit.register(shutdown)
        if not settings.param("train.checkpoint_dir"):
            ckpt = {"train": {"checkpoint_dir": str(settings.home / "checkpoints")}}
            settings = settings.with_(params=deep_merge(settings.params, ckpt))
    return settings, env_rank()


@app.command()
def train(
    model: str = typer.Option("transformer", "--model", "-m", help="transformer | lstm | tcn | hybrid"),
    lake_url: LakeOption = None,
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default <home>/reports/train-<model>)."),
    log_run: bool = typer.Option(True, "--log/--no-log", help="Log the run to MLflow (hfcast.registry)."),
    register: bool = typer.Option(False, "--register", help="Also register the logged run as a model version."),
    gate: bool = typer.Option(False, "--gate", help="With --register: run the champion/challenger gate and promote only if it passes (hfcast.lifecycle.register_and_gate)."),
    settings_json: str = typer.Option("", "--settings", help="Settings.to_param() JSON (a pipeline's settings parameter); '' = the environment."),
    tags: Optional[list[str]] = typer.Option(None, "--tag", help="KEY=VALUE run tag (repeatable), e.g. the training job's name."),
) -> None:
    """Train one architecture through walk-forward (params.yaml `walkforward:`, `train:`), score it
    with the baselines on the same test spans, and log it to MLflow. Under `torchrun` it trains
    data-parallel (hfcast.distributed): rank 0 alone logs, and every epoch is checkpointed."""
    from hfcast.models import ARCHITECTURES

    if model not in ARCHITECTURES:
        _fail(f"unknown model {model!r}; choose one of {', '.join(ARCHITECTURES)}")
    from contextlib import nullcontext

    from hfcast import registry

    if settings_json:
        from hfcast.config import settings_from_param

        settings = settings_from_param(settings_json)
    else:
        settings = _settings()
    bad = [t for t in tags or () if "=" not in t]
    if bad:
        _fail(f"--tag needs KEY=VALUE, got {bad[0]!r}")
    settings, rank = _distributed_settings(settings)
    if rank > 0:  # under torchrun only rank 0 logs, registers and reports (hfcast.distributed)
        import tempfile

        log_run = register = False
        out = Path(tempfile.mkdtemp(prefix=f"hfcast-train-rank{rank}-"))
    with registry.training_runs(settings) if log_run else nullcontext() as live:
        if live is not None:
            live.parent(model)  # the MLflow run exists from the start; epochs stream into fold runs
        try:
            _, result, paths = _walkforward(settings, [model], lake_url, out, f"train-{model}",
                                            on_epoch=live.on_epoch if live is not None else None)
        except (ValueError, KeyError, FileNotFoundError) as exc:
            _fail(str(exc))
        if rank > 0:
            return
        _print_table(result, f"walk-forward test scores ({len(result.folds)} folds)")
        console.print(f"report: {paths['report']}")
        if live is not None:
            from hfcast.lifecycle import log_trained

            plots = [paths[k] for k in ("forecast_vs_realized", "calibration", "error_by_decile")]
            run_id = log_trained(settings, result, model, out_dir=paths["report"].parent, plots=plots,
                                 live=live, reports=[paths["report"]],
                                 tags=dict(t.split("=", 1) for t in tags or ()))
            console.print(f"[green]logged[/] MLflow run {run_id}")
    if log_run and register and gate:
        from hfcast.lifecycle import register_and_gate

        outcome = register_and_gate(settings, run_id)
        verdict = "promoted to champion" if outcome.promoted else "not promoted (the gate rejected it)"
        console.print(f"[green]registered[/] {settings.model_name} version {outcome.version}: {verdict}")
        console.print(outcome.decision.summary())
    elif log_run and register:
        console.print(f"[green]registered[/] {settings.model_name} version {registry.register(settings, run_id)}")


@app.command()
def compare(
    models: str = typer.Option("transformer,lstm,tcn,hybrid", "--models", help="Comma-separated architectures ('' = baselines only)."),
    lake_url: LakeOption = None,
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default <home>/reports/compare)."),
) -> None:
    """Every architecture and every baseline on identical walk-forward folds: one table, one report."""
    from hfcast.models import ARCHITECTURES

    archs = [m.strip() for m in models.split(",") if m.strip()]
    bad = [m for m in archs if m not in ARCHITECTURES]
    if bad:
        _fail(f"unknown model(s) {bad}; choose from {', '.join(ARCHITECTURES)}")
    try:
        _, result, paths = _walkforward(_settings(), archs, lake_url, out, "compare")
    except (ValueError, KeyError, FileNotFoundError) as exc:
        _fail(str(exc))
    _print_table(result, f"walk-forward comparison ({len(result.folds)} folds, test spans only)")
    console.print(f"report: {paths['report']}")


@app.command()
def evaluate(
    predictions: Path = typer.Argument(..., help="Predictions file (parquet/CSV): PRED_COLUMNS + labels [+ truth, fold, model]."),
    out: Path = typer.Option(Path("evaluation"), "--out", help="Folder for metrics.json, PNGs and report.html."),
) -> None:
    """Score a predictions file: QLIKE/MSE, IC/hit rate, coverage, ECE, error by confidence decile."""
    from hfcast.evaluate import evaluate_file

    try:
        result = evaluate_file(predictions, out)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        _fail(str(exc))
    for name, r in result.items():
        agg = r["aggregate"]
        console.print(f"[bold]{name}[/]: " + " ".join(f"{k}={agg[k]:.4f}" for k in
                      ("vol_qlike", "ret_ic", "ret_coverage", "rv_coverage", "ret_ece", "rv_ece") if k in agg))
    console.print(f"report: {out / 'report.html'}")


@app.command("report")
def report_cmd(
    out: Path = typer.Option(Path("hfcast-report"), "--out", help="Folder for index.html and its PNGs."),
    comparison: Optional[Path] = typer.Option(None, "--comparison", help="A `hfcast compare` folder "
                                              "(default: the newest under <home>/reports)."),
) -> None:
    """One page for a quant: models vs baselines, calibration, drift over time, champion timeline."""
    from hfcast.report import write

    try:
        index = write(_settings(), out, comparison)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        _fail(str(exc))
    console.print(f"report: {index}")

# --- registry (hfcast.registry) ------------------------------------------------------------------

registry_app = typer.Typer(no_args_is_help=True, help="Model versions, aliases, the champion gate and rollback.")
app.add_typer(registry_app, name="registry")


def _registry_call(fn, *args, **kwargs):
    """Run a registry function; a missing model/alias/run becomes a one-line error, not a traceback."""
    from hfcast.registry import RegistryError

    try:
        return fn(*args, **kwargs)
    except (RegistryError, ValueError) as exc:
        _fail(str(exc))


@registry_app.command("list")
def registry_list() -> None:
    """Every version with its aliases, architecture, dataset version, gate decision and primary metrics."""
    from rich.table import Table

    from hfcast import registry

    settings = _settings()
    rows = _registry_call(registry.list_versions, settings)
    if not rows:
        console.print(f"no versions of '{settings.model_name}' in {settings.mlflow_uri}")
        return
    metrics = sorted({m for r in rows for m in r["metrics"]})
    table = Table(title=f"{settings.model_name} @ {settings.mlflow_uri}")
    for col in ("version", "aliases", "arch", "dataset", "created", "gate", *metrics):
        table.add_column(col, justify="right" if col in metrics or col == "version" else "left", overflow="fold")
    for r in rows:
        style = "bold green" if "champion" in r["aliases"] else None
        table.add_row(str(r["version"]), " ".join(r["aliases"]), r["arch"], r["dataset_version"][:16],
                      r["created"].replace("T", " ")[:16], r["gate"], *[f"{r['metrics'][m]:.5f}" if m in r["metrics"] else "-"
                                                 for m in metrics], style=style)
    console.print(table)


@registry_app.command("show")
def registry_show(ref: str = typer.Argument("champion", help="hfcast@champion, hfcast/3, models:/hfcast@champion or 3.")) -> None:
    """One version: aliases, source, tags (gate reasons, promotion/rollback history), metrics, artifacts."""
    from rich.table import Table

    from hfcast import registry

    info = _registry_call(registry.describe, _settings(), ref)
    console.print(f"[bold]{info['name']} v{info['version']}[/]  aliases: {', '.join(info['aliases']) or '-'}"
                  f"  run: {info['run_id']}\nsource: {info['source']}")
    table = Table(show_header=True)
    table.add_column("kind")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for kind, items in (("tag", info["tags"]), ("metric", info["all_metrics"]), ("param", info["params"])):
        for k, v in sorted(items.items()):
            table.add_row(kind, k, f"{v:.6g}" if isinstance(v, float) else str(v))
    console.print(table)
    console.print("artifacts: " + ", ".join(info["artifacts"]))


@registry_app.command("promote")
def registry_promote(
    version: str = typer.Argument(..., help="The challenger version (or any reference)."),
    force: bool = typer.Option(False, "--force", help="Skip the gate (needs --reason; recorded on the version)."),
    reason: str = typer.Option("", "--reason", help="Why (required with --force)."),
    margin: Optional[float] = typer.Option(None, "--margin", help="Override the params.yaml margins for every metric."),
) -> None:
    """Make VERSION the champion if it passes the gate (logged scores on the same test spans)."""
    from hfcast import promotion, registry
    from hfcast.gate import GateDecision

    settings = _settings()
    if force:
        decision = _registry_call(GateDecision.force, reason)
    else:
        decision = _registry_call(promotion.run_gate, settings, version, margin=margin)
    for line in decision.reasons:
        console.print(f"  - {line}")
    if not _registry_call(promotion.promote, settings, version, decision):
        _fail(f"version {version} did not pass the gate; the champion is unchanged")
    console.print(f"[green]champion[/] is now {settings.model_name} version "
                  f"{registry.resolve(settings, 'champion').version}")


@registry_app.command("rollback")
def registry_rollback(reason: str = typer.Option("manual rollback", "--reason", help="Recorded on both versions.")) -> None:
    """Restore the previous champion (the demoted version keeps its tags, loses the alias)."""
    from hfcast import promotion

    demoted, restored = _registry_call(promotion.rollback, _settings(), reason=reason)
    console.print(f"[yellow]rolled back[/]: champion v{demoted} -> v{restored}")


# --- export (hfcast.export) -----------------------------------------------------------

def _load_for_serving(settings, model: str, bundle: Optional[Path]):
    if bundle is not None:
        from hfcast.models.base import Forecaster

        return Forecaster.load(str(bundle))
    from hfcast.registry import RegistryError, load_forecaster

    try:
        return load_forecaster(settings, model)
    except RegistryError as exc:
        _fail(str(exc))


@app.command("export")
def export_cmd(
    model: ModelRefOption = "hfcast@champion",
    bundle: BundleOption = None,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default <home>/export/<name>-<version>)."),
    max_batch: int = typer.Option(1024, "--max-batch", help="Largest batch of the TensorRT profile and Triton."),
    log_mlflow: bool = typer.Option(True, "--log/--no-log", help="Log the artefacts to the same model version."),
) -> None:
    """ONNX (dynamic batch, parity-checked), TensorRT plan where possible, Triton repository."""
    from hfcast import export

    settings = _settings()
    fc = _load_for_serving(settings, model, bundle)
    name, version = fc.meta.get("model_name", "hfcast"), fc.meta.get("model_version", "local")
    out = out or settings.home / "export" / f"{name}-{version}"
    from hfcast.quantize import validation_frame

    val_frame, val_dates = validation_frame(_lake(settings, None), fc)  # the int8 guard's span
    try:
        report = export.export_all(fc, out, max_batch=max_batch, validation=val_frame, validation_dates=val_dates)
    except ValueError as exc:  # parity failure
        _fail(str(exc))
    console.print(f"ONNX ({report.onnx['exporter']} exporter, opset {report.onnx['opset']}): max relative error "
                  f"{report.onnx['parity']['max_rel_err']:.2e} vs PyTorch -> {report.onnx['path']}")
    if isinstance(report.tensorrt, str):
        console.print(f"[yellow]{report.tensorrt}[/]")
    else:
        console.print(f"TensorRT FP16 plan: max relative error {report.tensorrt['parity']['max_rel_err']:.2e}, "
                      f"{len(report.tensorrt['fp32_layers'])} normalisation layers kept FP32")
    q = report.quantization or {}
    console.print(f"int8 model: {'used by auto' if q.get('use_int8') else 'not used by auto'} "
                  f"(guard: {q.get('guard', {}).get('rel_change') or q.get('guard', {}).get('reason')})")
    console.print(f"Triton repository: {report.triton_repo}")
    if log_mlflow and bundle is None:
        uri = export.log_export_to_mlflow(report, settings)
        console.print(f"logged to {name} version {version}: {uri}")


# --- predict (hfcast.predict) --------------------------------------------------------------------

@app.command()
def predict(
    dates: str = typer.Option(..., "--dates", help="'2024-01-02..2024-01-31' (dates with features) or 'D1,D2'."),
    model: ModelRefOption = "hfcast@champion",
    bundle: BundleOption = None,
    dense: bool = typer.Option(True, "--dense/--sparse", help="Every minute, or every 10th minute forward-filled."),
    workers: int = typer.Option(1, "--workers", min=1, help="Dates predicted at once (threads sharing one model: 2 overlaps one date's reading and writing with another's model)."),
    out: Optional[str] = typer.Option(None, "--out", help="Output root (file:// path or s3://bucket/prefix); default: the lake."),
    force: bool = typer.Option(False, "--force", help="Redo dates that are already complete."),
    runner: str = typer.Option("auto", "--runner", help="auto | onnxruntime | onnxruntime-int8 | torch | torch-compiled | tensorrt"),
) -> None:
    """Batch inference: one prediction CSV (+ manifest) per date, resumable and parallel."""
    from rich.table import Table

    from hfcast.predict import run_predict

    try:
        summary = run_predict(_settings(), dates, model_ref=model, bundle_dir=str(bundle) if bundle else None,
                              mode="dense" if dense else "sparse", workers=workers, out=out, force=force,
                              runner=runner)
    except (ValueError, LookupError, FileNotFoundError) as exc:
        _fail(str(exc))
        return
    d = summary.as_dict()
    table = Table(title=f"predict {d['model']} ({d['mode']}, {d['workers']} worker(s))")
    for col in ("done", "skipped", "failed", "rows", "seconds", "rows/s"):
        table.add_column(col, justify="right")
    table.add_row(*(str(d[k]) for k in ("done", "skipped", "failed", "rows", "seconds", "rows_per_second")))
    console.print(table)
    if d["timing_split"]:
        console.print("time split (s): " + ", ".join(f"{k} {v}" for k, v in d["timing_split"].items()))
    if summary.failed:
        for r in summary.failed:
            console.print(f"[red]failed[/] {r.date}: {r.reason}")
        _fail(f"{len(summary.failed)} date(s) failed: {', '.join(r.date for r in summary.failed)}")


# --- monitor (hfcast.monitoring) ----------------------------------------------------------------------------

monitor_app = typer.Typer(no_args_is_help=True, help="Drift + live performance vs the training reference; retraining decisions.")
app.add_typer(monitor_app, name="monitor")


@monitor_app.command("run")
def monitor_run(
    date: str = typer.Option(..., "--date", help="The date to check (YYYY-MM-DD): its features and prediction CSV."),
    model: ModelRefOption = "hfcast@champion",
    starter: str = typer.Option("local", "--starter", help="What starts a retraining: local (the training pipeline "
                                "here) | kubeflow | inprocess | none (entry points hfcast.starters)."),
    trigger: Optional[str] = typer.Option(None, "--trigger", hidden=True, help="Old name of --starter."),
    kfp_host: Optional[str] = typer.Option(None, "--kfp-host", help="Kubeflow Pipelines API URL (default params.yaml monitor.kubeflow_host)."),
    mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Also log the decision to the hfcast-monitoring experiment."),
    rerun: bool = typer.Option(False, "--rerun", help="Replace the date's decision if it was decided before (default: keep it)."),
) -> None:
    """Evidently drift (features, predictions) + live performance for one date, then decide and start a retraining."""
    from hfcast.monitoring.drift import run_monitor
    from hfcast.monitoring.retraining import load_starter

    try:
        chosen = load_starter(trigger or starter, **({"host": kfp_host} if kfp_host else {}))
        rec = run_monitor(_settings(), date, model, starter=chosen, log_mlflow=mlflow_log, rerun=rerun)
    except (ValueError, LookupError, FileNotFoundError) as exc:
        _fail(str(exc))
        return
    c = rec["checks"]
    live = c.get("live") or {}
    console.print(f"{rec['date']} {rec['model']} v{rec['version']}: feature drift share {c['drift_share']:.2f}, "
                  f"prediction drift share {'-' if c['pred_drift_share'] is None else format(c['pred_drift_share'], '.2f')}, "
                  f"live QLIKE {live.get('vol_qlike', float('nan')):.4g}, IC {live.get('ret_ic', float('nan')):.3f}")
    colour = {"retrain": "bold yellow", "suppressed": "cyan"}.get(rec["action"], "green")
    console.print(f"[{colour}]{rec['explanation']}[/]")


@monitor_app.command("history")
def monitor_history(
    model: Optional[str] = typer.Option(None, "--model", help="Model name (default: settings.model_name)."),
    last: int = typer.Option(50, "--last", help="Show the last N decisions."),
) -> None:
    """The decision log (<lake>/monitoring/<model>/decisions/<date>.json; old decisions.jsonl too), oldest first."""
    from rich.table import Table

    from hfcast.monitoring.decision import load_history, trigger_outcome
    from hfcast.storage import Lake

    settings = _settings()
    name = model or settings.model_name
    recs = load_history(Lake.from_settings(settings), name)[-last:]
    if not recs:
        console.print(f"no monitoring decisions recorded for {name} yet")
        return
    table = Table(title=f"monitoring decisions: {name}")
    for col in ("date", "version", "drift", "streak", "QLIKE", "IC", "action", "trigger"):
        table.add_column(col, overflow="fold")
    for r in recs:
        c, live, trig = r.get("checks") or {}, (r.get("checks") or {}).get("live") or {}, r.get("trigger") or {}
        share = c.get("drift_share")
        table.add_row(r["date"], str(r.get("version")), "-" if share is None else f"{share:.2f}", str(r.get("drift_streak", "")),
                      f"{live['vol_qlike']:.4g}" if live.get("vol_qlike") is not None else "-",
                      f"{live['ret_ic']:.3f}" if live.get("ret_ic") is not None else "-", r["action"],
                      trigger_outcome(trig))
    console.print(table)
    for r in recs:  # the why, in full (too long for a table column)
        console.print(f"[bold]{r['date']}[/] v{r.get('version')}: {r.get('explanation', '')}", soft_wrap=True)


@app.command("replay")
def replay(
    first: str = typer.Option(..., "--from", help="First trading day to replay (YYYY-MM-DD)."),
    last: str = typer.Option(..., "--to", help="Last trading day to replay (YYYY-MM-DD)."),
    arch: list[str] = typer.Option([], "--arch", help="Architecture(s) of a retraining (default: the champion's)."),
    mode: str = typer.Option("dense", "--mode", help="Prediction mode: dense | sparse."),
) -> None:
    """Replay days in order with no look-ahead: arrive -> predict (champion of the moment) -> monitor -> decide -> retrain (data up to that day). Resumes where it stopped."""
    from hfcast.monitoring.decision import trigger_outcome
    from hfcast.replay import run_replay

    def show(d: str, e: dict) -> None:
        trig = trigger_outcome((e["monitor"] or {}).get("trigger") or {})
        console.print(f"{d}: predicted by v{e['predict']['version']} -> {e['monitor']['action']} {trig}"
                      f" (champion v{e.get('champion_after')})")

    try:
        run_replay(_settings(), first, last, archs=arch, mode=mode, on_day=show)
    except (ValueError, LookupError, FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))


@monitor_app.command("reference")
def monitor_reference(
    model: ModelRefOption = "hfcast@champion",
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="A local bundle instead of the registry (needs --dates and NAME/VERSION)."),
    dates: Optional[str] = typer.Option(None, "--dates", help="Training dates 'A..B' (default: from the registry run)."),
    test_dates: Optional[str] = typer.Option(None, "--test-dates", help="Held-out dates scored for reference.json (with --dates)."),
) -> None:
    """Build the monitoring reference of a model version (sampled training rows + its predictions)."""
    from hfcast.monitoring.decision import MonitorConfig
    from hfcast.monitoring.drift import resolve_model
    from hfcast.monitoring.reference import build_reference, reference_from_registry
    from hfcast.predict import parse_dates
    from hfcast.storage import Lake

    settings = _settings()
    cfg = MonitorConfig.from_params(settings.param("monitor", {}))
    try:
        if dates is None:
            doc = reference_from_registry(settings, model, cfg)
        else:
            avail = Lake.from_settings(settings).dates("features")
            name, version = resolve_model(settings, model)
            if bundle is not None:
                source = str(bundle)
            else:
                from hfcast.registry import load_forecaster

                source = load_forecaster(settings, f"{name}/{version}")
            doc = build_reference(settings, source, parse_dates(dates, avail), n_rows=cfg.reference_sample_rows,
                                  seed=cfg.seed, model=(name, version),
                                  test_dates=parse_dates(test_dates, avail) if test_dates else None)
    except (ValueError, LookupError, FileNotFoundError) as exc:
        _fail(str(exc))
        return
    console.print(f"[green]reference[/] {doc['model']} v{doc['version']}: {doc['rows']} rows from "
                  f"{doc['train_dates'][0]}..{doc['train_dates'][-1]}; test scores {doc['test_scores'] or '-'}")


# --- backtest and explain (hfcast.backtest, hfcast.explain) --------------------------------------

def _prediction_folder(settings, model: str) -> tuple[str, str]:
    """``NAME/VERSION`` as written by ``hfcast predict``; ``NAME@ALIAS`` is resolved in the registry."""
    if "@" in model:
        from hfcast.registry import resolve

        mv = resolve(settings, model)
        return str(mv.name), str(mv.version)
    name, sep, version = model.partition("/")
    if not sep or not name or not version:
        _fail(f"--model must be NAME/VERSION (a predictions/<NAME>/<VERSION> folder) or NAME@ALIAS, got {model!r}")
    return name, version


@app.command()
def backtest(
    model: str = typer.Option("hfcast@champion", "--model", help="Predictions to test: NAME/VERSION or NAME@ALIAS."),
    dates: Optional[str] = typer.Option(None, "--dates", help="'A..B' or 'D1,D2'; default: every date with predictions."),
    rebalance: Optional[int] = typer.Option(None, "--rebalance", min=1, help="Long-short: minutes between rebalances (10/30/60)."),
    quantile: Optional[float] = typer.Option(None, "--quantile", help="Long the top, short the bottom quantile (0-0.5]."),
    confidence: bool = typer.Option(False, "--confidence-weighted", help="Weight each leg by ret_60m_conf."),
    fee_bps: Optional[float] = typer.Option(None, "--fee-bps", help="Fee per unit traded, on top of half the spread."),
    target_vol: Optional[float] = typer.Option(None, "--target-vol", help="Vol targeting: annualised target (0.2 = 20%)."),
    gate_against: Optional[str] = typer.Option(None, "--gate-against", help="Champion predictions (NAME/VERSION or NAME@ALIAS): fail if ours lose."),
    gate_metric: Optional[str] = typer.Option(None, "--gate-metric", help="net_sharpe | gross_sharpe | max_drawdown | vol_tracking_error | vol_share_beyond_1_5"),
    gate_margin: float = typer.Option(0.0, "--gate-margin", help="Loss tolerated on the gate metric."),
    lake: LakeOption = None,
    out: Path = typer.Option(Path("backtest"), "--out", help="Folder for backtest.json, table.csv, equity.png, tracking.png."),
) -> None:
    """Economic value after costs: volatility targeting and a long-short book on the prediction CSVs."""
    from rich.table import Table

    from hfcast.backtest import BacktestConfig, gate_check, run_backtest

    settings = _settings()
    try:
        cfg = BacktestConfig.from_params(settings.param("backtest", {}), rebalance=rebalance, quantile=quantile,
                                         confidence_weighted=confidence or None, fee_bps=fee_bps,
                                         target_vol=target_vol, gate_metric=gate_metric)
        lk = _lake(settings, lake)
        name, version = _prediction_folder(settings, model)
        result = run_backtest(lk, name, version, dates, cfg, out)
        gate = None
        if gate_against:
            cname, cversion = _prediction_folder(settings, gate_against)
            champion = run_backtest(lk, cname, cversion, result.dates, cfg, out / "champion")
            gate = gate_check(result, champion, margin=gate_margin)
    except (ValueError, LookupError, FileNotFoundError) as exc:
        _fail(str(exc))
        return
    tab = result.table()
    wide = console if console.is_terminal else Console(width=120)
    for book, part in tab.groupby("portfolio", sort=False):
        part = part.dropna(axis=1, how="all").drop(columns="portfolio")
        table = Table(title=f"{book} {result.model}: {len(result.dates)} day(s), {result.minutes_per_session} min/session")
        for col in part.columns:
            table.add_column(col, justify="left" if col == "method" else "right")
        for _, row in part.iterrows():
            table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
        wide.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"report: {out / 'backtest.json'} (plots: equity.png, tracking.png)")
    if gate is not None:
        verdict = "[green]passed[/]" if gate["passed"] else "[red]failed[/]"
        console.print(f"gate {gate['metric']}: {gate['challenger']:.3f} vs {gate['champion']:.3f} -> {verdict}")
        if not gate["passed"]:
            raise typer.Exit(1)


explain_app = typer.Typer(no_args_is_help=True, help="Why the model says what it says: importance, attention, attributions.")
app.add_typer(explain_app, name="explain")


def _forecaster(settings, model: str, bundle: Optional[Path]):
    from hfcast.models.base import Forecaster
    from hfcast.predict import prepare_bundle

    path, _, _ = prepare_bundle(settings, model, str(bundle) if bundle else None)
    return Forecaster.load(path)


@explain_app.command("global")
def explain_global(
    dates: str = typer.Option(..., "--dates", help="Test span with matured labels: 'A..B' or 'D1,D2'."),
    model: ModelRefOption = "hfcast@champion",
    bundle: BundleOption = None,
    repeats: int = typer.Option(3, "--repeats", min=1, help="Shuffles per feature group."),
    max_windows: int = typer.Option(4000, "--max-windows", min=100, help="Test windows scored."),
    lake: LakeOption = None,
    out: Path = typer.Option(Path("explain"), "--out", help="Folder for explain.json, importance.png, attention.png."),
) -> None:
    """Feature-group permutation importance (returns and volatility), attention by time of day."""
    from hfcast.explain import run_global
    from hfcast.predict import parse_dates

    settings = _settings()
    try:
        lk = _lake(settings, lake)
        fc = _forecaster(settings, model, bundle)
        res = run_global(lk, fc, parse_dates(dates, lk.dates("features")), out, repeats, max_windows)
    except (ValueError, LookupError, FileNotFoundError) as exc:
        _fail(str(exc))
        return
    console.print(f"[bold]permutation importance[/] on {res['windows']} windows (loss increase; base "
                  f"ret MSE {res['base_loss']['ret']:.3g}, vol QLIKE {res['base_loss']['vol']:.3g})")
    for r in res["permutation_importance"]:
        console.print(f"  {r['group']:<14} ret {r['ret_rel']:+.1%}  vol {r['vol_rel']:+.1%}")
    console.print(f"report: {out / 'explain.json'}; plots: {', '.join(res['plots'])}")


@explain_app.command("forecast")
def explain_forecast_cmd(
    symbol: str = typer.Option(..., "--symbol", help="Symbol of the forecast."),
    ts: str = typer.Option(..., "--ts", help="Forecast minute (UTC, e.g. 2024-01-05T15:00:00Z)."),
    model: ModelRefOption = "hfcast@champion",
    bundle: BundleOption = None,
    top: int = typer.Option(10, "--top", min=1, help="Top (minute, feature) cells shown."),
    lake: LakeOption = None,
) -> None:
    """The top drivers of one forecast (integrated gradients over its 30 x F window)."""
    from hfcast.explain import explain_forecast

    settings = _settings()
    try:
        res = explain_forecast(_lake(settings, lake), _forecaster(settings, model, bundle), symbol, ts, top=top)
    except (ValueError, LookupError, FileNotFoundError) as exc:
        _fail(str(exc))
        return
    for target in ("ret", "vol"):
        e = res[target]
        console.print(f"[bold]{target}[/]: forecast {e['forecast']:+.4g} vs baseline {e['baseline_forecast']:+.4g} "
                      f"(completeness gap {e['completeness_gap']:+.2g})")
        console.print("  by group: " + ", ".join(f"{g} {v:+.3g}" for g, v in list(e["by_group"].items())[:6]))
        for c in e["top"]:
            console.print(f"  {c['feature']:<20} minute {c['minute']:>3}  z {c['value_z']:+.2f}  -> {c['attribution']:+.3g}")


# --- plugins: commands of the outer packages (entry point group ``hfcast.cli``) -----------------

PLUGIN_GROUP = "hfcast.cli"
_loaded: dict[str, list[str]] = {}  # "plugins" -> names, once loaded in this process


def load_plugins(target: typer.Typer = app) -> list[str]:
    """Let installed outer packages add their commands (``serve``, ``pipeline``, ``demo``).

    Each entry point of group ``hfcast.cli`` is a ``register(app: typer.Typer) -> None``. Why entry
    points: the core must not import Kubeflow or KServe, yet ``hfcast`` keeps one command line.
    A plugin that fails to import is logged and skipped, so the core commands always work.
    """
    from importlib.metadata import entry_points

    names = []
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            ep.load()(target)
        except Exception as exc:  # a broken outer package must not take the core commands down
            logging.getLogger(__name__).warning("hfcast command plugin %r not loaded: %s", ep.name, exc)
            continue
        names.append(ep.name)
    return names


def build_app() -> typer.Typer:
    """The ``hfcast`` app with every installed plugin's commands (once per process)."""
    if "plugins" not in _loaded:
        _loaded["plugins"] = load_plugins(app)
    return app


def main() -> None:
    """The ``hfcast`` console script: core commands plus the plugins' ones, all under the one error
    handler (``app()`` goes through :func:`_with_user_errors`, so plugin commands show two-line errors too)."""
    build_app()()


if __name__ == "__main__":
    main()
