"""Report sentences, anatomy assignment, normal marking and fVLM anatomy texts."""

from __future__ import annotations

import json

import pytest

from medvlp.curate.report_decomposition import AnatomyAssigner, decompose_report, split_sentences
from medvlp.lexicon import load_anatomy_lexicon


def sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in split_sentences(text)]


# ----------------------------------------------------------------------------------- splitting
def test_plain_sentences_and_offsets():
    text = "  The lungs are clear.  The heart is normal in size. "
    assert split_sentences(text) == [(2, 22), (24, 52)]


def test_decimals_do_not_end_a_sentence():
    text = "A 1.2 cm nodule is seen. Cyst of 3.5 mm."
    assert sentences(text) == ["A 1.2 cm nodule is seen.", "Cyst of 3.5 mm."]


def test_abbreviations_do_not_end_a_sentence():
    text = ("Nodule measuring approx. 8 mm. Small cysts, e.g. in segment 6. Stable, i.e. unchanged. "
            "Cyst vs. abscess. Discussed with Dr. Smith.")
    assert sentences(text) == ["Nodule measuring approx. 8 mm.", "Small cysts, e.g. in segment 6.",
                               "Stable, i.e. unchanged.", "Cyst vs. abscess.", "Discussed with Dr. Smith."]


def test_numbered_list_items_without_their_numbers():
    text = ("1. Right lower lobe nodule. 2. Liver cyst in segment 6. 3. Splenomegaly. "
            "No other acute abnormality.")
    assert sentences(text) == ["Right lower lobe nodule.", "Liver cyst in segment 6.", "Splenomegaly.",
                               "No other acute abnormality."]
    assert split_sentences(text)[0] == (3, 27)


def test_parenthesised_list_numbers_and_missing_final_period():
    assert sentences("1) Splenomegaly. 2) Cholelithiasis") == ["Splenomegaly.", "Cholelithiasis"]


def test_blank_line_and_other_end_marks():
    assert sentences("Lungs clear\n\nHeart normal? Yes!") == ["Lungs clear", "Heart normal?", "Yes!"]


def test_empty_text():
    assert split_sentences("") == []
    assert split_sentences("   ") == []


# ----------------------------------------------------------------------------------- assignment
@pytest.fixture(scope="module")
def assigner() -> AnatomyAssigner:
    return AnatomyAssigner()


@pytest.mark.parametrize("sentence, anatomies", [
    ("Cholelithiasis is noted.", ("gallbladder",)),                 # abnormality implies anatomy
    ("There is a small pericardial effusion.", ("heart",)),
    ("There is a small right pleural effusion.", ("lung",)),
    ("The liver and spleen are unremarkable.", ("liver", "spleen")),
    ("THE KIDNEYS ENHANCE SYMMETRICALLY.", ("kidney",)),
    ("Two simple renal cysts.", ("kidney",)),                        # plural
    ("No pleural effusion.", ("lung",)),                             # negated still assigned
    ("The gastroesophageal junction is normal.", ("esophagus",)),   # not "gastric" -> stomach
    ("No acute abnormality.", ()),
    ("Degenerative changes of the spine are noted.", ()),
])
def test_assign(assigner, sentence, anatomies):
    assert assigner.assign(sentence) == anatomies


def test_longest_match_decides_the_anatomy(tmp_path):
    path = tmp_path / "anatomy.json"
    path.write_text(json.dumps({
        "anatomies": [{"id": "lung", "label": 1, "name": "lung", "synonyms": ["pleura"]},
                      {"id": "heart", "label": 2, "name": "heart", "synonyms": []}],
        "abnormalities": [{"id": "eff", "anatomy": "lung", "name": "effusion", "synonyms": []},
                          {"id": "peff", "anatomy": "heart", "name": "pericardial effusion", "synonyms": []}],
    }), "utf-8")
    a = AnatomyAssigner(load_anatomy_lexicon(str(path)))
    assert a.assign("Small pericardial effusion.") == ("heart",)
    assert a.assign("Small effusion.") == ("lung",)
    assert a.anatomy_ids == ("lung", "heart")


# -------------------------------------------------------------------------------- decomposition
FINDINGS = ("No pleural effusion. A 1.2 cm hepatic cyst is seen in segment 6.  The spleen and pancreas "
            "are unremarkable. Cholelithiasis is noted.")
IMPRESSION = "1. Hepatic cyst in segment 6. 2. Cholelithiasis. No other acute abnormality."


def test_decompose_sentences():
    d = decompose_report(FINDINGS, IMPRESSION)
    assert [(s.section, s.text, s.anatomies) for s in d.sentences] == [
        ("findings", "No pleural effusion.", ("lung",)),
        ("findings", "A 1.2 cm hepatic cyst is seen in segment 6.", ("liver",)),
        ("findings", "The spleen and pancreas are unremarkable.", ("pancreas", "spleen")),
        ("findings", "Cholelithiasis is noted.", ("gallbladder",)),
        ("impression", "Hepatic cyst in segment 6.", ("liver",)),
        ("impression", "Cholelithiasis.", ("gallbladder",)),
        ("impression", "No other acute abnormality.", ()),
    ]
    for s in d.sentences:
        assert (FINDINGS if s.section == "findings" else IMPRESSION)[s.start:s.end] == s.text


def test_decompose_normal_marking_and_texts():
    d = decompose_report(FINDINGS, IMPRESSION)
    ids = [a.id for a in load_anatomy_lexicon().anatomies]
    assert sorted(d.is_normal) == sorted(ids) == sorted(d.anatomy_text)
    assert [a for a in ids if not d.is_normal[a]] == ["liver", "gallbladder"]
    assert d.anatomy_text["liver"] == "Hepatic cyst in segment 6. A 1.2 cm hepatic cyst is seen in segment 6."
    assert d.anatomy_text["gallbladder"] == "Cholelithiasis. Cholelithiasis is noted."
    assert d.anatomy_text["lung"] == "Lung shows no significant abnormalities. No pleural effusion."
    assert d.anatomy_text["spleen"] == ("Spleen shows no significant abnormalities. "
                                        "The spleen and pancreas are unremarkable.")
    assert d.anatomy_text["heart"] == "Heart shows no significant abnormalities."


def test_anatomy_text_is_single_spaced():
    d = decompose_report("Mild  hepatic steatosis.\n", "Hepatic   steatosis.")
    assert d.anatomy_text["liver"] == "Hepatic steatosis. Mild hepatic steatosis."


def test_empty_report_is_all_normal():
    d = decompose_report("", "")
    assert d.sentences == ()
    assert all(d.is_normal.values())
    assert d.anatomy_text["kidney"] == "Kidney shows no significant abnormalities."


def test_custom_assigner(tmp_path):
    path = tmp_path / "anatomy.json"
    path.write_text(json.dumps({
        "normal_template": "Normal {name}.",
        "anatomies": [{"id": "brain", "label": 1, "name": "brain", "synonyms": ["cerebral"]}],
        "abnormalities": [{"id": "bleed", "anatomy": "brain", "name": "hemorrhage", "synonyms": []}],
    }), "utf-8")
    a = AnatomyAssigner(load_anatomy_lexicon(str(path)))
    assert decompose_report("The brain is normal.", "", a).anatomy_text == {"brain": "Normal Brain. "
                                                                             "The brain is normal."}
    d = decompose_report("", "Small hemorrhage.", a)
    assert d.is_normal == {"brain": False} and d.anatomy_text == {"brain": "Small hemorrhage."}


# ------------------------------------------------------------------------- normal marking (negation)
def abnormal(impression: str, findings: str = "") -> list[str]:
    d = decompose_report(findings, impression)
    return [a for a in d.is_normal if not d.is_normal[a]]


def test_negated_impression_sentence_leaves_its_anatomy_normal():
    d = decompose_report("The lungs are clear.", "No pleural effusion.")
    assert d.is_normal["lung"] is True
    assert d.anatomy_text["lung"] == "Lung shows no significant abnormalities. The lungs are clear."
    assert [(s.text, s.anatomies, s.abnormal) for s in d.sentences] == [
        ("The lungs are clear.", ("lung",), ()), ("No pleural effusion.", ("lung",), ())]


@pytest.mark.parametrize("impression", [
    "No evidence of pneumothorax or pleural effusion.",
    "No nodule or mass was seen in either lung.",                 # the anatomy inside the negation
    "The lungs are clear.",                                       # a normal statement
    "Lung parenchyma is within normal limits.",
    "Lung shows no significant abnormalities.",                   # the lexicon's own normal sentence
    "Lung shows no significant abnormality or nodule.",
    "Pleural effusion is absent.",                                # post-cue
    "Pleural effusion and pulmonary nodule have been excluded.",  # post-cue over a list
])
def test_negative_impression_sentences_about_the_lung(impression):
    assert abnormal(impression) == []


@pytest.mark.parametrize("impression, anatomies", [
    ("Liver without focal lesion.", []),
    ("Liver: no focal lesion or hepatic cyst.", []),
    ("The liver and spleen are unremarkable.", []),
    ("Cardiac size is natural.", []),
    ("The kidneys are normal. No nephrolithiasis.", []),
    ("Lung nodule. Liver lesion, no ascites. No splenomegaly.", ["lung", "liver"]),   # "lesion": a finding word
    ("The lungs are hyperinflated. No pericardial effusion.", ["lung"]),   # named, nothing negative about it
    ("Hyperinflated lungs, no pericardial effusion.", ["lung"]),
    ("Cardiomegaly, lungs clear.", ["heart"]),
    ("Normal liver, enlarged spleen.", ["spleen"]),
    ("No lesion in the liver; mass in the spleen.", ["spleen"]),
])
def test_marking_follows_the_rule(impression, anatomies):
    assert abnormal(impression) == anatomies


def test_mixed_list_of_positive_and_negated_sentences():
    d = decompose_report("", "Cardiomegaly. No pleural effusion.")
    assert d.is_normal["heart"] is False and d.is_normal["lung"] is True
    assert d.anatomy_text["heart"] == "Cardiomegaly."
    assert d.anatomy_text["lung"] == "Lung shows no significant abnormalities."


def test_pseudo_negation_negates_nothing():
    assert abnormal("No change in the pulmonary nodule. No pericardial effusion.") == ["lung"]
    assert abnormal("No significant change in the size of the hepatic cyst.") == ["liver"]


def test_negation_scope_ends_at_but():
    assert abnormal("No effusion, but a lung nodule is seen. No cardiomegaly.") == ["lung"]
    assert abnormal("No pericardial effusion, but a lung nodule is seen.") == ["lung"]     # not the heart


def test_anatomy_texts_follow_the_documented_rule():
    findings = ("A 6 mm nodule in the right lower lobe. No pleural effusion. The spleen is normal in size. "
                "No cardiomegaly.")
    impression = "Lung nodule. No pleural effusion. No splenomegaly."
    d = decompose_report(findings, impression)
    assert [a for a in d.is_normal if not d.is_normal[a]] == ["lung"]
    assert [(s.text, s.abnormal) for s in d.sentences if s.section == "impression"] == [
        ("Lung nodule.", ("lung",)), ("No pleural effusion.", ()), ("No splenomegaly.", ())]
    assert all(s.abnormal == () for s in d.sentences if s.section == "findings")
    # abnormal: every impression sentence assigned to it (positive and negative), then its findings
    assert d.anatomy_text["lung"] == ("Lung nodule. No pleural effusion. "
                                      "A 6 mm nodule in the right lower lobe. No pleural effusion.")
    # normal: the lexicon's normal sentence, then its findings; its negated impression sentence is left out
    assert d.anatomy_text["spleen"] == "Spleen shows no significant abnormalities. The spleen is normal in size."
    assert d.anatomy_text["heart"] == "Heart shows no significant abnormalities. No cardiomegaly."


def test_marked_anatomies_are_assigned_ones(assigner):
    for text in ("Cardiomegaly, lungs clear.", "No pleural effusion.", "Liver lesion, no ascites.",
                 "No acute abnormality.", "Mass in the mediastinum."):
        assert set(assigner.abnormal_anatomies(text)) <= set(assigner.assign(text))
    assert assigner.abnormal_anatomies("Mass in the mediastinum.") == ()


def test_marking_terms_hold_no_cue_and_no_anatomy(assigner):
    from medvlp.curate.concept_extraction import PRE_NEGATION_CUES, PSEUDO_NEGATION_CUES
    from medvlp.curate.report_decomposition import FINDING_TERMS, NORMAL_PHRASES

    cue_words = {w for cue in PRE_NEGATION_CUES + PSEUDO_NEGATION_CUES for w in cue.split()}
    for term in FINDING_TERMS + NORMAL_PHRASES:
        assert assigner.assign(term) == (), term
        assert not cue_words & set(term.split()), term


def test_custom_lexicon_marking(tmp_path):
    path = tmp_path / "anatomy.json"
    path.write_text(json.dumps({
        "anatomies": [{"id": "brain", "label": 1, "name": "brain", "synonyms": ["cerebral"]}],
        "abnormalities": [{"id": "bleed", "anatomy": "brain", "name": "hemorrhage", "synonyms": []}],
    }), "utf-8")
    a = AnatomyAssigner(load_anatomy_lexicon(str(path)), finding_terms=("infarct",), normal_phrases=("intact",))
    assert decompose_report("", "No hemorrhage.", a).is_normal == {"brain": True}
    assert decompose_report("", "Cerebral infarct.", a).is_normal == {"brain": False}
    assert decompose_report("", "No cerebral infarct. The brain is intact.", a).is_normal == {"brain": True}
