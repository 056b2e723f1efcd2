"""open_clip towers wrapped to expose what the medvlp losses need (patch tokens, token states).

The towers themselves are open_clip's ``VisionTransformer`` and ``TextTransformer``, built by
open_clip's own ``_build_vision_tower`` / ``_build_text_tower`` from an open_clip model config, with
``output_tokens=True``. Parameter names inside ``.tower`` are open_clip's, so open_clip CLIP
checkpoints map onto them by a prefix change (see ``checkpoint.load_open_clip_weights``).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from open_clip.model import _build_text_tower, _build_vision_tower
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn

from medvlp.models.conv_tower import build_conv_tower
from medvlp.models.outputs import ImageOutput, TextOutput


@lru_cache(maxsize=8)
def _cached_tokenizer(context_length: int, clean: str) -> SimpleTokenizer:
    return SimpleTokenizer(context_length=context_length, clean=clean)


def build_tokenizer(text_cfg: dict) -> SimpleTokenizer:
    """open_clip's BPE ``SimpleTokenizer`` (vocabulary ships inside open_clip; nothing is downloaded).

    Built directly rather than via ``open_clip.get_tokenizer``, which may reach the HF hub. Honours
    ``text_cfg["context_length"]`` and ``text_cfg["tokenizer_kwargs"]["clean"]``; cached per setting.
    """
    kwargs = text_cfg.get("tokenizer_kwargs") or {}
    unknown = set(kwargs) - {"clean"}
    if unknown:
        raise ValueError(f"text_cfg.tokenizer_kwargs: unsupported keys {sorted(unknown)}; only 'clean' is")
    return _cached_tokenizer(int(text_cfg.get("context_length", 77)), kwargs.get("clean", "lower"))


class MLPHead(nn.Module):
    """Two-layer MLP ``Linear(in, hidden) -> GELU -> Linear(hidden, out)`` applied on the last axis."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or in_dim
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ImageEncoder(nn.Module):
    """open_clip ViT image tower (or medvlp's :class:`~medvlp.models.conv_tower.ConvTower`) returning the
    global embedding and all patch tokens.

    Args:
        embed_dim: E, width of the joint embedding space.
        vision_cfg: open_clip ``vision_cfg`` dict (a ViT: ``image_size``, ``patch_size``, ``width``,
            ``layers``, ``head_width``, ...).
        quick_gelu: open_clip's QuickGELU activation (OpenAI-pretrained weights use it).
    """

    def __init__(self, embed_dim: int, vision_cfg: dict, quick_gelu: bool = False):
        super().__init__()
        if vision_cfg.get("medvlp_conv"):
            self.tower = build_conv_tower(embed_dim, vision_cfg)
            self.width: int = self.tower.width
        else:
            self.tower = _build_vision_tower(embed_dim, {**vision_cfg, "output_tokens": True}, quick_gelu)
            if not isinstance(self.tower, VisionTransformer):
                raise ValueError(f"vision_cfg builds a {type(self.tower).__name__}; an open_clip ViT is required "
                                 "(or medvlp's conv tower: \"medvlp_conv\": true)")
            self.width = self.tower.transformer.width
        self.grid_size: tuple[int, int] = tuple(self.tower.grid_size)
        self.num_patches: int = self.grid_size[0] * self.grid_size[1]
        self.image_size: tuple[int, int] = tuple(self.tower.image_size)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3 or 1, H, W] -> (unnormalised global embedding [B, E], patch tokens [B, P, Wv])."""
        if images.ndim != 4 or tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"images: expected [B, C, {self.image_size[0]}, {self.image_size[1]}], "
                             f"got {list(images.shape)}; resize to the tower's image_size")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        pooled, tokens = self.tower(images)
        return pooled, tokens

    def forward(self, images: torch.Tensor) -> ImageOutput:
        pooled, tokens = self.features(images)
        return ImageOutput(F.normalize(pooled, dim=-1), tokens)


class TextEncoder(nn.Module):
    """open_clip text transformer returning the global embedding, token states and the token mask.

    Global embedding, by ``pool``:
      - ``"eot"``: open_clip's own pooling (the end-of-text token state, found as the arg-max token id
        of SimpleTokenizer ids) then the tower's ``text_projection``; the CLIP/SigLIP baselines.
      - ``"mean"``: mean of the token states over real tokens (start-of-text .. end-of-text) then the
        same ``text_projection`` (a linear map); ConceptCLIP's text embedding.

    Args:
        embed_dim: E.
        text_cfg: open_clip ``text_cfg`` dict (``context_length``, ``vocab_size``, ``width``, ``heads``,
            ``layers``, ...).
        quick_gelu: open_clip's QuickGELU activation.
        pool: ``"eot"`` or ``"mean"``.
    """

    def __init__(self, embed_dim: int, text_cfg: dict, quick_gelu: bool = False, pool: str = "eot"):
        super().__init__()
        if pool not in ("eot", "mean"):
            raise ValueError(f"text pool must be 'eot' or 'mean', got {pool!r}")
        self.tower = _build_text_tower(embed_dim, {**text_cfg, "output_tokens": True}, quick_gelu)
        if not isinstance(self.tower, TextTransformer):
            raise ValueError(f"text_cfg builds a {type(self.tower).__name__}; open_clip's TextTransformer "
                             "is required")
        self.pool = pool
        self.text_cfg = dict(text_cfg)
        if self.tower.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"text_cfg.vocab_size {self.tower.vocab_size} is smaller than open_clip "
                             f"SimpleTokenizer's {self.tokenizer.vocab_size}; medvlp uses that tokenizer")
        self.width: int = self.tower.width
        self.context_length: int = self.tower.context_length

    @property
    def tokenizer(self) -> SimpleTokenizer:
        return build_tokenizer(self.text_cfg)

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """texts -> token ids [N, L] (L = context_length; SOT, BPE tokens, EOT, zero padding)."""
        return self.tokenizer(texts, context_length=self.context_length)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.tower.text_projection
        if proj is None:
            return x
        if isinstance(proj, nn.Linear):
            return proj(x)
        return x @ proj

    def forward(self, ids: torch.Tensor) -> TextOutput:
        """ids [B, L] (SimpleTokenizer ids, L = context_length) -> TextOutput([B, E], [B, L, Wt], [B, L])."""
        if ids.ndim != 2 or ids.shape[1] != self.context_length:
            raise ValueError(f"text ids: expected [B, {self.context_length}] (the tower's context_length), "
                             f"got {list(ids.shape)}; tokenize with model.tokenize")
        pooled, states = self.tower(ids)
        # Real tokens run from SOT to EOT; EOT has the largest id of SimpleTokenizer's vocabulary.
        eot_pos = ids.argmax(dim=-1, keepdim=True)
        mask = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) <= eot_pos
        if self.pool == "mean":
            m = mask.unsqueeze(-1).to(states.dtype)
            pooled = self._project((states * m).sum(1) / m.sum(1).clamp_min(1.0))
        return TextOutput(F.normalize(pooled, dim=-1), states, mask)
