"""The volume tower of the 3D models (fVLM, the CT-CLIP global baseline): a MONAI 3D ViT or a 3D conv net."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from medvlp.models.conv3d import ConvEncoder3D
from medvlp.models.vit3d import ViT3DEncoder

VOLUME_TOWERS = ("vit3d", "conv3d")


def volume_tower_config(config: dict) -> dict:
    """The config dict of the tower a resolved 3D model config selects (``config[config["volume_tower"]]``)."""
    tower = config.get("volume_tower", "vit3d")
    if tower not in VOLUME_TOWERS:
        raise ValueError(f"model config: volume_tower must be one of {VOLUME_TOWERS}, got {tower!r}")
    return config[tower]


def volume_size(config: dict) -> tuple[int, int, int]:
    """Input size [X, Y, Z] in voxels of a resolved 3D model config's volume tower."""
    return tuple(int(s) for s in volume_tower_config(config)["img_size"])


def build_volume_tower(config: dict, token_depths: Sequence[int]) -> nn.Module:
    """``ViT3DEncoder`` or ``ConvEncoder3D`` (same contract: tokens [B, D, N, W]) from a resolved config."""
    cfg = volume_tower_config(config)
    if config.get("volume_tower", "vit3d") == "conv3d":
        return ConvEncoder3D(cfg, token_depths)
    return ViT3DEncoder(cfg, token_depths)
