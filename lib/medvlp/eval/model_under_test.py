"""What zero-shot evaluation asks of a model: the :class:`ModelUnderTest` protocol.

Our own 2D models (:class:`~medvlp.models.DualEncoder`) satisfy it as they are; released third-party
models (BiomedCLIP through open_clip, ConceptCLIP's Hugging Face model) satisfy it through the adapters
of :mod:`medvlp.eval.external`, so that both are scored by the same evaluation code
(:mod:`medvlp.eval.encode`, :mod:`medvlp.eval.zero_shot`, :mod:`medvlp.eval.evaluate`).

Evaluation images are built by :func:`~medvlp.eval.data.figure_tensors` at the model's input side
(:func:`input_image_size`) and normalised with open_clip's ``OPENAI_DATASET_MEAN`` / ``OPENAI_DATASET_STD``;
a model trained with other statistics re-normalises them itself (the adapters do).

ConceptCLIP's local (patch-concept) score needs the optional PC-Align heads (``image_proj``,
``patch_concept_embeddings``, ``concept_embeddings``, ``concept_logit_scale_exp``). A model without them
(``image_proj`` absent or None) is scored by the global term alone, whatever ``local_weight`` is
configured: :func:`~medvlp.eval.encode.encode_images` returns no patch embeddings for it and
:func:`~medvlp.eval.zero_shot.finding_scores` then leaves the local term out (the report says
``"scoring": "global"``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from medvlp.models.outputs import ImageOutput, TextOutput


@runtime_checkable
class ModelUnderTest(Protocol):
    """The members of a model that 2D zero-shot evaluation calls (a ``torch.nn.Module`` besides).

    Attributes:
        embed_dim: E, the width of the joint image-text embedding space.
    """

    embed_dim: int

    def encode_image(self, images: torch.Tensor) -> ImageOutput:
        """images ``[B, 3, S, S]`` (S = :func:`input_image_size`, OPENAI mean/std normalisation) ->
        ``ImageOutput(embedding [B, E] L2-normalised, patch_tokens [B, P, Wv] or None)``; patch tokens
        are read only by models with PC-Align heads."""
        ...

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """texts -> token ids ``[N, L]`` (long), padded to the model's context length L."""
        ...

    def encode_text(self, ids: torch.Tensor) -> TextOutput:
        """ids ``[B, L]`` from :meth:`tokenize` -> ``TextOutput(embedding [B, E] L2-normalised,
        token_states [B, L, Wt] or None, attention_mask [B, L] bool)``; token states are read only by
        models with PC-Align heads."""
        ...

    def logit_scale_exp(self) -> torch.Tensor:
        """t, the temperature multiplying cosine similarities into logits (0-d tensor)."""
        ...


def input_image_size(model: object) -> int:
    """The side S of the square images ``model.encode_image`` takes.

    Our models keep it on their image tower (``model.image.image_size[0]``), adapters of external models
    as ``model.image_size``.

    Raises:
        AttributeError: the model has neither (it does not satisfy :class:`ModelUnderTest`).
    """
    image = getattr(model, "image", None)
    if image is not None and getattr(image, "image_size", None) is not None:
        return int(image.image_size[0])
    size = getattr(model, "image_size", None)
    if size is None:
        raise AttributeError(f"{type(model).__name__} has neither image.image_size nor image_size; evaluate a "
                             "medvlp model or an adapter from medvlp.eval.external (see ModelUnderTest)")
    return int(size[0]) if isinstance(size, tuple | list) else int(size)
