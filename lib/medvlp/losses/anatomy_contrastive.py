"""fVLM's anatomy-level contrastive loss with false-negative calibration (soft-target InfoNCE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._chunking import ChunkSize, as_scalar, check_matrix, resolve_chunk, wants_grad, zero_with_graph
from ._pairwise import RowLogSumExp
from .contrastive import contrastive_loss
from .distributed import (
    all_reduce_sum,
    gather_no_grad,
    gather_sizes,
    gather_with_grad,
    is_distributed,
    rank_and_world,
)

#: Default temperature of the false-negative text similarities: softmax_j(<t~_i, t~_j> / 0.07).
FALSE_NEGATIVE_SCALE = 1.0 / 0.07


class _Targets:
    """Row blocks of the row-normalised soft targets ``Yhat`` ``[n_local, N]`` (never all at once).

    ``Y_ij = 1`` if ``i == j`` or both samples are normal or their texts are identical (same
    ``text_group``); for the remaining pairs where both samples are abnormal, ``Y_ij = W_ij``
    (false-negative weights, e.g. EMA text similarities), and 0 otherwise. In other words
    ``Y = Y0 + (1 - Y0) * a_i a_j W_ij`` with the binary ``Y0``: positives stay exactly 1 and weights
    only add soft positives among abnormal pairs. ``Yhat = Y / Y.sum(1)``.

    From EMA text embeddings ``t~``: ``W_ij = weight * softmax_j(scale * <t~_i, t~_j>)``, the softmax
    over all (gathered) samples, and 0 where ``<t~_i, t~_j> < threshold`` (when a threshold is set).
    """

    def __init__(self, normal, group, all_normal, all_group, weights=None, fn_emb=None, all_fn_emb=None,
                 fn_scale: float = FALSE_NEGATIVE_SCALE, fn_weight: float = 1.0, fn_threshold: float | None = None):
        self.normal, self.group = normal, group
        self.all_normal, self.all_group = all_normal, all_group
        self.weights = weights
        self.fn_emb, self.all_fn_emb, self.fn_scale = fn_emb, all_fn_emb, fn_scale
        self.fn_weight, self.fn_threshold = fn_weight, fn_threshold

    def __call__(self, start: int, stop: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        # the diagonal is part of the same-text term: every sample has its own text group
        y0 = (self.group[start:stop, None] == self.all_group[None, :]) | (
            self.normal[start:stop, None] & self.all_normal[None, :]
        )
        y = y0.to(dtype)
        w = self._weights(start, stop, dtype)
        if w is not None:
            abnormal_pairs = (~self.normal[start:stop, None] & ~self.all_normal[None, :]) & ~y0
            y = y + abnormal_pairs.to(dtype) * w
        return y / y.sum(dim=1, keepdim=True)

    def _weights(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor | None:
        if self.weights is not None:
            return self.weights[start:stop].detach().to(dtype)
        if self.fn_emb is not None:
            sims = self.fn_emb[start:stop].detach().to(dtype) @ self.all_fn_emb.detach().to(dtype).T
            w = torch.softmax(sims * self.fn_scale, dim=1) * self.fn_weight
            if self.fn_threshold is not None:
                w = w * (sims >= self.fn_threshold).to(dtype)
            return w
        return None


def anatomy_contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    is_normal: torch.Tensor,
    text_group: torch.Tensor,
    logit_scale: torch.Tensor | float,
    false_negative_weights: torch.Tensor | None = None,
    *,
    false_negative_text_emb: torch.Tensor | None = None,
    false_negative_scale: float = FALSE_NEGATIVE_SCALE,
    false_negative_weight: float = 1.0,
    false_negative_threshold: float | None = None,
    chunk_size: ChunkSize = "auto",
    gather: bool = True,
) -> torch.Tensor:
    """Calibrated soft-target InfoNCE for one anatomy (fVLM), over the N samples where it is intact.

    ``s_ij = t <v_i, t_j>``; targets ``Yhat`` as in :class:`_Targets` (identity, normal-normal pairs,
    identical texts, optional weights among abnormal pairs), row-normalised;
    ``L = 1/2 [ -(1/N) sum_ij Yhat_ij log softmax_j(s_ij) - (1/N) sum_ij Yhat_ij log softmax_j(s_ji) ]``
    (image->text rows and text->image rows both use the rows of ``Yhat``).

    Args:
        image_emb: ``[N, D]`` L2-normalised anatomy image embeddings.
        text_emb: ``[N, D]`` L2-normalised anatomy text embeddings (sample i's text matches image i).
        is_normal: ``[N]`` bool, the anatomy is normal in sample i (not mentioned in the impression).
        text_group: ``[N]`` long, equal ids for identical texts (comparable across ranks, e.g. a hash).
        logit_scale: ``t = 1 / tau`` (already exponentiated), one-element tensor or float.
        false_negative_weights: optional ``[N, N]`` (under gather: ``[N_local, N_global]``, this rank's
            rows) weights ``W_ij`` for abnormal pairs, treated as constants.
        false_negative_text_emb: alternative to ``false_negative_weights``: ``[N, D']`` normalised EMA
            text embeddings ``t~``; ``W_ij = softmax_j(false_negative_scale * <t~_i, t~_j>)`` over all
            (gathered) samples, computed block by block.
        false_negative_scale: ``1 / tau`` of those similarities (default 1 / 0.07).
        false_negative_weight: multiplies those weights (1 in the paper's formula).
        false_negative_threshold: if set, pairs whose EMA text cosine is below it get no weight.
        chunk_size: ``None`` materialises ``[N, N]``; an int processes that many rows per block;
            ``"auto"`` (default) about ``2**22 / N`` rows (at least 32).
        gather: under torch.distributed gather embeddings (with gradient) and labels from every rank;
            ranks may hold different N. This rank's rows are scored against all gathered samples and
            the local loss is scaled by ``world_size / N_global``, so the mean over ranks equals the
            single-process loss on all intact samples.

    Returns:
        0-dim float32 tensor (float64 for float64 inputs).
    """
    check_matrix(image_emb, "image_emb")
    n_local, dim = image_emb.shape
    check_matrix(text_emb, "text_emb", rows=n_local, dim=dim)
    if is_normal.shape != (n_local,) or is_normal.dtype != torch.bool:
        raise ValueError(f"is_normal must be a [N] bool tensor with N = {n_local}, got {is_normal.dtype} "
                         f"of shape {tuple(is_normal.shape)}")
    if text_group.shape != (n_local,) or text_group.is_floating_point():
        raise ValueError(f"text_group must be a [N] integer tensor with N = {n_local}, got {text_group.dtype} "
                         f"of shape {tuple(text_group.shape)}")
    if false_negative_weights is not None and false_negative_text_emb is not None:
        raise ValueError("give either false_negative_weights or false_negative_text_emb, not both")
    scale = as_scalar(logit_scale, image_emb, "logit_scale")

    if gather and is_distributed():
        world = rank_and_world()[1]
        sizes = gather_sizes(n_local, image_emb.device)
        n_total = sum(sizes)
        all_images = gather_with_grad(image_emb, sizes)
        all_texts = gather_with_grad(text_emb, sizes)
        all_normal = gather_no_grad(is_normal, sizes)
        all_group = gather_no_grad(text_group, sizes)
        all_fn_emb = gather_no_grad(false_negative_text_emb, sizes) if false_negative_text_emb is not None else None
    else:
        world, n_total = 1, n_local
        all_images, all_texts, all_normal, all_group = image_emb, text_emb, is_normal, text_group
        all_fn_emb = false_negative_text_emb
    if false_negative_weights is not None and false_negative_weights.shape != (n_local, n_total):
        raise ValueError(
            f"false_negative_weights must have shape [{n_local}, {n_total}] (this rank's rows x all samples), "
            f"got {tuple(false_negative_weights.shape)}"
        )
    if false_negative_text_emb is not None and false_negative_text_emb.shape[0] != n_local:
        raise ValueError(f"false_negative_text_emb must have {n_local} rows, got {false_negative_text_emb.shape[0]}")
    if n_total == 0:
        return zero_with_graph(image_emb, text_emb, scale)

    targets = _Targets(is_normal, text_group, all_normal, all_group, false_negative_weights,
                       false_negative_text_emb, all_fn_emb, false_negative_scale, false_negative_weight,
                       false_negative_threshold)
    norm = world / (2.0 * n_total)
    acc = torch.promote_types(torch.promote_types(image_emb.dtype, text_emb.dtype), torch.float32)

    rows = resolve_chunk(chunk_size, n_local, n_total)
    if rows is None:
        yhat = targets(0, n_local, acc)
        s = scale.reshape(())
        image_to_text = F.log_softmax((s * image_emb @ all_texts.T).to(acc), dim=1)
        text_to_image = F.log_softmax((s * text_emb @ all_images.T).to(acc), dim=1)
        return -(yhat * (image_to_text + text_to_image)).sum() * norm

    grad = wants_grad(image_emb, text_emb, scale)
    target_rows = lambda start, stop: targets(start, stop, acc)
    return (
        RowLogSumExp.apply(image_emb, all_texts, scale, target_rows, rows, grad)
        + RowLogSumExp.apply(text_emb, all_images, scale, target_rows, rows, grad)
    ) * norm


def fvlm_loss(
    anatomy_image_emb: torch.Tensor,
    anatomy_text_emb: torch.Tensor,
    valid: torch.Tensor,
    is_normal: torch.Tensor,
    text_group: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    calibrate: bool = True,
    false_negative_text_emb: torch.Tensor | None = None,
    false_negative_scale: float = FALSE_NEGATIVE_SCALE,
    false_negative_weight: float = 1.0,
    false_negative_threshold: float | None = None,
    chunk_size: ChunkSize = "auto",
    gather: bool = True,
) -> torch.Tensor:
    """fVLM loss: ``sum_k L_k`` over the anatomies with at least one valid abnormal sample.

    For every such anatomy k, the valid samples (anatomy intact in the crop) are selected and
    :func:`anatomy_contrastive_loss` is applied to them (``calibrate=False``, the ``fvlm_nocal``
    ablation: plain InfoNCE, :func:`contrastive_loss`, on the same anatomies).

    Args:
        anatomy_image_emb: ``[B, A, D]`` L2-normalised per-anatomy image embeddings.
        anatomy_text_emb: ``[B, A, D]`` L2-normalised per-anatomy text embeddings.
        valid: ``[B, A]`` bool, anatomy intact (its mask does not touch the crop border).
        is_normal: ``[B, A]`` bool, anatomy normal (not mentioned in the impression).
        text_group: ``[B, A]`` long, equal ids for identical anatomy texts (comparable across ranks).
        logit_scale: ``1 / tau``, one-element tensor or float.
        calibrate: soft targets (normal pairs, identical texts, optional EMA weights) or identity.
        false_negative_text_emb: optional ``[B, A, D']`` normalised EMA text embeddings for the
            abnormal false-negative weights (see :func:`anatomy_contrastive_loss`).
        false_negative_scale, false_negative_weight, false_negative_threshold, chunk_size, gather: as in
            :func:`anatomy_contrastive_loss`. Under
            torch.distributed the set of anatomies is decided on the global batch, so every rank
            joins the same collectives even where it holds no valid sample of an anatomy.

    Returns:
        0-dim float32 tensor; a differentiable zero when no anatomy qualifies.
    """
    if anatomy_image_emb.dim() != 3 or anatomy_text_emb.shape != anatomy_image_emb.shape:
        raise ValueError(
            f"anatomy_image_emb and anatomy_text_emb must both be [B, A, D], got "
            f"{tuple(anatomy_image_emb.shape)} and {tuple(anatomy_text_emb.shape)}"
        )
    b, a, _ = anatomy_image_emb.shape
    for name, t in (("valid", valid), ("is_normal", is_normal), ("text_group", text_group)):
        if t.shape != (b, a):
            raise ValueError(f"{name} must have shape [B, A] = [{b}, {a}], got {tuple(t.shape)}")
    if valid.dtype != torch.bool or is_normal.dtype != torch.bool:
        raise ValueError("valid and is_normal must be bool tensors")
    scale = as_scalar(logit_scale, anatomy_image_emb, "logit_scale")

    abnormal_counts = (valid & ~is_normal).sum(dim=0)  # [A]
    if gather:
        abnormal_counts = all_reduce_sum(abnormal_counts)
    total = zero_with_graph(anatomy_image_emb, anatomy_text_emb, scale)
    for k in torch.nonzero(abnormal_counts > 0).flatten().tolist():
        rows = torch.nonzero(valid[:, k]).flatten()
        images = anatomy_image_emb[rows, k]
        texts = anatomy_text_emb[rows, k]
        if calibrate:
            fn_emb = false_negative_text_emb[rows, k] if false_negative_text_emb is not None else None
            total = total + anatomy_contrastive_loss(
                images, texts, is_normal[rows, k], text_group[rows, k], scale,
                false_negative_text_emb=fn_emb, false_negative_scale=false_negative_scale,
                false_negative_weight=false_negative_weight, false_negative_threshold=false_negative_threshold,
                chunk_size=chunk_size, gather=gather,
            )
        else:
            total = total + contrastive_loss(images, texts, scale, chunk_size=chunk_size, gather=gather)
    return total
