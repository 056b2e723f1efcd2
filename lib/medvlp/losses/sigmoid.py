"""Sigmoid (SigLIP) image-text loss: ConceptCLIP's IT-Align."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._chunking import ChunkSize, as_scalar, check_matrix, resolve_chunk, wants_grad, zero_with_graph
from ._pairwise import PairSoftplusSum, paired_logits
from .distributed import gather_sizes, gather_with_grad, is_distributed, rank_and_world


def sigmoid_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
    *,
    chunk_size: ChunkSize = "auto",
    gather: bool = True,
) -> torch.Tensor:
    """SigLIP loss ``-(1/B) sum_ij log sigmoid(y_ij (t <x_i, z_j> + b))``, ``y_ij = +1 if i == j else -1``.

    Equal to ``open_clip.loss.SigLipLoss()(image_emb, text_emb, logit_scale, logit_bias)`` (which
    divides the sum over all B x B pairs by B).

    Args:
        image_emb: ``[B, D]`` L2-normalised image embeddings.
        text_emb: ``[B, D]`` L2-normalised text embeddings (pair i matches image i).
        logit_scale: ``t`` (already exponentiated), a one-element tensor or a float.
        logit_bias: ``b``, a one-element tensor or a float.
        chunk_size: ``None`` materialises the ``[B, B]`` logits; an int processes that many rows per
            block; ``"auto"`` (default) about ``2**22 / B`` rows (at least 32).
        gather: under torch.distributed gather the texts from every rank with gradient and return
            this rank's local loss, its images against all texts, scaled by ``world_size / B_global``
            so that the mean over ranks equals the single-process loss on the global batch (what
            open_clip's neighbour exchange computes, done here with one all-gather).

    Returns:
        0-dim float32 tensor (float64 for float64 inputs).
    """
    check_matrix(image_emb, "image_emb")
    check_matrix(text_emb, "text_emb", rows=image_emb.shape[0], dim=image_emb.shape[1])
    scale = as_scalar(logit_scale, image_emb, "logit_scale")
    bias = as_scalar(logit_bias, image_emb, "logit_bias")
    n_local = image_emb.shape[0]

    if gather and is_distributed():
        rank, world = rank_and_world()
        sizes = gather_sizes(n_local, image_emb.device)
        offset, n_total = sum(sizes[:rank]), sum(sizes)
        all_texts = gather_with_grad(text_emb, sizes)
    else:
        world, offset, n_total = 1, 0, n_local
        all_texts = text_emb
    if n_total == 0:
        return zero_with_graph(image_emb, text_emb, scale, bias)
    norm = world / n_total

    rows = resolve_chunk(chunk_size, n_local, n_total)
    if rows is None:
        acc = torch.promote_types(torch.promote_types(image_emb.dtype, all_texts.dtype), torch.float32)
        logits = (scale.reshape(()) * image_emb @ all_texts.T).to(acc) + bias.reshape(()).to(acc)
        labels = -torch.ones_like(logits)
        labels[torch.arange(n_local, device=logits.device), torch.arange(n_local, device=logits.device) + offset] = 1
        return -F.logsigmoid(labels * logits).sum() * norm

    # -log sigmoid(-s) = softplus(s) for every pair, minus s itself on the positives:
    # -log sigmoid(s) = softplus(s) - s.
    grad = wants_grad(image_emb, all_texts, scale, bias)
    negatives = PairSoftplusSum.apply(image_emb, all_texts, scale, bias, rows, grad)
    positives = (paired_logits(image_emb, text_emb, scale) + bias.reshape(())).sum()
    return (negatives - positives) * norm
