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
    import base64
    import json
    import logging

    from hfcast.backtest import BacktestConfig, gate_check, run_backtest
    from hfcast.config import settings_from_param
    from hfcast.storage import Lake

    logging.basicConfig(level=logging.INFO)
    s = settings_from_param(settings)
    cfg = BacktestConfig.from_params(s.param("backtest", {}))
    lake = Lake.from_settings(s)
    ref = plan.metadata["model_ref"] if plan is not None else model_ref
    if "/" not in ref:
        raise ValueError(f"model_ref must be NAME/VERSION (a predictions/<NAME>/<VERSION> folder), got {ref!r}")
    name, version = ref.split("/", 1)
    result = run_backtest(lake, name, version, dates or None, cfg, report.path)
    for book, summary in (("ls", result.long_short), ("vol", result.vol_target)):
        for method, values in summary.items():
            for key in ("net_sharpe", "gross_sharpe", "max_drawdown", "tracking_error", "share_beyond_1_5"):
                if isinstance(values.get(key), float):
                    metrics.log_metric(f"{book}_{method}_{key}", values[key])
    passed = True
    if gate_against:
        cname, cversion = gate_against.split("/", 1)
        gate = gate_check(result, run_backtest(lake, cname, cversion, result.dates, cfg), margin=gate_margin)
        passed = gate["passed"]
        metrics.metadata.update({"gate": json.dumps(gate, default=float)})
    metrics.metadata.update({"model": f"{name}/{version}", "dates": f"{result.dates[0]}..{result.dates[-1]}",
                             "gate_metric": cfg.gate_metric, "gate_value": result.gate_value, "notes": "; ".join(result.notes)})
    with open(f"{report.path}/equity.png", "rb") as fh:  # shown in the Kubeflow UI
        png = base64.b64encode(fh.read()).decode()
    with open(equity.path, "w") as fh:
        fh.write(f'<html><body><h3>{name}/{version}</h3><img src="data:image/png;base64,{png}"></body></html>')
    return passed


if __name__ == "__main__":
    from kfp import compiler

    compiler.Compiler().compile(backtest, "backtest_component.yaml")
