"""One model's zero-shot evaluation on a held-out split: findings, retrieval, linear probe, CT diseases.

Each function takes a trained model and decoded evaluation sets (:mod:`medvlp.eval.data`) and returns
plain dicts of floats (JSON-ready) with 95% bootstrap CIs over images / studies.

2D findings are scored where they can occur: a finding against the test images of the modalities
its lexicon entry lists (a chest X-ray is not asked about drusen). The same (image, finding) pairs
are scored by the zero-shot classifier and by the linear probe.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from medvlp.eval.data import CTSet, FigureSet, figure_tensors
from medvlp.eval.encode import ImageFeatures, encode_images, encode_texts, encode_volumes
from medvlp.eval.linear_probe import linear_probe
from medvlp.eval.metrics import auroc_table, bootstrap_auroc, bootstrap_retrieval, operating_point
from medvlp.eval.zero_shot import LOCAL_TOP_K, disease_scores, finding_scores, prompt_similarity
from medvlp.lexicon import AnatomyLexicon, ConceptLexicon


def finding_pairs(figures: FigureSet, lexicon: ConceptLexicon) -> np.ndarray:
    """``[N, C]`` bool: image n is of a modality where concept c occurs, and has truth."""
    mods = np.asarray(figures.modalities)
    cols = [np.isin(mods, c.modalities) for c in lexicon.concepts]
    return np.stack(cols, axis=1) & figures.has_truth[:, None] if cols else np.zeros((len(mods), 0), bool)


def image_features(model: nn.Module, figures: FigureSet, *, with_patches: bool = True,
                   batch_size: int = 128) -> ImageFeatures:
    """Encode ``figures`` at the model's image size (global embeddings, PC-Align patches if any)."""
    images = figure_tensors(figures.images, model.image.image_size[0])
    return encode_images(model, images, with_patches=with_patches, batch_size=batch_size)


def evaluate_findings(model: nn.Module, figures: FigureSet, lexicon: ConceptLexicon, feats: ImageFeatures, *,
                      local_weight: float = 0.5, top_k: int = LOCAL_TOP_K, n_boot: int = 1000,
                      seed: int = 0, captions: torch.Tensor | None = None) -> dict:
    """Zero-shot finding classification: AUROC per finding (name -> bootstrap dict) and ``macro``.

    ``scoring`` says which ConceptCLIP score was used: ``global`` (softmax over the modality's
    findings of the global similarities) or ``global+local`` (with the PC-Align patch term).
    ``prompt_similarity`` (and ``concept_prompt_similarity`` with the local term): per modality the
    mean cosine between its findings' prompt embeddings (:func:`~medvlp.eval.zero_shot.prompt_similarity`).
    ``caption_macro``: the same global scoring with each figure's own caption embedding in place of its
    image embedding (a text-side ceiling: near 0.5, the text tower does not map a caption and the
    prompts of the findings it names close together, so no image tower can make up for it).
    ``captions``: ``[N, E]`` the figures' caption embeddings when already encoded (else encoded here).
    """
    names, valid = [c.id for c in lexicon.concepts], finding_pairs(figures, lexicon)
    scores = finding_scores(model, feats, figures.modalities, lexicon, local_weight=local_weight, top_k=top_k)
    table = auroc_table(figures.labels, scores, names, n_boot=n_boot, seed=seed, valid=valid)
    text = ImageFeatures(encode_texts(model, figures.captions) if captions is None else captions, None)
    caption_scores = finding_scores(model, text, figures.modalities, lexicon, local_weight=0.0)
    caption_table = auroc_table(figures.labels, caption_scores, names, n_boot=n_boot, seed=seed, valid=valid)
    local = feats.patches is not None and local_weight > 0
    out = {"scoring": "global+local" if local else "global", "local_weight": local_weight if local else 0.0,
           "per_finding": {k: v for k, v in table.items() if k not in ("macro", "skipped")},
           "macro": table["macro"], "skipped": table["skipped"], "caption_macro": caption_table["macro"],
           "prompt_similarity": prompt_similarity(model, lexicon, figures.modalities)}
    if local:
        out["concept_prompt_similarity"] = prompt_similarity(model, lexicon, figures.modalities, concepts=True)
    return out


def evaluate_retrieval(model: nn.Module, figures: FigureSet, feats: ImageFeatures, *,
                       ks: Sequence[int] = (1, 5, 10), n_boot: int = 1000, seed: int = 0,
                       captions: torch.Tensor | None = None) -> dict:
    """Image-to-text and text-to-image retrieval over the split's (image, caption) pairs.

    ``captions``: ``[N, E]`` the caption embeddings when already encoded (else encoded here).
    """
    text = encode_texts(model, figures.captions) if captions is None else captions
    sim = (feats.embedding @ text.T).numpy().astype(np.float64)
    target = np.arange(sim.shape[0])
    return {"image_to_text": bootstrap_retrieval(sim, target, ks, n_boot=n_boot, seed=seed),
            "text_to_image": bootstrap_retrieval(sim.T, target, ks, n_boot=n_boot, seed=seed)}


def evaluate_linear_probe(train_feats: ImageFeatures, train: FigureSet, test_feats: ImageFeatures, test: FigureSet,
                          lexicon: ConceptLexicon, *, fractions: Sequence[float] = (0.01, 0.1, 1.0),
                          n_boot: int = 1000, seed: int = 0) -> dict:
    """Logistic-regression probes on the frozen global embeddings; AUROC on the same pairs as zero-shot.

    Returns:
        ``{str(fraction): {"n_train", "C", "macro", "per_finding"}}``; ``{}`` without labelled images.
    """
    keep = train.has_truth
    if not keep.any() or not test.has_truth.any():
        return {}  # a corpus without finding labels (no figures_truth.jsonl) has nothing to probe
    results = linear_probe(train_feats.embedding.numpy()[keep], train.labels[keep], test_feats.embedding.numpy(),
                           test.labels, fractions=fractions, seed=seed, names=[c.id for c in lexicon.concepts],
                           n_boot=n_boot, test_valid=finding_pairs(test, lexicon))
    return {str(f): {"n_train": r["n_train"], "C": r["C"], "macro": r["macro"], "per_finding": r["per_class"]}
            for f, r in results.items()}


def evaluate_ct(model: nn.Module, studies: CTSet, lexicon: AnatomyLexicon, *, negative: str = "not",
                n_boot: int = 1000, seed: int = 0, slice_stride: int = 1) -> dict:
    """fVLM's zero-shot CT diagnosis: per abnormality AUROC (CI) and the metrics at the ROC point
    closest to (0, 1); ``mean`` over the abnormalities with positives and negatives.

    fVLM models score each abnormality with its anatomy's embedding; ct_global and RadCLIP with the
    volume embedding.
    """
    feats = encode_volumes(model, studies.volumes, studies.label_maps, slice_stride=slice_stride)
    scores = disease_scores(model, feats, lexicon, negative=negative)
    per, skipped = {}, []
    for k, abn in enumerate(studies.abnormality_ids):
        ok = ~np.isnan(scores[:, k]) & studies.has_truth
        y, s = studies.labels[ok, k], scores[ok, k]
        if not y.any() or y.all():
            skipped.append(abn)
            continue
        op = operating_point(y, s)
        per[abn] = {**bootstrap_auroc(y, s, n_boot=n_boot, seed=seed), "anatomy": studies.anatomy_of[k],
                    **{m: op[m] for m in ("accuracy", "f1", "precision", "sensitivity", "specificity")}}
    mean = {m: float(np.mean([v[m] for v in per.values()])) if per else float("nan")
            for m in ("auc", "accuracy", "f1", "precision", "sensitivity", "specificity")}
    mean["ci"] = _mean_auc_ci(studies, scores, list(per), n_boot, seed)
    return {"negative_prompt": negative, "per_disease": per, "mean": mean, "skipped": skipped,
            "n_studies": int(studies.has_truth.sum())}


def _mean_auc_ci(studies: CTSet, scores: np.ndarray, names: list[str], n_boot: int, seed: int) -> list[float]:
    """Bootstrap CI of the mean AUROC over ``names``, resampling studies jointly."""
    if not names:
        return [float("nan"), float("nan")]
    cols = [studies.abnormality_ids.index(n) for n in names]
    valid = ~np.isnan(scores[:, cols]) & studies.has_truth[:, None]
    table = auroc_table(studies.labels[:, cols], scores[:, cols], names, n_boot=n_boot, seed=seed, valid=valid)
    return [table["macro"]["ci_low"], table["macro"]["ci_high"]]
