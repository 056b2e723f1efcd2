"""MedConcept-23M -> data/figures: spans (threshold, overlaps, out of range, realigned to their tokens),
CUI -> concept id, the written lexicon agreeing with curation's given-span handling, and every bad-record
case."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from test_ingest_fixtures import medconcept_record, save_image, smooth_image, umls_span, write_jsonl_lines

from medvlp.curate.concept_extraction import merge_given_mentions
from medvlp.data.ingest import IngestError, ingest_medconcept
from medvlp.data.ingest.cli import main
from medvlp.data.ingest.medconcept import DEFAULT_SPAN_WINDOW, FoldedCaption, realign_span, select_spans
from medvlp.data.ingest.skip_log import SkipLog
from medvlp.lexicon import load_concept_lexicon

# The first record of ConceptCLIP's released sample (pretraining_meta_file_sample.jsonl), its spans as given:
# the second one's offsets [143, 161) hold "kin incision site ", one to the right of its tokens.
SAMPLE_CAPTION = ("Inferior approach at revision of a submuscular lying breast implant, showing insertion of a sterile "
                  "swab (sterile retractor seen, holding the skin incision site open).")
SAMPLE_SPANS = [{"umls_cui": "C0178391", "umls_similarity": 1.0, "start_char": 53, "end_char": 67,
                 "tokens": ["breast", "implant"], "start_token": 9, "end_token": 11},
                {"umls_cui": "C1268767", "umls_similarity": 0.8634763956069946, "start_char": 143, "end_char": 161,
                 "tokens": ["skin", "incision", "site"], "start_token": 26, "end_token": 29}]


def _lexicon_with_cui(tmp_path, concept_id: str, cui: str):
    raw = json.loads(resources.files("medvlp.resources").joinpath("concepts.json").read_text("utf-8"))
    for c in raw["concepts"]:
        if c["id"] == concept_id:
            c["cui"] = cui
    path = tmp_path / "lexicon.json"
    path.write_text(json.dumps(raw))
    return path


def _without_tokens(span: dict) -> dict:
    return {k: v for k, v in span.items() if k != "tokens"}


def _drifted(caption: str, phrase: str, cui: str, drift: int, occurrence: int = 0, tokens: list[str] | None = None,
             similarity: float = 1.0) -> dict:
    """A span as the release writes it: offsets ``drift`` characters right of ``phrase``, tokens of ``phrase``."""
    span = umls_span(caption, phrase, cui, similarity, occurrence)
    span = {**span, "start_char": span["start_char"] + drift, "end_char": span["end_char"] + drift}
    return span if tokens is None else {**span, "tokens": tokens}


def _at(caption: str, phrase: str, occurrence: int = 0) -> tuple[int, int]:
    start = -1
    for _ in range(occurrence + 1):
        start = caption.index(phrase, start + 1)
    return start, start + len(phrase)


def _offsets(spans: list[dict]) -> list[tuple[int, int]]:
    return [(s["start_char"], s["end_char"]) for s in spans]


def test_select_spans_threshold_overlaps_range_and_mapping():
    caption = "Right pleural effusion and a lung nodule."
    meta = [
        umls_span(caption, "pleural effusion", "C0032227", 0.95),
        umls_span(caption, "effusion", "C0013687", 0.99),           # overlaps; higher similarity wins
        umls_span(caption, "lung nodule", "C0034079", 0.85),
        umls_span(caption, "lung", "C0024109", 0.85),               # overlaps at equal similarity: longer wins
        umls_span(caption, "Right", "C0205090", 0.79),              # below 0.8
        {**_without_tokens(umls_span(caption, "nodule", "C0028259", 0.9)), "end_char": 99},   # out of range
        {**umls_span(caption, "a", "C0000000", 0.9), "umls_cui": "X123"},    # not a CUI
        {**umls_span(caption, "Right", "C0205090", 0.9), "umls_similarity": float("nan")},
        {**umls_span(caption, "Right", "C0205090", 0.9), "start_char": True},
        "not an object",
    ]
    warnings = SkipLog()
    spans = select_spans(caption, meta, 0.8, {"C0034079": "MC005"}, warnings, "meta.jsonl line 7")
    assert spans == [{"cui": "C0013687", "start_char": 14, "end_char": 22},
                     {"concept_id": "MC005", "cui": "C0034079", "start_char": 29, "end_char": 40}]
    assert warnings.counts == {"overlapping_span": 2, "below_threshold": 1, "out_of_range_span": 1,
                               "invalid_span": 4}
    assert warnings.examples["overlapping_span"][0] == ("meta.jsonl line 7: umls_meta_info[0] [6, 22) overlaps "
                                                        "umls_meta_info[1] [14, 22); the latter is kept")
    assert select_spans(caption, None, 0.8, {}, warnings, "x") == []


def test_released_sample_record_offsets(tmp_path):
    record = {"pmid": "37036325", "pmc": "10729897", "fig_caption": SAMPLE_CAPTION, "fig_id": "F1",
              "fig_label": "Fig. 1.", "fig_list-items": [], "graphic_ref": "prs-153-076-g001",
              "href": "prs-153-076-g001", "caption": SAMPLE_CAPTION, "image": "000047b7b29449bca11de6f3cde9485f.jpg",
              "umls_meta_info": SAMPLE_SPANS}
    save_image(tmp_path / "images" / record["image"], smooth_image(1))
    write_jsonl_lines(tmp_path / "meta.jsonl", [record])
    summary = ingest_medconcept(tmp_path / "meta.jsonl", tmp_path / "data", images=tmp_path / "images", progress=False)
    [out] = [json.loads(x) for x in (tmp_path / "data" / "figures" / "manifest.jsonl").read_text().splitlines()]
    assert out == {"id": "000047b7b29449bca11de6f3cde9485f", "image": "images/000047b7b29449bca11de6f3cde9485f.jpg",
                   "caption": SAMPLE_CAPTION, "article_id": "PMC10729897",
                   "concepts": [{"cui": "C0178391", "start_char": 53, "end_char": 67},
                                {"cui": "C1268767", "start_char": 142, "end_char": 160}]}
    assert SAMPLE_CAPTION[53:67] == "breast implant" and SAMPLE_CAPTION[142:160] == "skin incision site"
    assert summary.warnings.counts == {"span_realigned": 1}
    assert summary.warnings.examples["span_realigned"] == [
        f"{tmp_path / 'meta.jsonl'} line 1: umls_meta_info[1]: [143, 161) 'kin incision site ' moved to [142, 160) "
        "'skin incision site', where its tokens are"]
    assert (tmp_path / "data" / "figures" / out["image"]).read_bytes() == \
        (tmp_path / "images" / record["image"]).read_bytes()
    assert summary.details["spans_cui_only"] == 2 and "--write-lexicon" in summary.details["notes"][0]


def test_written_lexicon_resolves_every_cui_in_curation(tmp_path):
    caption = "Chest film: pleural effusion and a lung nodule."
    spans = [umls_span(caption, "pleural effusion", "C0032227", 0.9), umls_span(caption, "lung nodule", "C0034079"),
             umls_span(caption, "Chest film", "C0039985", 0.81)]
    save_image(tmp_path / "img" / "a.png", smooth_image(2))
    write_jsonl_lines(tmp_path / "meta.jsonl", [medconcept_record(1, caption, spans, "a.png", "PMC77")])
    base = _lexicon_with_cui(tmp_path, "MC001", "C0032227")        # the lexicon knows one of the CUIs
    summary = ingest_medconcept(tmp_path / "meta.jsonl", tmp_path / "data", images=tmp_path / "img",
                                concept_lexicon=base, write_lexicon=tmp_path / "out_lexicon.json", progress=False)
    [out] = [json.loads(x) for x in (tmp_path / "data" / "figures" / "manifest.jsonl").read_text().splitlines()]
    assert out["article_id"] == "PMC77"
    assert out["concepts"] == [{"cui": "C0039985", "start_char": 0, "end_char": 10},
                               {"concept_id": "MC001", "cui": "C0032227", "start_char": 12, "end_char": 28},
                               {"cui": "C0034079", "start_char": 35, "end_char": 46}]
    assert summary.details["spans_with_concept_id"] == 1 and summary.details["spans_cui_only"] == 2

    written = load_concept_lexicon(str(tmp_path / "out_lexicon.json"))
    assert [(c.id, c.name, c.cui) for c in written.concepts] == [
        ("MC001", "pleural effusion", "C0032227"), ("C0034079", "lung nodule", "C0034079"),
        ("C0039985", "chest film", "C0039985")]
    assert [m.id for m in written.modalities] == [m.id for m in load_concept_lexicon().modalities]
    mentions, problems = merge_given_mentions(caption, out["concepts"], [], written)
    assert problems == [] and [m.concept_id for m in mentions] == ["C0039985", "MC001", "C0034079"]
    # Under the shipped lexicon (no CUIs), curation keeps the concept_id span and drops the two cui-only ones.
    mentions, problems = merge_given_mentions(caption, out["concepts"], [], load_concept_lexicon())
    assert [m.concept_id for m in mentions] == ["MC001"]
    assert len(problems) == 2 and all("is not in the concept lexicon" in p for p in problems)


def _bad_lines(tmp_path):
    images = tmp_path / "images"
    good = medconcept_record(1, "A chest X-ray.", [], "ok.png", "100")
    save_image(images / "ok.png", smooth_image(3))
    save_image(images / "ok2.jpg", smooth_image(4))
    (images / "broken.png").write_bytes((images / "ok.png").read_bytes()[:60])
    return [
        (good, None),
        (b'{"caption": "Caf\xe9", "image": "x.png", "pmc": "1"}', "invalid_utf8"),
        ('{"caption": "unterminated', "invalid_json"),
        ('["a list"]', "invalid_json"),
        ({**good, "caption": None, "image": "ok2.jpg"}, "missing_field"),
        ({**good, "pmc": "abc", "image": "ok2.jpg"}, "invalid_field"),
        ({**good, "pmc": float("nan"), "image": "ok2.jpg"}, "invalid_field"),
        ({**good, "image": "../outside.png"}, "path_escapes_source"),
        ({**good, "image": "/abs/ok.png"}, "path_escapes_source"),
        ({**good, "image": "ok.png"}, "duplicate_id"),
        ({**good, "caption": "   ", "image": "blank.png"}, "empty_caption"),
        ({**good, "image": "absent.png"}, "missing_file"),
        ({**good, "image": "broken.png"}, "unreadable_image"),
        ({**good, "image": "ok2.jpg", "caption": "CT with ascites."}, None),
    ]


def test_bad_records_are_skipped_and_counted(tmp_path):
    lines = _bad_lines(tmp_path)
    meta = write_jsonl_lines(tmp_path / "meta.jsonl", [x for x, _ in lines[:3]] + [""] + [x for x, _ in lines[3:]])
    summary = ingest_medconcept(meta, tmp_path / "data", images=tmp_path / "images", progress=False)
    expected: dict[str, int] = {}
    for _, reason in lines:
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
    assert summary.skips.counts == expected
    assert (summary.read, summary.written) == (len(lines), 2)          # the blank line is no record
    ex = summary.skips.examples
    assert ex["invalid_utf8"] == [f"{meta} line 2: not valid UTF-8 at byte 16 of the line"]
    assert ex["duplicate_id"] == [f"{meta} line 11: id 'ok' (image 'ok.png') already used on line 1"]
    assert ex["path_escapes_source"][1] == (f"{meta} line 10: image path '/abs/ok.png' is absolute; paths must be "
                                            "relative to the source folder")
    assert ex["missing_file"][0].startswith(f"{meta} line 13: image 'absent.png' not found")
    assert ex["unreadable_image"][0].startswith(f"{meta} line 14: image 'broken.png' does not decode")
    manifest = [json.loads(x) for x in (tmp_path / "data" / "figures" / "manifest.jsonl").read_text().splitlines()]
    assert [m["id"] for m in manifest] == ["ok", "ok2"]
    report = json.loads((tmp_path / "data" / "figures" / "ingest_report.json").read_text())
    assert report["read"] == report["written"] + report["skipped"] == len(lines)


@pytest.mark.parametrize("index", [1, 2, 4, 5, 7, 10, 11, 12])
def test_strict_raises_naming_file_and_line(tmp_path, index):
    lines = _bad_lines(tmp_path)
    meta = write_jsonl_lines(tmp_path / "meta.jsonl", [lines[0][0], lines[index][0]])
    with pytest.raises(IngestError) as err:
        ingest_medconcept(meta, tmp_path / "data", images=tmp_path / "images", strict=True, progress=False)
    assert f"{meta} line 2: " in str(err.value) and f"[{lines[index][1]}]" in str(err.value)


def test_images_can_be_linked(tmp_path):
    save_image(tmp_path / "images" / "sub" / "a.png", smooth_image(5))
    write_jsonl_lines(tmp_path / "meta.jsonl", [medconcept_record(1, "An MRI.", [], "sub/a.png", "9")])
    ingest_medconcept(tmp_path / "meta.jsonl", tmp_path / "data", images=tmp_path / "images",
                      images_mode="symlink", progress=False)
    [out] = [json.loads(x) for x in (tmp_path / "data" / "figures" / "manifest.jsonl").read_text().splitlines()]
    assert out["id"] == "sub_a" and out["image"] == "images/sub/a.png"
    placed = tmp_path / "data" / "figures" / "images" / "sub" / "a.png"
    assert placed.is_symlink() and placed.resolve() == (tmp_path / "images" / "sub" / "a.png").resolve()


# ----------------------------------------------------------------------------- spans realigned to their tokens

DRIFT_CAPTION = ("A 62-year-old man with a right-sided pleural effusion. (a) Contrast-enhanced CT shows a lung nodule; "
                 "(b) T1-weighted MRI shows liver metastases and a small (5-mm) renal cyst.")


def test_drift_growing_along_the_caption_is_undone():
    # As in the release: each hyphen or bracket inside a word adds to the drift of the spans after it.
    phrases = [("pleural effusion", "C0032227", 4, None), ("lung nodule", "C0034079", 10, None),
               ("liver metastases", "C0494165", 16, ["liver", "meta", "##sta", "##ses"]),
               ("renal cyst", "C0022679", 21, None)]
    meta = [_drifted(DRIFT_CAPTION, p, cui, drift, tokens=tokens) for p, cui, drift, tokens in phrases]
    assert [DRIFT_CAPTION[m["start_char"]:m["end_char"]] for m in meta] == [
        "ral effusion. (a", "e; (b) T1-w", " and a small (5-", ""]           # the last one past the end
    warnings = SkipLog()
    spans = select_spans(DRIFT_CAPTION, meta, 0.8, {}, warnings, "x")
    assert _offsets(spans) == [_at(DRIFT_CAPTION, p) for p, *_ in phrases]
    assert [DRIFT_CAPTION[s:e] for s, e in _offsets(spans)] == [p for p, *_ in phrases]
    assert warnings.counts == {"span_realigned": 4}


def test_wordpiece_pieces_are_joined():
    caption = "Chest X-ray: left-sided effusion, larger than on the prior film."
    meta = [_drifted(caption, "effusion", "C0013687", 4, tokens=["eff", "##usion"]),
            _drifted(caption, "X-ray", "C0043299", 0, tokens=["x", "-", "ray"]),
            _drifted(caption, "prior film", "C0016074", 6, tokens=["prior", "fi", "##lm"])]
    warnings = SkipLog()
    spans = select_spans(caption, meta, 0.8, {}, warnings, "x")
    assert _offsets(spans) == [_at(caption, "X-ray"), _at(caption, "effusion"), _at(caption, "prior film")]
    assert warnings.counts == {"span_realigned": 2}                   # X-ray was right
    # The pieces must spell a whole word: "eff" + "##usion" is not found in "effusions" or "reeffusion".
    folded = FoldedCaption("reeffusion and effusions")
    assert realign_span(folded, ("eff", "##usion"), 2, 10) is None


def test_repeated_cui_each_mention_goes_to_its_own_occurrence():
    caption = "Plasma E2 (pre-OVX) and plasma E2 (post-OVX+HRT) in pigs; plasma E2 levels fall."
    meta = [_drifted(caption, phrase, "C0032105", drift, occurrence=k, tokens=["plasma"])
            for phrase, k, drift in (("Plasma", 0, 0), ("plasma", 0, 4), ("plasma", 1, 10))]
    warnings = SkipLog()
    spans = select_spans(caption, meta, 0.8, {}, warnings, "x")
    assert _offsets(spans) == [_at(caption, "Plasma"), _at(caption, "plasma"), _at(caption, "plasma", 1)]
    assert warnings.counts == {"span_realigned": 2}


def test_drift_of_the_previous_span_centres_the_search():
    # The second "fat" mention lies 4 characters from the first one's given start, the first 12: the drift of
    # the spans before (12) says the first is meant.
    caption = "T1-weighted (a)-(b) image-guided biopsy: fat, fat-suppressed, and later fat."
    meta = [_drifted(caption, "biopsy", "C0005558", 12, tokens=["biopsy"]),
            _drifted(caption, "fat", "C0015677", 12, occurrence=0, tokens=["fat"]),
            _drifted(caption, "fat", "C0015677", 12, occurrence=1, tokens=["fat"])]
    assert abs(meta[1]["start_char"] - _at(caption, "fat", 1)[0]) < abs(meta[1]["start_char"] - _at(caption, "fat")[0])
    spans = select_spans(caption, meta, 0.8, {}, SkipLog(), "x")
    assert _offsets(spans) == [_at(caption, "biopsy"), _at(caption, "fat"), _at(caption, "fat", 1)]


def test_span_past_the_caption_end_is_found_or_dropped():
    caption = "Axial CT: a simple liver cyst."
    found = _drifted(caption, "liver cyst", "C0267813", 8)
    lost = {**_drifted(caption, "cyst", "C0010709", 8), "tokens": ["kidney"], "umls_cui": "C0022646"}
    assert found["end_char"] > len(caption) and lost["end_char"] > len(caption)
    warnings = SkipLog()
    spans = select_spans(caption, [found, lost], 0.8, {}, warnings, "meta.jsonl line 3")
    assert _offsets(spans) == [_at(caption, "liver cyst")]
    assert warnings.counts == {"span_realigned": 1, "span_unresolved": 1}
    assert warnings.examples["span_unresolved"] == [
        f"meta.jsonl line 3: umls_meta_info[1]: tokens 'kidney' not found within {DEFAULT_SPAN_WINDOW} characters "
        "of [33, 37) (caption of 30 characters)"]


def test_offsets_that_hold_their_tokens_are_kept_as_given():
    # "CT" drifts by 10; the second "effusion" is given right, although its start corrected by that drift
    # points at the first one.
    caption = "Non-contrast CT of the chest shows a small effusion; effusion is new."
    meta = [_drifted(caption, "CT", "C0040405", 10), _without_tokens(umls_span(caption, "small", "C0700321", 0.95)),
            umls_span(caption, "effusion", "C0013687", 0.9, occurrence=1)]
    warnings = SkipLog()
    spans = select_spans(caption, meta, 0.8, {}, warnings, "x")
    assert _offsets(spans) == [_at(caption, "CT"), _at(caption, "small"), _at(caption, "effusion", 1)]
    assert warnings.counts == {"span_realigned": 1, "span_unverified": 1}     # no tokens: kept as given, counted
    assert warnings.examples["span_unverified"] == ["x: umls_meta_info[1]: no tokens to check [37, 42) 'small' "
                                                    "against; kept as given"]


def test_case_accents_and_invisible_characters_fold_like_the_tokenizer():
    caption = "Caf\u00e9-au-lait spots\u200b and an Effusi\u00f3n (N\u200a=\u200a4)."
    folded = FoldedCaption(caption)
    assert realign_span(folded, ("cafe", "-", "au", "-", "lait", "spots"), 2, 20) == (0, 18)
    start, end = realign_span(folded, ("eff", "##usion"), 30, 38)
    assert caption[start:end] == "Effusi\u00f3n"
    decomposed = "Cafe\u0301 noir"                          # an accent as its own character stays with its letter
    assert realign_span(FoldedCaption(decomposed), ("cafe",), 1, 4) == (0, 5)


def test_span_window_bounds_the_search(tmp_path):
    caption = "A 62-year-old (65-kg) man, post-op day 3: left-sided pleural effusion."
    meta = [_drifted(caption, "pleural effusion", "C0032227", 12)]
    assert _offsets(select_spans(caption, meta, 0.8, {}, SkipLog(), "x", window=12)) == [_at(caption,
                                                                                              "pleural effusion")]
    warnings = SkipLog()
    assert select_spans(caption, meta, 0.8, {}, warnings, "x", window=11) == []
    assert warnings.counts == {"span_unresolved": 1}

    save_image(tmp_path / "img" / "a.png", smooth_image(7))
    write_jsonl_lines(tmp_path / "meta.jsonl", [medconcept_record(1, caption, meta, "a.png", "5")])
    assert main(["medconcept", str(tmp_path / "meta.jsonl"), str(tmp_path / "data"), "--images",
                 str(tmp_path / "img"), "--span-window", "5", "--quiet"]) == 0
    report = json.loads((tmp_path / "data" / "figures" / "ingest_report.json").read_text())
    assert report["params"]["span_window"] == 5 and report["warnings"]["span_unresolved"]["count"] == 1
    with pytest.raises(IngestError, match="span_window -1 must be"):
        ingest_medconcept(tmp_path / "meta.jsonl", tmp_path / "data2", images=tmp_path / "img", span_window=-1,
                          progress=False)


def test_report_counts_every_span_outcome(tmp_path):
    second = "Lung nodule (arrow) next to a rib-fracture callus; no effusion."
    records = [
        (DRIFT_CAPTION, [_drifted(DRIFT_CAPTION, "pleural effusion", "C0032227", 4),        # realigned
                         _drifted(DRIFT_CAPTION, "lung nodule", "C0034079", 10, tokens=["lung", "mass"]),  # unresolved
                         umls_span(DRIFT_CAPTION, "CT", "C0040405", 0.85),                 # already right
                         _drifted(DRIFT_CAPTION, "renal cyst", "C0022679", 21, similarity=0.5),  # below threshold
                         {**_without_tokens(umls_span(DRIFT_CAPTION, "MRI", "C0024485")), "end_char": 500}]),
        (second, [_drifted(second, "nodule", "C0028259", 2, similarity=0.9),              # realigned, then
                  umls_span(second, "Lung nodule", "C0034079", 0.95),                     # overlaps this one
                  _drifted(second, "effusion", "C0013687", 60, tokens=["eff", "##usion"])]),  # beyond the window
        ("An MRI.", [{**umls_span("An MRI.", "MRI", "C0024485"), "start_char": 30, "end_char": 33,
                      "tokens": ["ct"]}]),                                                # all spans dropped
    ]
    for i in range(len(records)):
        save_image(tmp_path / "img" / f"{i}.png", smooth_image(20 + i))
    write_jsonl_lines(tmp_path / "meta.jsonl", [medconcept_record(i, caption, spans, f"{i}.png", str(40 + i))
                                                for i, (caption, spans) in enumerate(records)])
    summary = ingest_medconcept(tmp_path / "meta.jsonl", tmp_path / "data", images=tmp_path / "img", progress=False)
    assert summary.written == 3                                      # a record whose spans are all dropped stays
    manifest = [json.loads(x) for x in (tmp_path / "data" / "figures" / "manifest.jsonl").read_text().splitlines()]
    assert [_offsets(m["concepts"]) for m in manifest] == [
        [_at(DRIFT_CAPTION, "pleural effusion"), _at(DRIFT_CAPTION, "CT")], [_at(second, "Lung nodule")], []]
    report = json.loads((tmp_path / "data" / "figures" / "ingest_report.json").read_text())
    assert {reason: entry["count"] for reason, entry in report["warnings"].items()} == {
        "span_realigned": 1, "span_unresolved": 3, "below_threshold": 1, "out_of_range_span": 1,
        "overlapping_span": 1}
    assert report["details"]["spans_kept"] == 3 and report["params"]["span_window"] == DEFAULT_SPAN_WINDOW
    assert report["warnings"]["span_realigned"]["examples"] == [
        f"{tmp_path / 'meta.jsonl'} line 1: umls_meta_info[0]: [41, 57) 'ral effusion. (a' moved to [37, 53) "
        "'pleural effusion', where its tokens are"]
    assert report["warnings"]["overlapping_span"]["examples"] == [
        f"{tmp_path / 'meta.jsonl'} line 2: umls_meta_info[0] [5, 11) overlaps umls_meta_info[1] [0, 11); "
        "the latter is kept"]
