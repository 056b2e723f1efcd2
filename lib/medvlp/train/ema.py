"""An exponential-moving-average copy of a text tower: fVLM's teacher for abnormal false negatives.

fVLM's second calibration (the paper's "co-teaching") needs text-text similarities that do not chase
the current batch: they come from an EMA copy of the text encoder, ``theta~ <- m theta~ + (1 - m) theta``
after every optimiser step (m = 0.995 in the paper). The copy belongs to the training run, not to the
model: it is saved in ``last.pt`` (so a resumed run continues exactly) and never in ``best.pt``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMATextTower(nn.Module):
    """A frozen copy of ``text`` (a ``medvlp.models.image_text_towers.TextEncoder``) updated as its moving average.

    Args:
        text: the student text tower (copied at construction).
        momentum: m in ``theta~ <- m theta~ + (1 - m) theta``, in [0, 1).

    Raises:
        ValueError: ``momentum`` outside [0, 1).
    """

    def __init__(self, text: nn.Module, momentum: float):
        super().__init__()
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.tower = copy.deepcopy(text).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> EMATextTower:
        """The teacher always runs in eval mode (no dropout), whatever its parent's mode."""
        super().train(mode)
        self.tower.eval()
        return self

    @torch.no_grad()
    def update(self, text: nn.Module) -> None:
        """One EMA step towards the student ``text`` (parameters averaged, buffers copied)."""
        for mine, theirs in zip(self.tower.parameters(), text.parameters(), strict=True):
            mine.lerp_(theirs.detach().to(mine.dtype), 1.0 - self.momentum)
        for mine, theirs in zip(self.tower.buffers(), text.buffers(), strict=True):
            mine.copy_(theirs)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [N, L] -> the teacher's normalised text embeddings [N, E] (no gradient)."""
        return self.tower(ids).embedding
