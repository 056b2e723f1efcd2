"""Zero-shot scores: 2D findings (ConceptCLIP protocol) and CT diseases (fVLM protocol).

2D: the classes of an image are the findings of its modality (the concept lexicon says which);
each class is a prompt ensemble (:func:`~medvlp.eval.prompts.finding_prompts`). The global logit is
``t * <x, z_c>``; models with PC-Align heads add ConceptCLIP's local logit
``t_c * mean(top-k_m <v_m, c_c>)`` and score ``0.5 * p(global) + 0.5 * p(local)``. ConceptCLIP turns
logits into probabilities with a softmax over the classes; the synthetic findings are multi-label,
so a per-finding sigmoid is offered too (``normalise``). Pairs of an image and a finding of another
modality are not scored (NaN).

CT: for abnormality d of anatomy a, the anatomy embedding ``v_a`` (fVLM) or the global volume
embedding (ct_global, RadCLIP) against the positive and negative prompt ensembles; the score is
``softmax(t * [<v, p>, <v, n>])[0]``. Studies where anatomy a has no token are not scored (NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from medvlp.eval.encode import ImageFeatures, VolumeFeatures, prompt_ensembles
from medvlp.eval.prompts import FINDING_TEMPLATES, Prompt, disease_prompts, finding_prompts
from medvlp.lexicon import AnatomyLexicon, ConceptLexicon

#: Patches averaged in ConceptCLIP's local score when none is given (the stage passes
#: :func:`local_top_k` of ``local_top_fraction``).
LOCAL_TOP_K = 5


def local_top_k(n_patches: int, fraction: float) -> int:
    """Patches in ConceptCLIP's local score: ``round(fraction * n_patches)``, at least 1 (the official code
    averages the top 128 of SigLIP's 729 patches, a fraction of 0.1756).

    Raises:
        ValueError: ``fraction`` outside (0, 1].
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"local_top_fraction must be in (0, 1], got {fraction!r}")
    return max(1, min(int(n_patches), round(float(fraction) * int(n_patches))))


def top_k_patch_logits(patches: torch.Tensor, concepts: torch.Tensor, top_k: int) -> torch.Tensor:
    """``[N, C]`` mean of the ``top_k`` largest ``<v_m, c>`` over the P patches of each image.

    Args:
        patches: ``[N, P, E]`` normalised patch embeddings (PC-Align space).
        concepts: ``[C, E]`` normalised concept embeddings.
    """
    k = max(1, min(top_k, patches.shape[1]))
    sims = patches @ concepts.T  # [N, P, C]
    return sims.topk(k, dim=1).values.mean(dim=1)  # [N, C]


def finding_scores(model: nn.Module, feats: ImageFeatures, modalities: Sequence[str], lexicon: ConceptLexicon, *,
                   templates: Sequence[str] = FINDING_TEMPLATES, local_weight: float = 0.5,
                   top_k: int = LOCAL_TOP_K, normalise: str = "softmax") -> np.ndarray:
    """Zero-shot finding scores ``[N, C]`` (C = every concept of ``lexicon``; NaN where not scored).

    Args:
        feats: the images' :class:`ImageFeatures` (``patches`` enables the local term).
        modalities: per image its modality id.
        local_weight: weight of the local (patch) term when the model has PC-Align heads.
        normalise: how logits become probabilities before the global and local terms are mixed:
            ``"sigmoid"``: each finding on its own, ``sigmoid(t * s + b)`` with the model's
            scale and bias (the findings are multi-label: an image shows several or none);
            ``"softmax"`` (default): over the findings of the image's modality (ConceptCLIP's protocol for
            single-label benchmarks; with several findings per image it makes findings compete).
    """
    if normalise not in ("sigmoid", "softmax"):
        raise ValueError(f"normalise must be 'sigmoid' or 'softmax', got {normalise!r}")
    if len(modalities) != feats.embedding.shape[0]:
        raise ValueError(f"modalities: {len(modalities)} entries for {feats.embedding.shape[0]} images")
    column = {c.id: i for i, c in enumerate(lexicon.concepts)}
    by_id = {m.id: m for m in lexicon.modalities}
    mods = np.asarray(modalities)
    out = np.full((len(mods), len(column)), np.nan)
    use_local = feats.patches is not None and local_weight > 0
    with torch.inference_mode():
        scale, bias = _scale_bias(model, "logit")
        if use_local:
            c_scale, c_bias = _scale_bias(model, "concept_logit")

    def probabilities(logits: torch.Tensor, b: float) -> torch.Tensor:
        return torch.sigmoid(logits + b) if normalise == "sigmoid" else torch.softmax(logits, dim=1)

    for mod in sorted(set(modalities)):
        classes = lexicon.for_modality(mod)
        if not classes:
            continue
        rows = np.flatnonzero(mods == mod)
        prompt_sets = [finding_prompts(c, by_id.get(mod), templates) for c in classes]
        probs = probabilities(scale * feats.embedding[rows] @ prompt_ensembles(model, prompt_sets).T, bias)
        if use_local:
            concept_emb = prompt_ensembles(model, prompt_sets, concepts=True)
            local = c_scale * top_k_patch_logits(feats.patches[rows], concept_emb, top_k)
            probs = (1 - local_weight) * probs + local_weight * probabilities(local, c_bias)
        out[np.ix_(rows, [column[c.id] for c in classes])] = probs.numpy()
    return out


def prompt_similarity(model: nn.Module, lexicon: ConceptLexicon, modalities: Sequence[str], *,
                      templates: Sequence[str] = FINDING_TEMPLATES, concepts: bool = False) -> dict[str, float]:
    """Per modality, the mean cosine between the prompt ensembles of its different findings.

    A diagnostic of the text side of zero-shot classification: near 1 the text tower gives every
    finding of the modality the same embedding, so no image can be told apart by finding, however
    well the image tower encodes it. Modalities with fewer than two findings are left out.

    Args:
        modalities: the modality ids to report (e.g. those of the evaluation images).
        concepts: compare the PC-Align concept embeddings of the class names (the local score's text
            side) instead of the global text embeddings.
    """
    by_id = {m.id: m for m in lexicon.modalities}
    out = {}
    for mod in sorted(set(modalities)):
        classes = lexicon.for_modality(mod)
        if len(classes) < 2:
            continue
        emb = prompt_ensembles(model, [finding_prompts(c, by_id.get(mod), templates) for c in classes],
                               concepts=concepts)  # [C, E], normalised
        sims = emb @ emb.T
        off_diagonal = ~torch.eye(len(classes), dtype=torch.bool)
        out[mod] = float(sims[off_diagonal].mean())
    return out


def _scale_bias(model: nn.Module, prefix: str) -> tuple[float, float]:
    """``(t, b)`` of ``<prefix>_scale`` / ``<prefix>_bias`` (b = 0 for models without a bias)."""
    scale = float(getattr(model, f"{prefix}_scale_exp")())
    bias = getattr(model, f"{prefix}_bias", None)
    return scale, float(bias) if bias is not None else 0.0


def disease_scores(model: nn.Module, feats: VolumeFeatures, lexicon: AnatomyLexicon, *,
                   negative: str = "not", intact: np.ndarray | None = None) -> np.ndarray:
    """Zero-shot CT abnormality scores ``[N, K]`` (K = every abnormality of ``lexicon``, in lexicon order).

    NaN where the abnormality's anatomy has no token in the study (fVLM), and, when ``intact`` (``[N, A]``
    bool, anatomies in lexicon order) is given, where it is not intact in the crop (every model).
    """
    pos_sets, neg_sets = zip(*(disease_prompts(x, lexicon, negative) for x in lexicon.abnormalities))
    probs = prompt_pair_scores(model, feats, pos_sets, neg_sets, _anatomy_columns(lexicon))
    if intact is not None:
        probs[~np.asarray(intact, dtype=bool)[:, _anatomy_columns(lexicon)]] = np.nan
    return probs


def prompt_pair_scores(model: nn.Module, feats: VolumeFeatures, positives: Sequence[Sequence[Prompt]],
                       negatives: Sequence[Sequence[Prompt]], anatomy_columns: Sequence[int | None]) -> np.ndarray:
    """``[N, K]`` ``softmax(t * [<v, p_k>, <v, n_k>])[0]`` for K classes given by their prompt ensembles.

    Args:
        feats: ``embedding`` ``[N, E]`` (global models: v is the volume embedding for every class) or
            ``[N, A, E]`` with ``present`` ``[N, A]`` (fVLM: v is the embedding of class k's anatomy).
        positives / negatives: K prompt lists each (ensembled by :func:`~medvlp.eval.encode.prompt_ensembles`).
        anatomy_columns: K anatomy indices into ``embedding``'s A axis; None for a class without an anatomy
            (fVLM cannot score it: NaN; global models ignore the indices).

    Returns:
        float64 ``[N, K]``; NaN where fVLM has no embedding for the class (no anatomy, or no token of it).

    Raises:
        ValueError: ``positives``, ``negatives`` and ``anatomy_columns`` differ in length.
    """
    if not len(positives) == len(negatives) == len(anatomy_columns):
        raise ValueError(f"{len(positives)} positive, {len(negatives)} negative prompt sets and "
                         f"{len(anatomy_columns)} anatomy columns: one of each per class")
    pos = prompt_ensembles(model, positives)  # [K, E]
    neg = prompt_ensembles(model, negatives)
    with torch.inference_mode():
        scale = float(model.logit_scale_exp())
    emb = feats.embedding
    if emb.ndim == 3:  # fVLM: [N, A, E], pick each class's anatomy
        has_anatomy = np.asarray([c is not None for c in anatomy_columns], dtype=bool)
        idx = torch.as_tensor([0 if c is None else int(c) for c in anatomy_columns], dtype=torch.long)
        v = emb[:, idx]  # [N, K, E]
        scored = feats.present[:, idx].numpy() & has_anatomy[None, :]
    else:
        v = emb[:, None, :].expand(-1, pos.shape[0], -1)
        scored = np.ones(v.shape[:2], dtype=bool)
    logits = scale * torch.stack([(v * pos).sum(-1), (v * neg).sum(-1)], dim=-1)  # [N, K, 2]
    probs = torch.softmax(logits, dim=-1)[..., 0].numpy().astype(np.float64)
    probs[~scored] = np.nan
    return probs


def _anatomy_columns(lexicon: AnatomyLexicon) -> list[int]:
    """Per abnormality of ``lexicon``, the index of its anatomy among ``lexicon.anatomies``."""
    index = {a.id: i for i, a in enumerate(lexicon.anatomies)}
    return [index[x.anatomy] for x in lexicon.abnormalities]
