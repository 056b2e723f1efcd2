"""Process-group set-up under torchrun, rank-0 helpers and the global-batch arithmetic.

``torchrun --nproc_per_node=N [--nnodes=M ...] -m medvlp.train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``MASTER_ADDR`` / ``MASTER_PORT`` in every process; :func:`init_distributed` reads
them and starts the default process group (NCCL on CUDA, gloo on CPU). Without them (a notebook, a
plain ``python -m medvlp.train``) it is a one-process run. A process group that the caller already
started (tests, notebooks using torch.multiprocessing) is used as is and left running.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device``, and whether
    :func:`init_distributed` started the process group (and so must end it)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: ``cuda:<local_rank>`` when CUDA is available, else CPU; ``"cpu"``; ``"cuda"``
    (``cuda:<local_rank>``); or an explicit ``"cuda:1"``."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA device; "
                               "use device: cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device(requested)


def init_distributed(device: str = "auto", backend: str | None = None) -> DistContext:
    """Join (or start) the default process group from torchrun's environment variables.

    Args:
        device: see :func:`pick_device`.
        backend: ``None`` picks ``nccl`` for CUDA devices and ``gloo`` otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        dev = pick_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistContext(rank, world, local_rank, dev, owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, 0, dev, owns_group=False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"),
                            rank=rank, world_size=world)
    return DistContext(rank, world, local_rank, dev, owns_group=True)


def shutdown_distributed(ctx: DistContext) -> None:
    """End the process group if :func:`init_distributed` started it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def micro_batch_size(global_batch_size: int, world_size: int, grad_accum_steps: int) -> int:
    """Samples per rank per forward pass: ``global_batch_size / (world_size * grad_accum_steps)``.

    Raises:
        ValueError: naming the three numbers when the global batch does not split evenly.
    """
    if global_batch_size < 1 or grad_accum_steps < 1:
        raise ValueError(f"global_batch_size ({global_batch_size}) and grad_accum_steps ({grad_accum_steps}) "
                         "must be positive")
    parts = world_size * grad_accum_steps
    if global_batch_size % parts:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by world_size {world_size} x "
            f"grad_accum_steps {grad_accum_steps} = {parts}; pick a global batch that is a multiple of "
            f"{parts} "
            f"(e.g. {max(parts, global_batch_size // parts * parts)}) or change grad_accum_steps")
    return global_batch_size // parts


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_mean(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Mean over ranks of a dict of floats (same keys on every rank); identity on one process."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64,
                     device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= ctx.world_size
    return dict(zip(keys, t.tolist()))


def gather_objects(obj, ctx: DistContext) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
