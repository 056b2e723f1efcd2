"""fVLM anatomy pooling: anatomy token masks from a label map, and mask-guided attention pooling."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class AnatomyMasks(NamedTuple):
    """token_mask [B, A, N] bool (token n holds a voxel of anatomy a); valid [B, A] bool."""

    token_mask: torch.Tensor
    valid: torch.Tensor


def anatomy_token_masks(label_map: torch.Tensor, patch_size: Sequence[int],
                        labels: Sequence[int]) -> AnatomyMasks:
    """Per-anatomy token masks and validity from a segmentation label map.

    A token belongs to anatomy a if any voxel of its patch has label ``labels[a]`` (max-pooling the
    binary mask to the token grid). Anatomy a is *valid* for a sample when it has at least one voxel
    and none on the outermost voxel layer of the crop (fVLM excludes anatomies cut by the crop border).

    Args:
        label_map: [B, X, Y, Z] integer labels (0 = background), same size as the volume.
        patch_size: (px, py, pz) of the ViT; X, Y, Z must be multiples.
        labels: the A label values, in anatomy order.

    Returns:
        AnatomyMasks(token_mask [B, A, N], valid [B, A]); tokens in MONAI's row-major grid order.
        Memory: one bool per voxel per anatomy.
    """
    if label_map.ndim != 4:
        raise ValueError(f"label_map: expected [B, X, Y, Z], got {list(label_map.shape)}")
    b, x, y, z = label_map.shape
    px, py, pz = patch_size
    if x % px or y % py or z % pz:
        raise ValueError(f"label_map size {(x, y, z)} is not a multiple of patch_size {tuple(patch_size)}")
    lab = torch.as_tensor(list(labels), dtype=label_map.dtype, device=label_map.device)
    a = lab.numel()
    onehot = label_map.unsqueeze(1) == lab.view(1, a, 1, 1, 1)  # [B, A, X, Y, Z]
    grid = onehot.view(b, a, x // px, px, y // py, py, z // pz, pz).any(dim=7).any(dim=5).any(dim=3)
    token_mask = grid.reshape(b, a, -1)
    faces = torch.cat([label_map[:, [0, -1]].reshape(b, -1), label_map[:, :, [0, -1]].reshape(b, -1),
                       label_map[:, :, :, [0, -1]].reshape(b, -1)], dim=1)  # [B, F]
    on_border = (faces.unsqueeze(1) == lab.view(1, a, 1)).any(dim=-1)  # [B, A]
    return AnatomyMasks(token_mask, token_mask.any(dim=-1) & ~on_border)


class AnatomyAttentionPool(nn.Module):
    """One learnable query per anatomy attends over that anatomy's tokens; per-anatomy projection.

    ``v[b, a] = norm(W_a @ MHA(q_a; tokens[b] where token_mask[b, a]) + c_a)`` with ONE multi-head
    attention shared by all anatomies. Vectorised over (B, A): the A queries of a sample attend in one
    call with a per-query boolean attention mask [B*heads, A, T] (keys/values are projected once per
    sample, never copied per anatomy). An anatomy with no token gives a zero vector (no NaN).

    Args:
        num_anatomies: A.
        width: W, token width.
        embed_dim: E.
        heads: attention heads (W must be divisible).
    """

    def __init__(self, num_anatomies: int, width: int, embed_dim: int, heads: int):
        super().__init__()
        self.num_anatomies, self.heads = num_anatomies, heads
        self.queries = nn.Parameter(torch.randn(num_anatomies, width) * width ** -0.5)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        bound = 1 / math.sqrt(width)
        self.proj_weight = nn.Parameter(torch.empty(num_anatomies, width, embed_dim).uniform_(-bound, bound))
        self.proj_bias = nn.Parameter(torch.zeros(num_anatomies, embed_dim))

    def _attention_inputs(self, tokens: torch.Tensor, token_mask: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(has_tokens [B, A], attention mask [B*H, A, T] (True = not allowed), queries [B, A, W])."""
        b, t, _ = tokens.shape
        if token_mask.shape != (b, self.num_anatomies, t):
            raise ValueError(f"token_mask: expected {[b, self.num_anatomies, t]}, "
                             f"got {list(token_mask.shape)}")
        has_tokens = token_mask.any(dim=-1)
        # Empty anatomies attend everywhere (finite softmax); callers zero their rows.
        blocked = ~(token_mask | ~has_tokens.unsqueeze(-1))
        attn_mask = blocked.repeat_interleave(self.heads, dim=0)
        queries = self.queries.unsqueeze(0).expand(b, -1, -1).to(tokens.dtype)
        return has_tokens, attn_mask, queries

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """tokens [B, T, W], token_mask [B, A, T] bool -> anatomy embeddings [B, A, E] (normalised)."""
        has_tokens, attn_mask, queries = self._attention_inputs(tokens, token_mask)
        pooled, _ = self.attn(queries, tokens, tokens, attn_mask=attn_mask, need_weights=False)  # [B, A, W]
        emb = torch.einsum("baw,awe->bae", pooled, self.proj_weight.to(pooled.dtype)) + self.proj_bias
        return F.normalize(emb, dim=-1) * has_tokens.unsqueeze(-1)

    def attention_weights(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention of each anatomy query over the tokens, as ``forward`` computes it.

        Args:
            tokens: [B, T, W] tokens (as passed to ``forward``).
            token_mask: [B, A, T] bool, token t belongs to anatomy a.

        Returns:
            [B, A, T] weights: softmax over anatomy a's own tokens (each row sums to 1), averaged over
            heads; exactly 0 at tokens outside the mask and on the whole row of an anatomy with no token.
        """
        has_tokens, attn_mask, queries = self._attention_inputs(tokens, token_mask)
        _, weights = self.attn(queries, tokens, tokens, attn_mask=attn_mask, need_weights=True,
                               average_attn_weights=True)  # [B, A, T]
        return weights * has_tokens.unsqueeze(-1).to(weights.dtype)
