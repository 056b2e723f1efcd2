"""The explain stage's glue (medvlp.explain.stage) against direct computations.

- ``finding_masks``: truth mask PNG value ``i`` <-> the truth record's ``findings[i - 1]``;
- ``pair_heatmaps``: each (image, concept) pair's map is the patch-prompt cosine of that image and concept
  (PC-Align heads for ConceptCLIP, projected patch tokens for CLIP), bilinearly upsampled to the mask size;
- ``concept_annotation``: the concept prompt against the modality prompt, ``softmax(t [<x, z_c>, <x, z_m>])[0]``
  (a monotone function of ``<x, z_c> - <x, z_m>``), with ConceptCLIP's local patch term mixed in where the stage
  has it; AUROC by scikit-learn;
- ``bottleneck``: concept scores (max over patches) -> standardised -> scikit-learn ``LogisticRegression`` with
  the same settings, per finding, decision values scored by scikit-learn's AUROC on the same pairs.

The ConceptBottleneck class itself, the localisation metrics and the raw heatmaps have their own tests
(test_explain_bottleneck.py, test_explain_localization.py, test_explain_heatmaps.py); these tests check what
the stage feeds them.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from test_train_fixtures import TINY_CLIP

from medvlp.eval.data import FigureSet, figure_tensors
from medvlp.explain.stage import bottleneck, concept_annotation, finding_masks, pair_heatmaps
from medvlp.lexicon import load_concept_lexicon
from medvlp.models import build_model, tokenize_with_concepts

MASK = 24  # mask / image side


def _figures(n, modalities, lexicon, *, seed=0, labels=None, has_truth=None, mask_paths=None) -> FigureSet:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, size=(MASK, MASK, 3), dtype=np.uint8) for _ in range(n)]
    concept_ids = [c.id for c in lexicon.concepts]
    if labels is None:
        labels = np.zeros((n, len(concept_ids)), dtype=bool)
    return FigureSet([f"F{i}" for i in range(n)], [f"caption {i}" for i in range(n)], list(modalities), images,
                     labels, np.ones(n, dtype=bool) if has_truth is None else has_truth, concept_ids,
                     [None] * n if mask_paths is None else mask_paths)


@pytest.fixture(scope="module")
def lexicon():
    return load_concept_lexicon()


@pytest.fixture(scope="module")
def conceptclip():
    torch.manual_seed(0)
    return build_model("conceptclip", clip_model=TINY_CLIP).eval()


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(1)
    return build_model("clip", clip_model=TINY_CLIP).eval()


# -------------------------------------------------------------------------------------------- masks


def test_finding_masks_value_i_is_findings_i_minus_1(tmp_path, lexicon):
    masks_dir = tmp_path / "masks"
    masks_dir.mkdir()
    maps = {}
    rng = np.random.default_rng(0)
    for fid, values in (("F0", (1, 2)), ("F1", (1, 2)), ("F2", (1,)), ("F3", (1,)), ("F4", (1,)), ("F6", (2, 1))):
        label = np.zeros((MASK, MASK), dtype=np.uint8)
        for v in values:
            r, c = rng.integers(0, MASK - 6, size=2)
            label[r:r + 6, c:c + 6] = v
        maps[fid] = label
        Image.fromarray(label).save(masks_dir / f"{fid}.png")
    truth = [
        {"id": "F0", "findings": ["MC001", "MC003"], "mask": "masks/F0.png"},
        {"id": "F1", "findings": ["MC999", "MC004"], "mask": "masks/F1.png"},  # MC999: not in the lexicon
        {"id": "F2", "findings": ["MC002", "MC005"], "mask": "masks/F2.png"},  # value 2 not drawn: no pair
        {"id": "F4", "findings": ["MC016"], "mask": "masks/F4.png"},  # mask path None in the set: no pair
        {"id": "F5", "findings": ["MC018"], "mask": "masks/F5.png"},  # mask file missing: no pair
        {"id": "F6", "findings": ["MC022", "MC023"], "mask": "masks/F6.png"},
    ]  # F3: a mask but no truth record
    truth_path = tmp_path / "figures_truth.jsonl"
    truth_path.write_text("".join(json.dumps(r) + "\n" for r in truth), encoding="utf-8")
    paths = [masks_dir / "F0.png", masks_dir / "F1.png", masks_dir / "F2.png", masks_dir / "F3.png", None,
             masks_dir / "F5.png", masks_dir / "F6.png"]
    figures = _figures(7, ["chest_xray"] * 7, lexicon, mask_paths=paths)

    image_index, concept_index, masks = finding_masks(figures, truth_path)
    column = {c: j for j, c in enumerate(figures.concept_ids)}
    want = [(0, "MC001", maps["F0"] == 1), (0, "MC003", maps["F0"] == 2), (1, "MC004", maps["F1"] == 2),
            (2, "MC002", maps["F2"] == 1), (6, "MC022", maps["F6"] == 1), (6, "MC023", maps["F6"] == 2)]
    assert image_index.tolist() == [w[0] for w in want]
    assert concept_index.tolist() == [column[w[1]] for w in want]
    assert masks.dtype == bool and masks.shape == (len(want), MASK, MASK)
    for got, (_, _, mask) in zip(masks, want):
        assert mask.any() and np.array_equal(got, mask)


# ----------------------------------------------------------------------------------------- heatmaps


def _prompt_concept_embedding(model, text, name):
    """PC-Align embedding of ``name``'s span inside ``text`` (normalised mean of text_proj over its tokens)."""
    start = text.index(name)
    tok = tokenize_with_concepts(model.tokenizer, [text], [[(start, start + len(name))]], model.context_length)
    states = model.encode_text(tok.ids).token_states
    s, e = tok.spans[0].tolist()
    return F.normalize(model.text_proj(states)[0, s:e].double().mean(0), dim=-1)


def reference_pair_map(model, image: np.ndarray, modality_name: str, concept_name: str, size) -> np.ndarray:
    x = figure_tensors([image], model.image.image_size[0])
    prompt = f"This is {modality_name} of {concept_name}."
    with torch.no_grad():
        tokens = model.encode_image(x).patch_tokens[0]  # [P, W]
        if getattr(model, "image_proj", None) is not None:
            patches = F.normalize(model.image_proj(tokens).double(), dim=-1)
            text = _prompt_concept_embedding(model, prompt, concept_name)
        else:
            patches = F.normalize(tokens.double() @ model.image.tower.proj.double(), dim=-1)
            text = F.normalize(model.encode_text(model.tokenize([prompt])).embedding[0].double(), dim=-1)
    gh, gw = model.image.grid_size
    grid = (patches @ text).reshape(1, 1, gh, gw)
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


@pytest.mark.parametrize("name", ["conceptclip", "clip"])
def test_pair_heatmaps_are_each_pairs_own_map(request, lexicon, name):
    model = request.getfixturevalue(name)
    mods = ["chest_xray", "fundus", "ct_slice", "chest_xray", "dermoscopy"]
    figures = _figures(5, mods, lexicon, seed=1)
    column = {c.id: j for j, c in enumerate(lexicon.concepts)}
    # images 1 and 3 twice, image 2 and 4 never: the rows of the maps are not the image numbers
    pairs = [(3, "MC003"), (1, "MC016"), (3, "MC001"), (0, "MC005"), (1, "MC014")]
    image_index = np.array([p[0] for p in pairs])
    concept_index = np.array([column[p[1]] for p in pairs])
    got = pair_heatmaps(model, figures, lexicon, image_index, concept_index, (MASK, MASK))
    assert got.shape == (len(pairs), MASK, MASK)
    mod_name = {m.id: m.name for m in lexicon.modalities}
    names = {c.id: c.name for c in lexicon.concepts}
    for k, (i, cid) in enumerate(pairs):
        want = reference_pair_map(model, figures.images[i], mod_name[mods[i]], names[cid], (MASK, MASK))
        np.testing.assert_allclose(got[k], want, rtol=0, atol=2e-5, err_msg=f"pair {k}")
    assert np.abs(got[0] - got[2]).max() > 1e-3  # two concepts of one image: two maps


# ------------------------------------------------------------------------------------ concept annotation


def _labelled(lexicon, mods, seed):
    """Labels with positives and negatives for every finding of the figures' modalities; two without truth."""
    rng = np.random.default_rng(seed)
    n = len(mods)
    labels = np.zeros((n, len(lexicon.concepts)), dtype=bool)
    for j, c in enumerate(lexicon.concepts):
        rows = [i for i, m in enumerate(mods) if m in c.modalities]
        if rows:
            picked = rng.permutation(rows)
            labels[picked[: max(1, len(rows) // 2)], j] = True
    has_truth = np.ones(n, dtype=bool)
    has_truth[[1, 6]] = False
    labels[~has_truth] = False
    return labels, has_truth


ANNOTATION_WEIGHT, ANNOTATION_FRACTION = 0.4, 0.25


def annotation_kwargs() -> dict:
    """concept_annotation's scoring settings where it takes them (ConceptCLIP's local term)."""
    if "local_weight" in inspect.signature(concept_annotation).parameters:
        return {"local_weight": ANNOTATION_WEIGHT, "local_top_fraction": ANNOTATION_FRACTION}
    return {}


def reference_annotation_scores(model, figures, lexicon, *, local: bool) -> tuple[np.ndarray, np.ndarray]:
    """([N, K] scores, [N, K] valid): global ``softmax(t [<x, z_pos>, <x, z_neutral>])[0]``; with ``local``,
    mixed with ``softmax(t_c [l_pos, l_neutral])[0]``, ``l`` the mean of the top-k patch similarities to the
    PC-Align embedding of the prompt's concept (resp. modality) span, k = round(fraction x patches)."""
    mod_name = {m.id: m.name for m in lexicon.modalities}
    n, k_all = len(figures), len(lexicon.concepts)
    scores, valid = np.full((n, k_all), np.nan), np.zeros((n, k_all), dtype=bool)
    with torch.no_grad():
        out = model.encode_image(figure_tensors(figures.images, model.image.image_size[0]))
        x = F.normalize(out.embedding.double(), dim=-1)
        t = float(model.logit_scale_exp())
        if local:
            v = F.normalize(model.image_proj(out.patch_tokens).double(), dim=-1)  # [N, P, E]
            top = max(1, min(v.shape[1], round(ANNOTATION_FRACTION * v.shape[1])))
            t_c = float(model.concept_logit_scale_exp())

        cache = {}

        def embed(text, span=None):  # global embedding of a prompt, or PC-Align embedding of a span in it
            if (text, span) not in cache:
                cache[text, span] = _prompt_concept_embedding(model, text, span) if span else F.normalize(
                    model.encode_text(model.tokenize([text])).embedding[0].double(), dim=-1)
            return cache[text, span]

        for j, c in enumerate(lexicon.concepts):
            for i, m in enumerate(figures.modalities):
                if m not in c.modalities or not figures.has_truth[i]:
                    continue
                positive, neutral = f"This is {mod_name[m]} of {c.name}.", f"This is {mod_name[m]}."
                s = torch.stack([x[i] @ embed(positive), x[i] @ embed(neutral)])
                p = torch.softmax(t * s, dim=0)[0]
                if local:
                    spans = [embed(positive, c.name), embed(neutral, mod_name[m])]
                    sims = torch.stack([(v[i] @ e).topk(top).values.mean() for e in spans])
                    p = (1 - ANNOTATION_WEIGHT) * p + ANNOTATION_WEIGHT * torch.softmax(t_c * sims, dim=0)[0]
                scores[i, j], valid[i, j] = float(p), True
    return scores, valid


@pytest.mark.parametrize("name", ["clip", "conceptclip"])
def test_concept_annotation_auroc_equals_sklearn(request, lexicon, name):
    model = request.getfixturevalue(name)
    local = name == "conceptclip" and bool(annotation_kwargs())
    mods = ["chest_xray"] * 9 + ["fundus"] * 9
    labels, has_truth = _labelled(lexicon, mods, seed=2)
    labels[1, 0] = True  # a label on a figure without truth must not count
    figures = _figures(len(mods), mods, lexicon, seed=3, labels=labels, has_truth=has_truth)
    got = concept_annotation(model, figures, lexicon, n_boot=20, seed=0, **annotation_kwargs())
    scores, valid = reference_annotation_scores(model, figures, lexicon, local=local)
    assert got["auc"] == pytest.approx(roc_auc_score(labels[valid], scores[valid]), abs=1e-9)
    per = {}
    for j, c in enumerate(lexicon.concepts):
        y = labels[valid[:, j], j]
        if y.any() and not y.all():
            per[c.id] = roc_auc_score(y, scores[valid[:, j], j])
    assert sorted(got["per_concept"]) == sorted(per) and len(per) == 9
    for cid, auc in per.items():
        assert got["per_concept"][cid]["auc"] == pytest.approx(auc, abs=1e-9), cid
    assert got["macro"]["auc"] == pytest.approx(np.mean(list(per.values())), abs=1e-9)
    assert len({round(a, 6) for a in per.values()}) > 3  # the concepts are told apart
    if local:  # the local term changes the ranking: the global term alone would not give these numbers
        global_only, _ = reference_annotation_scores(model, figures, lexicon, local=False)
        assert abs(roc_auc_score(labels[valid], global_only[valid]) - got["auc"]) > 1e-3


# ------------------------------------------------------------------------------------------- bottleneck


@pytest.fixture(scope="module")
def small_lexicon(tmp_path_factory):
    """Two modalities, five findings (one in both): the bottleneck needs every finding's two classes in training."""
    raw = {"modalities": [{"id": "chest_xray", "name": "chest X-ray"}, {"id": "fundus", "name": "fundus photograph"}],
           "concepts": [{"id": "K1", "name": "pleural effusion", "modalities": ["chest_xray"]},
                        {"id": "K2", "name": "cardiomegaly", "modalities": ["chest_xray"]},
                        {"id": "K3", "name": "drusen", "modalities": ["fundus"]},
                        {"id": "K4", "name": "hemorrhage", "modalities": ["fundus", "chest_xray"]},
                        {"id": "K5", "name": "lung nodule", "modalities": ["chest_xray"]}]}
    path = tmp_path_factory.mktemp("lexicon") / "concepts.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return load_concept_lexicon(str(path))


def reference_concept_scores(model, figures, lexicon) -> np.ndarray:
    """[N, K] max over patches of <v_m, c_k> with the prompt of each image's modality (PC-Align heads)."""
    mod_name = {m.id: m.name for m in lexicon.modalities}
    x = figure_tensors(figures.images, model.image.image_size[0])
    out = np.empty((len(figures), len(lexicon.concepts)))
    with torch.no_grad():
        patches = F.normalize(model.image_proj(model.encode_image(x).patch_tokens).double(), dim=-1)  # [N, P, E]
        for i, m in enumerate(figures.modalities):
            for k, c in enumerate(lexicon.concepts):
                text = _prompt_concept_embedding(model, f"This is {mod_name[m]} of {c.name}.", c.name)
                out[i, k] = float((patches[i] @ text).max())
    return out


def test_bottleneck_equals_sklearn_logistic_regression(conceptclip, small_lexicon):
    lexicon = small_lexicon
    train_mods = ["chest_xray", "fundus"] * 12
    test_mods = ["fundus", "chest_xray"] * 8
    train_labels, train_truth = _labelled(lexicon, train_mods, seed=4)
    test_labels, test_truth = _labelled(lexicon, test_mods, seed=5)
    train_labels[1, 0] = True  # a figure without truth: left out of the fit, whatever its labels say
    train = _figures(len(train_mods), train_mods, lexicon, seed=6, labels=train_labels, has_truth=train_truth)
    test = _figures(len(test_mods), test_mods, lexicon, seed=7, labels=test_labels, has_truth=test_truth)
    metrics, cbm, s_test = bottleneck(conceptclip, train, test, lexicon, C=0.5, n_boot=20, seed=3)

    ref_train = reference_concept_scores(conceptclip, train, lexicon)[train_truth]
    ref_test = reference_concept_scores(conceptclip, test, lexicon)
    np.testing.assert_allclose(s_test, ref_test, rtol=0, atol=1e-5)
    scaler = StandardScaler().fit(ref_train)
    decision = np.stack([LogisticRegression(C=0.5, max_iter=2000, random_state=3)
                         .fit(scaler.transform(ref_train), train_labels[train_truth, j])
                         .decision_function(scaler.transform(ref_test)) for j in range(len(lexicon.concepts))], axis=1)
    # float32 concept scores in the stage, float64 here: lbfgs lands within 1e-4
    np.testing.assert_allclose(cbm.decision_function(s_test), decision, rtol=0, atol=1e-4)

    mods = np.asarray(test_mods)
    per = {}
    for j, c in enumerate(lexicon.concepts):
        valid = np.isin(mods, c.modalities) & test_truth
        y = test_labels[valid, j]
        if y.any() and not y.all():
            per[c.id] = roc_auc_score(y, decision[valid, j])
    assert sorted(metrics["per_finding"]) == sorted(per) and len(per) == 5
    for cid, auc in per.items():
        assert metrics["per_finding"][cid]["auc"] == pytest.approx(auc, abs=1e-9), cid
    assert metrics["macro"]["auc"] == pytest.approx(np.mean(list(per.values())), abs=1e-9)
    assert metrics["n_concepts"] == 5
