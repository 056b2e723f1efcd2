"""One model's zero-shot evaluation on a held-out split: findings, retrieval, linear probe, CT diseases.

Each ``evaluate_*`` function takes a trained model and decoded evaluation sets (:mod:`medvlp.eval.data`)
and returns an :class:`Evaluation`: plain dicts of floats (JSON-ready) with 95% bootstrap CIs over images /
studies, and the per-item scores behind them (:func:`score_frame`), so that any comparison of two models
on the same items can be recomputed (``reports/metrics/scores/<model>.parquet``).

2D findings are scored where they can occur: a finding against the test images of the modalities
its lexicon entry lists (a chest X-ray is not asked about drusen). The same (image, finding) pairs
are scored by the zero-shot classifier and by the linear probe. CT abnormalities are scored where
their anatomy is intact in the crop (:func:`~medvlp.eval.data.intact_anatomies`), for every CT model
alike, so that all CT models are compared on the same (study, abnormality) pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from medvlp.eval.data import CTSet, FigureSet, figure_tensors
from medvlp.eval.encode import ImageFeatures, VolumeFeatures, encode_images, encode_texts, encode_volumes
from medvlp.eval.linear_probe import linear_probe
from medvlp.eval.metrics import (
    auroc_table,
    bootstrap_auroc,
    bootstrap_retrieval,
    operating_point,
    retrieval_ranks,
)
from medvlp.eval.model_under_test import input_image_size
from medvlp.eval.zero_shot import disease_scores, finding_scores, local_top_k, prompt_similarity
from medvlp.lexicon import AnatomyLexicon, ConceptLexicon
from medvlp.models import FVLM

#: Columns of a per-item score table (:func:`score_frame`).
SCORE_COLUMNS = ("task", "item", "class", "label", "score")


class Evaluation(NamedTuple):
    """metrics: the JSON-ready results. scores: the per-item scores behind them (:func:`score_frame`)."""

    metrics: dict
    scores: pd.DataFrame


def score_frame(task: str, items: Sequence[str], classes: Sequence[str], labels: np.ndarray, scores: np.ndarray,
                valid: np.ndarray) -> pd.DataFrame:
    """The scored (item, class) pairs of one task in long form: ``task, item, class, label, score``.

    Args:
        task: e.g. ``findings``, ``ct_diagnosis``, ``ct_probe@1.0``, ``ct_retrieval@10``.
        items: N item ids; classes: C class ids.
        labels: ``[N, C]`` bool; scores: ``[N, C]`` float (NaN = not scored); valid: ``[N, C]`` bool.

    Returns:
        one row per valid pair with a finite score, in item then class order.
    """
    keep = np.asarray(valid, dtype=bool) & np.isfinite(scores)
    rows, cols = np.nonzero(keep)
    return pd.DataFrame({"task": task, "item": np.asarray(items, dtype=object)[rows],
                         "class": np.asarray(classes, dtype=object)[cols], "label": np.asarray(labels)[rows, cols],
                         "score": np.asarray(scores, dtype=np.float64)[rows, cols]}, columns=list(SCORE_COLUMNS))


def _frames(*frames: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SCORE_COLUMNS))


def finding_pairs(figures: FigureSet, lexicon: ConceptLexicon) -> np.ndarray:
    """``[N, C]`` bool: image n is of a modality where concept c occurs, and has truth."""
    mods = np.asarray(figures.modalities)
    cols = [np.isin(mods, c.modalities) for c in lexicon.concepts]
    return np.stack(cols, axis=1) & figures.has_truth[:, None] if cols else np.zeros((len(mods), 0), bool)


def image_features(model: nn.Module, figures: FigureSet, *, with_patches: bool = True,
                   batch_size: int = 128) -> ImageFeatures:
    """Encode ``figures`` at the model's image size (global embeddings, PC-Align patches if any)."""
    images = figure_tensors(figures.images, input_image_size(model))
    return encode_images(model, images, with_patches=with_patches, batch_size=batch_size)


def evaluate_findings(model: nn.Module, figures: FigureSet, lexicon: ConceptLexicon, feats: ImageFeatures, *,
                      local_weight: float, local_top_fraction: float, n_boot: int, seed: int,
                      captions: torch.Tensor | None = None) -> Evaluation:
    """Zero-shot finding classification: AUROC per finding (name -> bootstrap dict) and ``macro``.

    ``scoring`` says which ConceptCLIP score was used: ``global`` (softmax over the modality's
    findings of the global similarities) or ``global+local`` (with the PC-Align patch term over the top
    ``local_top_fraction`` of the patches, ``local_top_k`` of them). ``prompt_similarity`` (and
    ``concept_prompt_similarity`` with the local term): per modality the mean cosine between its findings'
    prompt embeddings (:func:`~medvlp.eval.zero_shot.prompt_similarity`). ``caption_macro``: the same global
    scoring with each figure's own caption embedding in place of its image embedding (a text-side ceiling:
    near 0.5, the text tower does not map a caption and the prompts of the findings it names close together,
    so no image tower can make up for it). ``captions``: ``[N, E]`` the figures' caption embeddings when
    already encoded (else encoded here). Scores: tasks ``findings`` and ``findings_from_captions``.
    """
    names, valid = [c.id for c in lexicon.concepts], finding_pairs(figures, lexicon)
    local = feats.patches is not None and local_weight > 0
    top_k = local_top_k(feats.patches.shape[1], local_top_fraction) if local else 1
    scores = finding_scores(model, feats, figures.modalities, lexicon, local_weight=local_weight, top_k=top_k)
    table = auroc_table(figures.labels, scores, names, n_boot=n_boot, seed=seed, valid=valid)
    text = ImageFeatures(encode_texts(model, figures.captions) if captions is None else captions, None)
    caption_scores = finding_scores(model, text, figures.modalities, lexicon, local_weight=0.0, top_k=1)
    caption_table = auroc_table(figures.labels, caption_scores, names, n_boot=n_boot, seed=seed, valid=valid)
    out = {"scoring": "global+local" if local else "global", "local_weight": local_weight if local else 0.0,
           "per_finding": {k: v for k, v in table.items() if k not in ("macro", "skipped")},
           "macro": table["macro"], "skipped": table["skipped"], "caption_macro": caption_table["macro"],
           "prompt_similarity": prompt_similarity(model, lexicon, figures.modalities)}
    if local:
        out["local_top_k"] = top_k
        out["concept_prompt_similarity"] = prompt_similarity(model, lexicon, figures.modalities, concepts=True)
    frames = _frames(score_frame("findings", figures.ids, names, figures.labels, scores, valid),
                     score_frame("findings_from_captions", figures.ids, names, figures.labels, caption_scores, valid))
    return Evaluation(out, frames)


def _retrieval(sim: np.ndarray, ids: Sequence[str], ks: Sequence[int], n_boot: int, seed: int,
               names: tuple[str, str], task: str) -> Evaluation:
    """Both directions over matched pairs ``sim [N, N]`` (query i's correct candidate is i); per-item scores
    are each query's rank (task ``<task>:<direction>``, class ``rank``, label True)."""
    target = np.arange(sim.shape[0])
    out, frames = {}, []
    for name, matrix in zip(names, (sim, sim.T)):
        out[name] = bootstrap_retrieval(matrix, target, ks, n_boot=n_boot, seed=seed)
        ranks = retrieval_ranks(matrix, target).astype(np.float64)[:, None]
        frames.append(score_frame(f"{task}:{name}", ids, ["rank"], np.ones_like(ranks, dtype=bool), ranks,
                                  np.ones_like(ranks, dtype=bool)))
    return Evaluation(out, _frames(*frames))


def evaluate_retrieval(model: nn.Module, figures: FigureSet, feats: ImageFeatures, *, ks: Sequence[int],
                       n_boot: int, seed: int, captions: torch.Tensor | None = None) -> Evaluation:
    """Image-to-text and text-to-image retrieval over the split's (image, caption) pairs.

    ``captions``: ``[N, E]`` the caption embeddings when already encoded (else encoded here).
    """
    text = encode_texts(model, figures.captions) if captions is None else captions
    sim = (feats.embedding @ text.T).numpy().astype(np.float64)
    return _retrieval(sim, figures.ids, ks, n_boot, seed, ("image_to_text", "text_to_image"), "retrieval")


def _probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, test_valid: np.ndarray,
           names: Sequence[str], items: Sequence[str], *, fractions: Sequence[float], n_boot: int, seed: int,
           task: str) -> Evaluation:
    results = linear_probe(train_x, train_y, test_x, test_y, fractions=fractions, seed=seed, names=list(names),
                           n_boot=n_boot, test_valid=test_valid)
    metrics = {str(f): {"n_train": r["n_train"], "C": r["C"], "macro": r["macro"], "per_finding": r["per_class"]}
               for f, r in results.items()}
    frames = [score_frame(f"{task}@{f}", items, names, test_y, r["scores"], test_valid) for f, r in results.items()]
    return Evaluation(metrics, _frames(*frames))


def evaluate_linear_probe(train_feats: ImageFeatures, train: FigureSet, test_feats: ImageFeatures, test: FigureSet,
                          lexicon: ConceptLexicon, *, fractions: Sequence[float], n_boot: int, seed: int) -> Evaluation:
    """Logistic-regression probes on the frozen global embeddings; AUROC on the same pairs as zero-shot.

    Returns:
        metrics ``{str(fraction): {"n_train", "C", "macro", "per_finding"}}`` (``{}`` without labelled images);
        scores of tasks ``probe@<fraction>``.
    """
    keep = train.has_truth
    if not keep.any() or not test.has_truth.any():
        return Evaluation({}, _frames())  # a corpus without finding labels (no figures_truth.jsonl)
    return _probe(train_feats.embedding.numpy()[keep], train.labels[keep], test_feats.embedding.numpy(), test.labels,
                  finding_pairs(test, lexicon), [c.id for c in lexicon.concepts], test.ids, fractions=fractions,
                  n_boot=n_boot, seed=seed, task="probe")


def ct_pairs(studies: CTSet) -> np.ndarray:
    """``[N, K]`` bool: the (study, abnormality) pairs every CT model is scored on: the study has truth,
    the pair's label is known (``studies.known``, when given) and the abnormality's anatomy is intact in the
    crop (``studies.intact``, when known)."""
    pairs = np.repeat(studies.has_truth[:, None], len(studies.abnormality_ids), axis=1)
    if studies.known is not None:
        pairs &= studies.known
    if studies.intact is not None:
        column = {a: i for i, a in enumerate(studies.anatomy_ids)}
        pairs &= studies.intact[:, [column[a] for a in studies.anatomy_of]]
    return pairs


def evaluate_ct(model: nn.Module, studies: CTSet, lexicon: AnatomyLexicon, *, negative: str, n_boot: int,
                seed: int, slice_stride: int = 1, feats: VolumeFeatures | None = None) -> Evaluation:
    """fVLM's zero-shot CT diagnosis: per abnormality AUROC (CI) and the metrics at the ROC point
    closest to (0, 1); ``mean`` over the abnormalities with positives and negatives.

    fVLM models score each abnormality with its anatomy's embedding; ct_global and RadCLIP with the
    volume embedding. Only the pairs of :func:`ct_pairs` are scored (intact anatomies, studies with truth);
    ``n_pairs`` / ``n_pairs_excluded`` count the (study, abnormality) pairs of the studies with truth that
    were scored / left out because the anatomy was not intact or the label is unknown. Scores: task ``ct_diagnosis``.
    """
    if feats is None:
        feats = encode_volumes(model, studies.volumes, studies.label_maps, slice_stride=slice_stride,
                               anatomy_labels=[a.label for a in lexicon.anatomies])
    pairs = ct_pairs(studies)
    scores = disease_scores(model, feats, lexicon, negative=negative, intact=studies.intact)
    scores[~pairs] = np.nan
    per, skipped = {}, []
    for k, abn in enumerate(studies.abnormality_ids):
        ok = ~np.isnan(scores[:, k])
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
    with_truth = int(studies.has_truth.sum()) * len(studies.abnormality_ids)
    metrics = {"negative_prompt": negative, "per_disease": per, "mean": mean, "skipped": skipped,
               "n_studies": int(studies.has_truth.sum()), "n_pairs": int(np.isfinite(scores).sum()),
               "n_pairs_excluded": with_truth - int(pairs.sum())}
    frame = score_frame("ct_diagnosis", studies.ids, studies.abnormality_ids, studies.labels, scores, pairs)
    return Evaluation(metrics, frame)


def _mean_auc_ci(studies: CTSet, scores: np.ndarray, names: list[str], n_boot: int, seed: int) -> list[float]:
    """Bootstrap CI of the mean AUROC over ``names``, resampling studies jointly."""
    if not names:
        return [float("nan"), float("nan")]
    cols = [studies.abnormality_ids.index(n) for n in names]
    valid = ~np.isnan(scores[:, cols])
    table = auroc_table(studies.labels[:, cols], scores[:, cols], names, n_boot=n_boot, seed=seed, valid=valid)
    return [table["macro"]["ci_low"], table["macro"]["ci_high"]]


def volume_vectors(model: nn.Module, feats: VolumeFeatures) -> np.ndarray:
    """One feature vector per study for a linear probe ``[N, D]``: the volume embedding, or for fVLM the
    anatomy embeddings side by side (``[N, A * E]``; zeros for an anatomy without tokens)."""
    emb = feats.embedding
    return (emb.reshape(emb.shape[0], -1) if isinstance(model, FVLM) else emb).numpy().astype(np.float64)


def evaluate_ct_probe(model: nn.Module, train_feats: VolumeFeatures, train: CTSet, test_feats: VolumeFeatures,
                      test: CTSet, *, fractions: Sequence[float], n_boot: int, seed: int) -> Evaluation:
    """RadCLIP's uni-modal protocol on CT: logistic-regression probes of every abnormality on the frozen volume
    features (:func:`volume_vectors`) with ``fractions`` of the training studies' labels, scored on the pairs
    of :func:`ct_pairs`. Scores: tasks ``ct_probe@<fraction>``; ``{}`` without labelled studies."""
    keep = train.has_truth
    if not keep.any() or not test.has_truth.any():
        return Evaluation({}, _frames())
    return _probe(volume_vectors(model, train_feats)[keep], train.labels[keep], volume_vectors(model, test_feats),
                  test.labels, ct_pairs(test), test.abnormality_ids, test.ids, fractions=fractions, n_boot=n_boot,
                  seed=seed, task="ct_probe")


def evaluate_ct_retrieval(model: nn.Module, studies: CTSet, feats: VolumeFeatures, *, ks: Sequence[int], n_boot: int,
                          seed: int) -> Evaluation:
    """RadCLIP's cross-modal protocol on CT: volume-to-report and report-to-volume retrieval over the split's
    studies (Recall@K, median rank, CIs). Global models compare the volume embedding with the report's
    (sections joined as in training). fVLM compares study i with report j by the mean over the anatomies
    intact in study i of ``<v_ia, t_ja>``, with ``t_ja`` report j's text for anatomy a. Scores: tasks
    ``ct_retrieval:<direction>`` (per-query ranks)."""
    if isinstance(model, FVLM):
        if studies.anatomy_texts is None or studies.intact is None:
            raise ValueError("fVLM retrieval needs the studies' anatomy texts and intact anatomies (load_ct)")
        texts = [t[a] for t in studies.anatomy_texts for a in studies.anatomy_ids]
        t = encode_texts(model, texts).view(len(studies), len(studies.anatomy_ids), -1)  # [N, A, E]
        per_anatomy = torch.einsum("iae,jae->ija", feats.embedding, t)  # [N, N, A]
        intact = torch.as_tensor(studies.intact, dtype=per_anatomy.dtype)[:, None, :]
        sim = ((per_anatomy * intact).sum(-1) / intact.sum(-1).clamp_min(1.0)).numpy().astype(np.float64)
    else:
        reports = encode_texts(model, studies.reports)
        sim = (feats.embedding @ reports.T).numpy().astype(np.float64)
    return _retrieval(sim, studies.ids, ks, n_boot, seed, ("volume_to_report", "report_to_volume"), "ct_retrieval")
