"""Gathering features across ranks for the losses (open_clip ``gather_with_grad`` semantics).

Every function is the identity on one process (torch.distributed not initialised, or world size 1).
Ranks may hold different numbers of rows (e.g. the samples where one anatomy is intact): tensors are
padded to the largest count for the collective and the padding is cut off again.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one rank."""
    return rank_and_world()[1] > 1


def gather_sizes(n_rows: int, device: torch.device) -> list[int]:
    """Row counts of every rank (a list of ``world_size`` ints, in rank order)."""
    if not is_distributed():
        return [n_rows]
    mine = torch.tensor([n_rows], dtype=torch.long, device=device)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    return [int(p.item()) for p in parts]


def _pad_rows(x: torch.Tensor, n_rows: int) -> torch.Tensor:
    if x.shape[0] == n_rows:
        return x
    pad = x.new_zeros((n_rows - x.shape[0], *x.shape[1:]))
    return torch.cat([x, pad], dim=0)


def gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``x`` ``[n_r, ...]`` of every rank along dim 0, keeping the autograd graph.

    The backward pass sums the gradients that all ranks computed for this rank's rows (an
    autograd-aware all-gather, ``torch.distributed.nn.functional.all_gather``).

    Args:
        x: this rank's rows.
        sizes: row counts of every rank if already known (from :func:`gather_sizes`).

    Returns:
        ``[sum_r n_r, ...]``, rows of rank 0 first.
    """
    if not is_distributed():
        return x
    if sizes is None:
        sizes = gather_sizes(x.shape[0], x.device)
    parts = dist_nn.all_gather(_pad_rows(x, max(sizes)).contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)


def gather_no_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Like :func:`gather_with_grad` for labels and other constants (bool tensors allowed)."""
    if not is_distributed():
        return x
    if sizes is None:
        sizes = gather_sizes(x.shape[0], x.device)
    as_bool = x.dtype == torch.bool
    y = _pad_rows(x.detach().to(torch.uint8) if as_bool else x.detach(), max(sizes)).contiguous()
    parts = [torch.empty_like(y) for _ in sizes]
    dist.all_gather(parts, y)
    out = torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)
    return out.bool() if as_bool else out


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (no gradient); ``x`` itself on one process."""
    if not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y
