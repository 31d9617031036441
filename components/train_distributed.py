"""Train one architecture on N pods as a Kubeflow PyTorchJob (data-parallel), for models that
outgrow one node; the result is the same member run ``train_model`` would log."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components._image import hfcast_component


@hfcast_component
def train_distributed(
    arch: str,
    features: Input[Dataset],
    metrics: Output[Metrics],
    workers: int = 2,
    gpus_per_worker: int = 1,
    settings: str = "",
    namespace: str = "",
    timeout_hours: float = 24.0,
    run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER,
) -> str:
    """Create a PyTorchJob that runs ``torchrun -m hfcast train --model ARCH --members-only`` on
    ``workers`` pods with ``gpus_per_worker`` GPUs each (``components._pytorchjob``), wait for it,
    fail with its reason, and report the member run its rank 0 logged (found by the job-name tag):
    the select step chooses the served forecaster from it, as from ``train_model``'s.

    A killed or restarted job resumes from its last finished epoch: ``hfcast train`` under
    torchrun checkpoints every epoch (``train.checkpoint_dir``; set it to a URL every pod reaches,
    e.g. ``s3://.../checkpoints``, through ``settings``).

    Args:
        workers: pods (1 Master + workers - 1 Workers).
        gpus_per_worker: GPUs and torchrun processes per pod (0 = CPU pods, one process each).
        namespace: where the job runs ('' = the step's own namespace).
        timeout_hours: fail the step (the job is left for inspection) after this long.

    Returns:
        The member run id (also in the metrics' metadata with the architecture).
    """
    import logging

    from kubernetes import client, config

    from components import _pytorchjob as pj
    from components._common import step_settings
    from components._image import GPU_IMAGE, IMAGE

    s = step_settings(settings, lake_url=features.metadata["lake_url"])
    if not namespace:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as fh:
            namespace = fh.read().strip()
    config.load_incluster_config()
    spec = pj.JobSpec(name=pj.job_name(arch, run_id), arch=arch, workers=workers, gpus_per_worker=gpus_per_worker,
                      settings=s.to_param(), image=GPU_IMAGE if gpus_per_worker else IMAGE)
    pj.run(client.CustomObjectsApi(), namespace, spec, timeout_s=timeout_hours * 3600)
    run_id_, _ = pj.logged_run(s, spec.name)
    metrics.log_metric("trained", 1)
    metrics.metadata.update({"arch": arch, "run_id": run_id_, "job": spec.name, "workers": workers,
                             "gpus_per_worker": gpus_per_worker})
    logging.info("PyTorchJob %s logged MLflow run %s", spec.name, run_id_)
    return run_id_
