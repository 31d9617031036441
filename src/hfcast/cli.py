"""The ``hfcast`` command: one sub-command per lifecycle stage.

``serve``, ``pipeline`` and ``demo`` need KServe or Kubeflow, so the outer packages add them
through the ``hfcast.cli`` entry point group (:func:`main` / :func:`build_app`).

Every command is a thin shell over a documented function in the library (imported inside the
command so that ``hfcast --help`` stays fast and nothing heavy runs at import time).
Each section below belongs to one module; keep the logic in that module, not here.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import tempfile
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from hfcast.cliopts import (HfcastGroup, OptionValueError, architecture, bundle_dir, calendar, choice, column_map,
                            comma_list, date_spec, http_url, input_dir, input_file, iso_date, key_value, local_file,
                            model_ref, output_dir, storage_url, symbol, timestamp, timezone)
from hfcast.data import formats as ingest_formats  # light: the registry of ingest formats, for --help
from hfcast.data.formats import names
from hfcast.errors import UserError
from hfcast.monitoring.checks import Checks

if TYPE_CHECKING:  # the settings module reads YAML: not loaded for --help
    from hfcast.config import Settings

# options that several commands share, defined once (same flag, same help everywhere)
CalendarOption = Annotated[Optional[str], typer.Option(
    "--calendar", parser=calendar, help="Market calendar: XNYS, XETR, XLON, CME_Equity, ... or custom (params.yaml market:). "
                       "Default: params.yaml market.calendar, else XNYS.")]
LakeOption = Annotated[Optional[str], typer.Option("--lake", parser=storage_url,
                                                   help="Lake URL, file:///... or s3://... (default: settings).")]
NoProgressOption = Annotated[bool, typer.Option("--no-progress", help="No progress bars.")]
ModelRefOption = Annotated[str, typer.Option("--model", parser=model_ref,
                                              help="Registry reference: NAME@alias or NAME/version.")]
BundleOption = Annotated[Optional[Path], typer.Option("--bundle", parser=bundle_dir,
                                                      help="A local forecaster bundle instead of the registry.")]


def _runner_kinds() -> tuple[str, ...]:
    from hfcast.runners import RUNNER_KINDS

    return ("auto", *RUNNER_KINDS)


def _ingest_formats() -> list[str]:
    return names()


RunnerOption = Annotated[str, typer.Option("--runner", parser=choice(_runner_kinds, "runner"),
                                           help="auto | onnxruntime | onnxruntime-int8 | torch | torch-compiled | tensorrt")]

app = typer.Typer(cls=HfcastGroup, add_completion=False, no_args_is_help=True,
             help="hfcast: minute-level return and volatility forecasts with calibrated confidence.")
console = Console()


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)],
    )
    # MLflow's own handler: "Creating initial MLflow database tables..." on a new project's first
    # command (mlflow.store.db.utils), "Validating input example against model signature" in every
    # `hfcast train` (mlflow.pyfunc); their warnings still show
    for noisy in ("botocore", "s3fs", "urllib3", "aiobotocore", "alembic", "numba", "matplotlib",
                  "mlflow.store.db.utils", "mlflow.pyfunc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _settings(settings_json: str = ""):
    """The command's settings (the environment, or a pipeline's ``--settings`` JSON); their market
    calendar travels with them (``settings.market``), nothing process-wide is set."""
    from hfcast.config import get_settings, settings_from_param

    try:
        settings = settings_from_param(settings_json) if settings_json else get_settings()
        settings.market  # a bad market: section is refused here, as bad settings
    except ValueError as exc:
        if settings_json:
            raise UserError(str(exc), "pass the settings parameter as Settings.to_param() JSON") from exc
        raise UserError(f"bad settings: {exc}", "correct params.yaml (or the file HFCAST_PARAMS names)") from exc
    return settings


def _market(settings: Settings, calendar: Optional[str]):
    """The market calendar from params.yaml ``market:`` and the --calendar option (which wins)."""
    from hfcast.market import Market

    try:
        return Market.from_params(settings.param("market", {}) or {}, calendar)
    except (ValueError, KeyError) as exc:
        raise UserError(f"bad market calendar: {exc}", "pass --calendar XNYS (or another exchange calendar), or "
                        "correct params.yaml market:") from exc


@contextmanager
def _refused(fix: str, *kinds: type[BaseException]):
    """The failures ``kinds`` (default ValueError, LookupError, FileNotFoundError) of a command's one
    library call, as a :class:`UserError` with ``fix`` (a UserError raised inside keeps its own fix)."""
    try:
        yield
    except UserError:
        raise
    except (kinds or (ValueError, LookupError, FileNotFoundError)) as exc:
        raise UserError(str(exc), fix) from exc


# --- data: synth (hfcast.data.simulator) -------------------------------------------------------

@app.command("synth")
def synth(
    symbols: Optional[int] = typer.Option(None, "--symbols", min=1, help="Number of symbols (S0000...). Default: params.yaml synth.n_symbols."),
    days: Optional[int] = typer.Option(None, "--days", min=1, help="Number of trading days (weekdays). Default: params.yaml synth.n_days."),
    start: Optional[str] = typer.Option(None, "--start", parser=iso_date, help="First date, YYYY-MM-DD. Default: params.yaml synth.start_date."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Random seed: same seed, same bytes. Default: params.yaml synth.seed."),
    shift_day: Optional[int] = typer.Option(None, "--shift-day", min=0, help="Index of the first day of the shifted regime. Default: params.yaml synth.regime_shift_day."),
    no_shift: bool = typer.Option(False, "--no-shift", help="Stationary market: ignore any configured regime shift."),
    shift_vol: Optional[float] = typer.Option(None, "--shift-vol", min=0.0, help="Volatility multiplier from the shift day. Default: params.yaml synth.shift_vol_mult."),
    shift_spread: Optional[float] = typer.Option(None, "--shift-spread", min=0.0, help="Spread multiplier from the shift day. Default: params.yaml synth.shift_spread_mult."),
    shift_intraday: Optional[float] = typer.Option(None, "--shift-intraday", min=0.0, help="U-shape amplitude multiplier from the shift day (0 = flat). Default: params.yaml synth.shift_intraday."),
    generator: str = typer.Option("sim", "--generator", parser=choice(("sim", "garch_t", "cir_noise"), "generator"),
                                  help="sim: the project's simulator (the shift options apply) | garch_t: minute "
                                       "GARCH with Student-t shocks | cir_noise: CIR variance with microstructure "
                                       "noise (hfcast.data.dgp; params.yaml synth.dgp: for their knobs)."),
    lake: LakeOption = None,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    calendar: CalendarOption = None,
) -> None:
    """Simulate a market with known truth: writes raw/ bars and truth/ per date into the lake."""
    from hfcast.data.simulator import SimConfig, write_synth

    settings = _settings()
    if generator != "sim":
        _synth_dgp(settings, generator, symbols, days, start, seed, lake)
        return
    with _refused("correct the option or params.yaml synth: (see `hfcast synth --help`)", TypeError, ValueError):
        cfg = SimConfig.from_params(
            settings.param("synth", {}), n_symbols=symbols, n_days=days, start_date=start, seed=seed,
            regime_shift_day=shift_day, shift_vol_mult=shift_vol, shift_spread_mult=shift_spread,
            shift_intraday=shift_intraday)
    if no_shift:
        cfg.regime_shift_day = None
    target = _lake(settings, lake)
    summary = write_synth(cfg, target, progress=progress, market=_market(settings, calendar))
    shift = "none" if cfg.regime_shift_day is None else f"day {cfg.regime_shift_day}"
    console.print(f"[green]synth[/] {cfg.n_symbols} symbols x {len(summary['dates'])} days = {summary['rows']:,} rows "
                  f"in {summary['seconds']:.1f} s -> {target.url} (seed {cfg.seed}, regime shift {shift})")


def _synth_dgp(settings: Settings, kind: str, symbols: Optional[int], days: Optional[int], start: Optional[str],
               seed: Optional[int], lake_url: Optional[str]) -> None:
    """``hfcast synth --generator garch_t|cir_noise``: a market built apart from the simulator."""
    from hfcast.data.dgp import DGPConfig, write_dgp

    sec = dict(settings.param("synth", {}) or {})
    given = {"n_symbols": symbols, "n_days": days, "start_date": start, "seed": seed}
    fields = {**{k: sec[k] for k in ("n_symbols", "n_days", "start_date", "seed") if k in sec},
              **dict(sec.get("dgp") or {}), **{k: v for k, v in given.items() if v is not None}}
    with _refused("correct the option or params.yaml synth.dgp: (fields of hfcast.data.dgp.DGPConfig)",
                  TypeError, ValueError):
        cfg = DGPConfig(kind=kind, **fields)
    target = _lake(settings, lake_url)
    summary = write_dgp(cfg, target)
    console.print(f"[green]synth[/] {kind}: {cfg.n_symbols} symbols x {len(summary['dates'])} days -> {target.url} "
                  f"(seed {cfg.seed})")


# --- data: ingest, validate (hfcast.data.ingest, hfcast.data.validate) -------------------------

def _lake(settings: Settings, lake_url: Optional[str]):
    """The lake named by ``--lake`` (else the settings'), with the settings' storage client; an object
    store is asked once, before any work, whether it answers (a wrong endpoint fails here, in one line)."""
    from hfcast import storage

    lake = storage.Lake.from_settings(settings, lake_url)
    if storage.is_remote(lake.url):
        storage.exists(lake.url, lake.storage_options)
    return lake


def _jump_limit(settings: Settings) -> float:
    """params.yaml ``validate.jump_limit``, checked (a bad value is the user's to fix)."""
    from hfcast.data.validate import ValidateConfig

    with _refused("correct params.yaml validate: (jump_limit is a log-return > 0)", ValueError, TypeError):
        return settings.section(ValidateConfig).jump_limit


def _print_counts(title: str, totals: dict) -> None:
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
    paths: list[str] = typer.Argument(..., parser=input_file, help="Source files or URLs (LOBSTER: message and orderbook files)."),
    fmt: str = typer.Option(..., "--format", "-f", parser=choice(_ingest_formats, "format"),
                            help=ingest_formats.help_text()),
    columns: Optional[str] = typer.Option(None, "--map", parser=column_map, help="CONTRACT=SOURCE column names, e.g. ts=Timestamp,bid=BidPx"),
    tz: Optional[str] = typer.Option(None, "--tz", parser=timezone, help="Time zone of naive timestamps (default: the calendar's)."),
    stamp: str = typer.Option("start", "--stamp", parser=choice(("start", "end"), "stamp"), help="start | end: what minute a bar's timestamp marks (end: shifted back 1 minute)."),
    epoch_unit: Optional[str] = typer.Option(None, "--epoch-unit", parser=choice(("s", "ms", "us", "ns"), "unit"),
                                             help="s | ms | us | ns for numeric timestamps (default: from their magnitude)."),
    calendar: CalendarOption = None,
    ticker: Optional[str] = typer.Option(None, "--symbol", parser=symbol, help="Symbol for files without a symbol column."),
    quotes: Optional[list[str]] = typer.Option(None, "--quotes", parser=input_file, help="Quote tick file(s) to go with --format trades."),
    date: Optional[str] = typer.Option(None, "--date", parser=iso_date, help="Session date of LOBSTER files not named by the standard."),
    lake_url: LakeOption = None,
    no_progress: NoProgressOption = False,
) -> None:
    """Read real data into the lake (raw/), then validate it into validated/ + quarantine/."""
    from hfcast.data.ingest import IngestError, ingest as run_ingest, parse_column_map

    settings = _settings()
    lake, market, limit = _lake(settings, lake_url), _market(settings, calendar), _jump_limit(settings)
    with _refused("check the file against docs/MARKET_DATA.md (its format, --map, --tz, --stamp)", IngestError):
        totals = run_ingest(list(paths), fmt, lake, tz=tz, column_map=parse_column_map(columns), symbol=ticker,
                            quotes_paths=list(quotes or []), date=date, progress=not no_progress,
                            jump_limit=limit, market=market, stamp=stamp, epoch_unit=epoch_unit)
    if not totals["dates"]:
        raise UserError(f"{', '.join(paths)}: the input held no rows", "check that the file holds data rows under its header")
    _print_counts(f"ingest {fmt}: {len(totals['dates'])} date(s)", totals)
    if totals.get("ticks_quarantined"):
        console.print(f"[yellow]{totals['ticks_quarantined']} tick row(s) quarantined[/] (quarantine_ticks/)")
    for note in [*totals.get("notes", []), *[f"{d}: {t}" for d, t in totals.get("diagnoses", {}).items()]]:
        console.print(f"[yellow]{note}[/]")


@app.command()
def validate(
    dates: Optional[str] = typer.Option(None, "--dates", parser=date_spec, help="Comma-separated dates (default: every raw date)."),
    lake_url: LakeOption = None,
    no_progress: NoProgressOption = False,
    calendar: CalendarOption = None,
) -> None:
    """Validate raw/ partitions: clean rows to validated/, bad rows to quarantine/ with a reason."""
    from hfcast.data.validate import run_validate

    settings = _settings()
    wanted = [d.strip() for d in dates.split(",") if d.strip()] if dates else None
    lake, market, limit = _lake(settings, lake_url), _market(settings, calendar), _jump_limit(settings)
    with _refused("pick dates that have raw data (`hfcast synth` or `hfcast ingest` writes them)", FileNotFoundError):
        totals = run_validate(lake, wanted, progress=not no_progress, jump_limit=limit, market=market)
    if not totals["dates"]:
        raise UserError(f"no raw partitions to validate in {lake.url}", "run `hfcast synth` or `hfcast ingest` first")
    _print_counts(f"validate: {len(totals['dates'])} date(s)", totals)
    for d, text in totals.get("diagnoses", {}).items():
        console.print(f"[yellow]{d}: {text}[/]")


# --- features: featurize (hfcast.features.engine) ----------------------------------------------

@app.command()
def featurize(
    dates: Optional[list[str]] = typer.Option(None, "--dates", parser=iso_date, help="Dates (YYYY-MM-DD) to featurize; default all."),
    lake: LakeOption = None,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Processes (default params featurize.workers)."),
    calendar: CalendarOption = None,
) -> None:
    """Compute the catalogue's causal features and the labels, one date at a time, into features/."""
    from hfcast.features.engine import run_featurize

    s = _settings()
    lk, market = _lake(s, lake), _market(s, calendar)
    chosen = dates or s.param("featurize.dates", None)
    with _refused("pick dates that were validated (`hfcast validate`), or correct params.yaml featurize:",
                  FileNotFoundError, ValueError):
        summary = run_featurize(lk, dates=chosen, progress=progress,
                                workers=int(workers or s.param("featurize.workers", 1)), market=market)
    console.print(
        f"[green]featurized[/] {summary['dates']} date(s) {summary['first']}..{summary['last']}: "
        f"{summary['rows']:,} rows x {summary['n_features']} features "
        f"(quotes {'yes' if summary['quotes_available'] else 'NO: quote features unavailable'}), "
        f"{summary['seconds']:.1f}s, {summary['rows_per_s']:,.0f} rows/s with {summary['workers']} worker(s); "
        f"sources {summary['sources']}")


# --- feature store: materialize (hfcast.feature_store) -----------------------------------------

@app.command()
def materialize(
    date: Optional[str] = typer.Option(None, "--date", parser=iso_date, help="As-of date YYYY-MM-DD (default: last features date)."),
) -> None:
    """Apply the Feast repo, load the minute features online and each symbol's latest 30-minute window."""
    from hfcast import feature_store
    from hfcast.storage import Lake

    settings = _settings()
    dates = Lake.from_settings(settings).dates("features")
    as_of = date or (dates[-1] if dates else None)
    if as_of is None:
        raise UserError(f"no features partitions in the lake {settings.lake_url}", "run `hfcast featurize` first")
    with _refused("pick a --date with features (`hfcast featurize`), or check the Feast repository settings",
                  FileNotFoundError, ValueError):
        feature_store.apply(settings)
        end = dt.datetime.fromisoformat(as_of).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
        feature_store.materialize(settings, end - dt.timedelta(days=2), end)
        windows = feature_store.materialize_windows(settings, as_of)
    console.print(f"[green]materialized[/] {len(windows)} symbol window(s) as of {as_of} into {settings.feast_repo}")


# --- train, compare, evaluate (hfcast.train, hfcast.walkforward, hfcast.evaluate) --------------

def _kinds() -> tuple[str, ...]:
    from hfcast.selection import KINDS

    return KINDS


def _fold_keys() -> list[str]:
    from hfcast.walkforward import WalkForwardConfig

    return [f for f in WalkForwardConfig.__dataclass_fields__ if f not in ("label_horizon_minutes", "market")]


def fold_setting(value: str) -> str:
    """``KEY=VALUE`` with KEY a walk-forward setting (refused at parse time, before any work)."""
    key, sep, _ = value.partition("=")
    if not sep or key.strip().replace("-", "_") not in _fold_keys():
        raise OptionValueError(f"--fold {value!r} is not KEY=VALUE with a walk-forward KEY",
                               f"use one of {', '.join(_fold_keys())}, e.g. --fold test_days=10")
    return value


fold_setting.kind = "fold-setting"  # type: ignore[attr-defined]


def settings_param(value: str) -> str:
    """``Settings.to_param()`` JSON (a pipeline's ``settings`` parameter): a JSON object, or ''."""
    if value:
        try:
            ok = isinstance(json.loads(value), dict)
        except ValueError:
            ok = False
        if not ok:
            raise OptionValueError("--settings is not a JSON object",
                                   "pass Settings.to_param() JSON, e.g. '{\"params\": {\"train\": {\"epochs\": 1}}}'")
    return value


settings_param.kind = "settings-json"  # type: ignore[attr-defined]

ModelsOption = Annotated[Optional[str], typer.Option(
    "--models", "--model", "-m", parser=comma_list(architecture),
    help="Comma-separated architectures the forecaster is chosen from (those of hfcast.models: a wrong name "
         "lists them; '' = baselines only). Default: params.yaml forecaster.archs.")]
KindOption = Annotated[Optional[str], typer.Option(
    "--kind", parser=choice(_kinds, "forecaster kind"),
    help="What serves the volatility: auto (validation chooses: a network, a floored network, an ensemble or a "
         "baseline) | net | floor | ensemble | har_tod | har_rv | har_x | ewma. Default: params.yaml forecaster.kind, else auto.")]
ReturnOption = Annotated[Optional[str], typer.Option(
    "--return", parser=choice(("auto", "net", "zero"), "return choice"),
    help="The return forecast: auto (a network's head only with validated skill, else zero) | net | zero. "
         "Default: params.yaml forecaster.return, else auto.")]
FoldOption = Annotated[Optional[list[str]], typer.Option(
    "--fold", parser=fold_setting,
    help="Walk-forward setting over params.yaml walkforward:, KEY=VALUE, repeatable: train_days, val_days, "
         "test_days, step_days, embargo_days, max_folds, first_test_date, last_date, mode, eval_stride, "
         "train_stride (e.g. --fold test_days=10 --fold max_folds=1).")]


def _fold_overrides(pairs: Optional[list[str]]) -> dict:
    """``--fold KEY=VALUE`` pairs (checked by their parser) as walk-forward overrides (YAML types)."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def _archs(settings: Settings, models: Optional[str]) -> list[str]:
    """The ``--models`` list (checked by its parser), else params.yaml ``forecaster.archs``."""
    from hfcast.lifecycle import default_archs

    if models is None:
        return default_archs(settings)
    return [m.strip() for m in models.split(",") if m.strip()]


def _walkforward(settings: Settings, archs: list[str], lake_url: Optional[str], out: Optional[Path], stage: str,
                 kind: Optional[str] = None, ret: Optional[str] = None, folds: Optional[dict] = None):
    """Run archs + baselines over the folds, choose the forecaster per fold; save tables, plots, report."""
    from hfcast.evaluate import write_comparison
    from hfcast.lifecycle import return_on_test, select_options, walkforward_config
    from hfcast.train import TrainConfig
    from hfcast.walkforward import model_configs, run_walkforward

    lake = _lake(settings, lake_url)
    wf_cfg, options = walkforward_config(settings, overrides=folds), select_options(settings, kind, ret)
    result = run_walkforward(lake, archs, wf_cfg, settings.section(TrainConfig),
                             model_configs=model_configs(settings.param("walkforward", {})), options=options)
    result = return_on_test(settings, result, options, lake, wf_cfg)  # what `hfcast train` would serve
    out_dir = out or settings.home / "reports" / stage
    paths = write_comparison(result.aggregate, result.per_fold, result.predictions, out_dir,
                             title=f"hfcast {stage}: the forecaster chosen from {', '.join(archs) or 'baselines'}")
    return lake, result, paths


_WALKFORWARD_FIX = ("featurize more dates (`hfcast featurize`) or correct params.yaml walkforward: / train: "
                    "(the message names the key)")


def _print_table(result, title: str) -> None:
    from hfcast.walkforward import SERVED

    short = {"vol_qlike": "qlike", "vol_qlike_truth": "qlike*", "ret_ic": "ic", "ret_ic_truth": "ic*",
             "ret_hit": "hit", "ret_coverage": "cov_r", "rv_coverage": "cov_v", "ret_ece": "ece_r", "rv_ece": "ece_v"}
    table = Table(title=title, caption="forecaster = what each fold chose on validation (what is served); "
                                       "* = vs the simulator's latent truth; cov = 80% interval coverage; "
                                       "_r return, _v volatility; win/s = training windows per second")
    table.add_column("model")
    cols = [c for c in short if c in result.aggregate]
    for c in cols:
        table.add_column(short[c], justify="right")
    table.add_column("win/s", justify="right")
    order = [SERVED, *[m for m in result.aggregate.index if m != SERVED]]
    for model in order:
        row = result.aggregate.loc[model]
        thr = result.throughput.get(model)
        table.add_row(f"[bold]{model}[/]" if model == SERVED else str(model),
                      *[f"{row[c]:.3f}" for c in cols], f"{thr:.0f}" if thr else "-")
    # never truncate numbers: a pipe or log file gets a fixed 120-column console instead of 80
    out = console if console.is_terminal else Console(width=120)
    out.print(table)
    for fold, chosen in zip(result.folds, result.choices):
        whys = [w for w in ((chosen.evidence or {}).get(k) for k in ("not_significant", "return_replaced")) if w]
        out.print(f"fold {fold.index} (test {fold.test[0]}..{fold.test[-1]}): {chosen.describe()}"
                  + "".join(f"\n  {w}" for w in whys), markup=False, soft_wrap=True)


def _distributed_settings(settings: Settings):
    """(settings, rank) under torchrun: checkpoints on by default (``<home>/checkpoints``), so a
    killed data-parallel training resumes at its next epoch; unchanged for one process."""
    from hfcast.config import deep_merge
    from hfcast.distributed import env_rank, env_world

    if env_world() > 1:
        from hfcast.distributed import shutdown

        atexit.register(shutdown)
        if not settings.param("train.checkpoint_dir"):
            ckpt = {"train": {"checkpoint_dir": str(settings.home / "checkpoints")}}
            settings = settings.with_(params=deep_merge(settings.params, ckpt))
    return settings, env_rank()


@app.command()
def train(
    models: ModelsOption = None,
    kind: KindOption = None,
    ret: ReturnOption = None,
    fold: FoldOption = None,
    lake_url: LakeOption = None,
    out: Optional[Path] = typer.Option(None, "--out", parser=output_dir, help="Report folder (default <home>/reports/train)."),
    log_run: bool = typer.Option(True, "--log/--no-log", help="Log the run to MLflow (hfcast.registry)."),
    register: bool = typer.Option(True, "--register/--no-register", help="Register the logged forecaster as a model version."),
    gate: bool = typer.Option(True, "--gate/--no-gate", help="With --register: run the champion/challenger gate and "
                              "promote only if it passes (--no-gate registers without promoting)."),
    members_only: bool = typer.Option(False, "--members-only", help="Only train the architectures on every fold and log "
                                      "one member run each (a pipeline's parallel half; the select step chooses)."),
    settings_json: str = typer.Option("", "--settings", parser=settings_param, help="Settings.to_param() JSON (a "
                                      "pipeline's settings parameter); '' = the environment."),
    tags: Optional[list[str]] = typer.Option(None, "--tag", parser=key_value,
                                             help="KEY=VALUE run tag (repeatable), e.g. the training job's name."),
) -> None:
    """Train the architectures through walk-forward (params.yaml `walkforward:`, `train:`), choose per
    fold on validation what is served (a network, a floored network, an ensemble or a baseline for
    the volatility; a return head only with validated skill), score it with the baselines on the
    same test spans, log it to MLflow, register it and run the gate. Under `torchrun` it trains
    data-parallel (hfcast.distributed): rank 0 alone logs and registers, every epoch is checkpointed."""
    settings = _settings(settings_json)
    archs = _archs(settings, models)
    folds = _fold_overrides(fold)
    run_tags = dict(t.split("=", 1) for t in tags or ())
    if lake_url:
        settings = settings.with_(lake_url=lake_url)
    settings, rank = _distributed_settings(settings)
    if members_only:
        _train_members(settings, archs, folds, run_tags, rank)
        return
    if not log_run or rank > 0:  # under torchrun only rank 0 logs, registers and reports (hfcast.distributed)
        where = out if rank == 0 else Path(tempfile.mkdtemp(prefix=f"hfcast-train-rank{rank}-"))
        with _refused(_WALKFORWARD_FIX, ValueError, KeyError, FileNotFoundError):
            _, result, paths = _walkforward(settings, archs, None, where, "train", kind, ret, folds)
        if rank == 0:
            _print_table(result, f"walk-forward test scores ({len(result.folds)} folds)")
            console.print(f"served: {result.forecaster.kind}\nreport: {paths['report']}", soft_wrap=True)
        return
    from hfcast.lifecycle import train_and_log

    report_dir = out or settings.home / "reports" / "train"
    with _refused(_WALKFORWARD_FIX, ValueError, KeyError, FileNotFoundError):
        run = train_and_log(settings, archs, kind=kind, ret=ret, wf_overrides=folds, out_dir=report_dir, tags=run_tags)
    from hfcast.evaluate import write_comparison

    r = run.result
    paths = write_comparison(r.aggregate, r.per_fold, r.predictions, report_dir,
                             title=f"hfcast train: the forecaster chosen from {', '.join(archs) or 'baselines'}")
    _print_table(r, f"walk-forward test scores ({len(r.folds)} folds)")
    console.print(f"served: {run.kind}\nreport: {paths['report']}\n[green]logged[/] MLflow run {run.run_id}", soft_wrap=True)
    if register:
        _register_and_report(settings, run, gate)


def _train_members(settings: Settings, archs: list[str], folds: dict, tags: dict, rank: int) -> None:
    """``hfcast train --members-only``: one member run per architecture (rank 0 logs; other ranks train)."""
    from hfcast.lifecycle import train_members_and_log

    with _refused(_WALKFORWARD_FIX, ValueError, KeyError, FileNotFoundError):
        for arch in archs:
            run_id = train_members_and_log(settings, arch, wf_overrides=folds, tags=tags, log=rank == 0)
            if rank == 0:
                console.print(f"[green]logged[/] member run {run_id} ({arch})")


def _register_and_report(settings: Settings, run, gate: bool) -> None:
    """Register (and gate) a logged forecaster run and say plainly whether a champion exists."""
    from hfcast import registry
    from hfcast.lifecycle import register_and_gate, register_version

    if not gate:
        version = register_version(settings, run.run_id)
        console.print(f"[green]registered[/] {settings.model_name} version {version} (alias challenger, not gated)")
        return
    outcome = register_and_gate(settings, run.run_id, trained=run)
    verdict = "promoted to champion" if outcome.promoted else "not promoted (the gate rejected it)"
    console.print(f"[green]registered[/] {settings.model_name} version {outcome.version} ({run.kind}): {verdict}",
                  soft_wrap=True)
    for reason in outcome.decision.reasons:
        console.print(f"  {reason}", markup=False, soft_wrap=True)
    if not outcome.promoted:
        try:
            champ = registry.resolve(settings, f"{settings.model_name}@champion")
            console.print(f"champion stays version {champ.version}")
        except registry.RegistryError:
            console.print("[yellow]no champion exists[/]: nothing will be served until a version passes the gate "
                          "(or `hfcast registry promote VERSION --force --reason ...`)")


@app.command()
def compare(
    models: Optional[str] = typer.Option(None, "--models", parser=comma_list(architecture),
                                         help="Comma-separated architectures ('' = baselines only). Default: every "
                                              "architecture of hfcast.models."),
    kind: KindOption = None,
    ret: ReturnOption = None,
    fold: FoldOption = None,
    lake_url: LakeOption = None,
    out: Optional[Path] = typer.Option(None, "--out", parser=output_dir, help="Report folder (default <home>/reports/compare)."),
) -> None:
    """Every architecture and every baseline on identical walk-forward folds, and the forecaster each
    fold chose from them on validation (what `hfcast train` would serve): one table, one report."""
    from hfcast.models import architectures

    settings = _settings()
    archs = list(architectures()) if models is None else _archs(settings, models)
    with _refused(_WALKFORWARD_FIX, ValueError, KeyError, FileNotFoundError):
        _, result, paths = _walkforward(settings, archs, lake_url, out, "compare", kind, ret, _fold_overrides(fold))
    _print_table(result, f"walk-forward comparison ({len(result.folds)} folds, test spans only)")
    console.print(f"report: {paths['report']}")


@app.command()
def evaluate(
    predictions: Path = typer.Argument(..., parser=local_file, help="Predictions file (parquet/CSV): PRED_COLUMNS + labels [+ truth, fold, model]."),
    out: Path = typer.Option(Path("evaluation"), "--out", parser=output_dir, help="Folder for metrics.json, PNGs and report.html."),
) -> None:
    """Score a predictions file: QLIKE/MSE, IC/hit rate, coverage, ECE, error by confidence decile."""
    from hfcast.evaluate import evaluate_file

    with _refused("pass a predictions file with the prediction columns and the labels (see `hfcast evaluate --help`)",
                  ValueError, KeyError, FileNotFoundError):
        result = evaluate_file(predictions, out)
    for name, r in result.items():
        agg = r["aggregate"]
        console.print(f"[bold]{name}[/]: " + " ".join(f"{k}={agg[k]:.4f}" for k in
                      ("vol_qlike", "ret_ic", "ret_coverage", "rv_coverage", "ret_ece", "rv_ece") if k in agg))
    console.print(f"report: {out / 'report.html'}")


@app.command("report")
def report_cmd(
    out: Path = typer.Option(Path("hfcast-report"), "--out", parser=output_dir, help="Folder for index.html and its PNGs."),
    comparison: Optional[Path] = typer.Option(None, "--comparison", parser=input_dir, help="A `hfcast compare` folder "
                                              "(default: the newest under <home>/reports)."),
    backtest: bool = typer.Option(True, "--backtest/--no-backtest", help="Backtest the served forecasts."),
    attributions: bool = typer.Option(True, "--attributions/--no-attributions",
                                      help="Permutation importance of the champion on its latest served dates."),
) -> None:
    """One page for a quant: live performance per date, the gate's comparisons, the backtest with
    confidence intervals, attributions, models vs baselines, calibration, which data each version saw."""
    from hfcast.report import write

    with _refused("run `hfcast compare` first, or pass --comparison with a compare folder",
                  ValueError, KeyError, FileNotFoundError):
        index = write(_settings(), out, comparison, backtest=backtest, attributions=attributions)
    console.print(f"report: {index}")

# --- registry (hfcast.registry) ------------------------------------------------------------------

registry_app = typer.Typer(no_args_is_help=True, help="Model versions, aliases, the champion gate and rollback.")
app.add_typer(registry_app, name="registry")


def _registry_call(fn, *args, **kwargs):
    """Run a registry function; a missing model/alias/run is a :class:`UserError` (the registry's own
    :class:`hfcast.registry.RegistryError` is one), an outage is explained by hfcast.errors."""
    with _refused("list the versions with `hfcast registry list`", ValueError):
        return fn(*args, **kwargs)


@registry_app.command("list")
def registry_list() -> None:
    """Every version with its aliases, architecture, dataset version, status (champion, rejected by the gate...) and primary metrics."""
    from hfcast import registry

    settings = _settings()
    rows = _registry_call(registry.list_versions, settings)
    if not rows:
        console.print(f"no versions of '{settings.model_name}' in {settings.mlflow_uri}")
        return
    metrics = sorted({m for r in rows for m in r["metrics"]})
    table = Table(title=f"{settings.model_name} @ {settings.mlflow_uri}")
    for col in ("version", "aliases", "arch", "dataset", "created", "status", *metrics):
        table.add_column(col, justify="right" if col in metrics or col == "version" else "left", overflow="fold")
    for r in rows:
        style = "bold green" if "champion" in r["aliases"] else None
        table.add_row(str(r["version"]), " ".join(r["aliases"]), r["arch"], r["dataset_version"][:16],
                      r["created"].replace("T", " ")[:16], r["status"], *[f"{r['metrics'][m]:.5f}" if m in r["metrics"] else "-"
                                                 for m in metrics], style=style)
    console.print(table)


@registry_app.command("show")
def registry_show(ref: str = typer.Argument("champion", parser=model_ref, help="hfcast@champion, hfcast/3, models:/hfcast@champion or 3.")) -> None:
    """One version: aliases, source, tags (gate reasons, promotion/rollback history), metrics, artifacts."""
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
    version: str = typer.Argument(..., parser=model_ref, help="The challenger version (or any reference)."),
    force: bool = typer.Option(False, "--force", help="Skip the gate (needs --reason; recorded on the version)."),
    reason: str = typer.Option("", "--reason", help="Why (required with --force)."),
    margin: Optional[float] = typer.Option(None, "--margin", min=0.0, help="Override the params.yaml margins for every metric."),
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
        raise UserError(f"version {version} did not pass the gate (reasons above); the champion is unchanged",
                        f"promote it anyway with `hfcast registry promote {version} --force --reason WHY`")
    console.print(f"[green]champion[/] is now {settings.model_name} version "
                  f"{registry.resolve(settings, 'champion').version}")


@registry_app.command("rollback")
def registry_rollback(reason: str = typer.Option("manual rollback", "--reason", help="Recorded on both versions.")) -> None:
    """Restore the previous champion (the demoted version keeps its tags, loses the alias)."""
    from hfcast import promotion

    demoted, restored = _registry_call(promotion.rollback, _settings(), reason=reason)
    console.print(f"[yellow]rolled back[/]: champion v{demoted} -> v{restored}")


# --- export (hfcast.export) -----------------------------------------------------------

def _load_for_serving(settings: Settings, model: str, bundle: Optional[Path]):
    if bundle is not None:
        from hfcast.forecaster import Forecaster

        return Forecaster.load(str(bundle))
    from hfcast.registry import load_forecaster

    return load_forecaster(settings, model)  # a missing model is a RegistryError, itself a UserError


@app.command("export")
def export_cmd(
    model: ModelRefOption = "hfcast@champion",
    bundle: BundleOption = None,
    out: Optional[Path] = typer.Option(None, "--out", parser=output_dir, help="Output folder (default <home>/export/<name>-<version>)."),
    max_batch: int = typer.Option(1024, "--max-batch", min=1, help="Largest batch of the TensorRT profile and Triton."),
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
    with _refused("the exported graph differs from PyTorch: report it with the bundle (`hfcast registry show`)",
                  ValueError):  # parity failure
        report = export.export_all(fc, out, max_batch=max_batch, validation=val_frame, validation_dates=val_dates,
                                   market=settings.market)
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
    dates: str = typer.Option(..., "--dates", parser=date_spec, help="'2024-01-02..2024-01-31' (dates with features) or 'D1,D2'."),
    model: ModelRefOption = "hfcast@champion",
    bundle: BundleOption = None,
    dense: bool = typer.Option(True, "--dense/--sparse", help="Every minute, or every 10th minute forward-filled."),
    workers: int = typer.Option(1, "--workers", min=1, help="Dates predicted at once (threads sharing one model: 2 overlaps one date's reading and writing with another's model)."),
    out: Optional[str] = typer.Option(None, "--out", parser=storage_url, help="Output root (file:// path or s3://bucket/prefix); default: the lake."),
    force: bool = typer.Option(False, "--force", help="Redo dates that are already complete."),
    runner: RunnerOption = "auto",
) -> None:
    """Batch inference: one prediction CSV (+ manifest) per date, resumable and parallel."""
    from hfcast.predict import run_predict

    with _refused("pick --dates with features (`hfcast featurize`), or check --model / --bundle"):
        summary = run_predict(_settings(), dates, model_ref=model, bundle_dir=str(bundle) if bundle else None,
                              mode="dense" if dense else "sparse", workers=workers, out=out, force=force,
                              runner=runner)
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
        raise UserError(f"{len(summary.failed)} date(s) failed: {', '.join(r.date for r in summary.failed)} "
                        "(reasons above)", "fix what the reasons name and run the same command again: completed "
                        "dates are skipped")


# --- monitor (hfcast.monitoring) ----------------------------------------------------------------------------

monitor_app = typer.Typer(no_args_is_help=True, help="Drift + live performance vs the training reference; retraining decisions.")
app.add_typer(monitor_app, name="monitor")


def _starter_names() -> list[str]:
    from hfcast.monitoring.retraining import STARTERS_GROUP

    return sorted({"none", "inprocess", "local", "auto", *(ep.name for ep in entry_points(group=STARTERS_GROUP))})


@monitor_app.command("run")
def monitor_run(
    date: str = typer.Option(..., "--date", parser=iso_date, help="The date to check (YYYY-MM-DD): its features and prediction CSV."),
    model: ModelRefOption = "hfcast@champion",
    starter: str = typer.Option("local", "--starter", parser=choice(_starter_names, "starter"), help="What starts a retraining: local (the training pipeline "
                                "here) | kubeflow | auto (kubeflow in a pod, else local) | inprocess | none "
                                "(entry points hfcast.starters)."),
    trigger: Optional[str] = typer.Option(None, "--trigger", hidden=True, help="Old name of --starter."),
    kfp_host: Optional[str] = typer.Option(None, "--kfp-host", parser=http_url, help="Kubeflow Pipelines API URL (default params.yaml retrain.kubeflow_host)."),
    mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Also log the decision to the hfcast-monitoring experiment."),
    rerun: bool = typer.Option(False, "--rerun", help="Replace the date's decision if it was decided before (default: keep it)."),
) -> None:
    """Evidently drift (features, predictions) + live performance for one date, then decide and start a retraining."""
    from hfcast.lifecycle import load_starter
    from hfcast.monitoring.decision import MonitorConfig
    from hfcast.monitoring.drift import run_monitor

    settings = _settings()
    with _refused("predict the date first (`hfcast predict --dates DATE`), build the reference "
                  "(`hfcast monitor reference`), or pick another --starter"):
        chosen = load_starter(trigger or starter, **({"host": kfp_host} if kfp_host else {}))
        rec = run_monitor(settings, date, model, starter=chosen, log_mlflow=mlflow_log, rerun=rerun)
    checks = Checks.from_dict(rec["checks"])
    rules = settings.section(MonitorConfig).rules
    console.print(f"{rec['date']} {rec['model']} v{rec['version']}: " + ", ".join(r.summary(checks) for r in rules))
    colour = {"retrain": "bold yellow", "suppressed": "cyan"}.get(rec["action"], "green")
    console.print(f"[{colour}]{rec['explanation']}[/]")


@monitor_app.command("history")
def monitor_history(
    model: Optional[str] = typer.Option(None, "--model", help="Model name (default: settings.model_name)."),
    last: int = typer.Option(50, "--last", min=1, help="Show the last N decisions."),
) -> None:
    """The decision log (<lake>/monitoring/<model>/decisions/<date>.json; old decisions.jsonl too), oldest first."""
    from hfcast.monitoring.decision import MonitorConfig, load_history, trigger_outcome
    from hfcast.storage import Lake

    settings = _settings()
    name = model or settings.model_name
    recs = load_history(Lake.from_settings(settings), name)[-last:]
    if not recs:
        console.print(f"no monitoring decisions recorded for {name} yet")
        return
    table = Table(title=f"monitoring decisions: {name}")
    rules = settings.section(MonitorConfig).rules
    rule_cols = [c for rule in rules for c in rule.columns(recs[0])]
    for col in ("date", "version", *rule_cols, "action", "trigger"):
        table.add_column(col, overflow="fold")
    for r in recs:
        cells = {k: v for rule in rules for k, v in rule.columns(r).items()}
        table.add_row(r["date"], str(r.get("version")), *[cells.get(c, "") for c in rule_cols], r["action"],
                      trigger_outcome(r.get("trigger") or {}))
    console.print(table)
    for r in recs:  # the why, in full (too long for a table column)
        console.print(f"[bold]{r['date']}[/] v{r.get('version')}: {r.get('explanation', '')}", soft_wrap=True)


@app.command("replay")
def replay(
    first: str = typer.Option(..., "--from", parser=iso_date, help="First trading day to replay (YYYY-MM-DD)."),
    last: str = typer.Option(..., "--to", parser=iso_date, help="Last trading day to replay (YYYY-MM-DD)."),
    arch: list[str] = typer.Option([], "--arch", parser=architecture, help="Architecture(s) of a retraining (default: the champion's)."),
    mode: str = typer.Option("dense", "--mode", parser=choice(("dense", "sparse"), "mode"), help="Prediction mode: dense | sparse."),
) -> None:
    """Replay days in order with no look-ahead: arrive -> predict (champion of the moment) -> monitor -> decide -> retrain (data up to that day). Resumes where it stopped."""
    from hfcast.monitoring.decision import trigger_outcome
    from hfcast.replay import run_replay

    def show(d: str, e: dict) -> None:
        trig = trigger_outcome((e["monitor"] or {}).get("trigger") or {})
        console.print(f"{d}: predicted by v{e['predict']['version']} -> {e['monitor']['action']} {trig}"
                      f" (champion v{e.get('champion_after')})")

    if first > last:
        raise UserError(f"--from {first} is after --to {last}", "swap them")
    with _refused("check params.yaml walkforward: / monitor: (the message names the key)"):
        run_replay(_settings(), first, last, archs=arch, mode=mode, on_day=show)


@monitor_app.command("reference")
def monitor_reference(
    model: ModelRefOption = "hfcast@champion",
    bundle: Optional[Path] = typer.Option(None, "--bundle", parser=bundle_dir, help="A local bundle instead of the registry (needs --dates and NAME/VERSION)."),
    dates: Optional[str] = typer.Option(None, "--dates", parser=date_spec, help="Training dates 'A..B' (default: from the registry run)."),
    test_dates: Optional[str] = typer.Option(None, "--test-dates", parser=date_spec, help="Held-out dates scored for reference.json (with --dates)."),
) -> None:
    """Build the monitoring reference of a model version (sampled training rows + its predictions)."""
    from hfcast.monitoring.decision import MonitorConfig
    from hfcast.monitoring.drift import resolve_model
    from hfcast.monitoring.reference import build_reference, reference_from_registry
    from hfcast.predict import parse_dates
    from hfcast.storage import Lake

    settings = _settings()
    cfg = settings.section(MonitorConfig)
    with _refused("pass --dates with features (`hfcast featurize`), or a --model the registry has"):
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
    console.print(f"[green]reference[/] {doc['model']} v{doc['version']}: {doc['rows']} rows from "
                  f"{doc['train_dates'][0]}..{doc['train_dates'][-1]}; test scores {doc['test_scores'] or '-'}")


# --- backtest and explain (hfcast.backtest, hfcast.explain) --------------------------------------

def _prediction_folder(settings: Settings, model: str) -> tuple[str, str]:
    """``NAME/VERSION`` as written by ``hfcast predict``; ``NAME@ALIAS`` is resolved in the registry."""
    if "@" in model:
        from hfcast.registry import resolve

        mv = resolve(settings, model)
        return str(mv.name), str(mv.version)
    name, sep, version = model.partition("/")
    if not sep or not name or not version:
        raise UserError(f"--model must name a predictions folder, got {model!r}",
                        "write NAME/VERSION (a predictions/<NAME>/<VERSION> folder) or NAME@ALIAS")
    return name, version


def _gate_metrics() -> list[str]:
    from hfcast.backtest import GATE_METRICS

    return sorted(GATE_METRICS)


@app.command()
def backtest(
    model: str = typer.Option("hfcast@champion", "--model", parser=model_ref, help="Predictions to test: NAME/VERSION or NAME@ALIAS."),
    dates: Optional[str] = typer.Option(None, "--dates", parser=date_spec, help="'A..B' or 'D1,D2'; default: every date with predictions."),
    rebalance: Optional[int] = typer.Option(None, "--rebalance", min=1, help="Long-short: minutes between rebalances (10/30/60)."),
    quantile: Optional[float] = typer.Option(None, "--quantile", min=0.0, max=0.5, help="Long the top, short the bottom quantile (0-0.5]."),
    confidence: bool = typer.Option(False, "--confidence-weighted", help="Weight each leg by ret_60m_conf."),
    fee_bps: Optional[float] = typer.Option(None, "--fee-bps", min=0.0, help="Fee per unit traded, on top of half the spread."),
    target_vol: Optional[float] = typer.Option(None, "--target-vol", min=0.0, help="Vol targeting: annualised target (0.2 = 20%)."),
    gate_against: Optional[str] = typer.Option(None, "--gate-against", parser=model_ref, help="Champion predictions (NAME/VERSION or NAME@ALIAS): fail if ours lose."),
    gate_metric: Optional[str] = typer.Option(None, "--gate-metric", parser=choice(_gate_metrics, "gate metric"), help="net_sharpe | gross_sharpe | max_drawdown | vol_tracking_error | vol_share_beyond_1_5"),
    gate_margin: float = typer.Option(0.0, "--gate-margin", min=0.0, help="Loss tolerated on the gate metric."),
    lake: LakeOption = None,
    out: Path = typer.Option(Path("backtest"), "--out", parser=output_dir, help="Folder for backtest.json, table.csv, equity.png, tracking.png."),
) -> None:
    """Economic value after costs: volatility targeting and a long-short book on the prediction CSVs."""
    from hfcast.backtest import BacktestConfig, backtest_against, terminal_tables

    settings = _settings()
    with _refused("pick --dates with predictions (`hfcast predict`), or correct the option the message names"):
        cfg = BacktestConfig.from_params(settings.param("backtest", {}), rebalance=rebalance, quantile=quantile,
                                         confidence_weighted=confidence or None, fee_bps=fee_bps,
                                         target_vol=target_vol, gate_metric=gate_metric)
        against = "/".join(_prediction_folder(settings, gate_against)) if gate_against else None
        out_run = backtest_against(settings, "/".join(_prediction_folder(settings, model)), dates, out, against,
                                   gate_margin, lake=_lake(settings, lake), cfg=cfg)
    result, gate = out_run.result, out_run.gate

    wide = Console(width=min(console.width, 100)) if console.is_terminal else Console(width=100)
    for title, header, rows in terminal_tables(result):
        table = Table(*header, title=title, box=box.SIMPLE_HEAD, padding=(0, 1), title_justify="left")
        for col in table.columns[1:]:
            col.justify = "right"
        for row in rows:
            table.add_row(*row)
        wide.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"report: {out / 'backtest.json'} (plots: equity.png, tracking.png)")
    if gate is not None:
        verdict = "[green]passed[/]" if gate["passed"] else "[red]failed[/]"
        console.print(f"gate {gate['metric']}: {gate['challenger']:.3f} vs {gate['champion']:.3f} -> {verdict}")
        if gate.get("reason"):
            console.print(f"  {gate['reason']}", markup=False, soft_wrap=True)
        if not gate["passed"]:
            raise typer.Exit(1)


explain_app = typer.Typer(no_args_is_help=True, help="Why the model says what it says: importance, attention, attributions.")
app.add_typer(explain_app, name="explain")


def _forecaster(settings: Settings, model: str, bundle: Optional[Path]):
    from hfcast.forecaster import Forecaster
    from hfcast.predict import prepare_bundle

    path, _, _ = prepare_bundle(settings, model, str(bundle) if bundle else None)
    return Forecaster.load(path)


@explain_app.command("global")
def explain_global(
    dates: str = typer.Option(..., "--dates", parser=date_spec, help="Test span with matured labels: 'A..B' or 'D1,D2'."),
    model: ModelRefOption = "hfcast@champion",
    bundle: BundleOption = None,
    repeats: int = typer.Option(3, "--repeats", min=1, help="Shuffles per feature group."),
    max_windows: int = typer.Option(4000, "--max-windows", min=100, help="Test windows scored."),
    lake: LakeOption = None,
    out: Path = typer.Option(Path("explain"), "--out", parser=output_dir, help="Folder for explain.json, importance.png, attention.png."),
) -> None:
    """Feature-group permutation importance (returns and volatility), attention by time of day."""
    from hfcast.explain import run_global
    from hfcast.predict import parse_dates

    settings = _settings()
    lk = _lake(settings, lake)
    with _refused("pick --dates with features and matured labels (`hfcast featurize`)"):
        fc = _forecaster(settings, model, bundle)
        res = run_global(lk, fc, parse_dates(dates, lk.dates("features")), out, repeats, max_windows)
    console.print(f"[bold]permutation importance[/] on {res['windows']} windows (loss increase; base "
                  f"ret MSE {res['base_loss']['ret']:.3g}, vol QLIKE {res['base_loss']['vol']:.3g})")
    for r in res["permutation_importance"]:
        console.print(f"  {r['group']:<14} ret {r['ret_rel']:+.1%}  vol {r['vol_rel']:+.1%}")
    console.print(f"report: {out / 'explain.json'}; plots: {', '.join(res['plots'])}")


@explain_app.command("forecast")
def explain_forecast_cmd(
    ticker: str = typer.Option(..., "--symbol", parser=symbol, help="Symbol of the forecast."),
    ts: str = typer.Option(..., "--ts", parser=timestamp, help="Forecast minute (UTC, e.g. 2024-01-05T15:00:00Z)."),
    model: ModelRefOption = "hfcast@champion",
    bundle: BundleOption = None,
    top: int = typer.Option(10, "--top", min=1, help="Top (minute, feature) cells shown."),
    lake: LakeOption = None,
) -> None:
    """The top drivers of one forecast (integrated gradients over its 30 x F window)."""
    from hfcast.explain import explain_forecast

    settings = _settings()
    lk = _lake(settings, lake)
    with _refused("pick a --symbol and a --ts (a minute of a session with features) that the lake holds"):
        res = explain_forecast(lk, _forecaster(settings, model, bundle), ticker, ts, top=top)
    for target in ("ret", "vol"):
        e = res[target]
        what = "" if e["explained"] == e["column"] else f"; {e['explained']} {e['value']:+.4g}"
        console.print(f"[bold]{e['column']}[/] {e['forecast']:+.4g}{what} = "
                      + " + ".join(f"{k} {v:+.4g}" for k, v in e["parts"].items()) + f"  ({e['explained_unit']})",
                      soft_wrap=True)
        if e.get("note"):  # no network computes this target
            console.print(f"  {e['note']}", soft_wrap=True)
            continue
        console.print(f"  attributions of the network part (vs {e['reference']:+.4g} at the training-mean window; "
                      f"completeness gap {e['completeness_gap']:+.2g})")
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
    path (:class:`hfcast.cliopts.HfcastGroup`: plugin commands show two-line errors too)."""
    build_app()()


if __name__ == "__main__":
    main()
