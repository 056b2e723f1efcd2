"""Tests of the synthetic 3D CT corpus generator (medvlp.data.synthetic.ct)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medvlp.data.synthetic import _phantom, _reports
from medvlp.data.synthetic._shapes import erode_xy
from medvlp.data.synthetic.ct import AFFINE, BAD_RECORDS, generate_ct, patient_plan
from medvlp.lexicon import load_anatomy_lexicon

LEX = load_anatomy_lexicon()
LABEL = {a.id: a.label for a in LEX.anatomies}
N = 12


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ct") / "ct"
    return out, generate_ct(out, seed=0, n_studies=N, progress=False)


@pytest.fixture(scope="module")
def records(corpus):
    out, _ = corpus
    manifest = _read_jsonl(out / "manifest.jsonl")
    truth = {t["id"]: t for t in _read_jsonl(out / "ct_truth.jsonl")}
    return manifest[:N], manifest[N:], truth


# --- a reference lexicon matcher and sentence splitter written from the text conventions ---------

_FORMS = sorted(
    [(f, a.id) for a in LEX.anatomies for f in a.surface_forms]
    + [(f, x.anatomy) for x in LEX.abnormalities for f in x.surface_forms],
    key=lambda t: -len(t[0]),
)
_FORM_RE = re.compile(r"\b(" + "|".join(re.escape(f) for f, _ in _FORMS) + r")\b", re.IGNORECASE)
_FORM_ANATOMY = {f.lower(): a for f, a in _FORMS}


def mentioned(text: str) -> list[str]:
    return sorted({_FORM_ANATOMY[m.group(1).lower()] for m in _FORM_RE.finditer(text)})


def split_sentences(text: str) -> list[str]:
    text = re.sub(r"(^|(?<=\. ))\d+\. ", "", text)  # numbered-list item markers
    out: list[str] = []
    for piece in re.split(r"(?<=\.)\s+", text.strip()):
        if out and re.search(r"\b(approx|e\.g|i\.e|vs)\.$", out[-1]):
            out[-1] += " " + piece
        else:
            out.append(piece)
    return [s for s in out if s]


# --- tests ---------------------------------------------------------------------------------------

def test_byte_identical_and_summary(corpus, tmp_path):
    out, summary = corpus
    again = generate_ct(tmp_path / "ct", seed=0, n_studies=N, progress=False)
    assert again == summary
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(tmp_path / "ct") for p in (tmp_path / "ct").rglob("*") if p.is_file())
    assert files == files2 and len(files) >= 3 * N
    for f in files:
        assert (out / f).read_bytes() == (tmp_path / "ct" / f).read_bytes(), f
    assert summary["n_studies"] == N and summary["n_records"] == N + 7
    assert [b["defect"] for b in summary["bad_records"]] == [d for _, d in BAD_RECORDS]
    other = generate_ct(tmp_path / "ct1", seed=1, n_studies=2, progress=False)
    first = (out / "volumes/CT00001.nii.gz").read_bytes()
    assert (tmp_path / "ct1/volumes/CT00001.nii.gz").read_bytes() != first
    assert other["n_studies"] == 2


def test_gzip_header_has_no_time_or_name(corpus):
    out, _ = corpus
    raw = (out / "volumes/CT00001.nii.gz").read_bytes()
    assert raw[:4] == b"\x1f\x8b\x08\x00"  # no FNAME flag
    assert raw[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert raw[9] == 255
    assert len(gzip.decompress(raw)) == 352 + 64 * 64 * 40 * 2


def test_volumes_load_with_right_geometry_and_hu(corpus, records):
    out, _ = corpus
    good, _, truth = records
    for rec in good:
        img = nib.load(out / rec["volume"])
        seg_img = nib.load(out / rec["segmentation"])
        assert img.shape == (64, 64, 40) and seg_img.shape == (64, 64, 40)
        np.testing.assert_allclose(img.affine, AFFINE)
        np.testing.assert_allclose(np.diag(img.affine)[:3], [6.0, 6.0, 8.0])
        assert np.allclose(img.affine[:3, 3], [-189.0, -189.0, -156.0])
        assert img.get_data_dtype() == np.int16 and seg_img.get_data_dtype() == np.uint8
        hdr = img.header
        assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 1
        assert hdr.get_xyzt_units() == ("mm", "sec")
        with gzip.open(out / rec["volume"]) as fh:
            raw_hdr = nib.Nifti1Header.from_fileobj(fh)
        assert float(raw_hdr["scl_slope"]) == 1.0 and float(raw_hdr["scl_inter"]) == 0.0
        assert img.dataobj.slope == 1.0 and img.dataobj.inter == 0.0
        vol = np.asarray(img.dataobj)
        seg = np.asarray(seg_img.dataobj)
        assert vol.dtype == np.int16 and seg.dtype == np.uint8
        assert vol.min() >= -1024 and vol.max() <= 3071
        assert abs(float(np.median(vol[:2, :2, :])) + 1000) <= 15  # air in the corner
        # medians over the label eroded in-plane (edge voxels mix with fat: partial volume)
        med = {a: float(np.median(vol[erode_xy(seg == lab)])) for a, lab in LABEL.items()}
        assert -900 < med["lung"] < -750
        assert 35 < med["liver"] < 90 or "fatty_liver" in truth[rec["id"]]["labels"]["liver"]
        assert 30 < med["spleen"] < 70 and 15 < med["kidney"] < 55 and 20 < med["aorta"] < 60
        assert vol.max() >= 400  # bone


def test_segmentation_holds_exactly_the_anatomy_labels(corpus, records):
    out, _, = corpus
    good, _, truth = records
    for rec in good:
        seg = np.asarray(nib.load(out / rec["segmentation"]).dataobj)
        assert set(np.unique(seg).tolist()) == {0, *LABEL.values()}
        touching = _phantom.touching_labels(seg)
        assert truth[rec["id"]]["border_touching"] == [a for a, lab in LABEL.items() if lab in touching]


def test_manifest_and_truth_records(records):
    good, bad, truth = records
    assert [r["id"] for r in good] == [f"CT{i + 1:05d}" for i in range(N)]
    assert set(truth) == {r["id"] for r in good}
    for rec in good:
        assert set(rec) == {"id", "patient_id", "volume", "segmentation", "findings", "impression"}
        assert re.fullmatch(r"P\d{5}", rec["patient_id"])
        t = truth[rec["id"]]
        assert set(t) == {"id", "labels", "sentences", "lesion_mask", "lesions", "border_touching"}
        assert sorted(t["labels"]) == sorted(a.id for a in LEX.anatomies)
        for anatomy, abns in t["labels"].items():
            assert abns == sorted(abns) and len(abns) <= 2
            assert all(x.anatomy == anatomy for x in LEX.abnormalities if x.id in abns)
    patients = [r["patient_id"] for r in good]
    assert max(patients.count(p) for p in set(patients)) <= 2


def test_reports_agree_with_truth(records):
    good, _, truth = records
    forms = {x.id: [f.lower() for f in x.surface_forms] for x in LEX.abnormalities}
    for rec in good:
        t = truth[rec["id"]]
        findings, impression = rec["findings"], rec["impression"]
        assert findings and impression
        for section, text in (("findings", findings), ("impression", impression)):
            sents = [s for s in t["sentences"] if s["section"] == section]
            assert [s["text"] for s in sents] == split_sentences(text)
            for s in sents:
                assert s["text"] in text and s["text"] == s["text"].strip() and s["text"].endswith(".")
                assert s["anatomies"] == mentioned(s["text"]), s["text"]
        abnormal = {a for a, v in t["labels"].items() if v}
        assert set(mentioned(impression)) == abnormal
        for anatomy in abnormal:
            assert any(anatomy in s["anatomies"] for s in t["sentences"] if s["section"] == "findings")
            for ab in t["labels"][anatomy]:
                assert any(f in findings.lower() for f in forms[ab]), (ab, findings)
                assert any(f in impression.lower() for f in forms[ab]), (ab, impression)
        if not abnormal:
            assert all(s["anatomies"] == [] for s in t["sentences"] if s["section"] == "impression")


def _stub_facts(rng: np.random.Generator) -> dict[str, dict]:
    return {
        "lung_nodule": {"side": "left", "lobe": "upper", "size_mm": int(rng.integers(6, 25))},
        "pleural_effusion": {"side": "bilateral", "amount": "small"},
        "emphysema": {"degree": "mild"}, "consolidation": {"side": "right", "lobe": "middle"},
        "cardiomegaly": {"degree": "moderate"},
        "pericardial_effusion": {"amount": "small", "thickness_cm": 1.1},
        "aortic_calcification": {"degree": "scattered", "location": "abdominal"},
        "aortic_aneurysm": {"diameter_cm": 4.8, "location": "thoracic"},
        "hiatal_hernia": {"size_cm": 4.4, "amount": "small"}, "liver_cyst": {"size_mm": 18, "segment": "4"},
        "fatty_liver": {"degree": "mild"}, "gallstone": {"size_mm": 8}, "splenomegaly": {"length_cm": 11.2},
        "pancreatic_atrophy": {"degree": "diffuse"},
        "renal_cyst": {"side": "left", "size_mm": 11, "pole": "upper pole"},
        "kidney_stone": {"side": "right", "size_mm": 8},
        "gastric_wall_thickening": {"thickness_cm": 1.6, "location": "antrum"},
    }


def test_report_writer_follows_conventions_over_many_draws():
    rng = np.random.default_rng(123)
    n_numbered = n_pairs = n_neutral = 0
    for _ in range(1500):
        labels = _phantom.draw_labels(rng, LEX)
        rep = _reports.write_report(rng, labels, _stub_facts(rng), LEX)
        for section, text in (("findings", rep.findings), ("impression", rep.impression)):
            sents = [s["text"] for s in rep.sentences if s["section"] == section]
            assert sents == split_sentences(text), text
        for s in rep.sentences:
            assert s["anatomies"] == mentioned(s["text"]), s["text"]
            assert "  " not in s["text"]
        abnormal = {a for a, v in labels.items() if v}
        imp = [s for s in rep.sentences if s["section"] == "impression"]
        assert {a for s in imp for a in s["anatomies"]} == abnormal
        assert all(len(s["anatomies"]) <= 1 for s in imp)
        assert sum(len(s["anatomies"]) == 1 for s in imp) == len(abnormal)
        n_numbered += rep.impression.startswith("1. ")
        n_pairs += any(len(s["anatomies"]) == 2 for s in rep.sentences)
        n_neutral += any(s["anatomies"] == [] for s in rep.sentences if s["section"] == "findings")
    assert n_numbered > 100 and n_pairs > 100 and n_neutral > 200


def test_templates_use_lexicon_surface_forms():
    abn = {x.id: set(x.surface_forms) for x in LEX.abnormalities}
    assert set(_reports.TEMPLATES) == set(abn)
    for ab, kinds in _reports.TEMPLATES.items():
        for entries in kinds.values():
            for template, forms in entries:
                assert "{a}" in template and set(forms) <= abn[ab], (ab, forms)
    anatomy_forms = {f for a in LEX.anatomies for f in a.surface_forms}
    assert set(_reports.PAIR_NOUN.values()) <= anatomy_forms


def test_prevalence_and_normal_fraction():
    rng = np.random.default_rng(7)
    draws = [_phantom.draw_labels(rng, LEX) for _ in range(4000)]
    normal = np.mean([not any(d.values()) for d in draws])
    assert 0.18 < normal < 0.32
    for x in LEX.abnormalities:
        prev = np.mean([x.id in d[x.anatomy] for d in draws])
        assert 0.08 < prev < 0.25, (x.id, prev)
    assert max(len(v) for d in draws for v in d.values()) == 2


def test_lesion_masks_lie_in_their_anatomy(corpus, records):
    out, _ = corpus
    good, _, truth = records
    n_masks = 0
    for rec in good:
        t = truth[rec["id"]]
        if not t["lesions"]:
            assert t["lesion_mask"] is None
            continue
        n_masks += 1
        les = np.asarray(nib.load(out / t["lesion_mask"]).dataobj)
        seg = np.asarray(nib.load(out / rec["segmentation"]).dataobj)
        assert les.dtype == np.uint8 and les.shape == seg.shape
        assert set(np.unique(les).tolist()) == set(range(len(t["lesions"]) + 1))
        for i, lesion in enumerate(t["lesions"], start=1):
            assert lesion["abnormality"] in t["labels"][lesion["anatomy"]]
            m = les == i
            assert np.all(seg[m] == LABEL[lesion["anatomy"]])
            n_slices = int(m.any(axis=(0, 1)).sum())
            if lesion["abnormality"] == "lung_nodule":
                assert 1 <= n_slices <= 3
            if lesion["abnormality"] == "kidney_stone":
                assert 1 <= n_slices <= 2
        diffuse = {x["abnormality"] for x in t["lesions"]} & _phantom.DIFFUSE
        assert not diffuse
    assert n_masks >= N // 3


def test_focal_lesion_signatures():
    """Render studies with chosen abnormalities and check their HU signature."""
    lung = {"lung": ["lung_nodule", "pleural_effusion"], "kidney": ["kidney_stone"], "liver": ["fatty_liver"],
            "gallbladder": ["gallstone"], "spleen": ["splenomegaly"]}
    orig = _phantom.draw_labels
    try:
        _phantom.draw_labels = lambda rng, lex: {a.id: lung.get(a.id, []) for a in lex.anatomies}
        rng = np.random.default_rng(5)
        study = _phantom.render_study(rng, _phantom.sample_patient(rng), LEX)
    finally:
        _phantom.draw_labels = orig
    by_abn = {x["abnormality"]: i + 1 for i, x in enumerate(study.lesions)}
    assert set(by_abn) == {"lung_nodule", "pleural_effusion", "kidney_stone", "gallstone"}
    vol, les, seg = study.volume.astype(float), study.lesion_mask, study.segmentation
    assert vol[les == by_abn["lung_nodule"]].max() > -500  # dense focus in aerated lung
    assert abs(np.median(vol[les == by_abn["pleural_effusion"]]) - 12) < 40
    assert vol[les == by_abn["kidney_stone"]].max() > 500
    assert vol[les == by_abn["gallstone"]].max() > 150
    assert np.median(vol[seg == LABEL["liver"]]) < 20  # fatty liver
    assert (seg == LABEL["spleen"]).sum() > 2.0 * 28 * 42 * 36 * 4.19 / (6 * 6 * 8)  # enlarged spleen


def _render(rng: np.random.Generator) -> _phantom.Study:
    return _phantom.render_study(rng, _phantom.sample_patient(rng), LEX)


def test_truncated_field_of_view_touches_border():
    orig = _phantom.P_TRUNCATED_FOV
    try:
        _phantom.P_TRUNCATED_FOV = 1.0
        rng = np.random.default_rng(11)
        touched = [_render(rng).border_touching for _ in range(6)]
        _phantom.P_TRUNCATED_FOV = 0.0
        clean = [_render(rng).border_touching for _ in range(12)]
    finally:
        _phantom.P_TRUNCATED_FOV = orig
    assert all(t and set(t) <= {"lung", "kidney", "aorta", "liver", "gallbladder"} for t in touched)
    assert all(c == [] for c in clean)


def test_bad_records_have_their_defects(corpus, records):
    out, _ = corpus
    good, bad, truth = records
    assert [(r["id"]) for r in bad] == [rid for rid, _ in BAD_RECORDS]
    assert not set(truth) & {r["id"] for r in bad if r["id"].startswith("CTX")}
    by_defect = {d: r for (_, d), r in zip(BAD_RECORDS, bad)}
    assert not (out / by_defect["missing_volume"]["volume"]).exists()
    trunc = out / by_defect["truncated_volume"]["volume"]
    assert trunc.stat().st_size == 200
    with pytest.raises(nib.filebasedimages.ImageFileError):
        np.asarray(nib.load(trunc).dataobj)
    nan = np.asarray(nib.load(out / by_defect["non_finite_volume"]["volume"]).dataobj)
    assert nan.dtype == np.float32 and np.isnan(nan).any() and np.isinf(nan).any()
    seg = nib.load(out / by_defect["segmentation_shape_mismatch"]["segmentation"])
    vol = nib.load(out / by_defect["segmentation_shape_mismatch"]["volume"])
    assert seg.shape == (64, 64, 32) and vol.shape == (64, 64, 40)
    assert by_defect["empty_report"]["findings"] == "" and by_defect["empty_report"]["impression"] == ""
    assert by_defect["path_outside_corpus"]["volume"] == "../outside.nii.gz"
    assert not (out.parent / "outside.nii.gz").exists()
    dup = by_defect["duplicate_id"]
    assert dup["id"] == good[0]["id"] and (out / dup["volume"]).exists()
    assert nib.load(out / dup["volume"]).shape == (64, 64, 40)


def test_patient_plan_is_prefix_stable():
    a, b = patient_plan(0, 50), patient_plan(0, 200)
    assert a == b[:50]
    counts = np.bincount(b)
    assert set(counts.tolist()) <= {1, 2} and (counts == 2).sum() > 20
    assert b == sorted(b)
