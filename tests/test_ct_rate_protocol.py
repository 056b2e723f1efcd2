"""CT-RATE's zero-shot protocol (medvlp.eval.ct_rate) on a tiny ingested CT-RATE validation split: items are
scans (reconstructions averaged), a -1 label and disagreeing reconstructions leave out exactly their pair and
are counted, the AUROC is scikit-learn's on the scan-averaged scores, the prompts written are those scored,
and counting reconstructions as items would change the numbers asserted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from test_ingest_fixtures import CtStudy, set_label_cell, write_ct_rate
from test_train_fixtures import TINY_CLIP, TINY_CONV3D, TINY_VIT3D

from medvlp.cli import main
from medvlp.data.ingest import ingest_ct_rate
from medvlp.data.ingest.ct_rate_labels import CT_RATE_LABELS
from medvlp.eval.ct_rate import EXCLUSION_REASONS, scan_table, score_ct_rate
from medvlp.eval.data import load_ingested_ct
from medvlp.eval.encode import encode_texts, encode_volumes
from medvlp.lexicon import load_anatomy_lexicon
from medvlp.models import build_model, save_model
from medvlp.models.volume_tower import volume_size

N_BOOT = 100
# (volume, positive labels); valid_2_a's reconstructions disagree on Cardiomegaly, valid_3_a_1's Emphysema is -1,
# valid_6_a and valid_6_b are two scans of one patient (two items).
VOLUMES = [("valid_1_a_1", ("Cardiomegaly", "Emphysema")), ("valid_1_a_2", ("Cardiomegaly", "Emphysema")),
           ("valid_2_a_1", ("Cardiomegaly",)), ("valid_2_a_2", ()),
           ("valid_3_a_1", ("Emphysema", "Lung nodule")), ("valid_4_a_1", ("Lung nodule",)),
           ("valid_5_a_1", ("Cardiomegaly", "Lung nodule", "Medical material")), ("valid_6_a_1", ("Emphysema",)),
           ("valid_6_b_1", ("Medical material",))]
SCANS = ["valid_1_a", "valid_2_a", "valid_3_a", "valid_4_a", "valid_5_a", "valid_6_a", "valid_6_b"]
SCORED_LABELS = ("Cardiomegaly", "Emphysema", "Lung nodule")  # both classes among the scans


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct_rate")
    studies = [CtStudy(f"{name}.nii.gz", positives=pos, seed=i + 1) for i, (name, pos) in enumerate(VOLUMES)]
    dataset, segs = write_ct_rate(root / "src", studies, split="valid")
    set_label_cell(dataset, "valid", "valid_3_a_1.nii.gz", "Emphysema", "-1")
    ingest_ct_rate(dataset, root / "data", segmentations=segs, splits=("valid",), progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def fvlm():
    torch.manual_seed(0)
    return build_model("fvlm", clip_model=TINY_CLIP, vit3d=TINY_VIT3D, pool_heads=2).eval()


@pytest.fixture(scope="module")
def results(corpus, fvlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores")
    return {style: score_ct_rate(fvlm, corpus, split="valid", prompt_style=style, n_boot=N_BOOT, seed=0, out_dir=out,
                                 description="tiny fvlm", intact_min_fraction=None) for style in ("fvlm", "normal")}


def _ensemble(model, texts: list[str]) -> np.ndarray:
    """Normalised mean of the normalised text embeddings (float64)."""
    mean = F.normalize(encode_texts(model, texts).double(), dim=-1).mean(0)
    return (mean / mean.norm()).numpy()


def _reference_volume_scores(model, corpus, written: dict) -> tuple[list[str], np.ndarray]:
    """Per volume and label, P(positive) from the prompts *written in the JSON* (NaN for labels without an
    anatomy: fVLM has no embedding for them)."""
    lexicon = load_anatomy_lexicon(str(corpus / "ct" / "anatomy_ct_rate.json"))
    ids = [name for name, _ in VOLUMES]
    studies = load_ingested_ct(corpus / "ct", ids, lexicon, volume_size(model.config), intact_min_fraction=None)
    feats = encode_volumes(model, studies.volumes, studies.label_maps, anatomy_labels=None)
    emb = feats.embedding.double().numpy()  # [V, A, E]
    anatomy = {a.id: i for i, a in enumerate(lexicon.anatomies)}
    with torch.no_grad():
        scale = float(model.logit_scale_exp())
    out = np.full((len(ids), len(CT_RATE_LABELS)), np.nan)
    for c, x in enumerate(CT_RATE_LABELS):
        if x.anatomy is None:
            continue
        prompts = written["labels"][x.column]["prompts"]
        p, q = _ensemble(model, prompts["positive"]), _ensemble(model, prompts["negative"])
        v = emb[:, anatomy[x.anatomy]]
        logits = scale * np.stack([v @ p, v @ q], axis=1)
        out[:, c] = 1.0 / (1.0 + np.exp(logits[:, 1] - logits[:, 0]))
    return ids, out


def _frame(result) -> pd.DataFrame:
    return pd.read_parquet(result.paths[1])


def test_items_are_scans_and_every_excluded_pair_is_counted(results):
    for result in results.values():
        report = json.loads(result.paths[0].read_text())
        assert report["n_volumes"] == 9 and report["n_scans"] == len(SCANS) == 7
        frame = _frame(result)
        assert list(frame.columns) == ["item", "class", "label", "score"]
        assert set(frame["item"]) == set(SCANS) and not frame.duplicated(["item", "class"]).any()
        assert report["excluded_pairs"] == {"no_truth": 0, "unknown_label": 1, "labels_disagree": 1,
                                            "no_anatomy_embedding": 14, "anatomy_absent": 0, "anatomy_not_intact": 0}
        assert report["n_pairs"] == 7 * 18 == report["n_pairs_scored"] + sum(report["excluded_pairs"].values())
        assert len(frame) == report["n_pairs_scored"]
        pairs = set(zip(frame["item"], frame["class"]))
        assert ("valid_3_a", "Emphysema") not in pairs and ("valid_3_a", "Lung nodule") in pairs  # -1: that pair only
        assert ("valid_2_a", "Cardiomegaly") not in pairs and ("valid_2_a", "Emphysema") in pairs  # disagreement
        assert not frame["class"].isin(["Medical material", "Lymphadenopathy"]).any()             # no anatomy (fVLM)
        assert report["ingest_warnings"] == {"unknown_label": 1}
        assert report["labels"]["Cardiomegaly"]["n_pos"] == 2 and report["labels"]["Cardiomegaly"]["n_neg"] == 4
        assert report["labels"]["Emphysema"]["n_pos"] == 2 and report["labels"]["Emphysema"]["n_neg"] == 4
        assert report["model"] == "tiny fvlm" and report["model_kind"] == "fvlm"


@pytest.mark.parametrize("style", ["fvlm", "normal"])
def test_auroc_is_sklearns_on_scan_averaged_scores_of_the_written_prompts(results, corpus, fvlm, style):
    result = results[style]
    written = json.loads(result.paths[0].read_text())
    ids, ref = _reference_volume_scores(fvlm, corpus, written)
    frame = _frame(result)
    for _, row in frame.iterrows():
        c = [x.column for x in CT_RATE_LABELS].index(row["class"])
        recons = [i for i, v in enumerate(ids) if v.rsplit("_", 1)[0] == row["item"]]
        assert row["score"] == pytest.approx(ref[recons, c].mean(), abs=1e-5)   # mean over the reconstructions
    aucs = []
    for label in SCORED_LABELS:
        rows = frame[frame["class"] == label]
        expected = roc_auc_score(rows["label"], rows["score"])
        assert result.report["labels"][label]["auc"] == pytest.approx(expected, abs=1e-12)
        assert written["labels"][label]["auc"] == pytest.approx(expected, abs=1e-4)
        low, high = written["labels"][label]["ci"]
        assert 0.0 <= low <= high <= 1.0
        aucs.append(expected)
    assert result.report["macro"]["auc"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert result.report["macro"]["labels"] == list(SCORED_LABELS)
    assert set(result.report["skipped_labels"]) == {x.column for x in CT_RATE_LABELS} - set(SCORED_LABELS)


def test_counting_reconstructions_as_items_would_change_the_numbers(results, corpus, fvlm):
    """The planted error: every reconstruction an item (its own label and score) instead of the scan."""
    result = results["fvlm"]
    ids, ref = _reference_volume_scores(fvlm, corpus, json.loads(result.paths[0].read_text()))
    positives = dict(VOLUMES)
    changed_auc = False
    for label in SCORED_LABELS:
        c = [x.column for x in CT_RATE_LABELS].index(label)
        keep = [i for i, v in enumerate(ids) if not (v.startswith("valid_3_a") and label == "Emphysema")
                and not (v.startswith("valid_2_a") and label == "Cardiomegaly")]
        y = np.asarray([label in positives[ids[i]] for i in keep])
        per_volume = roc_auc_score(y, ref[keep, c])
        got = result.report["labels"][label]
        assert len(keep) != got["n_pos"] + got["n_neg"]
        changed_auc |= abs(per_volume - got["auc"]) > 1e-9
    assert changed_auc


def test_the_two_styles_write_and_score_different_prompts(results):
    fvlm_style, normal = (results[s].report["labels"] for s in ("fvlm", "normal"))
    assert fvlm_style["Atelectasis"]["prompts"] == {"positive": ["Atelectatic."], "negative": ["Not Atelectatic."]}
    assert fvlm_style["Lung nodule"]["prompts"] == {"positive": ["Nodule."], "negative": ["Not Nodule."]}
    assert fvlm_style["Pleural effusion"]["prompts"] == {"positive": ["Pleural effusion."],
                                                         "negative": ["Not Pleural effusion."]}
    assert normal["Emphysema"]["prompts"]["negative"] == ["Lung shows no significant abnormalities."]
    assert normal["Emphysema"]["prompts"]["positive"][:2] == ["Emphysema.", "Emphysematous change."]
    assert normal["Cardiomegaly"]["prompts"]["negative"] == ["Heart shows no significant abnormalities."]
    assert normal["Medical material"]["prompts"]["negative"][0] == "Not medical material."
    assert all(fvlm_style[x.column]["prompts"] != normal[x.column]["prompts"] for x in CT_RATE_LABELS)
    a, b = (_frame(results[s]).set_index(["item", "class"])["score"] for s in ("fvlm", "normal"))
    assert not np.allclose(a.loc[b.index].to_numpy(), b.to_numpy())


def test_a_global_model_scores_the_labels_without_anatomy(corpus, tmp_path):
    torch.manual_seed(0)
    model = build_model("ct_clip_global", clip_model=TINY_CLIP, volume_tower="conv3d", conv3d=TINY_CONV3D).eval()
    result = score_ct_rate(model, corpus / "ct", split="valid", prompt_style="normal", n_boot=20, seed=0,
                           out_dir=tmp_path, description="tiny global", intact_min_fraction=0.9)
    assert result.report["excluded_pairs"]["no_anatomy_embedding"] == 0
    assert sum(result.report["excluded_pairs"].values()) == 2     # the -1 and the disagreeing pair
    material = result.report["labels"]["Medical material"]
    assert (material["n_pos"], material["n_neg"]) == (2, 5) and material["auc"] is not None
    assert "Medical material" in result.report["macro"]["labels"]
    assert "Medical material" not in result.report["macro_anatomy_labels"]["labels"]


def test_scan_table_averages_the_reconstructions_that_have_a_score():
    ids = ["valid_1_a_1", "valid_1_a_2", "valid_2_a_1"]
    labels = np.array([[True], [True], [False]])
    known = np.ones_like(labels)
    scores = np.array([[0.2], [np.nan], [0.6]])
    unscored = np.array([[""], ["anatomy_absent"], [""]], dtype=object)
    table = scan_table(ids, labels, known, np.ones(3, dtype=bool), scores, unscored)
    assert table.scans == ["valid_1_a", "valid_2_a"] and table.reconstructions.tolist() == [2, 1]
    np.testing.assert_allclose(table.scores[:, 0], [0.2, 0.6])
    both_absent = scan_table(ids, labels, known, np.ones(3, dtype=bool), np.array([[np.nan], [np.nan], [0.6]]),
                             np.array([["anatomy_not_intact"], ["anatomy_absent"], [""]], dtype=object))
    assert both_absent.excluded == {**dict.fromkeys(EXCLUSION_REASONS, 0), "anatomy_absent": 1}
    with pytest.raises(ValueError, match="not a CT-RATE volume id"):
        scan_table(["scan42"], labels[:1], known[:1], np.ones(1, dtype=bool), scores[:1], unscored[:1])


def test_cli_writes_the_json_and_the_scores(corpus, fvlm, tmp_path, capsys):
    save_model(fvlm, tmp_path / "model.pt")
    assert main(["score-ct-rate", "--model", str(tmp_path / "model.pt"), "--ingested", str(corpus), "--style",
                 "fvlm", "--out", str(tmp_path / "out"), "--n-boot", "20"]) == 0
    report = json.loads((tmp_path / "out" / "ct_rate_fvlm.json").read_text())
    assert report["model"] == f"{tmp_path / 'model.pt'} (fvlm)" and report["n_boot"] == 20
    assert len(pd.read_parquet(tmp_path / "out" / "ct_rate_fvlm_scores.parquet")) == report["n_pairs_scored"]
    assert json.loads(capsys.readouterr().out)["n_scans"] == 7
    with pytest.raises(SystemExit):
        main(["score-ct-rate", "--model", "m.pt", "--ingested", str(corpus), "--style", "other", "--out", "o"])
