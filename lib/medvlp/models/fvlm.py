"""fVLM: a 3D volume tower (MONAI ViT or conv net), per-anatomy mask-guided attention pooling, a text tower."""

from __future__ import annotations

import torch
from torch import nn

from medvlp.lexicon import load_anatomy_lexicon
from medvlp.models.anatomy_pooling import AnatomyAttentionPool, anatomy_token_masks
from medvlp.models.image_text_towers import TextEncoder
from medvlp.models.logit_scales import LogitScalesMixin, scalar_parameter, set_logit_scale
from medvlp.models.outputs import AnatomyOutput, TextOutput
from medvlp.models.volume_tower import build_volume_tower


class FVLM(nn.Module, LogitScalesMixin):
    """Anatomy-level CT-report model.

    Volume side: tokens of the volume tower (``volume_tower``: the MONAI 3D ViT, or the 3D conv net
    of ``conv_volume_tower.py``) from ``token_depths`` concatenated along the token axis
    [B, D*N, W]; each anatomy's learnable query attends (shared MHA) over its own tokens at every
    depth; per-anatomy linear projection; L2 norm -> [B, A, E]. Text side: the open_clip text tower of
    ``clip_model`` (anatomy texts are encoded as a flat batch).

    Args:
        config: resolved model config of kind ``fvlm``: ``clip_model``, ``text_pool``, ``volume_tower``,
            ``vit3d`` / ``conv3d``,
            ``token_depths``, ``anatomy_labels`` (None -> labels of medvlp's anatomy lexicon),
            ``pool_heads``, ``init_logit_scale``, ``init_logit_bias``.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        clip = config["clip_model"]
        embed_dim, quick_gelu = int(clip["embed_dim"]), bool(clip.get("quick_gelu", False))
        labels = config.get("anatomy_labels")
        if labels is None:
            labels = [a.label for a in load_anatomy_lexicon().anatomies]
        self.anatomy_labels: list[int] = [int(v) for v in labels]
        self.embed_dim = embed_dim
        self.volume = build_volume_tower(config, config["token_depths"])
        self.pool = AnatomyAttentionPool(len(self.anatomy_labels), self.volume.width, embed_dim,
                                         int(config["pool_heads"]))
        self.text = TextEncoder(embed_dim, clip["text_cfg"], quick_gelu, pool=config["text_pool"])
        set_logit_scale(self, config["init_logit_scale"], config["learnable_logit_scale"])
        self.logit_bias = scalar_parameter(config["init_logit_bias"])

    @property
    def num_anatomies(self) -> int:
        return len(self.anatomy_labels)

    @property
    def tokenizer(self):
        return self.text.tokenizer

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        return self.text.tokenize(texts)

    def _pool_inputs(self, volume: torch.Tensor, label_map: torch.Tensor):
        """(AnatomyMasks, tokens of every depth [B, D*N, W], their anatomy mask [B, A, D*N])."""
        if label_map.shape[0] != volume.shape[0] or tuple(label_map.shape[1:]) != tuple(volume.shape[2:]):
            raise ValueError(f"label_map {list(label_map.shape)} must be [B, X, Y, Z] of volume "
                             f"{list(volume.shape)}")
        masks = anatomy_token_masks(label_map, self.volume.patch_size, self.anatomy_labels)
        tokens = self.volume(volume)  # [B, D, N, W]
        b, d, n, w = tokens.shape
        depth_mask = masks.token_mask.repeat(1, 1, d)  # index = depth * N + token
        return masks, tokens.reshape(b, d * n, w), depth_mask

    def encode_volume(self, volume: torch.Tensor, label_map: torch.Tensor) -> AnatomyOutput:
        """volume [B, C, X, Y, Z], label_map [B, X, Y, Z] -> AnatomyOutput([B, A, E], valid, token_mask)."""
        masks, tokens, depth_mask = self._pool_inputs(volume, label_map)
        emb = self.pool(tokens, depth_mask)
        return AnatomyOutput(emb, masks.valid, masks.token_mask)

    def anatomy_attention(self, volume: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        """Attention of each anatomy query over the pooled tokens, on the token grid of every depth.

        Args:
            volume: [B, C, X, Y, Z], as for ``encode_volume``.
            label_map: [B, X, Y, Z] integer labels.

        Returns:
            [B, A, D, gx, gy, gz] head-averaged weights (``AnatomyAttentionPool.attention_weights``):
            anatomy a's weights sum to 1 over its tokens of all D = len(token_depths) depths together,
            zeros outside its tokens and for anatomies absent from the label map.
        """
        _, tokens, depth_mask = self._pool_inputs(volume, label_map)
        weights = self.pool.attention_weights(tokens, depth_mask)  # [B, A, D*N]
        return weights.reshape(volume.shape[0], self.num_anatomies, -1, *self.volume.grid_size)

    def encode_text(self, ids: torch.Tensor) -> TextOutput:
        return self.text(ids)

    def forward(self, volume: torch.Tensor, label_map: torch.Tensor,
                ids: torch.Tensor) -> tuple[AnatomyOutput, TextOutput]:
        return self.encode_volume(volume, label_map), self.encode_text(ids)
