"""CT zero-shot scoring (medvlp.eval.zero_shot.disease_scores) and its evaluation (medvlp.eval.evaluate.evaluate_ct)
against direct computations: float64 prompt ensembles, the two-way softmax, scikit-learn's AUROC and ROC curve.

Each abnormality d of anatomy a is scored with the anatomy's embedding ``v_a`` (fVLM, features [N, A, E]) or
the volume embedding (global models, [N, E]): ``softmax(t * [<v, p_d>, <v, n_d>])[0]``, the probability of the
positive prompt ensemble ``p_d`` against the negative one ``n_d``; NaN where anatomy a has no token.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve
from test_train_fixtures import TINY_CLIP, TINY_VIT3D

from medvlp.eval.data import CTSet
from medvlp.eval.encode import VolumeFeatures, encode_volumes
from medvlp.eval.evaluate import evaluate_ct
from medvlp.eval.prompts import disease_prompts
from medvlp.eval.zero_shot import disease_scores
from medvlp.lexicon import load_anatomy_lexicon
from medvlp.models import build_model

SCALE = 20.0
N_STUDIES = 30


@pytest.fixture(scope="module")
def lexicon():
    return load_anatomy_lexicon()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("fvlm", clip_model=TINY_CLIP, vit3d=TINY_VIT3D, pool_heads=2).eval()
    with torch.no_grad():
        m.logit_scale.fill_(math.log(SCALE))
    return m


# ------------------------------------------------------------------------------------------- references


def ref_ensemble(model, prompts) -> np.ndarray:
    """Normalised mean of the normalised text embeddings of ``prompts`` (float64)."""
    with torch.no_grad():
        emb = model.encode_text(model.tokenize([p.text for p in prompts])).embedding.double()
    mean = F.normalize(emb, dim=-1).mean(dim=0)
    return (mean / mean.norm()).numpy()


def ref_disease_scores(model, embedding: np.ndarray, present: np.ndarray | None, lexicon,
                       negative: str = "not") -> np.ndarray:
    """``[N, K]`` P(positive prompt) per study and abnormality, NaN where the anatomy has no token."""
    anatomy_index = {a.id: i for i, a in enumerate(lexicon.anatomies)}
    n = embedding.shape[0]
    out = np.empty((n, len(lexicon.abnormalities)))
    for k, abn in enumerate(lexicon.abnormalities):
        pos, neg = disease_prompts(abn, lexicon, negative)
        p, q = ref_ensemble(model, pos), ref_ensemble(model, neg)
        a = anatomy_index[abn.anatomy]
        v = embedding[:, a] if embedding.ndim == 3 else embedding
        logits = SCALE * np.stack([v @ p, v @ q], axis=1)  # [N, 2]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        out[:, k] = e[:, 0] / e.sum(axis=1)
        if embedding.ndim == 3:
            out[~present[:, a], k] = np.nan
    return out


def ref_operating_point(y: np.ndarray, s: np.ndarray) -> dict:
    """The ROC point closest to (0, 1) (sklearn's curve, first of equals), metrics at ``s >= threshold``."""
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # the first point (threshold inf) predicts no positive
    best = int(np.argmin(np.hypot(fpr, 1 - tpr)))
    pred = s >= thr[best]
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    return {"accuracy": (tp + tn) / len(y), "f1": 2 * tp / (2 * tp + fp + fn), "precision": tp / (tp + fp),
            "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp)}


def _anatomy_of_each_abnormality(lexicon) -> list[int]:
    index = {a.id: i for i, a in enumerate(lexicon.anatomies)}
    return [index[x.anatomy] for x in lexicon.abnormalities]


def _metrics(result) -> dict:
    """evaluate_ct's metrics dict (it returns them alone, or with the per-item scores as ``.metrics``)."""
    return result.metrics if hasattr(result, "metrics") else result


def _features(n=12, a=10, e=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(n, a, e, generator=g), dim=-1)
    present = torch.rand(n, a, generator=g) > 0.25
    valid = present & (torch.rand(n, a, generator=g) > 0.3)  # some present anatomies are cut by the crop
    return emb, present, valid


# ---------------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("negative", ["not", "normal"])
def test_fvlm_scores_each_disease_with_its_anatomy(model, lexicon, negative):
    emb, present, valid = _features()
    emb[~present] = 0.0  # as the pooling gives an anatomy without token
    got = disease_scores(model, VolumeFeatures(emb, valid, present), lexicon, negative=negative)
    want = ref_disease_scores(model, emb.double().numpy(), present.numpy(), lexicon, negative)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=0, atol=1e-6)
    assert got[ok].std() > 0.01  # the scores tell studies apart (a check with teeth)


def test_fvlm_score_is_p_positive_and_uses_no_other_anatomy(model, lexicon):
    emb, present, valid = _features()
    base = disease_scores(model, VolumeFeatures(emb, valid, present), lexicon)
    lung = [i for i, a in enumerate(lexicon.anatomies) if a.id == "lung"][0]
    lung_cols = [k for k, x in enumerate(lexicon.abnormalities) if x.anatomy == "lung"]
    other_cols = [k for k, x in enumerate(lexicon.abnormalities) if x.anatomy != "lung"]
    # move study 0's lung embedding onto the positive prompt of the first lung abnormality: P(positive) -> high
    pos, neg = disease_prompts(lexicon.abnormalities[lung_cols[0]], lexicon)
    p, q = ref_ensemble(model, pos), ref_ensemble(model, neg)
    moved = emb.clone()
    moved[0, lung] = torch.as_tensor(p / np.linalg.norm(p), dtype=torch.float32)
    present2 = present.clone()
    present2[0, lung] = True
    got = disease_scores(model, VolumeFeatures(moved, valid, present2), lexicon)
    expected = 1.0 / (1.0 + math.exp(-SCALE * (1.0 - float(p @ q))))  # softmax([t, t<p, n>])[0]
    assert got[0, lung_cols[0]] == pytest.approx(expected, abs=1e-5)
    assert got[0, lung_cols[0]] > 0.5
    # nothing else of study 0 moved, nor any other study
    same = np.ones_like(base, dtype=bool)
    same[0, lung_cols] = False
    assert np.array_equal(np.isnan(got[same]), np.isnan(base[same]))
    np.testing.assert_allclose(np.nan_to_num(got[same]), np.nan_to_num(base[same]), atol=1e-7)
    assert other_cols


def test_global_models_score_every_disease_with_the_volume_embedding(model, lexicon):
    g = torch.Generator().manual_seed(2)
    emb = F.normalize(torch.randn(9, 32, generator=g), dim=-1)
    for negative in ("not", "normal"):
        got = disease_scores(model, VolumeFeatures(emb, None, None), lexicon, negative=negative)
        want = ref_disease_scores(model, emb.double().numpy(), None, lexicon, negative)
        assert not np.isnan(got).any()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------- intact anatomies (in flight)


def _intact_kwargs(intact: np.ndarray) -> dict:
    """How ``disease_scores`` is told which anatomies are intact: its ``intact`` [N, A] argument."""
    return {"intact": intact}


def test_fvlm_anatomy_present_but_not_intact_is_not_scored(model, lexicon):
    """An anatomy cut by the crop (present, not intact) is not scored either (NaN), for fVLM and for global
    models alike; the scored pairs keep their values."""
    emb, present, valid = _features()
    cut = present & ~valid
    assert cut.any()
    idx = _anatomy_of_each_abnormality(lexicon)
    got = disease_scores(model, VolumeFeatures(emb, valid, present), lexicon, **_intact_kwargs(valid.numpy()))
    assert np.array_equal(np.isnan(got), ~valid[:, idx].numpy())
    want = ref_disease_scores(model, emb.double().numpy(), present.numpy(), lexicon)
    ok = ~np.isnan(got)
    np.testing.assert_allclose(got[ok], want[ok], rtol=0, atol=1e-6)
    flat = disease_scores(model, VolumeFeatures(emb[:, 0], None, None), lexicon, **_intact_kwargs(valid.numpy()))
    assert np.array_equal(np.isnan(flat), ~valid[:, idx].numpy())


def test_evaluate_ct_scores_only_intact_anatomies(model, lexicon):
    """With the studies' intact anatomies known, evaluate_ct's AUROCs are sklearn's on the pairs of intact
    anatomies of the studies with truth."""
    studies = _studies(lexicon)
    feats = encode_volumes(model, studies.volumes, studies.label_maps, anatomy_labels=None)
    intact = feats.valid.numpy()  # the model's own test: some voxel, none on the crop border
    studies.anatomy_ids = [a.id for a in lexicon.anatomies]
    studies.intact = intact
    metrics = _metrics(evaluate_ct(model, studies, lexicon, negative="not", n_boot=20, seed=0))
    scores = ref_disease_scores(model, feats.embedding.double().numpy(), feats.present.numpy(), lexicon)
    idx = _anatomy_of_each_abnormality(lexicon)
    liver = [k for k, x in enumerate(lexicon.abnormalities) if x.anatomy == "liver"]
    assert (~intact[:, idx][:, liver] & ~np.isnan(scores[:, liver])).any()  # the check has teeth
    for k, abn in enumerate(studies.abnormality_ids):
        ok = ~np.isnan(scores[:, k]) & studies.has_truth & intact[:, idx[k]]
        y = studies.labels[ok, k]
        if abn in metrics["per_disease"]:
            assert metrics["per_disease"][abn]["auc"] == pytest.approx(roc_auc_score(y, scores[ok, k]), abs=1e-12)
        else:
            assert y.all() or not y.any()


# ------------------------------------------------------------------------------------------ evaluate_ct


def _studies(lexicon, n=N_STUDIES, seed=3) -> CTSet:
    """Random volumes; every anatomy a box inside the crop, except: gallbladder absent in every third study,
    liver cut by the border in every fourth. Labels random (both classes per abnormality), five studies
    without truth (labels all False, as load_ct leaves them)."""
    rng = np.random.default_rng(seed)
    vols = torch.as_tensor(rng.random((n, 1, 32, 32, 16)), dtype=torch.float32)
    maps = torch.zeros(n, 32, 32, 16, dtype=torch.int16)
    for i in range(n):
        for a_idx, anatomy in enumerate(lexicon.anatomies):
            if anatomy.id == "gallbladder" and i % 3 == 0:
                continue
            x0, y0, z0 = 2 + 7 * (a_idx % 4) + i % 2, 2 + 9 * (a_idx // 4) + i % 3, 3 + (i + a_idx) % 4
            if anatomy.id == "liver" and i % 4 == 1:
                x0 = 0
            maps[i, x0:x0 + 5, y0:y0 + 6, z0:z0 + 6] = anatomy.label
    k = len(lexicon.abnormalities)
    labels = rng.random((n, k)) < 0.4
    labels[0, :], labels[1, :] = True, False
    has_truth = np.ones(n, dtype=bool)
    has_truth[[2, 7, 11, 18, 25]] = False
    labels[~has_truth] = False
    labels[:, -1] = False  # an abnormality without positive: skipped
    labels[0, -1] = False
    return CTSet([f"S{i:03d}" for i in range(n)], vols, maps, [""] * n, labels, has_truth,
                 [x.id for x in lexicon.abnormalities], [x.anatomy for x in lexicon.abnormalities])


@pytest.fixture(scope="module")
def ct_eval(model, lexicon):
    studies = _studies(lexicon)
    result = _metrics(evaluate_ct(model, studies, lexicon, negative="not", n_boot=50, seed=0))
    feats = encode_volumes(model, studies.volumes, studies.label_maps, anatomy_labels=None)
    scores = ref_disease_scores(model, feats.embedding.double().numpy(), feats.present.numpy(), lexicon)
    return studies, result, scores, feats


def test_evaluate_ct_inputs_exercise_every_case(ct_eval, lexicon):
    studies, _, scores, feats = ct_eval
    gb = [a.id for a in lexicon.anatomies].index("gallbladder")
    liver = [a.id for a in lexicon.anatomies].index("liver")
    assert not feats.present[::3, gb].any() and feats.present[1::3, gb].all()
    assert (feats.present[:, liver] & ~feats.valid[:, liver]).any()  # cut by the border, still scored today
    assert np.isnan(scores).any() and not np.isnan(scores).all()
    for k in range(scores.shape[1]):  # scores are well apart (> 10x float32 noise): the library's cannot reorder
        gaps = np.diff(np.sort(scores[~np.isnan(scores[:, k]), k]))
        assert gaps.min() > 4e-6, k


def test_evaluate_ct_auroc_equals_sklearn_on_the_scored_rows(ct_eval):
    studies, result, scores, _ = ct_eval
    per = result["per_disease"]
    expected_skipped, aucs = [], []
    changed_by_no_truth = 0
    for k, abn in enumerate(studies.abnormality_ids):
        ok = ~np.isnan(scores[:, k]) & studies.has_truth
        y, s = studies.labels[ok, k], scores[ok, k]
        if y.all() or not y.any():
            expected_skipped.append(abn)
            continue
        auc = roc_auc_score(y, s)
        aucs.append(auc)
        assert per[abn]["auc"] == pytest.approx(auc, abs=1e-12), abn
        assert per[abn]["ci_low"] <= per[abn]["auc"] <= per[abn]["ci_high"]
        assert per[abn]["anatomy"] == studies.anatomy_of[k]
        scored = ~np.isnan(scores[:, k])
        with_all = roc_auc_score(studies.labels[scored, k], scores[scored, k])
        changed_by_no_truth += abs(with_all - auc) > 1e-9
    assert result["skipped"] == expected_skipped and studies.abnormality_ids[-1] in expected_skipped
    assert sorted(per) == sorted(set(studies.abnormality_ids) - set(expected_skipped))
    assert result["mean"]["auc"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert result["n_studies"] == int(studies.has_truth.sum())
    assert changed_by_no_truth > 0  # the studies without truth would change the numbers if they were counted


def test_evaluate_ct_operating_point_equals_sklearn_roc(ct_eval):
    studies, result, scores, _ = ct_eval
    means = {m: [] for m in ("accuracy", "f1", "precision", "sensitivity", "specificity")}
    for k, abn in enumerate(studies.abnormality_ids):
        if abn not in result["per_disease"]:
            continue
        ok = ~np.isnan(scores[:, k]) & studies.has_truth
        want = ref_operating_point(studies.labels[ok, k], scores[ok, k])
        for m, value in want.items():
            assert result["per_disease"][abn][m] == pytest.approx(value, abs=1e-12), (abn, m)
            means[m].append(value)
    for m, values in means.items():
        assert result["mean"][m] == pytest.approx(np.mean(values), abs=1e-12), m


def test_a_model_with_fewer_anatomies_in_another_order_is_read_by_label(model, lexicon):
    """A released fVLM knows 4 anatomies in its own order (lung, heart, esophagus, aorta); its embeddings are
    placed at the lexicon's anatomies by label, the others left empty, so each abnormality is still scored with
    its own anatomy's embedding."""
    studies = _studies(lexicon)
    labels = [a.label for a in lexicon.anatomies]
    by_label = {a.label: a.id for a in lexicon.anatomies}
    released = build_model("fvlm", clip_model=TINY_CLIP, vit3d=TINY_VIT3D, pool_heads=2,
                           anatomy_labels=[1, 2, 4, 3]).eval()
    own = encode_volumes(released, studies.volumes, studies.label_maps, anatomy_labels=None)
    ordered = encode_volumes(released, studies.volumes, studies.label_maps, anatomy_labels=labels)
    assert ordered.embedding.shape[1] == len(labels) and own.embedding.shape[1] == 4
    for j, label in enumerate(labels):
        if label in released.anatomy_labels:
            i = released.anatomy_labels.index(label)
            assert torch.equal(ordered.embedding[:, j], own.embedding[:, i]), by_label[label]
            assert torch.equal(ordered.valid[:, j], own.valid[:, i])
        else:
            assert not (ordered.embedding[:, j].any() or ordered.valid[:, j].any() or ordered.present[:, j].any())
    assert [by_label[v] for v in released.anatomy_labels] == ["lung", "heart", "esophagus", "aorta"]
    # the pipeline's own models (the lexicon's anatomies, in order) are left as they are
    same = encode_volumes(model, studies.volumes, studies.label_maps, anatomy_labels=labels)
    assert torch.equal(same.embedding, encode_volumes(model, studies.volumes, studies.label_maps,
                                                      anatomy_labels=None).embedding)
    with pytest.raises(ValueError, match="share none"):
        encode_volumes(released, studies.volumes, studies.label_maps, anatomy_labels=[99])
