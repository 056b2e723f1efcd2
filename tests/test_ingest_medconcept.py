"""MedConcept-23M -> data/figures: spans (threshold, overlaps, out of range), CUI -> concept id, the
written lexicon agreeing with curation's given-span handling, and every bad-record case."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from test_ingest_fixtures import medconcept_record, save_image, smooth_image, umls_span, write_jsonl_lines

from medvlp.curate.concept_extraction import merge_given_mentions
from medvlp.data.ingest import IngestError, ingest_medconcept
from medvlp.data.ingest.medconcept import select_spans
from medvlp.data.ingest.skip_log import SkipLog
from medvlp.lexicon import load_concept_lexicon

# The first record of ConceptCLIP's released sample (pretraining_meta_file_sample.jsonl), its spans as given.
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


def test_select_spans_threshold_overlaps_range_and_mapping():
    caption = "Right pleural effusion and a lung nodule."
    meta = [
        umls_span(caption, "pleural effusion", "C0032227", 0.95),
        umls_span(caption, "effusion", "C0013687", 0.99),           # overlaps; higher similarity wins
        umls_span(caption, "lung nodule", "C0034079", 0.85),
        umls_span(caption, "lung", "C0024109", 0.85),               # overlaps at equal similarity: longer wins
        umls_span(caption, "Right", "C0205090", 0.79),              # below 0.8
        {**umls_span(caption, "nodule", "C0028259", 0.9), "end_char": 99},   # out of range
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
                                {"cui": "C1268767", "start_char": 143, "end_char": 161}]}
    assert SAMPLE_CAPTION[53:67] == "breast implant"
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
