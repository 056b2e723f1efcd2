"""The ``explain`` stage: patch-concept heatmaps and their localisation, concept annotation, a concept
bottleneck, fVLM anatomy attention (notebooks/04_explain.ipynb runs these, params: ``explain``).

Every step is a function of loaded models and evaluation sets so the notebook can show each result
as it comes; :func:`run_explain` chains them and writes ``metrics_path``:

    {"localization": {model: {"pointing", "pointing_ci", "heatmap_auc", "heatmap_auc_ci", "n_pairs",
                              "per_concept"}},
     "concept_annotation": {model: {"auc", "ci_low", "ci_high", "per_concept"}},
     "bottleneck": {model: {"macro", "probe_macro", "n_concepts"}}, "split", "n_boot",
     "external": {model: provenance record}}

Released models (``external_models``: names of ``zero_shot.external_models``) get concept annotation and the
concept bottleneck; localisation needs patch tokens, which an adapter does not give, so it is left out for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from medvlp.eval.data import FigureSet, figure_tensors, load_figures, read_truth
from medvlp.eval.encode import encode_images, encode_prompt_concepts, encode_texts
from medvlp.eval.evaluate import finding_pairs
from medvlp.eval.external import describe, load_external_model
from medvlp.eval.linear_probe import linear_probe
from medvlp.eval.metrics import auroc_table, bootstrap_auroc
from medvlp.eval.model_under_test import input_image_size
from medvlp.eval.prompts import annotation_prompts
from medvlp.eval.stage import checkpoint_path
from medvlp.eval.zero_shot import local_top_k, top_k_patch_logits
from medvlp.explain.bottleneck import ConceptBottleneck
from medvlp.explain.heatmaps import concept_heatmaps, concept_scores, upsample_heatmaps
from medvlp.explain.localization import bootstrap_mean_ci, heatmap_auroc, per_concept_localization, pointing_game
from medvlp.lexicon import ConceptLexicon, load_concept_lexicon
from medvlp.metrics_json import write_metrics
from medvlp.models import load_model
from medvlp.params import run_name
from medvlp.stage_args import stage_function


def modality_names(figures: FigureSet, lexicon: ConceptLexicon) -> list[str]:
    """Each figure's modality as prompts name it (``chest X-ray``), its id where the lexicon lacks it."""
    names = {m.id: m.name for m in lexicon.modalities}
    return [names.get(m, m) for m in figures.modalities]


def finding_masks(figures: FigureSet, truth_path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (figure, drawn finding) pair with its truth mask.

    Returns:
        (image index [M], concept column [M], masks [M, H, W] bool) over the figures with a mask file;
        the mask PNG's value ``i`` marks the truth record's ``findings[i - 1]``.
    """
    truth = read_truth(truth_path)
    column = {c: j for j, c in enumerate(figures.concept_ids)}
    images, concepts, masks = [], [], []
    for n, (fid, path) in enumerate(zip(figures.ids, figures.mask_paths)):
        rec = truth.get(fid)
        if rec is None or path is None or not Path(path).is_file():
            continue
        label_map = np.asarray(Image.open(path))
        for value, cid in enumerate(rec.get("findings") or [], start=1):
            mask = label_map == value
            if cid in column and mask.any():
                images.append(n)
                concepts.append(column[cid])
                masks.append(mask)
    if not masks:
        return np.zeros(0, int), np.zeros(0, int), np.zeros((0, 1, 1), bool)
    return np.asarray(images), np.asarray(concepts), np.stack(masks)


def pair_heatmaps(model: nn.Module, figures: FigureSet, lexicon: ConceptLexicon, image_index: np.ndarray,
                  concept_index: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[M, H, W]`` heatmap of each (image, concept) pair, upsampled to the mask size ``size``.

    Maps are computed once per image that has a pair, for the concepts its pairs name.
    """
    images = np.unique(image_index)
    if images.size == 0:
        return np.zeros((0, *size), np.float32)
    x = figure_tensors([figures.images[i] for i in images], input_image_size(model))
    mods = modality_names(figures, lexicon)
    names = [c.name for c in lexicon.concepts]
    maps = concept_heatmaps(model, x, names, [mods[i] for i in images])  # [U, K, gh, gw]
    row = np.searchsorted(images, image_index)
    picked = maps[torch.as_tensor(row), torch.as_tensor(concept_index)]  # [M, gh, gw]
    return upsample_heatmaps(picked[:, None], size)[:, 0].cpu().numpy()


def localization(heatmaps: np.ndarray, masks: np.ndarray, concept_ids: Sequence[str], *, tolerance_px: float,
                 n_boot: int, seed: int) -> dict:
    """Pointing-game accuracy and heatmap AUROC over every pair (with CIs) and per concept."""
    hits = pointing_game(heatmaps, masks, tolerance_px).astype(np.float64)
    aucs = heatmap_auroc(heatmaps, masks)
    return {"n_pairs": int(len(hits)), "tolerance_px": tolerance_px,
            "pointing": float(hits.mean()) if len(hits) else float("nan"),
            "pointing_ci": list(bootstrap_mean_ci(hits, n_boot=n_boot, seed=seed)),
            "heatmap_auc": float(np.nanmean(aucs)) if len(aucs) else float("nan"),
            "heatmap_auc_ci": list(bootstrap_mean_ci(aucs, n_boot=n_boot, seed=seed)),
            "per_concept": per_concept_localization(heatmaps, masks, concept_ids, tolerance_px=tolerance_px,
                                                    n_boot=n_boot, seed=seed)}


def concept_annotation(model: nn.Module, figures: FigureSet, lexicon: ConceptLexicon, *, local_weight: float,
                       local_top_fraction: float, n_boot: int, seed: int) -> dict:
    """ConceptCLIP's zero-shot concept annotation: for every image and every concept of its modality, the
    positive prompt ``"This is <modality> of <concept>."`` against the neutral ``"This is <modality>."``.

    The global term is ``softmax(t * [<x, z_pos>, <x, z_neutral>])[0]``; models with PC-Align heads mix in,
    as ConceptCLIP's official code does, the local term ``softmax(t_c * [local(c_pos), local(c_neutral)])[0]``
    with ``local(c)`` the mean of the top ``local_top_fraction`` patch similarities to the PC-Align embedding
    of the prompt's concept (resp. modality) span: ``(1 - local_weight) * global + local_weight * local``.
    AUROC over all (image, concept) pairs (CI over images) and per concept."""
    mod_names = {m.id: m.name for m in lexicon.modalities}
    feats = encode_images(model, figure_tensors(figures.images, input_image_size(model)), with_patches=True)
    use_local = feats.patches is not None and local_weight > 0
    top_k = local_top_k(feats.patches.shape[1], local_top_fraction) if use_local else 1
    with torch.inference_mode():
        scale = float(model.logit_scale_exp())
        c_scale = float(model.concept_logit_scale_exp()) if use_local else 0.0
    valid = finding_pairs(figures, lexicon)
    scores = np.full(valid.shape, np.nan)
    for mod in sorted(set(figures.modalities)):
        concepts = lexicon.for_modality(mod)
        if not concepts:
            continue
        pairs = [annotation_prompts(c.name, mod_names.get(mod, mod)) for c in concepts]
        flat = [p for pair in pairs for p in pair]
        emb = encode_texts(model, [p.text for p in flat]).view(len(concepts), 2, -1)
        rows = np.flatnonzero(np.asarray(figures.modalities) == mod)
        sims = torch.einsum("ne,kse->nks", feats.embedding[rows], emb)  # [n, K_mod, 2]
        probs = torch.softmax(scale * sims, dim=-1)[..., 0]
        if use_local:
            spans = encode_prompt_concepts(model, flat)  # [2 K_mod, E]
            local = top_k_patch_logits(feats.patches[rows], spans, top_k).view(len(rows), len(concepts), 2)
            probs = (1 - local_weight) * probs + local_weight * torch.softmax(c_scale * local, dim=-1)[..., 0]
        cols = [figures.concept_ids.index(c.id) for c in concepts]
        scores[np.ix_(rows, cols)] = probs.double().numpy()
    pooled = bootstrap_auroc(figures.labels[valid], scores[valid], n_boot=n_boot, seed=seed)
    table = auroc_table(figures.labels, scores, figures.concept_ids, n_boot=n_boot, seed=seed, valid=valid)
    return {**pooled, "per_concept": {k: v for k, v in table.items() if k not in ("macro", "skipped")},
            "macro": table["macro"]}


def image_concept_scores(model: nn.Module, figures: FigureSet, lexicon: ConceptLexicon) -> np.ndarray:
    """``[N, K]`` image-to-concept scores over all K concepts: the max over patches of the concept
    heatmap (PC-Align similarity for models with heads, projected patch tokens otherwise)."""
    x = figure_tensors(figures.images, input_image_size(model))
    maps = concept_heatmaps(model, x, [c.name for c in lexicon.concepts], modality_names(figures, lexicon))
    return concept_scores(maps).cpu().numpy()


def bottleneck(model: nn.Module, train: FigureSet, test: FigureSet, lexicon: ConceptLexicon, *, C: float,
               n_boot: int, seed: int) -> tuple[dict, ConceptBottleneck, np.ndarray]:
    """A concept-bottleneck classifier of the findings on the image-to-concept scores, next to a
    linear probe on the full embedding (both trained on every training label, scored on the same pairs).

    Returns:
        (metrics, the fitted bottleneck, the test concept scores [N, K]).
    """
    keep = train.has_truth
    s_train = image_concept_scores(model, train, lexicon)[keep]
    s_test = image_concept_scores(model, test, lexicon)
    names = [c.name for c in lexicon.concepts]
    cbm = ConceptBottleneck(names, test.concept_ids, C=C, seed=seed).fit(s_train, train.labels[keep])
    valid = finding_pairs(test, lexicon)
    table = auroc_table(test.labels, cbm.decision_function(s_test), test.concept_ids, n_boot=n_boot, seed=seed,
                        valid=valid)
    emb_train = encode_images(model, figure_tensors(train.images, input_image_size(model))).embedding.numpy()
    emb_test = encode_images(model, figure_tensors(test.images, input_image_size(model))).embedding.numpy()
    probe = linear_probe(emb_train[keep], train.labels[keep], emb_test, test.labels, fractions=(1.0,), seed=seed,
                         names=test.concept_ids, n_boot=n_boot, test_valid=valid)[1.0]
    metrics = {"macro": table["macro"], "probe_macro": probe["macro"], "n_concepts": len(names),
               "per_finding": {k: v for k, v in table.items() if k not in ("macro", "skipped")}}
    return metrics, cbm, s_test


@dataclass
class ExplainRun:
    """What :func:`run_explain` computed: the JSON ``report`` and what the figures are drawn from.

    test: the evaluation figures; image_index / concept_index / masks: the (image, finding) pairs and
    their truth masks ``[M, H, W]``; maps: per model the pairs' heatmaps ``[M, H, W]``; bottlenecks:
    per model the fitted :class:`ConceptBottleneck` and the test concept scores ``[N, K]``.
    """

    report: dict[str, Any]
    test: FigureSet
    image_index: np.ndarray
    concept_index: np.ndarray
    masks: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    bottlenecks: dict[str, tuple[ConceptBottleneck, np.ndarray]] = field(default_factory=dict)


def has_patch_tokens(model: nn.Module) -> bool:
    """Whether heatmaps can be drawn for ``model``: a medvlp 2D model (its image tower gives patch tokens)."""
    return getattr(model, "image", None) is not None


@stage_function("explain", zero_shot="zero_shot")
def run_explain(*, curated_dir: str, data_dir: str, pretrain_dir: str, checkpoint: str, heatmap_models: Sequence[str],
                external_models: Sequence[str], run_seed: int, split: str, n_boot: int, seed: int,
                tolerance_px: float, bottleneck_C: float, concept_lexicon: str | None, metrics_path: str,
                zero_shot: dict) -> ExplainRun:
    """Localisation, concept annotation and concept bottleneck of every model in ``heatmap_models`` (their runs
    of training seed ``run_seed``), then of the released models named in ``external_models``; writes
    ``metrics_path`` (the module docstring says what it holds).

    Every argument is a key of params.yaml's ``explain`` section, except ``zero_shot`` (that section: its
    ``local_weight`` and ``local_top_fraction`` are ConceptCLIP's scoring, shared by concept annotation; its
    ``external_models`` and ``allow_download`` say how to load a released model).

    Raises:
        KeyError: a name of ``external_models`` that ``zero_shot.external_models`` does not define."""
    lexicon = load_concept_lexicon(concept_lexicon)
    truth_path = Path(data_dir) / "figures" / "figures_truth.jsonl"
    test = load_figures(curated_dir, split, lexicon, truth_path)
    train = load_figures(curated_dir, "train", lexicon, truth_path)
    image_index, concept_index, masks = finding_masks(test, truth_path)
    concept_ids = [test.concept_ids[j] for j in concept_index]
    report: dict[str, Any] = {"split": split, "n_boot": n_boot, "localization": {}, "concept_annotation": {},
                              "bottleneck": {}}
    run = ExplainRun(report, test, image_index, concept_index, masks)
    specs = zero_shot["external_models"]
    unknown = [m for m in external_models if m not in specs]
    if unknown:
        raise KeyError(f"explain.external_models {unknown} are not defined in zero_shot.external_models "
                       f"(defined: {sorted(specs)})")
    for name in tqdm([*heatmap_models, *external_models], desc="explain"):
        if name in external_models:
            model = load_external_model(name, specs[name], allow_download=zero_shot["allow_download"])
            report.setdefault("external", {})[name] = describe(name, specs[name], model)
        else:
            model = load_model(checkpoint_path(pretrain_dir, run_name(name, run_seed), checkpoint))
        if has_patch_tokens(model):
            run.maps[name] = pair_heatmaps(model, test, lexicon, image_index, concept_index, masks.shape[1:])
            report["localization"][name] = localization(run.maps[name], masks, concept_ids,
                                                        tolerance_px=tolerance_px, n_boot=n_boot, seed=seed)
        report["concept_annotation"][name] = concept_annotation(
            model, test, lexicon, local_weight=zero_shot["local_weight"],
            local_top_fraction=zero_shot["local_top_fraction"], n_boot=n_boot, seed=seed)
        metrics, cbm, scores = bottleneck(model, train, test, lexicon, C=bottleneck_C, n_boot=n_boot, seed=seed)
        report["bottleneck"][name] = metrics
        run.bottlenecks[name] = (cbm, scores)
    write_metrics(metrics_path, report, sort_keys=True)
    return run


def heatmap_examples(run: ExplainRun, lexicon: ConceptLexicon, n: int, seed: int = 0) -> dict[str, Any]:
    """Arguments of :func:`~medvlp.explain.plots.plot_heatmap_grid` for ``n`` pairs of distinct
    modalities where possible (seeded choice): ``images``, ``masks``, ``heatmaps``, ``titles``."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(run.image_index))
    chosen, seen = [], set()
    for k in order:  # one pair per modality first, then any
        mod = run.test.modalities[run.image_index[k]]
        if mod not in seen:
            chosen.append(k)
            seen.add(mod)
    chosen += [k for k in order if k not in chosen]
    chosen = chosen[:n]
    names = {c.id: c.name for c in lexicon.concepts}
    images = []
    for k in chosen:
        im = np.asarray(run.test.images[run.image_index[k]])
        images.append(np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im[..., :3])
    titles = [f"{run.test.ids[run.image_index[k]]}: {names[run.test.concept_ids[run.concept_index[k]]]}"
              for k in chosen]
    return {"images": np.stack(images), "masks": run.masks[chosen],
            "heatmaps": {m: maps[chosen] for m, maps in run.maps.items()}, "titles": titles}


def bottleneck_examples(run: ExplainRun, lexicon: ConceptLexicon, model: str, n: int, top_k: int = 5) -> list[dict]:
    """Arguments of :func:`~medvlp.explain.plots.plot_bottleneck_explanations`: for the ``n`` test images
    whose most probable finding of their modality is most confident, that finding and its top concepts."""
    cbm, scores = run.bottlenecks[model]
    proba = cbm.predict_proba(scores)  # [N, C]
    proba = np.where(finding_pairs(run.test, lexicon), proba, -1.0)  # findings of the image's modality only
    best = proba.argmax(axis=1)
    confident = np.argsort(-proba[np.arange(len(best)), best])[:n]
    out = []
    for i in confident:
        c = int(best[i])
        im = np.asarray(run.test.images[i])
        truth = "present" if run.test.labels[i, c] else "absent"
        name = lexicon.concepts[c].name
        out.append({"image": im, "title": f"{run.test.ids[i]}: {name} p={proba[i, c]:.2f} ({truth})",
                    "contributions": cbm.explain(scores[i], c, top_k)})
    return out
