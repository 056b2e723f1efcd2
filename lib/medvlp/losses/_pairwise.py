"""Blockwise reductions over a logit matrix ``S = scale * q @ k.T`` (``[M, N]``) that is never stored.

Each function walks ``S`` in row blocks of ``rows x N``. The reduced value is a scalar, so its
gradient with respect to ``q``, ``k``, ``scale`` (and ``bias``) is computed in the same pass, while
the block is at hand, and only multiplied by the incoming scalar gradient in ``backward``. This
costs the two gradient matmuls of an ordinary backward pass and avoids recomputing the block;
memory is ``O(rows * N)`` for the block plus ``O((M + N) * D)`` for the gradients. When no gradient
is needed (grad mode off, or no input requires grad) only the value is computed.

Matmuls run in the autocast dtype under autocast (bf16/fp16), everything else in float32 (float64
for float64 inputs). Double backward is not supported.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

from ._chunking import autocast_off, compute_dtypes, row_blocks

#: ``targets(start, stop) -> [stop - start, N]`` soft-target rows (each summing to one) for rows
#: ``start:stop`` of ``S``, or None for no target term.
TargetRows = Callable[[int, int], torch.Tensor] | None


class _Blocks:
    """Inputs prepared once, and two ``[rows, N]`` work buffers reused by every block.

    Reusing the buffers (``out=`` and in-place ops) keeps the allocator out of the loop: fresh
    large allocations cost page faults that can take longer than the block's elementwise work.
    """

    def __init__(self, q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, rows: int):
        self.cdt, self.acc = compute_dtypes(q, k)  # before autocast is switched off by the caller
        self.scale = scale.detach().reshape(()).to(self.acc)
        self.q = q.detach()
        self.k = k.detach().to(self.cdt)  # [N, D]
        shape = (max(min(rows, q.shape[0]), 1), k.shape[0])
        self._logits = torch.empty(shape, dtype=self.acc, device=q.device)
        self._work = torch.empty(shape, dtype=self.acc, device=q.device)
        self._low = torch.empty(shape, dtype=self.cdt, device=q.device) if self.cdt != self.acc else None

    def scaled_q(self, start: int, stop: int) -> torch.Tensor:
        """``scale * q[start:stop]`` in the matmul dtype, ``[rows, D]``."""
        return (self.q[start:stop].to(self.acc) * self.scale).to(self.cdt)

    def logits(self, start: int, stop: int) -> torch.Tensor:
        """``S[start:stop]`` in the accumulation dtype, ``[rows, N]`` (a view of the first buffer)."""
        out = self._logits[: stop - start]
        if self._low is None:
            return torch.matmul(self.scaled_q(start, stop), self.k.T, out=out)
        return out.copy_(torch.matmul(self.scaled_q(start, stop), self.k.T, out=self._low[: stop - start]))

    def work(self, rows: int) -> torch.Tensor:
        """The second buffer, ``[rows, N]``."""
        return self._work[:rows]

    def low(self, g: torch.Tensor) -> torch.Tensor:
        """``g`` in the matmul dtype (a copy into the low-precision buffer under autocast)."""
        return g if self._low is None else self._low[: g.shape[0]].copy_(g)


class _Grads:
    """Gradient accumulators for ``q``, ``k``, ``scale`` and ``bias``, given ``dvalue/dS`` block by block."""

    def __init__(self, s: _Blocks):
        self.s = s
        m, d = s.q.shape
        self.q = torch.empty((m, d), dtype=s.acc, device=s.q.device)
        self.k = torch.zeros((s.k.shape[0], d), dtype=s.acc, device=s.q.device)
        self.scale = torch.zeros((), dtype=s.acc, device=s.q.device)
        self.bias = torch.zeros((), dtype=s.acc, device=s.q.device)

    def add_block(self, start: int, stop: int, g: torch.Tensor, with_bias: bool = False) -> None:
        """Accumulate the gradients for ``dvalue/dS[start:stop] = g`` (``[rows, N]``)."""
        s = self.s
        if with_bias:
            self.bias += g.sum()
        gc = s.low(g)
        gk = (gc @ s.k).to(s.acc)  # [rows, D] = sum_j G_ij k_j
        torch.mul(gk, s.scale, out=self.q[start:stop])
        self.scale += (s.q[start:stop].to(s.acc) * gk).sum()
        if s.cdt == s.acc:
            self.k.addmm_(gc.T, s.scaled_q(start, stop))
        else:
            self.k += (gc.T @ s.scaled_q(start, stop)).to(s.acc)


def _grads_out(ctx, grad_out: torch.Tensor, grads: tuple[torch.Tensor, ...], like: tuple[torch.Tensor, ...]):
    """Scale the saved gradients by the incoming scalar gradient; cast/reshape them to the inputs.

    Scaled in place (no second copy of ``[M + N, D]``): a second backward through the same graph
    then fails autograd's saved-tensor version check instead of using scaled values.
    """
    out = []
    for g, (needed, dtype, shape) in zip(grads, like):
        out.append(g.mul_(grad_out.to(g.dtype)).to(dtype).reshape(shape) if needed else None)
    return out


def paired_logits(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``[B]`` logits of the matching pairs, ``scale * <image_i, text_i>``, in float32 or wider."""
    acc = torch.promote_types(torch.promote_types(image_emb.dtype, text_emb.dtype), torch.float32)
    return (image_emb.to(acc) * text_emb.to(acc)).sum(dim=1) * scale.reshape(()).to(acc)


class RowLogSumExp(torch.autograd.Function):
    """``sum_i [ logsumexp_j S_ij - sum_j T_ij S_ij ]`` with optional soft targets ``T`` (rows sum to 1)."""

    @staticmethod
    def forward(ctx, q, k, scale, targets: TargetRows, rows: int, want_grad: bool):
        s = _Blocks(q, k, scale, rows)
        with autocast_off(q.device.type):
            total = torch.zeros((), dtype=s.acc, device=q.device)
            grads = _Grads(s) if want_grad else None
            for start, stop in row_blocks(q.shape[0], rows):
                logits = s.logits(start, stop)
                peak = logits.amax(dim=1, keepdim=True)
                e = torch.sub(logits, peak, out=s.work(stop - start)).exp_()
                z = e.sum(dim=1, keepdim=True)
                total += (peak + z.log()).sum()
                target = targets(start, stop) if targets is not None else None
                if target is not None:
                    total -= torch.dot(target.reshape(-1), logits.reshape(-1))
                if grads is None:
                    continue
                g = e.div_(z)  # softmax rows
                if target is not None:
                    g.sub_(target)
                grads.add_block(start, stop, g)
        _save(ctx, grads, (q, k, scale))
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return (*_grads_out(ctx, grad_out, ctx.saved_tensors, ctx.like), None, None, None)


class TwoSidedLogSumExp(torch.autograd.Function):
    """``sum_i logsumexp_j S_ij + sum_j logsumexp_i S_ij`` (row and column log-sum-exp of one matrix).

    Two passes: the first collects row log-sum-exps and running column maxima/sums (an online
    log-sum-exp over row blocks); the second recomputes each block for the gradient
    ``softmax_rows(S) + softmax_cols(S)``.
    """

    @staticmethod
    def forward(ctx, q, k, scale, rows: int, want_grad: bool):
        s = _Blocks(q, k, scale, rows)
        with autocast_off(q.device.type):
            n = k.shape[0]
            row_lse = torch.empty((q.shape[0], 1), dtype=s.acc, device=q.device)
            col_max = torch.full((n,), float("-inf"), dtype=s.acc, device=q.device)
            col_sum = torch.zeros(n, dtype=s.acc, device=q.device)
            for start, stop in row_blocks(q.shape[0], rows):
                logits = s.logits(start, stop)
                work = s.work(stop - start)
                peak = logits.amax(dim=1, keepdim=True)
                z = torch.sub(logits, peak, out=work).exp_().sum(dim=1, keepdim=True)
                row_lse[start:stop] = peak + z.log()
                new_max = torch.maximum(col_max, logits.amax(dim=0))
                col_sum = col_sum * torch.exp(col_max - new_max) + torch.sub(logits, new_max, out=work).exp_().sum(0)
                col_max = new_max
            col_lse = col_max + torch.log(col_sum)
            total = row_lse.sum() + col_lse.sum()
            grads = _Grads(s) if want_grad else None
            if grads is not None:
                for start, stop in row_blocks(q.shape[0], rows):
                    logits = s.logits(start, stop)
                    g = torch.sub(logits, row_lse[start:stop], out=s.work(stop - start)).exp_()
                    g += logits.sub_(col_lse).exp_()
                    grads.add_block(start, stop, g)
        _save(ctx, grads, (q, k, scale))
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return (*_grads_out(ctx, grad_out, ctx.saved_tensors, ctx.like), None, None)


class PairSoftplusSum(torch.autograd.Function):
    """``sum_ij softplus(S_ij + bias)`` = ``-sum_ij log sigmoid(-(S_ij + bias))``."""

    @staticmethod
    def forward(ctx, q, k, scale, bias, rows: int, want_grad: bool):
        s = _Blocks(q, k, scale, rows)
        with autocast_off(q.device.type):
            b = bias.detach().reshape(()).to(s.acc)
            zero = torch.zeros((), dtype=s.acc, device=q.device)
            total = torch.zeros((), dtype=s.acc, device=q.device)
            grads = _Grads(s) if want_grad else None
            for start, stop in row_blocks(q.shape[0], rows):
                logits = s.logits(start, stop).add_(b)
                total += torch.logaddexp(logits, zero, out=s.work(stop - start)).sum()  # softplus
                if grads is not None:
                    grads.add_block(start, stop, logits.sigmoid_(), with_bias=True)
        _save(ctx, grads, (q, k, scale, bias), with_bias=True)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return (*_grads_out(ctx, grad_out, ctx.saved_tensors, ctx.like), None, None)


def _save(ctx, grads: _Grads | None, inputs: tuple[torch.Tensor, ...], with_bias: bool = False) -> None:
    ctx.like = tuple((t.requires_grad, t.dtype, t.shape) for t in inputs)
    if grads is None:
        return
    saved = [grads.q, grads.k, grads.scale] + ([grads.bias] if with_bias else [])
    ctx.save_for_backward(*saved)
