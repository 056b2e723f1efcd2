"""2D zero-shot scoring (medvlp.eval.zero_shot.finding_scores) against the documented formula, in float64.

A real tiny ConceptCLIP model supplies the text side (global prompt embeddings and PC-Align concept
embeddings of the class-name spans); the image side is hand-built unit vectors, so every number is known.
The reference re-encodes every prompt itself and averages in float64:

- global:  ``p_g = softmax_c(t * <x, z_c>)`` over the findings of the image's modality, or ``sigmoid(t s + b)``;
- local:   ``s_l = t_c * mean(top-k_m <v_m, c_c>)`` turned into ``p_l`` the same way (with ``b_c``);
- mixed:   ``(1 - w) p_g + w p_l``; NaN for findings outside the image's modality.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from medvlp.eval import zero_shot
from medvlp.eval.data import FigureSet
from medvlp.eval.encode import ImageFeatures, ensemble, prompt_ensembles
from medvlp.eval.evaluate import evaluate_findings
from medvlp.eval.prompts import FINDING_TEMPLATES, finding_prompts
from medvlp.eval.zero_shot import LOCAL_TOP_K, finding_scores
from medvlp.lexicon import load_concept_lexicon
from medvlp.models import build_model, tokenize_with_concepts

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 64, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# images of three modalities; "unknown" has no finding in the lexicon (its row stays NaN)
MODALITIES = ["chest_xray", "fundus", "chest_xray", "ct_slice", "fundus", "unknown", "ct_slice", "chest_xray"]
N_PATCHES = 16
SCALE, BIAS, C_SCALE, C_BIAS = 9.0, -1.5, 6.0, 0.75


def local_k(n_patches: int, top_k: int) -> int:
    """How many patches the local term averages: ``finding_scores`` takes ``top_k`` patches (at least one, at
    most all). Should it take a fraction of the patch count itself, adapt this helper (and the ``top_k=``
    arguments below) only."""
    return max(1, min(int(top_k), n_patches))


def k_of_fraction(n_patches: int, fraction: float) -> int:
    """The stage's ``local_top_fraction`` as a patch count: ``round(fraction * P)``, at least 1."""
    return max(1, min(n_patches, round(fraction * n_patches)))


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lexicon():
    return load_concept_lexicon()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("conceptclip", clip_model=TINY).eval()
    with torch.no_grad():  # scales and biases away from their init so that each one matters
        m.logit_scale.fill_(math.log(SCALE))
        m.logit_bias.fill_(BIAS)
        m.concept_logit_scale.fill_(math.log(C_SCALE))
        m.concept_logit_bias.fill_(C_BIAS)
    return m


@pytest.fixture(scope="module")
def feats():
    g = torch.Generator().manual_seed(1)
    emb = F.normalize(torch.randn(len(MODALITIES), 32, generator=g), dim=-1)
    patches = F.normalize(torch.randn(len(MODALITIES), N_PATCHES, 32, generator=g), dim=-1)
    return ImageFeatures(emb, patches)


# ------------------------------------------------------------------------------------------- references


def ref_global_embeddings(model, prompt_sets) -> np.ndarray:
    """Per class: mean of the normalised global text embeddings of its prompts, renormalised (float64)."""
    out = []
    with torch.no_grad():
        for prompts in prompt_sets:
            emb = model.encode_text(model.tokenize([p.text for p in prompts])).embedding.double()
            mean = F.normalize(emb, dim=-1).mean(dim=0)
            out.append((mean / mean.norm()).numpy())
    return np.stack(out)


def ref_concept_embeddings(model, prompt_sets) -> np.ndarray:
    """Per class: mean of the normalised PC-Align embeddings of the class-name span of each prompt."""
    out = []
    with torch.no_grad():
        for prompts in prompt_sets:
            rows = []
            for p in prompts:  # one prompt at a time: nothing is shared between prompts
                tok = tokenize_with_concepts(model.tokenizer, [p.text], [[p.span]], model.context_length)
                assert tok.spans.shape[0] == 1, p.text
                states = model.encode_text(tok.ids).token_states
                projected = model.text_proj(states)[0].double()  # [L, E]
                start, end = tok.spans[0].tolist()
                rows.append(F.normalize(projected[start:end].mean(dim=0), dim=-1))
            mean = torch.stack(rows).mean(dim=0)
            out.append((mean / mean.norm()).numpy())
    return np.stack(out)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


_CACHE: dict = {}


def _class_embeddings(model, lexicon, modality) -> tuple[np.ndarray, np.ndarray]:
    """(global, concept) reference embeddings of the findings of ``modality`` (computed once per model)."""
    key = (model, modality.id)  # holds the model: its id cannot be reused
    if key not in _CACHE:
        sets = [finding_prompts(c, modality, FINDING_TEMPLATES) for c in lexicon.for_modality(modality.id)]
        _CACHE[key] = (ref_global_embeddings(model, sets), ref_concept_embeddings(model, sets))
    return _CACHE[key]


def reference_scores(model, feats, modalities, lexicon, *, local_weight=0.5, top_k=LOCAL_TOP_K,
                     normalise="softmax", use_patches=True) -> np.ndarray:
    column = {c.id: i for i, c in enumerate(lexicon.concepts)}
    by_id = {m.id: m for m in lexicon.modalities}
    x = feats.embedding.double().numpy()
    v = feats.patches.double().numpy() if feats.patches is not None else None
    out = np.full((len(modalities), len(lexicon.concepts)), np.nan)
    for n, mod in enumerate(modalities):
        classes = lexicon.for_modality(mod)
        if not classes:
            continue
        z, c = _class_embeddings(model, lexicon, by_id[mod])
        s = SCALE * x[n] @ z.T  # [C]
        p = _softmax(s[None])[0] if normalise == "softmax" else _sigmoid(s + BIAS)
        if use_patches and v is not None and local_weight > 0:
            sims = v[n] @ c.T  # [P, C]
            k = local_k(sims.shape[0], top_k)
            local = C_SCALE * np.sort(sims, axis=0)[::-1][:k].mean(axis=0)
            p_local = _softmax(local[None])[0] if normalise == "softmax" else _sigmoid(local + C_BIAS)
            p = (1 - local_weight) * p + local_weight * p_local
        out[n, [column[c.id] for c in classes]] = p
    return out


def assert_scores(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want)), "NaN pattern differs"
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=0, atol=2e-6)


# ---------------------------------------------------------------------------------------------- tests


def test_global_softmax_over_the_modalitys_findings(model, feats, lexicon):
    got = finding_scores(model, ImageFeatures(feats.embedding, None), MODALITIES, lexicon)
    assert_scores(got, reference_scores(model, feats, MODALITIES, lexicon, use_patches=False))
    column = {c.id: i for i, c in enumerate(lexicon.concepts)}
    for n, mod in enumerate(MODALITIES):  # a distribution over the modality's findings, per image
        cols = [column[c.id] for c in lexicon.for_modality(mod)]
        if cols:
            assert got[n, cols].sum() == pytest.approx(1.0, abs=1e-6)
    # with the patch term switched off by its weight, the patches change nothing
    assert_scores(finding_scores(model, feats, MODALITIES, lexicon, local_weight=0.0), got)


def test_global_sigmoid_uses_scale_and_bias(model, feats, lexicon):
    got = finding_scores(model, ImageFeatures(feats.embedding, None), MODALITIES, lexicon, normalise="sigmoid")
    assert_scores(got, reference_scores(model, feats, MODALITIES, lexicon, normalise="sigmoid", use_patches=False))


@pytest.mark.parametrize("normalise", ["softmax", "sigmoid"])
@pytest.mark.parametrize("local_weight", [0.5, 0.3, 1.0])
def test_global_plus_local_mix(model, feats, lexicon, normalise, local_weight):
    got = finding_scores(model, feats, MODALITIES, lexicon, local_weight=local_weight, normalise=normalise)
    want = reference_scores(model, feats, MODALITIES, lexicon, local_weight=local_weight, normalise=normalise)
    assert_scores(got, want)
    # the local term carries weight: the global-only scores differ
    global_only = reference_scores(model, feats, MODALITIES, lexicon, normalise=normalise, use_patches=False)
    ok = ~np.isnan(want)
    assert np.abs(global_only[ok] - want[ok]).max() > 1e-3


@pytest.mark.parametrize("top_k", [1, 3, LOCAL_TOP_K, N_PATCHES, 100])
def test_local_term_averages_the_top_k_patches(model, feats, lexicon, top_k):
    got = finding_scores(model, feats, MODALITIES, lexicon, local_weight=1.0, top_k=top_k)
    assert_scores(got, reference_scores(model, feats, MODALITIES, lexicon, local_weight=1.0, top_k=top_k))


def test_top_k_changes_the_local_term(model, feats, lexicon):
    one = finding_scores(model, feats, MODALITIES, lexicon, local_weight=1.0, top_k=1)
    five = finding_scores(model, feats, MODALITIES, lexicon, local_weight=1.0, top_k=5)
    ok = ~np.isnan(one)
    assert np.abs(one[ok] - five[ok]).max() > 1e-3


def test_nan_outside_the_images_modality(model, feats, lexicon):
    got = finding_scores(model, feats, MODALITIES, lexicon)
    for n, mod in enumerate(MODALITIES):
        scored = {c.id for c in lexicon.for_modality(mod)}
        for j, c in enumerate(lexicon.concepts):
            assert np.isnan(got[n, j]) == (c.id not in scored), (mod, c.id)
    assert np.isnan(got[MODALITIES.index("unknown")]).all()
    # a finding of two modalities (MC005: chest X-ray and CT) is scored on both, against different rivals
    mc005 = [c.id for c in lexicon.concepts].index("MC005")
    assert not np.isnan(got[[0, 3], mc005]).any()


def test_scores_of_an_image_do_not_depend_on_the_other_images(model, feats, lexicon):
    """Each image's row is its own: scoring a subset of the images gives the same rows."""
    full = finding_scores(model, feats, MODALITIES, lexicon)
    rows = [1, 3, 7]
    part = finding_scores(model, ImageFeatures(feats.embedding[rows], feats.patches[rows]),
                          [MODALITIES[i] for i in rows], lexicon)
    assert_scores(part, full[rows])


# ------------------------------------------------------------------------------------- prompt ensembles


def test_ensemble_is_the_normalised_mean_per_group():
    g = torch.Generator().manual_seed(3)
    emb = F.normalize(torch.randn(9, 6, generator=g, dtype=torch.float64), dim=-1)
    groups = [2, 4, 1, 2]
    got = ensemble(emb.float(), groups)
    bounds = np.cumsum([0, *groups])
    want = np.stack([emb[a:b].mean(0).numpy() / np.linalg.norm(emb[a:b].mean(0).numpy())
                     for a, b in zip(bounds, bounds[1:])])
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    assert np.allclose(np.linalg.norm(got.numpy(), axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("concepts", [False, True])
def test_prompt_ensembles_equal_reference_embeddings(model, lexicon, concepts):
    mod = {m.id: m for m in lexicon.modalities}["ct_slice"]
    sets = [finding_prompts(c, mod, FINDING_TEMPLATES) for c in lexicon.for_modality("ct_slice")]
    assert len({len(s) for s in sets}) > 1 or len(sets[0]) > 1  # groups of several prompts
    got = prompt_ensembles(model, sets, concepts=concepts).double().numpy()
    want = (ref_concept_embeddings if concepts else ref_global_embeddings)(model, sets)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


# ------------------------------------------------------------------------- the stage's scoring settings


@pytest.mark.skipif(not hasattr(zero_shot, "local_top_k"), reason="no local_top_fraction in this version")
def test_local_top_fraction_is_a_share_of_the_patches():
    for n, fraction in ((16, 0.1756), (16, 0.01), (16, 1.0), (729, 0.1756), (49, 0.5), (196, 0.3)):
        assert zero_shot.local_top_k(n, fraction) == k_of_fraction(n, fraction), (n, fraction)
    assert zero_shot.local_top_k(729, 0.1756) == 128  # ConceptCLIP's official top 128 of SigLIP's 729 patches
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            zero_shot.local_top_k(16, bad)


@pytest.mark.skipif("local_top_fraction" not in inspect.signature(evaluate_findings).parameters,
                    reason="no local_top_fraction in this version")
@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_evaluate_findings_scores_with_the_stages_settings(model, feats, lexicon, fraction):
    """The stage's AUROCs are sklearn's on the reference scores with k = the fraction's patch count, over the
    images of each finding's modalities that have truth."""
    rng = np.random.default_rng(5)
    column = {c.id: i for i, c in enumerate(lexicon.concepts)}
    labels = np.zeros((len(MODALITIES), len(lexicon.concepts)), dtype=bool)
    for mod in set(MODALITIES):
        rows = [i for i, m in enumerate(MODALITIES) if m == mod]
        for c in lexicon.for_modality(mod):
            labels[rows, column[c.id]] = rng.permutation([True] + [False] * (len(rows) - 1))
    has_truth = np.ones(len(MODALITIES), dtype=bool)
    figures = FigureSet([f"F{i}" for i in range(len(MODALITIES))], ["a caption"] * len(MODALITIES), MODALITIES,
                        [np.zeros((8, 8), np.uint8)] * len(MODALITIES), labels, has_truth,
                        [c.id for c in lexicon.concepts], [None] * len(MODALITIES))
    result = evaluate_findings(model, figures, lexicon, feats, local_weight=0.3, local_top_fraction=fraction,
                               n_boot=10, seed=0)
    metrics = result.metrics if hasattr(result, "metrics") else result
    k = k_of_fraction(N_PATCHES, fraction)
    assert metrics["scoring"] == "global+local" and metrics.get("local_top_k", k) == k
    want = reference_scores(model, feats, MODALITIES, lexicon, local_weight=0.3, top_k=k)
    per = {}
    for j, c in enumerate(lexicon.concepts):
        rows = np.isin(MODALITIES, c.modalities) & has_truth
        y = labels[rows, j]
        if y.any() and not y.all():
            per[c.id] = roc_auc_score(y, want[rows, j])
    assert sorted(metrics["per_finding"]) == sorted(per) and len(per) > 5
    for cid, auc in per.items():
        assert metrics["per_finding"][cid]["auc"] == pytest.approx(auc, abs=1e-12), cid
    assert metrics["macro"]["auc"] == pytest.approx(np.mean(list(per.values())), abs=1e-12)
