"""RadCLIP slice encoding (a 2D encoder over the slices of a volume) and the slice-pooling adapter."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def encode_slices(encoder: Callable[[torch.Tensor], torch.Tensor], slices: torch.Tensor,
                  slice_mask: torch.Tensor | None = None, chunk: int = 64) -> torch.Tensor:
    """Encode the slices of a batch of volumes with a 2D encoder, ``chunk`` slices per call.

    Only real slices are encoded (padding slices are skipped and get zero vectors), so the result does
    not depend on padding content nor on ``chunk``.

    Args:
        encoder: maps images [n, C, H, W] to features [n, E] (e.g. the 2D image tower).
        slices: [B, S, C, H, W] slices, padded to S per batch.
        slice_mask: [B, S] bool, True for real slices; None = all real.
        chunk: slices per encoder call (bounds the activation memory of one call).

    Returns:
        [B, S, E] slice features (zeros at padding).
    """
    if slices.ndim != 5:
        raise ValueError(f"slices: expected [B, S, C, H, W], got {list(slices.shape)}")
    if chunk < 1:
        raise ValueError(f"slice chunk must be >= 1, got {chunk}")
    b, s = slices.shape[:2]
    flat = slices.flatten(0, 1)
    if slice_mask is None:
        index = torch.arange(b * s, device=slices.device)
    else:
        if slice_mask.shape != (b, s):
            raise ValueError(f"slice_mask: expected [{b}, {s}], got {list(slice_mask.shape)}")
        index = slice_mask.flatten().nonzero().squeeze(1)
    real = flat.index_select(0, index)
    if real.shape[0] == 0:
        raise ValueError("encode_slices: the batch has no real slice (slice_mask is all False)")
    feats = torch.cat([encoder(real[i:i + chunk]) for i in range(0, real.shape[0], chunk)])
    out = feats.new_zeros(b * s, feats.shape[-1]).index_copy(0, index, feats)
    return out.view(b, s, -1)


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """Transformer sinusoidal encoding [length, dim] of positions 0 .. length-1."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class SlicePooling(nn.Module):
    """Pool slice embeddings [B, S, D] of a volume to one vector [B, D] (before any projection).

    ``pooling="attention"`` (RadCLIP): ``V = MHSA(I + PE(slice index))`` over ``layers`` pre-norm
    transformer layers (padding slices masked as keys), then a learnable query attends over V
    (padding masked) -> LayerNorm -> [B, D]. ``pooling="mean"`` (ablation): the masked mean of the
    slice embeddings; no parameters.

    Args:
        dim: D.
        heads: attention heads (D divisible by heads).
        layers: self-attention layers over slices.
        max_slices: longest volume (learnable PE table size; S may not exceed it).
        pooling: ``"attention"`` or ``"mean"``.
        pos: ``"learnable"`` or ``"sinusoidal"`` slice positional encoding.
    """

    def __init__(self, dim: int, heads: int = 4, layers: int = 1, max_slices: int = 64,
                 pooling: str = "attention", pos: str = "learnable"):
        super().__init__()
        if pooling not in ("attention", "mean"):
            raise ValueError(f"SlicePooling: pooling must be 'attention' or 'mean', got {pooling!r}")
        if pos not in ("learnable", "sinusoidal"):
            raise ValueError(f"SlicePooling: pos must be 'learnable' or 'sinusoidal', got {pos!r}")
        self.pooling, self.max_slices = pooling, max_slices
        if pooling == "mean":
            return
        if pos == "learnable":
            self.pos_embed = nn.Parameter(torch.randn(max_slices, dim) * 0.02)
        else:
            self.register_buffer("pos_embed", sinusoidal_positions(max_slices, dim), persistent=False)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers)
        ])
        self.query = nn.Parameter(torch.randn(1, 1, dim) * dim ** -0.5)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, slice_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, S, D], slice_mask [B, S] bool (True = real; every volume needs one) -> [B, D]."""
        b, s, _ = x.shape
        if slice_mask is None:
            slice_mask = torch.ones(b, s, dtype=torch.bool, device=x.device)
        if self.pooling == "mean":
            m = slice_mask.unsqueeze(-1).to(x.dtype)
            return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        if s > self.max_slices:
            raise ValueError(f"SlicePooling: {s} slices exceed max_slices={self.max_slices}; "
                             "raise max_slices in the config")
        padding = ~slice_mask
        h = x + self.pos_embed[:s].to(x.dtype)
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=padding)
        pooled, _ = self.attn(self.query.expand(b, -1, -1).to(h.dtype), h, h, key_padding_mask=padding,
                              need_weights=False)
        return self.norm(pooled[:, 0])
