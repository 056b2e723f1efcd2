"""Learnable contrastive temperatures and biases, stored as open_clip stores them."""

from __future__ import annotations

import math

import torch
from torch import nn

MAX_LOGIT_SCALE = 100.0
LOG_MAX_LOGIT_SCALE = math.log(MAX_LOGIT_SCALE)  # for in-place clamping after a step, as open_clip does


def scalar_parameter(value: float | None) -> nn.Parameter | None:
    """A 0-d learnable parameter initialised to ``value`` (None -> no parameter)."""
    return None if value is None else nn.Parameter(torch.tensor(float(value)))


def set_logit_scale(module: nn.Module, value: float, learnable: bool) -> None:
    """Give ``module`` its ``logit_scale`` (log t): a learnable parameter, or a fixed buffer (RadCLIP's
    tau = 0.07 in both stages), which no optimiser, freeze or unfreeze touches and checkpoints still store."""
    if learnable:
        module.logit_scale = scalar_parameter(value)
    else:
        module.register_buffer("logit_scale", torch.tensor(float(value)))


class LogitScalesMixin:
    """Clamped access to ``logit_scale`` (log t) and ``concept_logit_scale`` (log t_c).

    Scales are stored as logs (init log(1/0.07)); ``*_exp`` returns ``exp(.)`` clamped at 100.
    Biases (``logit_bias``, ``concept_logit_bias``, init -10) are used as stored; they are None on
    models built without them (the softmax CLIP baseline), so DDP sees no unused parameter.
    """

    logit_scale: nn.Parameter
    concept_logit_scale: nn.Parameter | None

    def logit_scale_exp(self) -> torch.Tensor:
        """t = exp(logit_scale), clamped to <= 100 (0-d tensor)."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def concept_logit_scale_exp(self) -> torch.Tensor:
        """t_c = exp(concept_logit_scale), clamped to <= 100 (0-d tensor); PC-Align only."""
        if getattr(self, "concept_logit_scale", None) is None:
            raise AttributeError("this model has no concept_logit_scale; build it with concept_heads=True")
        return self.concept_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

