"""Concept extraction from captions: lexicon matching, negation, given spans."""

from __future__ import annotations

import json
import random
import time

import pytest

from medvlp.curate.concept_extraction import (
    CLAUSE_TERMINATOR_WORDS,
    POST_NEGATION_CUES,
    PRE_NEGATION_CUES,
    ConceptExtractor,
    Mention,
    compile_surface_forms,
    merge_given_mentions,
)
from medvlp.lexicon import load_concept_lexicon


@pytest.fixture(scope="module")
def ex() -> ConceptExtractor:
    return ConceptExtractor()


@pytest.fixture(scope="module")
def small_lexicon(tmp_path_factory):
    """A lexicon of its own (same JSON schema), with CUIs, an "es" plural and a form holding "with"."""
    path = tmp_path_factory.mktemp("lex") / "concepts.json"
    path.write_text(json.dumps({
        "modalities": [{"id": "ct", "name": "CT", "synonyms": []}],
        "concepts": [
            {"id": "X1", "name": "abscess", "synonyms": ["purulent collection"], "modalities": ["ct"],
             "cui": "C0000833"},
            {"id": "X2", "name": "nodule with halo", "synonyms": ["halo sign"], "modalities": ["ct"]},
            {"id": "X3", "name": "effusion", "synonyms": [], "modalities": ["ct"], "cui": "C0013687"},
        ],
    }), "utf-8")
    return load_concept_lexicon(str(path))


def spans(text: str, mentions: list[Mention]) -> list[tuple[str, str, bool]]:
    return [(m.concept_id, text[m.start:m.end], m.negated) for m in mentions]


# ------------------------------------------------------------------------------------- matching
def test_synonyms_map_to_their_concept(ex):
    text = "Pleural fluid and a PTX; cardiac enlargement."
    assert spans(text, ex.extract(text)) == [
        ("MC001", "Pleural fluid", False), ("MC002", "PTX", False), ("MC003", "cardiac enlargement", False)]


def test_case_insensitive(ex):
    text = "PLEURAL EFFUSION. Pneumothorax. ptx."
    assert [m.concept_id for m in ex.extract(text)] == ["MC001", "MC002", "MC002"]


def test_plural_stays_outside_the_span(ex):
    text = "Pulmonary nodules and malignant glands."
    got = ex.extract(text)
    assert spans(text, got) == [("MC005", "Pulmonary nodule", False), ("MC025", "malignant gland", False)]
    assert (got[0].start, got[0].end) == (0, 16)


def test_es_plural_with_another_lexicon(small_lexicon):
    text = "Two abscesses."
    got = ConceptExtractor(small_lexicon).extract(text)
    assert [(m.concept_id, m.start, m.end) for m in got] == [("X1", 4, 11)]


def test_word_boundaries(ex):
    # no match inside a longer word, nor for irregular plurals
    assert ex.extract("Effusiveness and pneumothoraces, nonmelanoma.") == []


def test_longest_match_wins(ex):
    text = "A pleural effusion, an effusion, drusen deposits and drusen."
    assert spans(text, ex.extract(text)) == [
        ("MC001", "pleural effusion", False), ("MC001", "effusion", False),
        ("MC016", "drusen deposits", False), ("MC016", "drusen", False)]


def test_whitespace_inside_a_form(ex):
    text = "Left pleural  effusion."
    assert spans(text, ex.extract(text)) == [("MC001", "pleural  effusion", False)]


def test_mentions_sorted_and_disjoint(ex):
    text = "Melanoma with blue-white veil, dots and globules and atypical pigment network."
    got = ex.extract(text)
    assert [m.concept_id for m in got] == ["MC018", "MC019", "MC021", "MC020"]
    assert all(a.end <= b.start for a, b in zip(got, got[1:]))
    assert {m.source for m in got} == {"extracted"}


def test_compile_surface_forms_group_and_plural():
    rx = compile_surface_forms(["renal cyst", "cyst"])
    m = rx.search("Two Renal  cysts.")
    assert (m.group("form"), m.group()) == ("Renal  cyst", "Renal  cysts")
    assert compile_surface_forms([]).search("anything") is None


# ------------------------------------------------------------------------------------- negation
@pytest.mark.parametrize("cue", ["no", "no evidence of", "without", "without evidence of", "negative for",
                                 "absence of", "free of", "ruled out for"])
def test_pre_negation_cues(ex, cue):
    text = f"Chest X-ray {cue} pneumothorax."
    assert spans(text, ex.extract(text)) == [("MC002", "pneumothorax", True)]


@pytest.mark.parametrize("cue", ["is absent", "was not seen", "is not identified", "was excluded"])
def test_post_negation_cues(ex, cue):
    text = f"Cardiomegaly is seen. Pleural effusion {cue}."
    assert spans(text, ex.extract(text)) == [("MC003", "Cardiomegaly", False),
                                             ("MC001", "Pleural effusion", True)]


def test_negated_lists(ex):
    for text in ("No effusion or pneumothorax.", "No effusion, pneumothorax, or cardiomegaly.",
                 "no effusion, pneumothorax and cardiomegaly", "Effusion or pneumothorax was excluded.",
                 "Effusion, PTX, and cardiomegaly are absent."):
        got = ex.extract(text)
        assert len(got) >= 2 and all(m.negated for m in got), text


def test_scope_ends_at_but(ex):
    text = "No effusion, but a lung nodule is present."
    assert spans(text, ex.extract(text)) == [("MC001", "effusion", True), ("MC005", "lung nodule", False)]


@pytest.mark.parametrize("sep", [". ", "; ", ": ", " (", ", however ", ", although ", " while ", " whereas ",
                                 " with "])
def test_scope_ends_at_terminators(ex, sep):
    text = f"No effusion{sep}consolidation is present."
    assert [m.negated for m in ex.extract(text)] == [True, False]


def test_negation_does_not_reach_back(ex):
    text = "Consolidation is seen, without effusion."
    assert [m.negated for m in ex.extract(text)] == [False, True]
    text = "Cardiomegaly with no effusion or pneumothorax."
    assert [m.negated for m in ex.extract(text)] == [False, True, True]


def test_decimal_point_does_not_end_scope(ex):
    text = "No lung nodule above 1.5 cm or effusion."
    assert [m.negated for m in ex.extract(text)] == [True, True]


def test_post_cue_not_is_not_a_pre_cue(ex):
    text = "Effusion was not seen, consolidation is present."
    assert [m.negated for m in ex.extract(text)] == [True, False]
    # "was ruled out" (post) must not hide "ruled out for" (pre)
    text = "The patient was ruled out for pneumothorax."
    assert [m.negated for m in ex.extract(text)] == [True]


def test_pseudo_negation(ex):
    text = "No change in the pleural effusion."
    assert [m.negated for m in ex.extract(text)] == [False]


def test_cue_word_inside_a_mention_is_ignored(small_lexicon):
    text = "No effusion or nodule with halo."
    got = ConceptExtractor(small_lexicon).extract(text)
    assert spans(text, got) == [("X3", "effusion", True), ("X2", "nodule with halo", True)]


def test_cue_lists_are_extensible(ex):
    text = "Resolution of the pleural effusion."
    assert [m.negated for m in ex.extract(text)] == [False]
    more = ConceptExtractor(pre_cues=PRE_NEGATION_CUES + ("resolution of",))
    assert [m.negated for m in more.extract(text)] == [True]


class _Planter:
    """Writes a caption piece by piece and records the span and negation of every planted mention."""

    def __init__(self, rng: random.Random, forms: list[tuple[str, str]]):
        self.rng, self.forms = rng, forms
        self.parts: list[str] = []
        self.planted: list[tuple[str, int, int, bool]] = []
        self.pos = 0

    def put(self, s: str) -> None:
        self.parts.append(s)
        self.pos += len(s)

    def mention(self, negated: bool) -> None:
        cid, form = self.rng.choice(self.forms)
        form = self.rng.choice([form, form.lower(), form.upper(), form[:1].upper() + form[1:]])
        self.planted.append((cid, self.pos, self.pos + len(form), negated))
        plural = not form.lower().endswith("s") and self.rng.random() < 0.2
        self.put(form + ("s" if plural else ""))

    def listed(self, negated: bool) -> None:
        """"X", "X or Y", "X, Y and Z"."""
        n = self.rng.randint(1, 3)
        for k in range(n):
            if k:
                self.put(self.rng.choice([" or ", " and ", ", or "]) if k == n - 1 else ", ")
            self.mention(negated)


def test_property_planted_mentions_are_recovered(ex):
    """Captions built from the lexicon with random cues: every planted mention, right negation flag."""
    rng = random.Random(0)
    forms = [(c.id, f) for c in load_concept_lexicon().concepts for f in c.surface_forms]
    leads = ["The image shows", "There is", "Findings include", "Note the", "Shown here:"]
    for _ in range(400):
        w = _Planter(rng, forms)
        for s in range(rng.randint(1, 4)):
            if s:
                w.put(rng.choice([" ", "  "]))
            kind = rng.randrange(5)
            if kind == 0:                               # positive list
                w.put(rng.choice(leads) + " ")
                w.listed(False)
                w.put(" " + rng.choice(["on this image", "is seen", "are present"]) + ".")
            elif kind == 1:                             # pre-cue list
                w.put(rng.choice(PRE_NEGATION_CUES).capitalize() + " ")
                w.listed(True)
                w.put(".")
            elif kind == 2:                             # pre-cue list, terminator, positive list
                w.put(rng.choice(PRE_NEGATION_CUES) + " ")
                w.listed(True)
                w.put(rng.choice([f", {rng.choice(CLAUSE_TERMINATOR_WORDS)} ", "; ", ": ", " ("]))
                w.listed(False)
                w.put(" is noted.")
            elif kind == 3:                             # list + post-cue
                w.listed(True)
                w.put(" " + rng.choice(POST_NEGATION_CUES) + ".")
            else:                                       # positive, then a pre-cue later in the clause
                w.listed(False)
                w.put(" is seen, " + rng.choice(["no", "without", "negative for", "free of"]) + " ")
                w.listed(True)
                w.put(".")
        text = "".join(w.parts)
        got = [(m.concept_id, m.start, m.end, m.negated) for m in ex.extract(text)]
        assert got == w.planted, text


def test_speed_4000_captions(ex):
    text = ("(a) Chest X-ray showing a small pleural effusion and pulmonary nodules (arrows). "
            "No pneumothorax or cardiomegaly. (b) Axial CT image without evidence of ascites, "
            "but a hepatic mass is seen. Scale bar, 50 µm. Reprinted with permission.")
    t0 = time.perf_counter()
    for _ in range(4000):
        ex.extract(text)
    assert time.perf_counter() - t0 < 4.0      # about 0.3 s on a 2-core CPU


# --------------------------------------------------------------------------------- given spans
def test_given_spans_kept_and_overlapping_extracted_dropped(ex):
    text = "No pleural effusion; consolidation and cardiomegaly."
    extracted = ex.extract(text)                 # effusion (negated), consolidation, cardiomegaly
    given = [{"concept_id": "MC001", "start_char": 11, "end_char": 19},      # "effusion"
             {"concept_id": "MC004", "start_char": 21, "end_char": 34}]      # "consolidation"
    merged, problems = merge_given_mentions(text, given, extracted)
    assert problems == []
    assert [(m.concept_id, m.start, m.end, m.negated, m.source) for m in merged] == [
        ("MC001", 11, 19, False, "given"),
        ("MC004", 21, 34, False, "given"),
        ("MC003", 39, 51, False, "extracted"),
    ]


def test_given_cui_is_mapped(small_lexicon):
    text = "Pelvic abscess and effusion."
    given = [{"cui": "C0000833", "start_char": 7, "end_char": 14}, {"cui": "c0013687", "start_char": 19,
                                                                     "end_char": 27}]
    merged, problems = merge_given_mentions(text, given, [], small_lexicon)
    assert problems == []
    assert [(m.concept_id, text[m.start:m.end]) for m in merged] == [("X1", "abscess"), ("X3", "effusion")]


def test_invalid_given_entries_reported(ex):
    text = "Pleural effusion."
    given = [
        {"concept_id": "MC001", "start_char": 0, "end_char": 16},     # valid
        {"concept_id": "MC001", "start_char": 5, "end_char": 40},     # out of range
        {"concept_id": "MC001", "start_char": 8, "end_char": 8},      # empty span
        {"concept_id": "NOPE", "start_char": 0, "end_char": 7},       # unknown id
        {"cui": "C0032227", "start_char": 0, "end_char": 7},          # default lexicon has no CUIs
        {"start_char": 0, "end_char": 7},                             # no id
        {"concept_id": "MC001", "start_char": "0", "end_char": 7},    # not an integer
        {"concept_id": "MC001", "start_char": 8, "end_char": 16},     # overlaps the first
    ]
    merged, problems = merge_given_mentions(text, given, ex.extract(text))
    assert [(m.start, m.end, m.source) for m in merged] == [(0, 16, "given")]
    assert len(problems) == 7
    assert "out of range" in problems[0] and "17 characters" in problems[0]
    assert "out of range" in problems[1]
    assert "unknown concept_id 'NOPE'" in problems[2]
    assert "cui 'C0032227' is not in the concept lexicon" in problems[3]
    assert "neither concept_id nor cui" in problems[4]
    assert "integers" in problems[5]
    assert "overlaps" in problems[6]


def test_mention_as_dict():
    assert Mention("MC001", 3, 9, True, "extracted").as_dict() == {
        "concept_id": "MC001", "start_char": 3, "end_char": 9, "negated": True, "source": "extracted"}
