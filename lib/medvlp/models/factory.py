"""``build_model``: one entry point from a preset name or config dict to a model."""

from __future__ import annotations

from typing import Any

from torch import nn

from medvlp.models.configs import resolve_model_config
from medvlp.models.ct_global import CTGlobalCLIP
from medvlp.models.dual_encoder import DualEncoder
from medvlp.models.fvlm import FVLM
from medvlp.models.radclip import RadCLIP

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "dual_encoder": DualEncoder,
    "fvlm": FVLM,
    "ct_global": CTGlobalCLIP,
    "radclip": RadCLIP,
}


def build_model(name_or_config: str | dict, **overrides: Any) -> nn.Module:
    """Build a model from a preset name (``clip``, ``siglip``, ``conceptclip``, ``fvlm``, ``ct_global``,
    ``radclip``, ``radclip_meanpool``) or a config dict with a ``kind``, plus key overrides.

    The model keeps its resolved config as ``model.config`` (what ``save_model`` stores). Weights are
    randomly initialised; load pretrained towers with ``load_open_clip_weights``.
    """
    config = resolve_model_config(name_or_config, **overrides)
    return MODEL_CLASSES[config["kind"]](config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
