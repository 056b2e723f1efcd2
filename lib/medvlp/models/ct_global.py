"""CT-CLIP-style global baseline: fVLM's volume tower with mean pooling over all tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvlp.models.image_text_towers import TextEncoder
from medvlp.models.logit_scales import LogitScalesMixin, scalar_parameter, set_logit_scale
from medvlp.models.outputs import TextOutput, VolumeOutput
from medvlp.models.volume_tower import build_volume_tower


class CTGlobalCLIP(nn.Module, LogitScalesMixin):
    """One embedding per volume: ``norm(Linear(mean_n tokens[:, n]))`` from the volume tower's last block.

    Args:
        config: resolved model config of kind ``ct_global``: ``clip_model`` (its text tower and
            embed_dim are used), ``text_pool``, ``volume_tower``,
            ``vit3d`` / ``conv3d``, ``init_logit_scale``, ``init_logit_bias``.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        clip = config["clip_model"]
        embed_dim, quick_gelu = int(clip["embed_dim"]), bool(clip.get("quick_gelu", False))
        self.embed_dim = embed_dim
        self.volume = build_volume_tower(config, token_depths=(-1,))
        self.volume_proj = nn.Linear(self.volume.width, embed_dim)
        self.text = TextEncoder(embed_dim, clip["text_cfg"], quick_gelu, pool=config["text_pool"])
        set_logit_scale(self, config["init_logit_scale"], config["learnable_logit_scale"])
        self.logit_bias = scalar_parameter(config["init_logit_bias"])

    @property
    def tokenizer(self):
        return self.text.tokenizer

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        return self.text.tokenize(texts)

    def encode_volume(self, volume: torch.Tensor) -> VolumeOutput:
        """volume [B, C, X, Y, Z] -> VolumeOutput(embedding [B, E], parts = tokens [B, N, W])."""
        tokens = self.volume(volume)[:, 0]  # [B, N, W]
        return VolumeOutput(F.normalize(self.volume_proj(tokens.mean(dim=1)), dim=-1), tokens)

    def encode_text(self, ids: torch.Tensor) -> TextOutput:
        return self.text(ids)

    def forward(self, volume: torch.Tensor, ids: torch.Tensor) -> tuple[VolumeOutput, TextOutput]:
        return self.encode_volume(volume), self.encode_text(ids)
