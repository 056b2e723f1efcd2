"""Scores of the text processing against synthetic truth, on small known inputs."""

from __future__ import annotations

import pytest

from medvlp.curate.compound_captions import SubCaption, split_compound_caption
from medvlp.curate.concept_extraction import Mention
from medvlp.curate.report_decomposition import decompose_report
from medvlp.curate.text_metrics import prf, score_compound_split, score_mentions, score_sentence_assignment


def t(cid: str, start: int, end: int, negated: bool = False) -> dict:
    return {"concept_id": cid, "start_char": start, "end_char": end, "negated": negated}


def m(cid: str, start: int, end: int, negated: bool = False) -> Mention:
    return Mention(cid, start, end, negated, "extracted")


def test_prf():
    assert prf(2, 1, 1) == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "tp": 2, "fp": 1,
                                          "fn": 1})
    assert prf(0, 0, 0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 0}


# ------------------------------------------------------------------------------------ mentions
def test_score_mentions_two_tp_one_fp_one_fn():
    truth = {"f1": [t("A", 0, 5), t("B", 10, 15), t("C", 20, 25)], "f2": [t("D", 30, 35, True)]}
    pred = {"f1": [m("A", 0, 5), m("B", 10, 15), m("C", 20, 26)], "f2": [m("D", 30, 35, True)]}
    s = score_mentions(pred, truth)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 1)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    assert (s["negated"]["tp"], s["negated"]["fp"], s["negated"]["fn"]) == (1, 0, 0)
    assert (s["negation_accuracy"], s["n_negation_scored"], s["n_records"]) == (1.0, 3, 2)


def test_score_mentions_negation_errors():
    truth = {"f1": {"id": "f1", "mentions": [t("X", 0, 4), t("Y", 8, 12, True)]}}     # a whole truth record
    pred = {"f1": [m("X", 0, 4, True), m("Y", 8, 12, True)]}
    s = score_mentions(pred, truth)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 0, 1)
    assert (s["negated"]["tp"], s["negated"]["fp"]) == (1, 1)
    assert s["negation_accuracy"] == 0.5 and s["n_negation_scored"] == 2


def test_score_mentions_missing_prediction_counts_as_empty():
    s = score_mentions({}, {"f1": [t("A", 0, 5), t("B", 6, 9)]})
    assert (s["tp"], s["fp"], s["fn"], s["recall"], s["precision"]) == (0, 0, 2, 0.0, 0.0)


# ----------------------------------------------------------------------------- compound split
CAPTION = "Two CT scans. (a) Liver mass.  (b) Kidney stone. Reprinted with permission. "
TRUTH_PANELS = [{"label": "(a)", "start_char": 14, "end_char": 31},
                {"label": "(b)", "start_char": 31, "end_char": len(CAPTION)}]


def test_score_compound_split_exact_with_captions():
    truth = {"c": TRUTH_PANELS, "s": []}
    captions = {"c": CAPTION, "s": "Normal chest X-ray."}
    pred = {"c": split_compound_caption(CAPTION), "s": []}
    s = score_compound_split(pred, truth, captions)
    assert (s["accuracy"], s["n_correct"], s["n_records"], s["compound_accuracy"], s["n_compound"]) == (
        1.0, 2, 2, 1.0, 1)
    shifted = [pred["c"][0], SubCaption("b", pred["c"][1].start, pred["c"][1].end - 1, "x")]
    assert score_compound_split({**pred, "c": shifted}, truth, captions)["accuracy"] == 0.5


def test_score_compound_split_without_captions():
    truth = {"c": TRUTH_PANELS, "s": []}
    good = split_compound_caption(CAPTION)
    assert score_compound_split({"c": good, "s": []}, truth)["accuracy"] == 1.0
    # a boundary inside panel (b): the first predicted panel crosses the truth boundary
    wrong = [SubCaption("a", 18, 40, CAPTION[18:40]), SubCaption("b", 41, 74, CAPTION[41:74])]
    assert score_compound_split({"c": wrong, "s": []}, truth)["compound_accuracy"] == 0.0
    # a non-compound caption predicted compound, and a wrong label
    assert score_compound_split({"c": good, "s": good}, truth)["accuracy"] == 0.5
    relabelled = [good[0], SubCaption("c", good[1].start, good[1].end, good[1].text)]
    assert score_compound_split({"c": relabelled, "s": []}, truth)["accuracy"] == 0.5


# ----------------------------------------------------------------------------------- sentences
def test_score_sentence_assignment():
    findings = "No pleural effusion. The liver and spleen are unremarkable. Cholelithiasis is noted."
    impression = "Cholelithiasis."
    record = {
        "id": "s1",
        "labels": {"lung": [], "liver": [], "spleen": [], "gallbladder": ["gallstone"],
                   "heart": ["cardiomegaly"]},
        "sentences": [
            {"section": "findings", "text": "No pleural effusion.", "anatomies": ["lung"]},
            {"section": "findings", "text": "The liver and  spleen are unremarkable.",
             "anatomies": ["liver"]},
            {"section": "findings", "text": "Cholelithiasis is noted.", "anatomies": ["gallbladder"]},
            {"section": "impression", "text": "Cholelithiasis.", "anatomies": ["gallbladder"]},
        ],
    }
    pred = {"s1": decompose_report(findings, impression)}
    s = score_sentence_assignment(pred, {"s1": record})
    assert (s["n_correct"], s["n_sentences"]) == (3, 4)          # the liver sentence also names the spleen
    assert s["accuracy"] == 0.75 and s["split_accuracy"] == 1.0
    assert (s["normal_accuracy"], s["n_normal_scored"]) == (0.8, 5)     # heart is wrongly normal
    # sentence lists plus separate labels give the same numbers
    s2 = score_sentence_assignment(pred, {"s1": record["sentences"]}, labels={"s1": record["labels"]})
    assert s2 == s
    # without labels, no normal agreement is scored; a missing prediction scores 0
    s3 = score_sentence_assignment({}, {"s1": record["sentences"]})
    assert (s3["accuracy"], s3["n_normal_scored"], s3["normal_accuracy"]) == (0.0, 0, 0.0)
