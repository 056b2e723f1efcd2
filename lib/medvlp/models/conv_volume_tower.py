"""A small 3D convolutional volume tower with the 3D ViT's contract (token grid from several depths).

Why it exists: trained from scratch on a CPU, the 3D ViT of fVLM learns the focal CT findings far
more slowly than a convolutional net, and the global CT-CLIP baseline built on it stays at chance
for the default budget (README, "Choosing the volume tower"): convolutions carry the locality prior
a ViT must learn from data, exactly as for the 2D tower (``conv_image_tower.py``). fVLM's method does not
depend on the tower: its anatomy pooling needs a token grid whose cells map to voxel blocks, which
the last feature map is.

Shape: ``len(channels)`` stages of ``blocks`` 3x3x3 conv -> norm -> ReLU blocks, each stage starting
with a stride-``strides[s]`` block. A volume ``[B, C, X, Y, Z]`` gives a grid ``X / px, Y / py, Z / pz``
with ``p = prod(strides)`` per axis (the ViT's ``patch_size``): token ``n = (ix * gy + iy) * gz + iz``,
MONAI's patch order. "Depths" are the blocks of the last stage (all on that grid); every selected
block output goes through one final LayerNorm, as the ViT's tokens do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

CONV3D_KEYS = {"in_channels", "img_size", "channels", "blocks", "strides", "norm"}

# CPU-sized default: 64 x 64 x 32 voxels, three stride-2 stages -> an 8 x 8 x 4 grid of 256 tokens
# (the default ViT's grid), width 64. Widths 24/48/96 cost 1.8x the time per step for no measured gain
# (README, "Choosing the volume tower").
DEFAULT_CONV3D: dict[str, Any] = {
    "in_channels": 1,
    "img_size": [64, 64, 32],
    "channels": [16, 32, 64],
    "blocks": 2,
    "strides": 2,  # every stage; a list gives one stride (int or x, y, z) per stage
    "norm": "batch",
}


def _norm3d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"conv3d config: norm must be 'batch' or 'group', got {kind!r}")


def _per_axis(value: int | Sequence[int], what: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    if len(value) != 3:
        raise ValueError(f"conv3d config: {what} needs 3 sizes (x, y, z), got {value}")
    return tuple(int(v) for v in value)


class ConvEncoder3D(nn.Module):
    """volume [B, C, X, Y, Z] -> tokens [B, D, N, W] (D = len(token_depths), N = gx * gy * gz).

    Args:
        cfg: ``in_channels``, ``img_size`` [X, Y, Z], ``channels`` (per stage), ``blocks`` (per stage),
            ``strides`` (per stage: an int or an (x, y, z) triple, default 2), ``norm`` (``"batch"`` or
            ``"group"``: GroupNorm with 8 groups, independent of the batch split across ranks).
        token_depths: blocks of the last stage (python-style, -1 = last) whose outputs to return.

    Attributes match ``ViT3DEncoder``: ``img_size``, ``patch_size`` (voxels per token per axis),
    ``grid_size``, ``num_tokens``, ``width``, ``token_depths``.
    """

    def __init__(self, cfg: dict, token_depths: Sequence[int] = (-1,)):
        super().__init__()
        unknown = sorted(set(cfg) - CONV3D_KEYS)
        if unknown:
            raise ValueError(f"conv3d config: unknown keys {unknown}; allowed: {sorted(CONV3D_KEYS)}")
        cfg = {**DEFAULT_CONV3D, **cfg}
        channels = [int(c) for c in cfg["channels"]]
        blocks = int(cfg["blocks"])
        strides = cfg["strides"]
        if isinstance(strides, int):
            strides = [strides] * len(channels)
        if len(strides) != len(channels) or blocks < 1:
            raise ValueError(f"conv3d config: strides {cfg['strides']} must give one stride per stage of "
                             f"channels {channels}, and blocks >= 1 (got {blocks})")
        strides = [_per_axis(s, "strides") for s in strides]
        self.img_size = _per_axis(cfg["img_size"], "img_size")
        self.patch_size = tuple(math.prod(s[axis] for s in strides) for axis in range(3))
        for size, patch in zip(self.img_size, self.patch_size):
            if size % patch:
                raise ValueError(f"conv3d config: img_size {self.img_size} must be divisible by the total "
                                 f"stride {self.patch_size} of the stages")
        stages, c_in = [], int(cfg["in_channels"])
        for c, stride in zip(channels, strides):
            stage = []
            for b in range(blocks):
                stage.append(nn.Sequential(nn.Conv3d(c_in, c, 3, stride if b == 0 else 1, 1, bias=False),
                                           _norm3d(cfg["norm"], c), nn.ReLU(inplace=True)))
                c_in = c
            stages.append(stage)
        self.stem = nn.Sequential(*[block for stage in stages[:-1] for block in stage])
        self.last = nn.ModuleList(stages[-1])
        self.norm = nn.LayerNorm(c_in)
        self.width = c_in
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_tokens = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        bad = [d for d in token_depths if not -blocks <= d < blocks]
        if bad or not token_depths:
            raise ValueError(f"conv3d: token_depths {list(token_depths)} must be non-empty indices into the "
                             f"{blocks} blocks of the last stage (python-style, -1 = last)")
        self.token_depths = [d % blocks for d in token_depths]

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """volume [B, C, X, Y, Z] -> tokens [B, D, N, W]."""
        if volume.ndim != 5 or tuple(volume.shape[2:]) != self.img_size:
            raise ValueError(f"volume: expected [B, C, {', '.join(map(str, self.img_size))}], "
                             f"got {list(volume.shape)}; resample/crop to the tower's img_size")
        x = self.stem(volume)
        outputs = []
        for block in self.last:
            x = block(x)
            outputs.append(x)
        return torch.stack([self.norm(outputs[d].flatten(2).transpose(1, 2)) for d in self.token_depths], dim=1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """No-op: the tower is small; kept for the trainer's switch."""
