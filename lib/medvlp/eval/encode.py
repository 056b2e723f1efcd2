"""Frozen-model encodings for evaluation: images, volumes, texts and prompt ensembles, in batches.

Every function runs under ``torch.inference_mode`` with the model in eval mode (restored after),
on the model's device, and returns float32 CPU tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from medvlp.eval.model_under_test import input_image_size
from medvlp.eval.prompts import Prompt
from medvlp.models import FVLM, RadCLIP
from medvlp.models.concept_spans import tokenize_with_concepts
from medvlp.train.transforms import volume_to_slices


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode and inference mode for the block; yields the model's device. Every submodule's own
    train/eval flag is restored afterwards (a partly frozen model stays as it was)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            yield next(model.parameters()).device
    finally:
        for m, training in modes:
            m.training = training


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` of ``range(n)``."""
    if int(size) < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class ImageFeatures(NamedTuple):
    """embedding: ``[N, E]`` normalised global embeddings. patches: ``[N, P, E]`` normalised PC-Align
    patch embeddings (models with concept heads and ``with_patches``), else None."""

    embedding: torch.Tensor
    patches: torch.Tensor | None


def encode_images(model: nn.Module, images: torch.Tensor, *, batch_size: int = 128,
                  with_patches: bool = False) -> ImageFeatures:
    """images ``[N, 3, S, S]`` (evaluation transform) -> :class:`ImageFeatures`."""
    embs, patches = [], []
    want = with_patches and getattr(model, "image_proj", None) is not None
    with evaluating(model) as device:
        for sl in batches(images.shape[0], batch_size):
            out = model.encode_image(images[sl].to(device))
            embs.append(out.embedding.float().cpu())
            if want:
                patches.append(model.patch_concept_embeddings(out.patch_tokens).float().cpu())
    emb = torch.cat(embs) if embs else torch.zeros(0, model.embed_dim)
    return ImageFeatures(emb, torch.cat(patches) if want and patches else None)


def encode_texts(model: nn.Module, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
    """texts -> ``[N, E]`` normalised global text embeddings."""
    out = []
    with evaluating(model) as device:
        for sl in batches(len(texts), batch_size):
            out.append(model.encode_text(model.tokenize(list(texts[sl])).to(device)).embedding.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


def encode_prompt_concepts(model: nn.Module, prompts: Sequence[Prompt], *, batch_size: int = 256) -> torch.Tensor:
    """PC-Align concept embeddings ``[N, E]`` of the class-name span of each prompt (models with
    concept heads): the normalised mean of ``text_proj`` over the span's tokens, as in training."""
    tokenizer, length = model.tokenizer, model.context_length
    out = []
    with evaluating(model) as device:
        for sl in batches(len(prompts), batch_size):
            chunk = prompts[sl]
            tok = tokenize_with_concepts(tokenizer, [p.text for p in chunk], [[p.span] for p in chunk], length)
            if tok.spans.shape[0] != len(chunk):
                dropped = sorted(set(range(len(chunk))) - set(tok.owner.tolist()))
                raise ValueError(f"prompt {chunk[dropped[0]].text!r} does not fit the text context length "
                                 f"{length} (its class-name span was truncated); use a shorter template or name")
            states = model.encode_text(tok.ids.to(device)).token_states
            out.append(model.concept_embeddings(states, tok.spans.to(device), tok.owner.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


def ensemble(embeddings: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
    """Mean of consecutive groups of normalised embeddings, renormalised (a prompt ensemble).

    Args:
        embeddings: ``[sum(groups), E]``.
        groups: prompts per class, in order.

    Returns:
        ``[len(groups), E]``.
    """
    owner = torch.repeat_interleave(torch.arange(len(groups)), torch.as_tensor(list(groups)))
    sums = torch.zeros(len(groups), embeddings.shape[1]).index_add_(0, owner, embeddings.float())
    return F.normalize(sums, dim=-1)


def prompt_ensembles(model: nn.Module, prompt_sets: Sequence[Sequence[Prompt]], *,
                     concepts: bool = False) -> torch.Tensor:
    """One ensembled embedding per prompt set ``[C, E]``: global text embeddings, or with
    ``concepts=True`` PC-Align concept embeddings of the class-name spans."""
    flat = [p for ps in prompt_sets for p in ps]
    emb = encode_prompt_concepts(model, flat) if concepts else encode_texts(model, [p.text for p in flat])
    return ensemble(emb, [len(ps) for ps in prompt_sets])


class VolumeFeatures(NamedTuple):
    """embedding: ``[N, E]`` (global models) or ``[N, A, E]`` (fVLM anatomy embeddings).
    valid: ``[N, A]`` bool (fVLM: anatomy present and intact in the crop), else None.
    present: ``[N, A]`` bool (fVLM: anatomy has at least one token), else None."""

    embedding: torch.Tensor
    valid: torch.Tensor | None
    present: torch.Tensor | None


def in_anatomy_order(feats: VolumeFeatures, model_labels: Sequence[int], labels: Sequence[int]) -> VolumeFeatures:
    """fVLM features over the model's anatomies (``model_labels``, its queries' order) placed at ``labels`` (the
    lexicon's anatomies, in order): ``[N, A_model, E]`` -> ``[N, A, E]``; an anatomy the model has no query for is
    all-zero, not valid and not present (a released fVLM knows 4 anatomies, in its own order).

    Raises:
        ValueError: the model shares no anatomy label with ``labels``.
    """
    if list(model_labels) == list(labels):
        return feats
    where = {int(v): i for i, v in enumerate(model_labels)}
    pairs = [(j, where[int(v)]) for j, v in enumerate(labels) if int(v) in where]
    if not pairs:
        raise ValueError(f"the model's anatomy labels {list(model_labels)} share none with the lexicon's "
                         f"{list(labels)}; check the model's anatomy_labels against the label maps")
    dst, src = (list(x) for x in zip(*pairs, strict=True))
    n, e = feats.embedding.shape[0], feats.embedding.shape[-1]
    emb = torch.zeros(n, len(labels), e, dtype=feats.embedding.dtype)
    valid = torch.zeros(n, len(labels), dtype=torch.bool)
    present = torch.zeros(n, len(labels), dtype=torch.bool)
    emb[:, dst], valid[:, dst], present[:, dst] = feats.embedding[:, src], feats.valid[:, src], feats.present[:, src]
    return VolumeFeatures(emb, valid, present)


def encode_volumes(model: nn.Module, volumes: torch.Tensor, label_maps: torch.Tensor, *,
                   anatomy_labels: Sequence[int] | None, batch_size: int = 8, slice_stride: int = 1) -> VolumeFeatures:
    """CT volumes ``[N, 1, X, Y, Z]`` (+ label maps ``[N, X, Y, Z]``) -> :class:`VolumeFeatures`.

    fVLM: per-anatomy embeddings, in the order of ``anatomy_labels`` (the evaluation lexicon's labels:
    :func:`in_anatomy_order`; None keeps the model's own order); ct_global: the global embedding; RadCLIP: its
    axial slices (every ``slice_stride``-th) through the 2D tower, then slice pooling.
    """
    embs, valid, present = [], [], []
    with evaluating(model) as device:
        for sl in batches(volumes.shape[0], batch_size):
            vol = volumes[sl].to(device)
            if isinstance(model, FVLM):
                out = model.encode_volume(vol, label_maps[sl].to(device))
                embs.append(out.embeddings.float().cpu())
                valid.append(out.valid.cpu())
                present.append(out.token_mask.any(dim=-1).cpu())
            elif isinstance(model, RadCLIP):
                slices = volume_to_slices(vol, input_image_size(model), slice_stride)
                embs.append(model.encode_volume(slices).embedding.float().cpu())
            else:
                embs.append(model.encode_volume(vol).embedding.float().cpu())
    if isinstance(model, FVLM):
        feats = VolumeFeatures(torch.cat(embs), torch.cat(valid), torch.cat(present))
        return feats if anatomy_labels is None else in_anatomy_order(feats, model.anatomy_labels, anatomy_labels)
    return VolumeFeatures(torch.cat(embs), None, None)
