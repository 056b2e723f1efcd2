"""Symmetric InfoNCE (CLIP) loss, the IT-Align softmax baseline and RadCLIP's loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._chunking import ChunkSize, as_scalar, check_matrix, resolve_chunk, wants_grad, zero_with_graph
from ._pairwise import RowLogSumExp, TwoSidedLogSumExp, paired_logits
from .distributed import gather_sizes, gather_with_grad, is_distributed, rank_and_world


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    chunk_size: ChunkSize = "auto",
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE: ``1/2 [CE(S, diag) + CE(S.T, diag)]`` with ``S = logit_scale * image @ text.T``.

    Equal to ``open_clip.loss.ClipLoss()(image_emb, text_emb, logit_scale)`` on one process, and to
    ``ClipLoss(local_loss=True, gather_with_grad=True, rank, world_size)`` under torch.distributed.

    Args:
        image_emb: ``[B, D]`` L2-normalised image embeddings (pair i is ``image_emb[i], text_emb[i]``).
        text_emb: ``[B, D]`` L2-normalised text embeddings.
        logit_scale: the multiplier ``t`` (already exponentiated), a one-element tensor or a float.
        chunk_size: ``None`` materialises the ``[B, B]`` logits (straightforward path); an int walks
            the logits in blocks of that many rows and never holds more than one ``rows x B`` block;
            ``"auto"`` (default) picks about ``2**22 / B`` rows (at least 32).
        gather: under torch.distributed (world size > 1) gather both embeddings from every rank with
            gradient and return this rank's local loss (its rows against all gathered columns), scaled
            so that the mean over ranks equals the loss on the whole global batch; ranks may hold
            different B. Ignored on one process.

    Returns:
        0-dim float32 tensor (float64 for float64 inputs), the mean over the two directions and over
        the (global) batch.
    """
    check_matrix(image_emb, "image_emb")
    check_matrix(text_emb, "text_emb", rows=image_emb.shape[0], dim=image_emb.shape[1])
    scale = as_scalar(logit_scale, image_emb, "logit_scale")
    n_local = image_emb.shape[0]

    if gather and is_distributed():
        rank, world = rank_and_world()
        sizes = gather_sizes(n_local, image_emb.device)
        offset, n_total = sum(sizes[:rank]), sum(sizes)
        all_images = gather_with_grad(image_emb, sizes)
        all_texts = gather_with_grad(text_emb, sizes)
    else:
        world, offset, n_total = 1, 0, n_local
        all_images, all_texts = image_emb, text_emb
    if n_total == 0:
        return zero_with_graph(image_emb, text_emb, scale)
    norm = world / (2.0 * n_total)

    rows = resolve_chunk(chunk_size, n_local, n_total)
    if rows is None:
        return _contrastive_dense(image_emb, text_emb, all_images, all_texts, scale, offset, world) * norm

    grad = wants_grad(image_emb, text_emb, scale)
    if world == 1:
        lse = TwoSidedLogSumExp.apply(image_emb, text_emb, scale, rows, grad)
    else:
        lse = RowLogSumExp.apply(image_emb, all_texts, scale, None, rows, grad) + RowLogSumExp.apply(
            text_emb, all_images, scale, None, rows, grad
        )
    positives = paired_logits(image_emb, text_emb, scale).sum()
    return (lse - 2.0 * positives) * norm


def _contrastive_dense(image_emb, text_emb, all_images, all_texts, scale, offset: int, world: int) -> torch.Tensor:
    """Sum (not mean) of both cross-entropies with the full logit matrices (the ``chunk_size=None`` path)."""
    scale = scale.reshape(())
    labels = torch.arange(image_emb.shape[0], device=image_emb.device) + offset
    logits_per_image = scale * image_emb @ all_texts.T
    logits_per_text = logits_per_image.T if world == 1 else scale * text_emb @ all_images.T
    return F.cross_entropy(logits_per_image, labels, reduction="sum") + F.cross_entropy(
        logits_per_text, labels, reduction="sum"
    )
