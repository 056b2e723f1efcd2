"""ROCO -> data/figures: the release's tab-separated files and their quirks, parts and file-name variants,
and every bad-record case."""

from __future__ import annotations

import json

import pytest
from test_ingest_fixtures import RocoFigure, save_image, smooth_image, write_roco_part

from medvlp.data.ingest import IngestError, ingest_roco


def _manifest(data):
    return [json.loads(x) for x in (data / "figures" / "manifest.jsonl").read_text().splitlines()]


def test_parts_quirks_and_output(tmp_path):
    root = tmp_path / "roco-dataset" / "data"
    write_roco_part(root / "test" / "radiology", [
        RocoFigure("ROCO_00006", "Coronal plain computed tomography image showing multiple large tumor masses.",
                   ["C0040395", "C0011334"], "PMC4840839", "ol-11-05-3298-g02.jpg"),
        RocoFigure("ROCO_00084", "Fetal aortic arch. The solid arrow represents the ascending aorta.", ["C0021153"],
                   "PMC4078144", "10-1055-s-0034-1371751-i130044-5.jpg", leading="  "),   # two spaces
        RocoFigure("ROCO_00031", "CTO of RCA (closure in the 2nd segment)", [], "PMC4252315",
                   "PWKI-10-23517-g001.jpg"),                                           # empty CUI line
    ], revised=True)
    part = write_roco_part(root / "train" / "non-radiology", [
        RocoFigure("ROCO_10001", "Micrograph of a biopsy specimen.", ["C0005558"], "PMC3000001", "gr1.jpg",
                   write_image=False)])
    save_image(part / "images" / "ROCO_10001.jpg", smooth_image(9))           # a mirror's naming
    summary = ingest_roco(tmp_path / "roco-dataset", tmp_path / "data", progress=False)
    assert (summary.read, summary.written, summary.skipped) == (4, 4, 0)
    assert summary.params["parts"] == ["data/test/radiology", "data/train/non-radiology"]
    out = _manifest(tmp_path / "data")
    assert out[0] == {"id": "ROCO_00006", "article_id": "PMC4840839",
                      "caption": "Coronal plain computed tomography image showing multiple large tumor masses.",
                      "image": "images/data/test/radiology/PMC4840839_ol-11-05-3298-g02.jpg",
                      "cuis": ["C0040395", "C0011334"], "source_split": "data/test/radiology"}
    assert out[1]["caption"].startswith("Fetal aortic arch.") and out[1]["cuis"] == ["C0021153"]
    assert out[2]["cuis"] == []
    assert out[3]["image"] == "images/data/train/non-radiology/ROCO_10001.jpg"
    assert (tmp_path / "data" / "figures" / out[0]["image"]).read_bytes() == \
        (root / "test" / "radiology" / "images" / "PMC4840839_ol-11-05-3298-g02.jpg").read_bytes()
    assert "modality" not in out[0] and "concepts" not in out[0]


def _bad_part(part):
    ok = dict(cuis=["C0040395"], pmc="PMC1")
    broken_png = b"\x89PNG\r\n\x1a\nbroken"
    figures = [
        RocoFigure("ROCO_00001", "Axial MRI (coronal view).", image="a.jpg", **ok),
        RocoFigure("ROCO_00002", "Chest radiograph.", image="b.jpg", write_image=False, **ok),   # missing_file
        RocoFigure("ROCO_00003", None, image="c.jpg", **ok),                                       # no caption line
        RocoFigure("ROCO_00004", "   ", image="d.jpg", **ok),                                      # blank caption
        RocoFigure("ROCO_00005", b"Distension digestive avec niveaux hydro-a\xe9riques", image="e.jpg", **ok),
        RocoFigure("ROCO_00001", "Again.", image="f.jpg", **ok),                                   # duplicate id
        RocoFigure("ROCO_00006", "Ultrasound image.", image="g.png", image_bytes=broken_png, **ok),
        RocoFigure("ROCO_00007", "Angiogram.", image="../h.jpg", **ok),
        RocoFigure("ROCO_00008", "CT scan of the thorax.", image="i.jpg", cuis=["C0040405", "bogus"], pmc="PMC2"),
    ]
    write_roco_part(part, figures, extra_links=[b"ROCO_00009\tno url here\tj.jpg", b"not a roco line"])
    return {"missing_file": 1, "empty_caption": 2, "invalid_utf8": 1, "duplicate_id": 1, "unreadable_image": 1,
            "path_escapes_source": 1, "invalid_row": 2}


def test_bad_records_are_skipped_and_counted(tmp_path):
    part = tmp_path / "test" / "radiology"
    expected = _bad_part(part)
    summary = ingest_roco(part, tmp_path / "data", progress=False)
    assert summary.skips.counts == expected
    assert (summary.read, summary.written) == (11, 2)
    assert [m["id"] for m in _manifest(tmp_path / "data")] == ["ROCO_00001", "ROCO_00008"]
    assert _manifest(tmp_path / "data")[1]["cuis"] == ["C0040405"]
    assert summary.warnings.counts == {"invalid_cui": 1, "duplicate_line": 2}    # ROCO_00001 in captions, cuis
    links, captions = part / "dlinks.txt", part / "captions.txt"
    ex = summary.skips.examples
    assert ex["duplicate_id"] == [f"{links} line 6 (ROCO_00001): id 'ROCO_00001' already used on {links} line 1"]
    assert ex["empty_caption"][0] == f"{links} line 3 (ROCO_00003): captions.txt has no line for ROCO_00003"
    assert ex["invalid_utf8"] == [f"{links} line 5 (ROCO_00005): {captions} line 4: not valid UTF-8 at byte 53 "
                                  "of the line"]
    assert "PMC1_b.jpg" in ex["missing_file"][0]
    assert ex["invalid_row"][1] == (f"{links} line 11 (?): expected 'ROCO_<digits><TAB>...', got 'not a roco line'")


@pytest.mark.parametrize("rid,reason", [("ROCO_00002", "missing_file"), ("ROCO_00003", "empty_caption"),
                                        ("ROCO_00005", "invalid_utf8"), ("ROCO_00006", "unreadable_image"),
                                        ("ROCO_00007", "path_escapes_source")])
def test_strict_raises_naming_file_and_line(tmp_path, rid, reason):
    part = tmp_path / "p"
    _bad_part(part)
    lines = (part / "dlinks.txt").read_bytes().splitlines()
    keep = [lines[0]] + [x for x in lines if x.startswith(rid.encode())]
    (part / "dlinks.txt").write_bytes(b"\n".join(keep) + b"\n")
    with pytest.raises(IngestError) as err:
        ingest_roco(part, tmp_path / "data", strict=True, progress=False)
    assert f"{part / 'dlinks.txt'} line 2 ({rid}): " in str(err.value) and f"[{reason}]" in str(err.value)


def test_ambiguous_or_missing_files_are_errors(tmp_path):
    part = write_roco_part(tmp_path / "p", [RocoFigure("ROCO_1", "x", [], "PMC1", "a.jpg")])
    (part / "captions_a.txt").write_text("ROCO_1\t y\n")
    (part / "captions_b.txt").write_text("ROCO_1\t z\n")
    (part / "captions.txt").unlink()
    with pytest.raises(IngestError, match=r"several captions files \['captions_a.txt', 'captions_b.txt'\]"):
        ingest_roco(part, tmp_path / "data", progress=False)
    with pytest.raises(IngestError, match="no ROCO dlinks"):
        ingest_roco(tmp_path / "p" / "images", tmp_path / "data", progress=False)
