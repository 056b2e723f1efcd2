"""The volume tower of the 3D models (fVLM, the CT-CLIP global baseline): a MONAI 3D ViT or a 3D conv net."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from medvlp.models.configs import DEFAULT_VIT3D, VOLUME_TOWERS
from medvlp.models.conv_volume_tower import ConvEncoder3D
from medvlp.models.vit_volume_tower import ViT3DEncoder


def volume_tower_config(config: dict) -> dict:
    """The config dict of the tower a resolved 3D model config selects (``config[config["volume_tower"]]``;
    configs saved before the switch existed have no ``volume_tower`` and mean ``vit3d``)."""
    tower = config.get("volume_tower", "vit3d")
    if tower not in VOLUME_TOWERS:
        raise ValueError(f"model config: volume_tower must be one of {VOLUME_TOWERS}, got {tower!r}")
    if tower not in config:
        raise ValueError(f"model config of kind {config.get('kind')!r} has no {tower!r} volume tower "
                         "(only fvlm and ct_global have one)")
    return config[tower]


def volume_size(config: dict) -> tuple[int, int, int]:
    """Input size [X, Y, Z] in voxels of a resolved 3D model config's volume tower."""
    return tuple(int(s) for s in volume_tower_config(config)["img_size"])


def has_volume_tower(config: dict) -> bool:
    """Whether a resolved model config encodes volumes with a 3D tower (fvlm, ct_global; not RadCLIP)."""
    return config.get("kind") in ("fvlm", "ct_global")


def input_volume_size(config: dict) -> tuple[int, int, int]:
    """The CT size [X, Y, Z] a model takes when ``volume.spatial_size`` is not set: its volume tower's
    input size, or for models that encode slices with a 2D tower (RadCLIP), which take any size, the
    default 3D ViT's."""
    if has_volume_tower(config):
        return volume_size(config)
    return tuple(int(s) for s in DEFAULT_VIT3D["img_size"])


def build_volume_tower(config: dict, token_depths: Sequence[int]) -> nn.Module:
    """``ViT3DEncoder`` or ``ConvEncoder3D`` (same contract: tokens [B, D, N, W]) from a resolved config."""
    cfg = volume_tower_config(config)
    if config.get("volume_tower", "vit3d") == "conv3d":
        return ConvEncoder3D(cfg, token_depths)
    return ViT3DEncoder(cfg, token_depths)
