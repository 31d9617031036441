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
    (``hfcast.backtest.backtest_against``, rules from params.yaml ``backtest:``), side by side with
    the baselines, zero-skill and (simulated lakes) oracle portfolios on the same rows, and the gate
    against the champion's predictions when asked.

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
    from pathlib import Path

    from components._common import step_settings
    from hfcast.backtest import backtest_against

    out = backtest_against(step_settings(settings), plan.metadata["model_ref"] if plan is not None else model_ref,
                           dates or None, report.path, against=gate_against or None, margin=gate_margin)
    for key, value in out.metrics().items():
        metrics.log_metric(key, value)
    metrics.metadata.update(out.metadata())
    Path(equity.path).write_text(out.equity_page())
    return out.passed
