"""Collect every architecture's test-span scores and pick the one the gate should judge."""

from typing import List, NamedTuple

from kfp.dsl import Input, Metrics, Output

from components._image import hfcast_component


@hfcast_component
def compare_models(
    results: Input[List[Metrics]],
    comparison: Output[Metrics],
    settings: str = "",
) -> NamedTuple("Best", [("best_arch", str), ("best_run_id", str)]):
    """Rank the trained architectures with ``hfcast.lifecycle.rank_runs`` (the gate's primary
    metrics, each in its direction) and return the best: the one with the best chance to pass the
    gate. Every architecture's scores and the ranking are kept in ``comparison``.
    """
    import logging
    from collections import namedtuple

    from components._common import step_settings
    from hfcast.contracts import finite
    from hfcast.lifecycle import rank_runs

    s = step_settings(settings)
    runs = [dict(m.metadata) for m in results]
    ranked = rank_runs(runs, s)
    best = ranked[0]
    for run in runs:
        for name, value in run.items():
            if name not in ("arch", "run_id") and finite(value):
                comparison.log_metric(f"{run['arch']}/{name}", float(value))
    comparison.metadata.update({"ranking": [r["arch"] for r in ranked], "best_arch": best["arch"],
                                "best_run_id": best["run_id"]})
    logging.info("ranking %s", [r["arch"] for r in ranked])
    return namedtuple("Best", ["best_arch", "best_run_id"])(best["arch"], best["run_id"])
