"""RadCLIP: a 2D dual encoder (stage 1) plus slice pooling into volume embeddings (stage 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvlp.models.dual_encoder import DualEncoder
from medvlp.models.outputs import VolumeOutput
from medvlp.models.slice_pooling import SlicePooling, encode_slices


class RadCLIP(DualEncoder):
    """2D CLIP (``encode_image`` / ``encode_text`` as ``DualEncoder``) + slice-pooling adapter.

    Stage 1 trains on 2D image-text pairs (``forward(images, ids)``); stage 2 on volume-report pairs
    (``encode_volume`` + ``encode_text``). A volume's slices go through the 2D image tower in chunks
    of ``slice_chunk`` (slice feature = the tower's unnormalised global embedding, [E]); the slice
    pooling adapter reduces them to one vector; ``volume_proj`` (linear) + L2 norm give the volume
    embedding. When the image tower is frozen, slices are encoded without autograd.

    Args:
        config: resolved model config of kind ``radclip``: the ``dual_encoder`` keys plus
            ``slice_pooling`` ('attention' | 'mean'), ``slice_heads``, ``slice_layers``, ``slice_pos``
            ('learnable' | 'sinusoidal'), ``max_slices``, ``slice_chunk``, ``freeze_text``,
            ``freeze_image``.
    """

    def __init__(self, config: dict):
        super().__init__({**config, "concept_heads": False})
        self.config = config
        self.slice_chunk = int(config["slice_chunk"])
        self.slice_pool = SlicePooling(
            self.embed_dim, heads=int(config["slice_heads"]), layers=int(config["slice_layers"]),
            max_slices=int(config["max_slices"]), pooling=config["slice_pooling"], pos=config["slice_pos"])
        self.volume_proj = nn.Linear(self.embed_dim, self.embed_dim)
        if config.get("freeze_text"):
            self.freeze_text()
        if config.get("freeze_image"):
            self.freeze_image()

    def _slice_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.image.features(images)[0]

    def encode_slices(self, slices: torch.Tensor, slice_mask: torch.Tensor | None = None) -> torch.Tensor:
        """slices [B, S, C, H, W] (+ mask [B, S]) -> slice features [B, S, E] (zeros at padding)."""
        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in self.image.parameters())
        with torch.set_grad_enabled(trainable):
            return encode_slices(self._slice_features, slices, slice_mask, self.slice_chunk)

    def encode_volume(self, slices: torch.Tensor, slice_mask: torch.Tensor | None = None) -> VolumeOutput:
        """slices [B, S, C, H, W], slice_mask [B, S] bool -> VolumeOutput(embedding [B, E], parts [B, S, E]).

        Every volume needs at least one real slice.
        """
        feats = self.encode_slices(slices, slice_mask)
        pooled = self.slice_pool(feats, slice_mask)
        return VolumeOutput(F.normalize(self.volume_proj(pooled), dim=-1), feats)
