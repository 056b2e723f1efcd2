"""A small convolutional image tower with the ViT tower's contract (global embedding + patch tokens).

Why it exists: trained from scratch on a CPU, a plain ViT learns focal findings far more slowly
than a convolutional net (measured on the synthetic corpus, see README "Choosing the image tower"):
convolutions carry the locality prior that a ViT must learn from data. The methods do not depend on
the tower: PC-Align's "patch tokens" are the cells of the last feature map, exactly as GLoRIA / MGCA
use ResNet feature maps as local image features.

Shape: ``stages`` of ``blocks`` 3x3 conv -> norm -> ReLU blocks; every stage but the first starts with
stride 2, the first block of the tower too. An ``S x S`` image with ``n`` stages gives a
``S / 2**n`` square grid of ``P`` cells of width ``W = channels[-1]``. The global embedding pools
the cells (``max`` suits focal findings, ``avg`` is the classic choice) and projects them with
``proj`` ``[W, E]``; patch tokens are the cells after a final LayerNorm, so ``tokens @ proj`` are
dense features in the joint space as for open_clip's ViT (MaskCLIP-style maps).

Configured by a CLIP config whose ``vision_cfg`` has ``"medvlp_conv": true`` (see
``model_configs/medvlp-conv-tiny.json``); keys: ``image_size``, ``channels`` (per stage),
``blocks`` (per stage), ``norm`` (``"batch"`` or ``"group"``: GroupNorm with 8 groups, independent
of the batch, so N ranks of b equal one rank of N*b exactly), ``pool`` (``"max"`` | ``"avg"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

CONV_KEYS = {"medvlp_conv", "image_size", "channels", "blocks", "norm", "pool"}


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"conv tower: norm must be 'batch' or 'group', got {kind!r}")


def conv_block(c_in: int, c_out: int, stride: int, norm: str) -> nn.Sequential:
    """3x3 conv (no bias) -> norm -> ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), _norm(norm, c_out), nn.ReLU(inplace=True))


class ConvTower(nn.Module):
    """images [B, 3, S, S] -> (pooled @ proj [B, E], patch tokens [B, P, W]).

    Args:
        embed_dim: E.
        image_size: S (a multiple of ``2 ** len(channels)``).
        channels: output channels of each stage.
        blocks: conv blocks per stage.
        norm: ``"batch"`` or ``"group"``.
        pool: ``"max"`` or ``"avg"`` pooling of the cells for the global embedding.
    """

    def __init__(self, embed_dim: int, image_size: int, channels: Sequence[int] = (32, 64, 128), blocks: int = 2,
                 norm: str = "batch", pool: str = "max"):
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"conv tower: pool must be 'max' or 'avg', got {pool!r}")
        stride_total = 2 ** len(channels)
        if image_size % stride_total:
            raise ValueError(f"conv tower: image_size {image_size} must be a multiple of {stride_total} "
                             f"(2 ** number of stages)")
        layers, c_in = [], 3
        for c in channels:
            for b in range(int(blocks)):
                layers.append(conv_block(c_in, int(c), 2 if b == 0 else 1, norm))
                c_in = int(c)
        self.body = nn.Sequential(*layers)
        self.ln_post = nn.LayerNorm(c_in)
        self.proj = nn.Parameter(torch.randn(c_in, embed_dim) * c_in ** -0.5)
        self.pool = pool
        self.width = c_in
        self.image_size = (image_size, image_size)
        self.grid_size = (image_size // stride_total, image_size // stride_total)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cells = self.body(images)  # [B, W, g, g]
        tokens = self.ln_post(cells.flatten(2).transpose(1, 2))  # [B, P, W]
        pooled = tokens.amax(dim=1) if self.pool == "max" else tokens.mean(dim=1)
        return pooled @ self.proj, tokens

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """No-op: the tower is small; kept for the trainer's switch."""


def build_conv_tower(embed_dim: int, vision_cfg: dict) -> ConvTower:
    """A :class:`ConvTower` from a ``vision_cfg`` with ``"medvlp_conv": true``; unknown keys raise."""
    unknown = sorted(set(vision_cfg) - CONV_KEYS)
    if unknown:
        raise ValueError(f"conv vision_cfg: unknown keys {unknown}; allowed: {sorted(CONV_KEYS)}")
    return ConvTower(embed_dim, int(vision_cfg["image_size"]), tuple(vision_cfg.get("channels", (32, 64, 128))),
                     int(vision_cfg.get("blocks", 2)), vision_cfg.get("norm", "batch"), vision_cfg.get("pool", "max"))
