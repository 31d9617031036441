"""``hfcast pipeline run|compile|submit`` and ``hfcast demo``: a command plugin of the ``hfcast`` CLI
(entry point group ``hfcast.cli``).

Why a plugin: these commands need kfp, which the core library never imports; installing the
``pipelines`` package (part of this distribution) is what adds them. Each command imports what it
needs inside its body, so ``hfcast --help`` stays fast.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from hfcast.cliopts import architecture, choice, comma_list, cron6, http_url, key_value, output_dir
from hfcast.errors import UserError

console = Console()
pipeline_app = typer.Typer(no_args_is_help=True, help="Kubeflow pipelines: run locally, compile, submit to a cluster.")


def _pipeline_names() -> list[str]:
    from pipelines.names import PIPELINES

    return sorted(PIPELINES)


def _parse_params(items: Optional[list[str]], fn: Any = None) -> dict[str, Any]:
    """``k=v`` pairs; a value that parses as JSON (numbers, true, lists) is used as such, else a string.
    A parameter the pipeline ``fn`` declares as ``str`` (``settings``: a JSON object) stays a string."""
    strings = set()
    if fn is not None:
        strings = {k for k, p in inspect.signature(fn.pipeline_func).parameters.items() if p.annotation is str}
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--param expects KEY=VALUE, got {item!r}", "write it like epochs=2")
        try:
            out[key] = value if key in strings else json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@pipeline_app.command("run")
def pipeline_run(
    name: str = typer.Argument(..., parser=choice(_pipeline_names, "pipeline"),
                               help="training-cpu | training-gpu | batch | monitoring"),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", parser=key_value,
                                              help="Pipeline parameter KEY=VALUE (repeatable)."),
) -> None:
    """Run a pipeline on this machine with the Kubeflow local runner (the current settings by default)."""
    import time

    from hfcast.config import get_settings
    from pipelines.local import run_local
    from pipelines.names import pipeline_function

    fn = pipeline_function(name)
    accepted = set(inspect.signature(fn.pipeline_func).parameters)
    params: dict[str, Any] = {"settings": get_settings().to_param()} if "settings" in accepted else {}
    params.update(_parse_params(param, fn))
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise UserError(f"pipeline {name} has no parameter(s) {unknown}", f"it takes {', '.join(sorted(accepted))}")
    t0 = time.perf_counter()
    try:
        outputs = run_local(name, **params)
    except RuntimeError as exc:
        raise UserError(f"pipeline {name} failed: {exc}", "the failed step's log above names the cause") from exc
    console.print(f"[green]pipeline {name}[/] finished in {time.perf_counter() - t0:.1f} s"
                  + (f": {outputs}" if outputs else ""))


@pipeline_app.command("compile")
def pipeline_compile(
    out: Optional[Path] = typer.Option(None, "--out", parser=output_dir, help="Folder (default pipelines/compiled)."),
) -> None:
    """Compile every pipeline to YAML for the Kubeflow UI (`make compile-pipelines`)."""
    from pipelines.compile import compile_all
    from pipelines.names import COMPILED

    for p in compile_all(out or COMPILED):
        console.print(f"compiled {p}")


@pipeline_app.command("submit")
def pipeline_submit(
    name: str = typer.Argument(..., parser=choice(_pipeline_names, "pipeline"),
                               help="training-gpu | training-cpu | batch | monitoring"),
    host: Optional[str] = typer.Option(None, "--host", parser=http_url, help="KFP API URL, e.g. http://localhost:8080 (port-forward); default in-cluster."),
    experiment: str = typer.Option("hfcast", "--experiment", help="KFP experiment (created if absent)."),
    recurring_cron: Optional[str] = typer.Option(None, "--recurring-cron", parser=cron6, help="6-field cron (UTC), e.g. '0 30 21 * * 1-5': a recurring run, max concurrency 1."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", parser=key_value,
                                              help="Pipeline parameter KEY=VALUE (repeatable)."),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Kubeflow profile namespace (multi-user)."),
    service_account: Optional[str] = typer.Option(None, "--service-account", help="Run as this ServiceAccount (e.g. hfcast-pipeline)."),
) -> None:
    """Start a run (or a recurring run) on a Kubeflow Pipelines cluster."""
    from pipelines.names import pipeline_function
    from pipelines.submit import submit

    params = _parse_params(param, pipeline_function(name))
    try:
        res = submit(name, host=host, params=params, experiment=experiment, recurring_cron=recurring_cron,
                     namespace=namespace, service_account=service_account)
    except ValueError as exc:
        raise UserError(str(exc), "check --param, --recurring-cron and --namespace against "
                        "`hfcast pipeline submit --help`") from exc
    console.print(f"[green]{res['kind']}[/] {res['id']} in experiment {res['experiment_id']}")


def demo(
    s3: bool = typer.Option(False, "--s3", help="Lake in a SeaweedFS S3 bucket on 127.0.0.1 instead of a local folder."),
    home: Path = typer.Option(Path(".hfcast/demo"), "--home", parser=output_dir, help="State folder (wiped at the start)."),
    symbols: int = typer.Option(12, "--symbols", min=2, help="Simulated symbols."),
    days: int = typer.Option(22, "--days", min=12, help="Simulated trading days."),
    shift_day: int = typer.Option(14, "--shift-day", min=2, help="First day of the shifted regime."),
    archs: str = typer.Option("lstm,tcn", "--archs", parser=comma_list(architecture), help="Architectures to train (comma-separated)."),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Start the model server and send requests at the end."),
) -> None:
    """The whole story on embedded defaults: simulate -> prep -> Feast -> train -> gate -> register ->
    export -> batch predict -> monitor (drift after the shift retrains once) -> serve."""
    from pipelines.demo import DemoConfig, run_demo
    from pipelines.demo_output import quiet_terminal, redirect_teardown, summary_lines

    if not 2 <= shift_day < days:
        raise UserError(f"--shift-day must lie in [2, {days}) (--days {days}), got {shift_day}",
                        f"pass --shift-day between 2 and {days - 1}, or more --days")
    train_days = min(12, shift_day)
    cfg = DemoConfig(symbols=symbols, days=days, shift_day=shift_day, train_days=train_days,
                     archs=tuple(a.strip() for a in archs.split(",") if a.strip()), s3=s3, serve=serve)
    log_path = home.resolve().parent / f"{home.name}.log"  # beside <home>, which the demo wipes
    log_path.unlink(missing_ok=True)
    with quiet_terminal(log_path) as terminal:
        terminal.write(f"hfcast demo running (about 5 minutes); details go to {log_path}\n")
        try:
            summary = run_demo(cfg, home, Console(width=120))
        except Exception as exc:
            terminal.write(f"demo failed: {exc}\nfull log: {log_path}\n")
            raise typer.Exit(1) from None
    print("\n".join(summary_lines(summary, log_path)))
    redirect_teardown(log_path)


def register(app: typer.Typer) -> None:
    """Add ``pipeline ...`` and ``demo`` to the ``hfcast`` app (the ``hfcast.cli`` entry point)."""
    app.add_typer(pipeline_app, name="pipeline")
    app.command("demo")(demo)
