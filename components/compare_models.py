"""Collect every architecture's test-span scores and pick the one the gate should judge."""

from typing import List, NamedTuple

from kfp.dsl import Input, Metrics, Output

from components._image import hfcast_component


@hfcast_component
def compare_models(
    results: Input[List[Metrics]],
    comparison: Output[Metrics],
    home: str = "",
    mlflow_uri: str = "",
    params_json: str = "",
) -> NamedTuple("Best", [("best_arch", str), ("best_run_id", str)]):
    """Rank the trained architectures by the gate's primary metrics and return the best one.

    The ranking uses the gate's own rules (``hfcast.gate.config_from_settings``): each primary
    metric in its direction, the first as the main key; so the model sent to the gate is the one
    with the best chance to pass it. Every architecture's scores are kept in ``comparison``.
    """
    import logging
    from collections import namedtuple

    from components._settings import make_settings
    from hfcast.gate import config_from_settings

    logging.basicConfig(level=logging.INFO)
    if not results:
        raise ValueError("compare_models got no training results (did every train step fail?)")
    rules = config_from_settings(make_settings(home=home, mlflow_uri=mlflow_uri, params_json=params_json)).rules

    def key(m):  # smaller is better for sorting; a missing score sorts last
        out = []
        for r in rules:
            v = m.metadata.get(r.name)
            out.append(float("inf") if v is None else (-float(v) if r.higher_is_better else float(v)))
        return tuple(out)

    ranked = sorted(results, key=key)
    best = ranked[0]
    for m in ranked:
        for r in rules:
            if r.name in m.metadata:
                comparison.log_metric(f"{m.metadata['arch']}/{r.name}", float(m.metadata[r.name]))
    comparison.metadata.update({"ranking": [m.metadata["arch"] for m in ranked], "best_arch": best.metadata["arch"],
                                "best_run_id": best.metadata["run_id"], "rules": [r.name for r in rules]})
    logging.info("ranking %s", [m.metadata["arch"] for m in ranked])
    return namedtuple("Best", ["best_arch", "best_run_id"])(best.metadata["arch"], best.metadata["run_id"])
