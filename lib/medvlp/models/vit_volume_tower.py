"""3D ViT volume encoder (MONAI ``ViT``) returning tokens from several depths."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ViT
from torch import nn

#: ``vit3d.final_norm``: which selected depths go through the ViT's final LayerNorm.
FINAL_NORMS = ("every_depth", "last_block")


class ViT3DEncoder(nn.Module):
    """MONAI 3D ViT (``spatial_dims=3, classification=False``) over a volume [B, C, X, Y, Z].

    Tokens follow MONAI's patch embedding order: the token grid (X/px, Y/py, Z/pz) flattened
    row-major, so token n = (ix * gy + iy) * gz + iz.

    Args:
        vit_cfg: ``monai.networks.nets.ViT`` keyword arguments (``in_channels``, ``img_size``,
            ``patch_size``, ``hidden_size``, ``mlp_dim``, ``num_layers``, ``num_heads``, ...).
        token_depths: block indices (python-style, -1 = last block) whose outputs to return. By default
            every selected block output goes through the ViT's final LayerNorm, so all depths share one scale
            (the last one then equals MONAI's own output).

    ``vit_cfg["final_norm"]`` (medvlp's key, not MONAI's): ``"every_depth"`` (default, as above) or
    ``"last_block"``: only the last block's output goes through the final LayerNorm, the other depths are
    raw block outputs, as the official fVLM ViT (``lavis/models/blip_models/vit.py``) returns its
    multi-level tokens.
    """

    def __init__(self, vit_cfg: dict, token_depths: Sequence[int] = (-1,)):
        super().__init__()
        cfg = dict(vit_cfg)
        self.final_norm = cfg.pop("final_norm", "every_depth")
        if self.final_norm not in FINAL_NORMS:
            raise ValueError(f"vit3d config: final_norm must be one of {FINAL_NORMS}, got {self.final_norm!r}")
        for key in ("spatial_dims", "classification"):
            if key in cfg:
                raise ValueError(f"vit3d config: {key!r} is fixed by medvlp (3D, no classification head)")
        self.vit = ViT(spatial_dims=3, classification=False, **cfg)
        for block in self.vit.blocks:
            # MONAI builds a cross-attention LayerNorm in every block even without cross-attention; no forward
            # uses it, and DistributedDataParallel fails on parameters that never get a gradient
            block.norm_cross_attn = nn.Identity()
        self.img_size = tuple(int(s) for s in _triple(cfg["img_size"]))
        self.patch_size = tuple(int(p) for p in _triple(cfg["patch_size"]))
        for s, p in zip(self.img_size, self.patch_size):
            if s % p:
                raise ValueError(f"vit3d config: img_size {self.img_size} must be divisible by "
                                 f"patch_size {self.patch_size}")
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_tokens = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        self.width = int(cfg["hidden_size"])
        layers = len(self.vit.blocks)
        self.token_depths = [d % layers for d in token_depths]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # model files written before the unused cross-attention norms were dropped still load
        for key in [k for k in state_dict if k.startswith(prefix) and ".norm_cross_attn." in k]:
            del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """volume [B, C, X, Y, Z] -> tokens [B, D, N, W] (D = len(token_depths), N = num_tokens)."""
        if volume.ndim != 5 or tuple(volume.shape[2:]) != self.img_size:
            raise ValueError(f"volume: expected [B, C, {', '.join(map(str, self.img_size))}], "
                             f"got {list(volume.shape)}; resample/crop to the ViT's img_size")
        _, hidden = self.vit(volume)
        last = len(hidden) - 1
        normed = [self.final_norm == "every_depth" or d == last for d in self.token_depths]
        return torch.stack([self.vit.norm(hidden[d]) if n else hidden[d]
                            for d, n in zip(self.token_depths, normed)], dim=1)


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    if len(value) != 3:
        raise ValueError(f"vit3d config: expected 3 sizes, got {value}")
    return tuple(value)
