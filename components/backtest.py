"""Backtest one model version's prediction CSVs: economic value after costs (hfcast.backtest)."""

from typing import List, Optional

from kfp.dsl import HTML, Artifact, Input, Metrics, Output

from components._image import hfcast_component


@hfcast_component
def backtest(
    report: Output[Artifact],
    equity: Output[HTML],
    metrics: Output[Metrics],
    model_ref: str = "",
    plan: Optional[Input[Artifact]] = None,
    csvs: List[str] = [],
    dates: str = "",
    gate_against: str = "",
    gate_margin: float = 0.0,
    settings: str = "",
) -> bool:
    """Volatility targeting and the long-short book on ``predictions/<NAME>/<VERSION>/``
    (``hfcast.backtest.run_backtest``, rules from params.yaml ``backtest:``), side by side with
    the baselines, zero-skill and (simulated lakes) oracle portfolios on the same rows.

    Args:
        model_ref: NAME/VERSION of the prediction folder (as written by batch_predict).
        plan: plan_batch's artifact instead of ``model_ref``: the version pinned for the batch run.
        csvs: the prediction CSVs of the run (dsl.Collected): only orders the step after them.
        dates: 'A..B' or 'D1,D2'; '' = every date with predictions.
        gate_against: NAME/VERSION of the champion's predictions; '' = no gate.
        gate_margin: loss tolerated on the gate metric (``backtest.gate_metric``).
        settings: JSON from ``Settings.to_param()`` ('' = the environment).

    Returns:
        Whether the gate passed (True when there is none): a plain output a dsl.If can read.
    """
    import json
    from pathlib import Path

    from components._common import step_settings
    from hfcast.backtest import BacktestConfig, equity_html, gate_check, headline_metrics, run_backtest, split_model_ref
    from hfcast.storage import Lake

    s = step_settings(settings)
    cfg = BacktestConfig.from_params(s.param("backtest", {}))
    lake = Lake.from_settings(s)
    name, version = split_model_ref(plan.metadata["model_ref"] if plan is not None else model_ref)
    result = run_backtest(lake, name, version, dates or None, cfg, report.path)
    for key, value in headline_metrics(result).items():
        metrics.log_metric(key, value)
    passed = True
    if gate_against:
        cname, cversion = gate_against.split("/", 1)
        gate = gate_check(result, run_backtest(lake, cname, cversion, result.dates, cfg), margin=gate_margin)
        passed = gate["passed"]
        metrics.metadata.update({"gate": json.dumps(gate, default=float)})
    metrics.metadata.update({"model": f"{name}/{version}", "dates": f"{result.dates[0]}..{result.dates[-1]}",
                             "gate_metric": cfg.gate_metric, "gate_value": result.gate_value, "notes": "; ".join(result.notes)})
    Path(equity.path).write_text(equity_html(f"{report.path}/equity.png", f"{name}/{version}"))
    return passed

if __name__ == "__main__":
    from kfp import compiler

    compiler.Compiler().compile(backtest, "backtest_component.yaml")
