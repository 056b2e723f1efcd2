"""What the models return: small named tuples of tensors (DDP- and torch.compile-friendly)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class ImageOutput(NamedTuple):
    """2D image tower output.

    embedding: [B, E] L2-normalised global embedding (open_clip's pooled token @ proj).
    patch_tokens: [B, P, Wv] all P = (H/patch) * (W/patch) patch tokens of the trunk, after the
        final LayerNorm (``ln_post``; before it if the config sets ``final_ln_after_pool``) and before
        pooling and projection; row-major patch grid (P shrinks in training if ``patch_dropout`` > 0).
    """

    embedding: torch.Tensor
    patch_tokens: torch.Tensor


class TextOutput(NamedTuple):
    """Text tower output.

    embedding: [B, E] L2-normalised global text embedding (``text_pool`` 'eot' or 'mean').
    token_states: [B, L, Wt] per-token states after the final LayerNorm (``ln_final``), before pooling.
    attention_mask: [B, L] bool, True for real tokens (start-of-text .. end-of-text), False for padding.
    """

    embedding: torch.Tensor
    token_states: torch.Tensor
    attention_mask: torch.Tensor


class DualOutput(NamedTuple):
    image: ImageOutput
    text: TextOutput


class AnatomyOutput(NamedTuple):
    """fVLM volume output.

    embeddings: [B, A, E] L2-normalised anatomy embeddings; all-zero rows for anatomies with no token.
    valid: [B, A] bool, anatomy present in the crop and not touching its border (use these in the loss).
    token_mask: [B, A, N] bool, token n belongs to anatomy a (any of its voxels does).
    """

    embeddings: torch.Tensor
    valid: torch.Tensor
    token_mask: torch.Tensor


class VolumeOutput(NamedTuple):
    """One embedding per volume (ct_global, radclip).

    embedding: [B, E] L2-normalised volume embedding.
    parts: the per-part features it was pooled from: [B, N, W] 3D ViT tokens (ct_global) or
        [B, S, E] slice embeddings (radclip).
    """

    embedding: torch.Tensor
    parts: torch.Tensor
