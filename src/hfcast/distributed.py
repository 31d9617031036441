"""Data-parallel training under ``torchrun`` (or a Kubeflow PyTorchJob), as one small context.

Why a module: the trainer, the command line and the pipeline component must agree on which
process is rank 0 (the only one that logs to MLflow, writes checkpoints and reports), and the
process group is started from the environment that ``torchrun`` and the training operator set
(``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``). Without those
variables everything here is a no-op: one process, rank 0 of 1.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_rank() -> int:
    """The global rank the launcher gave this process (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_from_env(device_name: str = "auto") -> DistContext:
    """Join the process group the launcher describes (once per process); gloo on CPU, NCCL on CUDA.

    Args:
        device_name: ``train.device``; ``cpu`` forces gloo even where CUDA exists.
    """
    world = env_world()
    if world <= 1:
        return DistContext()

    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and not device_name.startswith("cpu")
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")  # env://: MASTER_ADDR/PORT, RANK, WORLD_SIZE
        log.info("joined the process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(),
                 dist.get_backend())
    return DistContext(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """Each rank on its own GPU (``cuda:LOCAL_RANK``); CPU ranks share the CPU."""
    if ctx.active and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def data_parallel(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` in DistributedDataParallel, its buffers not re-broadcast before each forward.

    The networks hold no buffers, so this only keeps DDP from a collective per step. torch 2.13
    deprecates ``broadcast_buffers`` (a FutureWarning on every rank of every ``hfcast train`` under
    torchrun) for ``forward_sync_buffers``; the older name is used only by a torch without the new one.
    """
    names = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in names else {"broadcast_buffers": False}
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of ``t`` over ranks (``t`` itself when not distributed)."""
    if ctx.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_floats(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Rank 0's values on every rank: decisions (early stopping) must not depend on float noise."""
    if not ctx.active:
        return values

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.cpu().tolist()


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (the end of ``hfcast train`` under torchrun)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
