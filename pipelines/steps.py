"""How every pipeline step is sized and named: one helper, used by each pipeline.

Why requests and limits on every step: without them a step is scheduled as BestEffort, the first
pod evicted under memory pressure, and a runaway step (a featurize over the whole lake) can starve
its node. The sizes follow what each step loads: the training step holds the windows of a
walk-forward fold; plan, compare, deploy and the retraining trigger only talk to services.

GPU steps run on the CUDA image with one ``nvidia.com/gpu`` and tolerate the taint GPU nodes
usually carry (``nvidia.com/gpu``, NoSchedule: the NVIDIA GPU operator's and the managed services'
convention), through kfp-kubernetes: kfp itself cannot set a toleration, and relying on the
ExtendedResourceToleration admission plugin leaves a GPU step Pending on clusters without it.
No node selector: the GPU request already limits the step to GPU nodes, and GPU node labels differ
from cluster to cluster (add one with ``kfp.kubernetes.add_node_selector`` where a cluster needs it).

Why no security context here: kfp-kubernetes 2.17 can set only the user (set_security_context),
and a KFP backend older than the SDK's proto refuses a platform spec field it does not know; the
step pods run as the images' non-root USER (10001), and Kubeflow's own backend decides the rest
(docs/CLUSTER.md, "Pod security").
"""

from __future__ import annotations

from dataclasses import dataclass

from kfp import dsl
from kfp import kubernetes as kfp_k8s

from components import GPU_IMAGE

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True)
class Size:
    """Kubernetes requests (what the scheduler reserves) and limits (what the step may use)."""

    cpu: str
    memory: str
    cpu_limit: str
    memory_limit: str


TINY = Size("250m", "1Gi", "1", "2Gi")      # API calls: deploy, plan, start a retraining
SMALL = Size("1", "4Gi", "2", "8Gi")        # registry + one model: compare, gate, export, monitor
MEDIUM = Size("2", "8Gi", "4", "16Gi")      # lake-wide work: prepare (featurize), Feast, batch predict
LARGE = Size("4", "16Gi", "8", "32Gi")      # walk-forward training of one architecture


def step(task: dsl.PipelineTask, name: str, size: Size, gpu: bool = False) -> dsl.PipelineTask:
    """Display name, no caching (every step reads or writes shared state: lake, registry), requests
    and limits; ``gpu``: the CUDA image with one GPU and the GPU nodes' toleration."""
    task.set_display_name(name).set_caching_options(False)
    task.set_cpu_request(size.cpu).set_cpu_limit(size.cpu_limit)
    task.set_memory_request(size.memory).set_memory_limit(size.memory_limit)
    if gpu:
        task.set_container_image(GPU_IMAGE).set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
        kfp_k8s.add_toleration(task, **GPU_TOLERATION)
    return task
