"""open_clip towers wrapped to expose what the medvlp losses need (patch tokens, token states).

The towers themselves are open_clip's: ``VisionTransformer`` for images (or medvlp's conv tower), and
for text either open_clip's ``TextTransformer`` (byte-pair tokens) or its Hugging Face adapter
``HFTextEncoder`` around a BERT-family model (``text_cfg.hf_model_name``), all built by open_clip's own
``_build_vision_tower`` / ``_build_text_tower`` with ``output_tokens=True``. Parameter names inside
``.tower`` are open_clip's, so open_clip CLIP checkpoints map onto them by a prefix change (see
``checkpoint.load_open_clip_weights``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.hf_model import HFTextEncoder
from open_clip.model import _build_text_tower, _build_vision_tower
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn

from medvlp.models.conv_image_tower import build_conv_tower
from medvlp.models.outputs import ImageOutput, TextOutput
from medvlp.models.tokenizers import build_tokenizer, local_hf_path

#: medvlp's text pooling names -> open_clip's Hugging Face poolers.
HF_POOLERS = {"mean": "mean_pooler", "cls": "cls_last_hidden_state_pooler"}

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


def _biased_linear(proj: nn.Module) -> nn.Linear:
    """A ``Linear`` with a bias (zeros) and ``proj``'s weight, in place of open_clip's bias-free projection.

    Raises:
        ValueError: ``proj`` is not a plain ``nn.Linear`` (``hf_proj_bias`` needs ``hf_proj_type: linear``).
    """
    if not isinstance(proj, nn.Linear):
        raise ValueError(f"text_cfg.hf_proj_bias needs hf_proj_type 'linear' (the projection is a "
                         f"{type(proj).__name__})")
    out = nn.Linear(proj.in_features, proj.out_features, bias=True)
    with torch.no_grad():
        out.weight.copy_(proj.weight)
        out.bias.zero_()
    return out


class ImageEncoder(nn.Module):
    """open_clip ViT image tower (or medvlp's :class:`~medvlp.models.conv_image_tower.ConvTower`) returning the
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
    """A text tower returning the global embedding, token states and the token mask.

    Two towers, chosen by ``text_cfg``:

    - open_clip's ``TextTransformer`` (byte-pair tokens, :class:`~medvlp.models.tokenizers.ClipBPETokenizer`);
      ``pool``: ``"eot"`` (open_clip's own pooling, the end-of-text token state, then the tower's
      ``text_projection``) or ``"mean"`` (mean of the real token states, start-of-text .. end-of-text, then
      the same projection);
    - a BERT-family Hugging Face model through open_clip's ``HFTextEncoder`` when ``text_cfg`` names
      ``hf_model_name`` (a local directory or a cached hub id; WordPiece tokens,
      :class:`~medvlp.models.tokenizers.WordPieceTokenizer` of ``hf_tokenizer_name`` or the model's own).
      ``pool``: ``"cls"`` (the ``[CLS]`` state, fVLM's report embedding) or ``"mean"`` (over non-padding
      tokens, ConceptCLIP's); then the adapter's projection ``hf_proj_type`` (``linear`` or ``mlp``;
      open_clip's layers have no bias). ``hf_proj_bias`` (medvlp's key, default false) gives the ``linear``
      projection a bias, as fVLM's ``text_proj`` has. ``hf_model_pretrained`` (default true) starts from the
      model's weights, else from its config only.

    Token states are those of every position of the ids (for BERT, ``[CLS]`` at 0), so concept spans
    index them directly.

    Args:
        embed_dim: E.
        text_cfg: open_clip ``text_cfg`` dict (``context_length``, and ``vocab_size``, ``width``, ``heads``,
            ``layers`` for the TextTransformer, or the ``hf_*`` keys).
        quick_gelu: open_clip's QuickGELU activation (TextTransformer only).
        pool: ``"eot"``, ``"mean"`` or ``"cls"`` as above.

    Raises:
        ValueError: a pooling the tower does not have, a vocabulary smaller than the tokenizer's, or a
            context length longer than the model's position embeddings.
        FileNotFoundError: the Hugging Face model is not on disk.
    """

    def __init__(self, embed_dim: int, text_cfg: dict, quick_gelu: bool = False, pool: str = "eot"):
        super().__init__()
        self.text_cfg = dict(text_cfg)
        self.is_hf = bool(text_cfg.get("hf_model_name"))
        allowed = tuple(HF_POOLERS) if self.is_hf else ("eot", "mean")
        if pool not in allowed:
            raise ValueError(f"text pool {pool!r} is not available for this text tower; choose one of {allowed}")
        self.pool = pool
        if self.is_hf:
            cfg = {**text_cfg, "hf_model_name": local_hf_path(text_cfg["hf_model_name"]),
                   "hf_pooler_type": HF_POOLERS[pool], "output_tokens": True}
            proj_bias = bool(cfg.pop("hf_proj_bias", False))
            self.tower = _build_text_tower(embed_dim, cfg, quick_gelu)
            if not isinstance(self.tower, HFTextEncoder):
                raise ValueError(f"text_cfg builds a {type(self.tower).__name__}, not open_clip's HFTextEncoder")
            if proj_bias:
                self.tower.proj = _biased_linear(self.tower.proj)
            self.width: int = int(self.tower.config.hidden_size)
            self.context_length: int = int(text_cfg.get("context_length") or 0)
            limit = int(self.tower.config.max_position_embeddings)
            if not 2 <= self.context_length <= limit:
                raise ValueError(f"text_cfg.context_length {self.context_length} must be in [2, {limit}] "
                                 f"(the position embeddings of {text_cfg['hf_model_name']!r})")
        else:
            self.tower = _build_text_tower(embed_dim, {**text_cfg, "output_tokens": True}, quick_gelu)
            if not isinstance(self.tower, TextTransformer):
                raise ValueError(f"text_cfg builds a {type(self.tower).__name__}; open_clip's TextTransformer "
                                 "is required")
            self.width = self.tower.width
            self.context_length = self.tower.context_length
        if self.tower.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"the text tower's vocabulary ({self.tower.vocab_size}) is smaller than its "
                             f"tokenizer's ({self.tokenizer.vocab_size}); size them alike")

    @property
    def tokenizer(self):
        """The tower's tokenizer (:func:`~medvlp.models.tokenizers.build_tokenizer` of ``text_cfg``)."""
        return build_tokenizer(self.text_cfg)

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """texts -> token ids [N, L] (L = context_length, padded with the tokenizer's ``pad_id``)."""
        return self.tokenizer(texts, context_length=self.context_length)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.tower.text_projection
        if proj is None:
            return x
        if isinstance(proj, nn.Linear):
            return proj(x)
        return x @ proj

    def forward(self, ids: torch.Tensor) -> TextOutput:
        """ids [B, L] (this tower's tokenizer, L = context_length) -> TextOutput([B, E], [B, L, Wt], [B, L])."""
        if ids.ndim != 2 or ids.shape[1] != self.context_length:
            raise ValueError(f"text ids: expected [B, {self.context_length}] (the tower's context_length), "
                             f"got {list(ids.shape)}; tokenize with model.tokenize")
        if self.is_hf:
            mask = ids != self.tokenizer.pad_id
            out = self.tower.transformer(input_ids=ids, attention_mask=mask.long())
            pooled = self.tower.proj(self.tower.pooler(out, mask.long()))
            return TextOutput(F.normalize(pooled, dim=-1), out.last_hidden_state, mask)
        pooled, states = self.tower(ids)
        # Real tokens run from SOT to EOT; EOT has the largest id of SimpleTokenizer's vocabulary.
        eot_pos = ids.argmax(dim=-1, keepdim=True)
        mask = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) <= eot_pos
        if self.pool == "mean":
            m = mask.unsqueeze(-1).to(states.dtype)
            pooled = self._project((states * m).sum(1) / m.sum(1).clamp_min(1.0))
        return TextOutput(F.normalize(pooled, dim=-1), states, mask)
