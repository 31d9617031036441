"""Train one architecture on every walk-forward fold and log its networks (one ParallelFor item)."""

from kfp.dsl import Dataset, Input, Metrics, Output

from components._image import hfcast_component


@hfcast_component
def train_model(
    arch: str,
    features: Input[Dataset],
    metrics: Output[Metrics],
    settings: str = "",
    reason: str = "",
    drifted_dates: str = "",
) -> str:
    """Walk-forward train ``arch`` on every fold and log its networks as a member run:
    ``hfcast.lifecycle.train_members_and_log``. What is served is chosen afterwards, over every
    architecture and the baselines, by the select step.

    The GPU training pipeline runs this on the CUDA image with one GPU; it also runs on CPU. The
    lake is the one ``features`` points at. ``reason`` (manual, drift: ...) and ``drifted_dates``
    (comma-separated) are recorded on the run.

    Returns:
        The member run id (also in the metrics' metadata with the architecture).
    """
    from components._common import step_settings
    from hfcast.lifecycle import train_members_and_log

    s = step_settings(settings, lake_url=features.metadata["lake_url"])
    run_id = train_members_and_log(s, arch, reason=reason, drifted_dates=tuple(d for d in drifted_dates.split(",") if d))
    metrics.metadata.update({"arch": arch, "run_id": run_id})
    metrics.log_metric("trained", 1)
    return run_id
