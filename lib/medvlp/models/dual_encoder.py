"""2D dual encoder (CLIP / SigLIP / ConceptCLIP) on open_clip towers.

One model for the three 2D methods; only the config differs:

- ``clip``: ``text_pool="eot"``, no bias, no concept heads (softmax InfoNCE baseline).
- ``siglip``: as clip plus ``logit_bias`` (init -10) for the sigmoid loss.
- ``conceptclip``: ``text_pool="mean"``, ``logit_bias``, and the PC-Align heads ``image_proj`` /
  ``text_proj`` (MLPs to E) with their own ``concept_logit_scale`` / ``concept_logit_bias``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvlp.models.image_text_towers import ImageEncoder, MLPHead, TextEncoder
from medvlp.models.logit_scales import LogitScalesMixin, scalar_parameter, set_logit_scale
from medvlp.models.outputs import DualOutput, ImageOutput, TextOutput


def span_mean(values: torch.Tensor, spans: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over token spans, vectorised over spans by prefix sums.

    Args:
        values: [B, L, D] per-token values.
        spans: [K, 2] long token positions (start inclusive, end exclusive), 0 <= start < end <= L.
        owner: [K] long, the row of ``values`` each span indexes.

    Returns:
        [K, D] float32 means (an empty span gives zeros).
    """
    csum = F.pad(values.float().cumsum(dim=1), (0, 0, 1, 0))  # [B, L + 1, D]
    start, end = spans[:, 0], spans[:, 1]
    total = csum[owner, end] - csum[owner, start]  # [K, D]
    return total / (end - start).clamp_min(1).unsqueeze(-1).to(total.dtype)


class DualEncoder(nn.Module, LogitScalesMixin):
    """Image tower + text tower (+ PC-Align heads) with learnable logit scales.

    Args:
        config: a resolved model config of kind ``dual_encoder`` (see ``resolve_model_config``); keys
            ``clip_model`` (open_clip-schema dict), ``text_pool``, ``concept_heads``, ``head_hidden``,
            ``init_logit_scale``, ``init_logit_bias``.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        clip = config["clip_model"]
        embed_dim, quick_gelu = int(clip["embed_dim"]), bool(clip.get("quick_gelu", False))
        self.embed_dim = embed_dim
        self.image = ImageEncoder(embed_dim, clip["vision_cfg"], quick_gelu)
        self.text = TextEncoder(embed_dim, clip["text_cfg"], quick_gelu, pool=config["text_pool"])
        set_logit_scale(self, config["init_logit_scale"], config["learnable_logit_scale"])
        self.logit_bias = scalar_parameter(config["init_logit_bias"])
        if config.get("concept_heads"):
            hidden = config.get("head_hidden")
            self.image_proj = MLPHead(self.image.width, embed_dim, hidden)
            self.text_proj = MLPHead(self.text.width, embed_dim, hidden)
            self.concept_logit_scale = scalar_parameter(config["init_logit_scale"])
            self.concept_logit_bias = scalar_parameter(
                config["init_logit_bias"] if config["init_logit_bias"] is not None else -10.0)
        else:
            self.image_proj = self.text_proj = None
            self.concept_logit_scale = self.concept_logit_bias = None

    @property
    def context_length(self) -> int:
        return self.text.context_length

    @property
    def tokenizer(self):
        """open_clip SimpleTokenizer for this model's context length."""
        return self.text.tokenizer

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """texts -> ids [N, L]."""
        return self.text.tokenize(texts)

    def encode_image(self, images: torch.Tensor) -> ImageOutput:
        """images [B, 3 or 1, H, W] -> ImageOutput(embedding [B, E], patch_tokens [B, P, Wv])."""
        return self.image(images)

    def encode_text(self, ids: torch.Tensor) -> TextOutput:
        """ids [B, L] -> TextOutput(embedding [B, E], token_states [B, L, Wt], attention_mask [B, L])."""
        return self.text(ids)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> DualOutput:
        return DualOutput(self.encode_image(images), self.encode_text(ids))

    def _require_heads(self) -> None:
        if self.image_proj is None:
            raise AttributeError("this model has no PC-Align heads; build it with concept_heads=True "
                                 "(preset 'conceptclip')")

    def patch_concept_embeddings(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """patch_tokens [B, P, Wv] -> v [B, P, E] = norm(image_proj(patch_tokens))."""
        self._require_heads()
        return F.normalize(self.image_proj(patch_tokens), dim=-1)

    def concept_embeddings(self, token_states: torch.Tensor, spans: torch.Tensor,
                           owner: torch.Tensor) -> torch.Tensor:
        """Concept embeddings c [K, E]: normalised mean of ``text_proj(token_states)`` inside each span.

        Args:
            token_states: [B, L, Wt] from ``encode_text``.
            spans: [K, 2] long token positions (start inclusive, end exclusive) in the caption's ids,
                as ``concept_spans.tokenize_with_concepts`` returns them.
            owner: [K] long, the caption (row of ``token_states``) of each concept.
        """
        self._require_heads()
        projected = self.text_proj(token_states)  # [B, L, E]
        return F.normalize(span_mean(projected, spans, owner), dim=-1).to(projected.dtype)

    def freeze_text(self) -> None:
        """Freeze the text tower (RadCLIP stage 1 trains the image tower against a frozen text encoder)."""
        for p in self.text.parameters():
            p.requires_grad_(False)

    def freeze_image(self) -> None:
        """Freeze the image tower."""
        for p in self.image.parameters():
            p.requires_grad_(False)
