"""Patch-concept alignment (ConceptCLIP's PC-Align): sigmoid loss on max-over-patches concept scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._chunking import (
    AUTO_BLOCK_ELEMENTS,
    ChunkSize,
    as_scalar,
    autocast_off,
    check_matrix,
    compute_dtypes,
    resolve_chunk,
    row_blocks,
    wants_grad,
    zero_with_graph,
)
from .distributed import gather_no_grad, gather_sizes, gather_with_grad, is_distributed, rank_and_world


def patch_concept_max_logits(
    patch_emb: torch.Tensor,
    concept_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    chunk_size: ChunkSize = "auto",
    concept_chunk_size: int | None = None,
) -> torch.Tensor:
    """``[B, K]`` scores ``max_m logit_scale * <patch_emb[i, m], concept_emb[k]>``.

    Args:
        patch_emb: ``[B, P, D]`` L2-normalised patch embeddings.
        concept_emb: ``[K, D]`` L2-normalised concept embeddings.
        logit_scale: the multiplier ``t`` (already exponentiated), one-element tensor or float.
        chunk_size: ``None`` materialises the ``[B, P, K]`` similarities (autograd of ``max``);
            an int is the number of images per block; ``"auto"`` (default) keeps a block near
            ``2**22`` similarities. Chunked, only ``rows x P x K'`` similarities exist at a time and
            the backward pass uses the stored ``[B, K]`` argmax patch indices (the gradient flows
            through the arg-max patch only, as autograd of ``max`` does).
        concept_chunk_size: concepts per block (``None``: all, or as many as fit the auto budget).

    Returns:
        ``[B, K]`` float32 (float64 for float64 inputs).
    """
    if patch_emb.dim() != 3 or not patch_emb.is_floating_point():
        raise ValueError(
            f"patch_emb must be a floating-point [B, P, D] tensor, got {patch_emb.dtype} of shape "
            f"{tuple(patch_emb.shape)}"
        )
    b, p, d = patch_emb.shape
    check_matrix(concept_emb, "concept_emb", dim=d)
    scale = as_scalar(logit_scale, patch_emb, "logit_scale")
    k = concept_emb.shape[0]
    if concept_chunk_size is None:
        concept_rows = k if chunk_size != "auto" else min(k, max(1, AUTO_BLOCK_ELEMENTS // max(p, 1)))
    else:
        concept_rows = resolve_chunk(concept_chunk_size, k, 1, name="concept_chunk_size")
    rows = resolve_chunk(chunk_size, b, p * max(concept_rows, 1), min_rows=1)
    if rows is None:
        return (scale.reshape(()) * (patch_emb @ concept_emb.T)).max(dim=1).values
    # backward blocks hold two [rows * K, D] buffers: a quarter of the forward budget each
    back_rows = rows if chunk_size != "auto" else max(1, AUTO_BLOCK_ELEMENTS // 4 // max(k * d, 1))
    grad = wants_grad(patch_emb, concept_emb, scale)
    return _PatchConceptMax.apply(patch_emb, concept_emb, scale, rows, max(concept_rows, 1), back_rows, grad)


class _PatchConceptMax(torch.autograd.Function):
    """Blockwise ``max_m scale * <v_im, c_k>``; saves the ``[B, K]`` arg-max indices for backward."""

    @staticmethod
    def forward(ctx, patches, concepts, scale, rows: int, concept_rows: int, back_rows: int, want_grad: bool):
        b, p, d = patches.shape
        k = concepts.shape[0]
        cdt, acc = compute_dtypes(patches, concepts)
        with autocast_off(patches.device.type):
            s = scale.detach().reshape(()).to(acc)
            c = concepts.detach().to(cdt)
            values = torch.empty((b, k), dtype=acc, device=patches.device)
            index = torch.empty((b, k), dtype=torch.long, device=patches.device)
            buffer = torch.empty(min(rows, b) * p * min(concept_rows, k), dtype=cdt, device=patches.device)
            for start, stop in row_blocks(b, rows):
                v = (patches[start:stop].detach().to(acc) * s).to(cdt).reshape(-1, d)  # [rows * P, D]
                for c0, c1 in row_blocks(k, concept_rows):
                    sims = buffer[: v.shape[0] * (c1 - c0)].view(v.shape[0], c1 - c0)
                    torch.matmul(v, c[c0:c1].T, out=sims)
                    best = sims.view(stop - start, p, c1 - c0).max(dim=1)  # over the P patches
                    values[start:stop, c0:c1] = best.values
                    index[start:stop, c0:c1] = best.indices
        ctx.back_rows = back_rows
        ctx.like = tuple((t.requires_grad, t.dtype, t.shape) for t in (patches, concepts, scale))
        if want_grad:
            ctx.save_for_backward(patches, concepts, scale, index)
        return values

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_values):
        patches, concepts, scale, index = ctx.saved_tensors
        b, p, d = patches.shape
        acc = grad_values.dtype
        s = scale.detach().reshape(()).to(acc)
        c = concepts.detach().to(acc)
        grad_patches = torch.zeros((b * p, d), dtype=acc, device=patches.device)
        # picked_sum[k] = sum_i G_ik v_{i, argmax_ik}: gives the concept and the scale gradients
        picked_sum = torch.zeros_like(c)
        flat_patches = patches.detach().reshape(b * p, d)
        k = c.shape[0]
        block = min(ctx.back_rows, b) * k
        picked_buffer = torch.empty((block, d), dtype=patches.dtype, device=patches.device)
        spread_buffer = torch.empty((block, d), dtype=acc, device=patches.device)
        with autocast_off(patches.device.type):
            for start, stop in row_blocks(b, ctx.back_rows):
                n = stop - start
                g = grad_values[start:stop]  # [n, K]
                image_ids = torch.arange(start, stop, device=patches.device)
                rows = (image_ids[:, None] * p + index[start:stop]).reshape(-1)  # [n * K] flat patch index
                picked = torch.index_select(flat_patches, 0, rows, out=picked_buffer[: n * k])  # [n * K, D]
                picked_sum += picked.to(acc).view(n, k, d).mul_(g[:, :, None]).sum(dim=0)
                spread = torch.mul(g[:, :, None], c, out=spread_buffer[: n * k].view(n, k, d))  # G_ik c_k
                # several concepts may share an arg-max patch: accumulate (faster than index_add_ on CPU)
                grad_patches.index_put_((rows,), spread.view(n * k, d), accumulate=True)
        grad_patches = grad_patches.view(b, p, d)
        grad_patches.mul_(s)
        needs = [like[0] for like in ctx.like]
        return (
            grad_patches.to(ctx.like[0][1]) if needs[0] else None,
            (picked_sum * s).to(ctx.like[1][1]) if needs[1] else None,
            (c * picked_sum).sum().to(ctx.like[2][1]).reshape(ctx.like[2][2]) if needs[2] else None,
            None,
            None,
            None,
            None,
        )


def concept_targets(owner: torch.Tensor, n_images: int, concept_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, K]`` bool PC-Align positives: image i's caption holds concept k.

    Args:
        owner: ``[K]`` long, the image index of each concept mention (values outside ``0..B-1`` are
            mentions of other ranks' images).
        n_images: B.
        concept_ids: optional ``[K]`` identities; then image i holds concept k when any of its own
            mentions has concept k's id. Memory ``O(B * U)`` for U distinct ids (U <= K).
    """
    image_index = torch.arange(n_images, device=owner.device)
    if concept_ids is None:
        return owner[None, :] == image_index[:, None]
    unique, inverse = torch.unique(concept_ids, return_inverse=True)
    mine = (owner >= 0) & (owner < n_images)
    has = torch.zeros(n_images, unique.numel(), dtype=torch.bool, device=owner.device)
    has[owner[mine], inverse[mine]] = True
    return has[:, inverse]


def concept_alignment_loss(
    patch_emb: torch.Tensor,
    concept_emb: torch.Tensor,
    concept_owner: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
    *,
    concept_ids: torch.Tensor | None = None,
    chunk_size: ChunkSize = "auto",
    concept_chunk_size: int | None = None,
    gather: bool = True,
) -> torch.Tensor:
    """PC-Align: ``-(1/K) sum_i sum_k log sigmoid(y_ik s_ik)``, ``s_ik = max_m(t <v_im, c_k>) + b``.

    ``y_ik = +1`` iff concept k belongs to image i's caption, else -1; K is the number of concept
    mentions in the (global) batch. Without ``concept_ids`` a mention belongs to its own caption only
    (``concept_owner[k] == i``). With ``concept_ids`` (the concept's identity, e.g. its UMLS CUI) it
    belongs to every caption that mentions the same concept, so another image showing the same finding
    is not pushed away from it (in a batch where concepts repeat, the owner-only targets are false
    negatives).

    Args:
        patch_emb: ``[B, P, D]`` L2-normalised patch embeddings ``v``.
        concept_emb: ``[K, D]`` L2-normalised concept embeddings ``c`` of every concept of every caption.
        concept_owner: ``[K]`` long, the batch index (0..B-1, local to this rank) of each concept's caption.
        concept_ids: optional ``[K]`` long identity of each concept (equal ids = the same concept, comparable
            across ranks, e.g. a hash of the CUI).
        logit_scale: ``t_c`` (already exponentiated), one-element tensor or float.
        logit_bias: ``b_c``, one-element tensor or float.
        chunk_size, concept_chunk_size: see :func:`patch_concept_max_logits`; ``None`` materialises
            ``[B, P, K]``, otherwise memory is ``O(rows * P * K' + B * K)`` beyond the inputs and their
            gradients.
        gather: under torch.distributed gather the concepts (with gradient) and their owners (offset
            to global image indices) from every rank; this rank's images are scored against all of
            them and the local loss is scaled by ``world_size / K_global``, so that the mean over
            ranks equals the single-process loss on the global batch.

    Returns:
        0-dim float32 tensor; a differentiable zero when the batch has no concept (K == 0).
    """
    if patch_emb.dim() != 3:
        raise ValueError(f"patch_emb must be [B, P, D], got shape {tuple(patch_emb.shape)}")
    check_matrix(concept_emb, "concept_emb", dim=patch_emb.shape[2])
    if concept_owner.shape != (concept_emb.shape[0],) or concept_owner.dtype not in (torch.long, torch.int32):
        raise ValueError(
            f"concept_owner must be a [K] integer tensor with K = {concept_emb.shape[0]} (one batch index per "
            f"concept), got {concept_owner.dtype} of shape {tuple(concept_owner.shape)}"
        )
    scale = as_scalar(logit_scale, patch_emb, "logit_scale")
    bias = as_scalar(logit_bias, patch_emb, "logit_bias")
    n_images = patch_emb.shape[0]

    if concept_ids is not None and (concept_ids.shape != concept_owner.shape or concept_ids.is_floating_point()):
        raise ValueError(f"concept_ids must be a [K] integer tensor like concept_owner, got {concept_ids.dtype} "
                         f"of shape {tuple(concept_ids.shape)}")
    if gather and is_distributed():
        rank, world = rank_and_world()
        offset = sum(gather_sizes(n_images, patch_emb.device)[:rank])
        concept_sizes = gather_sizes(concept_emb.shape[0], patch_emb.device)
        all_concepts = gather_with_grad(concept_emb, concept_sizes)
        all_owners = gather_no_grad(concept_owner.long() + offset, concept_sizes)
        all_ids = gather_no_grad(concept_ids.long(), concept_sizes) if concept_ids is not None else None
    else:
        world, offset = 1, 0
        all_concepts, all_owners = concept_emb, concept_owner.long()
        all_ids = concept_ids.long() if concept_ids is not None else None
    n_concepts = all_concepts.shape[0]
    if n_concepts == 0:
        return zero_with_graph(patch_emb, concept_emb, scale, bias)

    scores = patch_concept_max_logits(
        patch_emb, all_concepts, scale, chunk_size=chunk_size, concept_chunk_size=concept_chunk_size
    )
    acc = torch.promote_types(scores.dtype, torch.float32)
    scores = scores.to(acc) + bias.reshape(()).to(acc)
    signs = concept_targets(all_owners - offset, n_images, all_ids).to(scores.dtype) * 2 - 1  # [B, K] of +-1
    return -F.logsigmoid(signs * scores).sum() * (world / n_concepts)
