"""Shared helpers of the losses: chunk sizes, compute dtypes under autocast, scalar arguments."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

ChunkSize = int | Literal["auto"] | None

#: Elements of one logit block (rows x columns) that ``chunk_size="auto"`` aims for: 2**22 values
#: = 16 MiB in float32. Small enough to stay cheap to allocate and cache friendly, large enough
#: for the block matmuls to run at full speed (measured in bench/losses.py).
AUTO_BLOCK_ELEMENTS = 1 << 22
#: ``"auto"`` never goes below this many rows per block, so very wide blocks still use good matmuls.
AUTO_MIN_ROWS = 32


def resolve_chunk(
    chunk_size: ChunkSize,
    n_rows: int,
    elements_per_row: int,
    name: str = "chunk_size",
    min_rows: int = AUTO_MIN_ROWS,
) -> int | None:
    """Rows per block: ``None`` -> None (the straightforward path), ``"auto"`` -> about
    ``AUTO_BLOCK_ELEMENTS / elements_per_row`` rows (at least ``min_rows``), an int -> itself."""
    if chunk_size is None:
        return None
    if chunk_size == "auto":
        rows = max(min_rows, AUTO_BLOCK_ELEMENTS // max(elements_per_row, 1))
        return max(1, min(rows, n_rows))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{name} must be None, 'auto' or a positive int, got {chunk_size!r}")
    return chunk_size


def row_blocks(n_rows: int, rows: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive row blocks of at most ``rows`` rows; the last may be shorter."""
    for start in range(0, n_rows, rows):
        yield start, min(start + rows, n_rows)


def compute_dtypes(*tensors: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """``(matmul dtype, accumulation dtype)`` for tensors about to be multiplied.

    Under autocast the matmuls run in the autocast dtype (as ``torch.matmul`` would), except for
    float64 inputs, which autocast leaves alone; reductions (log-sum-exp, sums, gradients) always
    accumulate in at least float32.
    """
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    device_type = tensors[0].device.type
    if dtype != torch.float64 and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    return dtype, torch.promote_types(dtype, torch.float32)


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Disable autocast inside the custom autograd functions: they cast explicitly."""
    return torch.autocast(device_type=device_type, enabled=False)


def as_scalar(value: torch.Tensor | float, like: torch.Tensor, name: str) -> torch.Tensor:
    """A one-element tensor for ``logit_scale`` / ``logit_bias`` (a float becomes a constant)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar (0-dim or one-element tensor), got shape {tuple(value.shape)}")
        return value
    return torch.tensor(float(value), dtype=torch.float32, device=like.device)


def wants_grad(*tensors: torch.Tensor) -> bool:
    """Whether a backward pass can reach any of ``tensors`` (grad mode on and one requires grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def zero_with_graph(*tensors: torch.Tensor) -> torch.Tensor:
    """A float32 zero connected to every tensor that requires grad (their gradients become 0)."""
    zero = torch.zeros((), dtype=torch.float32, device=tensors[0].device)
    for t in tensors:
        if t.requires_grad:
            zero = zero + t.sum().float() * 0.0
    return zero


def check_matrix(x: torch.Tensor, name: str, rows: int | None = None, dim: int | None = None) -> None:
    """Raise a ValueError naming ``x`` unless it is a ``[rows, dim]`` floating-point matrix."""
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point [N, D] tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"{name} has {x.shape[0]} rows, expected {rows} (one per sample)")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has width {x.shape[1]}, expected {dim} (the embedding width)")
