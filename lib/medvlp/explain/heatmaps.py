"""Gradient-free explanation maps: patch-text similarity maps (2D) and fVLM anatomy attention (3D).

2D maps score every patch of an image against a concept prompt ``"This is <modality> of <concept>."``:

- models with PC-Align heads (preset ``conceptclip``): ``s[b, k, m] = <v[b, m], c_k>`` with
  ``v = patch_concept_embeddings(patch_tokens)`` and ``c_k = concept_embeddings`` of the concept's token
  span inside the prompt, so that ``max_m s`` is the PC-Align concept score up to scale and bias;
- models without heads (CLIP / SigLIP): patch tokens projected by the image tower's own ``proj`` and
  normalised, against the normalised global text embedding of the prompt (MaskCLIP-style dense scores).

The prompt of an image uses that image's own modality, so the concept embeddings are computed once per
(modality, concept) pair and gathered per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medvlp.eval.encode import batches, encode_prompt_concepts, encode_texts, evaluating
from medvlp.eval.prompts import concept_prompt


def has_concept_heads(model: nn.Module) -> bool:
    """True for a model with PC-Align heads (``patch_concept_embeddings`` / ``concept_embeddings``)."""
    return getattr(model, "image_proj", None) is not None and getattr(model, "text_proj", None) is not None


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(p for p in model.parameters() if p.is_floating_point())
    return param.device, param.dtype


def prompt_text_embeddings(model: nn.Module, concept_names: Sequence[str],
                           modality_names: Sequence[str | None] = (None,), *, batch_size: int = 256,
                           use_concept_heads: bool | None = None) -> torch.Tensor:
    """Text side of the maps: one embedding per (modality, concept) prompt (:func:`concept_prompt`).

    Args:
        model: a 2D dual encoder (``DualEncoder`` / ``RadCLIP``).
        concept_names: K concept names.
        modality_names: M modality names (None = the prompt without modality).
        batch_size: prompts per text-encoder call.
        use_concept_heads: True: PC-Align concept embeddings of the concept's token span (needs heads);
            False: the normalised global text embedding of the prompt; None: True iff the model has heads.

    Returns:
        [M, K, E] L2-normalised embeddings, float32 on the model's device.
    """
    heads = has_concept_heads(model) if use_concept_heads is None else bool(use_concept_heads)
    if heads and not has_concept_heads(model):
        raise ValueError("use_concept_heads=True but the model has no PC-Align heads (preset 'conceptclip'); "
                         "pass use_concept_heads=None or False")
    if not concept_names:
        raise ValueError("concept_names is empty; pass at least one concept name")
    prompts = [concept_prompt(c, m) for m in modality_names for c in concept_names]  # modality-major
    if heads:
        emb = encode_prompt_concepts(model, prompts, batch_size=batch_size)
    else:
        emb = encode_texts(model, [p.text for p in prompts], batch_size=batch_size)
    device = next(model.parameters()).device
    return emb.to(device).reshape(len(modality_names), len(concept_names), -1)


def patch_embeddings(model: nn.Module, patch_tokens: torch.Tensor, use_concept_heads: bool) -> torch.Tensor:
    """patch_tokens [B, P, Wv] -> L2-normalised patch embeddings [B, P, E] in the text embedding space.

    With heads: ``patch_concept_embeddings`` (PC-Align ``image_proj``); without: ``tokens @ tower.proj``.
    """
    if use_concept_heads:
        return model.patch_concept_embeddings(patch_tokens)
    proj = model.image.tower.proj
    if proj is None:
        raise ValueError("the image tower has no 'proj' (pruned head); patch tokens cannot be mapped to the "
                         "text space; use a model with its projection")
    return F.normalize(patch_tokens @ proj.to(patch_tokens.dtype), dim=-1)


def _modality_index(modality_names: Sequence[str | None] | None,
                    batch: int) -> tuple[list[str | None], torch.Tensor]:
    """Unique modalities (first-seen order) and each image's index into them, [B] long."""
    if modality_names is None:
        return [None], torch.zeros(batch, dtype=torch.long)
    if len(modality_names) != batch:
        raise ValueError(f"modality_names: {len(modality_names)} names for {batch} images; pass one per image "
                         "(None for an image without modality) or modality_names=None")
    unique = list(dict.fromkeys(modality_names))
    lookup = {m: i for i, m in enumerate(unique)}
    return unique, torch.tensor([lookup[m] for m in modality_names], dtype=torch.long)


@torch.no_grad()
def concept_heatmaps(model: nn.Module, images: torch.Tensor, concept_names: Sequence[str],
                     modality_names: Sequence[str | None] | None = None, *, batch_size: int = 64,
                     use_concept_heads: bool | None = None) -> torch.Tensor:
    """Patch-concept similarity maps of every image x concept.

    Args:
        model: a 2D dual encoder (``clip``, ``siglip``, ``conceptclip`` presets, or RadCLIP's 2D side).
        images: [B, 3 or 1, S, S] images, normalised as for the model, S = the tower's image size.
        concept_names: K concept names.
        modality_names: per image, the modality name of its prompt (None entries or ``None`` overall:
            ``"This is <concept>."``).
        batch_size: images (and prompts) per encoder call.
        use_concept_heads: see ``prompt_text_embeddings`` (None: heads iff the model has them).

    Returns:
        [B, K, gh, gw] float32 cosine similarities on the model's device, (gh, gw) = the tower's patch
        grid (row-major patches). The model's train/eval modes are restored afterwards.
    """
    if images.ndim != 4:
        raise ValueError(f"images: expected [B, C, S, S], got {list(images.shape)}")
    heads = has_concept_heads(model) if use_concept_heads is None else bool(use_concept_heads)
    unique, modality_index = _modality_index(modality_names, images.shape[0])
    text = prompt_text_embeddings(model, concept_names, unique, batch_size=batch_size,
                                  use_concept_heads=heads)  # [M, K, E]
    device, dtype = _model_device_dtype(model)
    gh, gw = model.image.grid_size
    maps = []
    with evaluating(model):
        for part in batches(images.shape[0], batch_size):
            tokens = model.encode_image(images[part].to(device, dtype)).patch_tokens  # [b, P, Wv]
            if tokens.shape[1] != gh * gw:
                raise ValueError(f"the image tower returned {tokens.shape[1]} tokens for a {gh}x{gw} patch grid "
                                 "(attentional pooler?); dense maps need one token per patch")
            patches = patch_embeddings(model, tokens, heads).float()  # [b, P, E]
            concepts = text[modality_index[part].to(device)]  # [b, K, E]
            sims = torch.einsum("bpe,bke->bkp", patches, concepts)
            maps.append(sims.reshape(sims.shape[0], sims.shape[1], gh, gw))
    return torch.cat(maps)


def upsample_heatmaps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """maps [B, K, gh, gw] -> [B, K, H, W], bilinear (align_corners=False)."""
    if maps.ndim != 4:
        raise ValueError(f"maps: expected [B, K, gh, gw], got {list(maps.shape)}")
    return F.interpolate(maps.float(), size=tuple(size), mode="bilinear", align_corners=False)


def concept_scores(maps: torch.Tensor) -> torch.Tensor:
    """maps [B, K, gh, gw] -> [B, K] max over patches (the PC-Align score before scale and bias)."""
    if maps.ndim != 4:
        raise ValueError(f"maps: expected [B, K, gh, gw], got {list(maps.shape)}")
    return maps.flatten(2).max(dim=-1).values


@torch.no_grad()
def anatomy_attention_maps(model: nn.Module, volume: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
    """fVLM anatomy attention at voxel resolution.

    Args:
        model: an ``FVLM``.
        volume: [B, 1, X, Y, Z] volume at the ViT's input size.
        label_map: [B, X, Y, Z] integer anatomy labels.

    Returns:
        [B, A, X, Y, Z] float32: ``FVLM.anatomy_attention`` averaged over token depths (per-token weights,
        not renormalised), trilinearly upsampled (align_corners=False) to the volume size.
    """
    if not hasattr(model, "anatomy_attention"):
        raise ValueError(f"anatomy_attention_maps needs an FVLM model, got {type(model).__name__}")
    device, dtype = _model_device_dtype(model)
    with evaluating(model):
        weights = model.anatomy_attention(volume.to(device, dtype), label_map.to(device))  # [B, A, D, gx, gy, gz]
    return F.interpolate(weights.float().mean(dim=2), size=tuple(volume.shape[2:]), mode="trilinear",
                         align_corners=False)
