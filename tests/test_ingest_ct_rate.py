"""CT-RATE -> data/ct: HU and geometry from the metadata table, TotalSegmentator -> anatomy labels, truth
from the 18 labels, the CT-RATE anatomy lexicon, and every bad-record case (skipped and counted, or
strict: raised naming file and line)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from test_ingest_fixtures import SHAPE, TS, CtStudy, class_map, set_label_cell, stored_values, write_ct_rate

from medvlp.data.ingest import IngestError, ingest_ct_rate
from medvlp.data.ingest.ct_rate import air_level
from medvlp.data.ingest.ct_rate_tables import parse_metadata
from medvlp.data.io import read_label_map, read_volume
from medvlp.lexicon import load_anatomy_lexicon

LEX = load_anatomy_lexicon()
LABEL = {a.id: a.label for a in LEX.anatomies}


def _ingest(tmp_path, studies, **kw):
    dataset, segs = write_ct_rate(tmp_path / "src", studies)
    summary = ingest_ct_rate(dataset, tmp_path / "data", segmentations=segs, progress=False, **kw)
    return summary, tmp_path / "data" / "ct", dataset


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _expected_affine(orientation, spacing, position):
    """DICOM geometry by its definition: LPS columns row * sx, col * sy, (row x col) * sz; origin IPP."""
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * spacing[0], col * spacing[1], np.cross(row, col) * spacing[2]
    lps[:3, 3] = position
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_hu_and_geometry_come_from_the_metadata(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    oblique = (c, s, 0.0, -s, c, 0.0)
    studies = [CtStudy("train_1_a_1.nii.gz", slope=0.5, intercept=-1000.0, xy="[0.7, 0.9]", z="2.0",
                       orientation=oblique, position=(-20.0, 15.5, -100.0), seed=3),
               CtStudy("train_2_a_1.nii.gz", seed=4)]
    summary, ct, _ = _ingest(tmp_path, studies)
    assert (summary.read, summary.written, summary.skipped) == (2, 2, 0)

    img = nib.load(ct / "volumes" / "train_1" / "train_1_a_1.nii.gz")
    expected = _expected_affine(oblique, (0.7, 0.9, 2.0), (-20.0, 15.5, -100.0))
    np.testing.assert_allclose(img.affine, expected, atol=1e-5)
    # Voxel (0, 0, 0) sits at ImagePositionPatient (LPS -> RAS).
    np.testing.assert_allclose(img.affine @ [0, 0, 0, 1], [20.0, -15.5, -100.0, 1.0], atol=1e-5)
    hu = np.asanyarray(img.dataobj)
    assert hu.dtype == np.int16 and hu.shape == SHAPE
    np.testing.assert_array_equal(hu, stored_values(studies[0]) * 0.5 - 1000.0)
    assert hu.min() == -1000 and hu.max() == 43                    # air and the organ box (40 + seed)
    vol = read_volume(ct / "volumes" / "train_1" / "train_1_a_1.nii.gz")
    np.testing.assert_allclose(vol.spacing, [0.7, 0.9, 2.0], atol=1e-5)

    # Axial default study: XYSpacing "[0.75, 0.75]", IOP [1,0,0,0,1,0], raw file affine was the identity.
    img2 = nib.load(ct / "volumes" / "train_2" / "train_2_a_1.nii.gz")
    np.testing.assert_allclose(img2.affine, np.diag([-0.75, -0.75, 1.5, 1.0]) + np.array(
        [[0, 0, 0, 9.0], [0, 0, 0, 7.5], [0, 0, 0, -40.0], [0, 0, 0, 0]]), atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(img2.dataobj), stored_values(studies[1]) - 1024)

    # The segmentation: same grid and affine, TotalSegmentator v2 classes -> anatomy labels.
    seg = nib.load(ct / "segmentations" / "train_1" / "train_1_a_1.nii.gz")
    np.testing.assert_allclose(seg.affine, img.affine, atol=1e-6)
    labels, ts = np.asanyarray(seg.dataobj), class_map()
    assert labels.dtype == np.uint8
    for name, anatomy in [("heart", "heart"), ("aorta", "aorta"), ("esophagus", "esophagus"), ("liver", "liver"),
                          ("spleen", "spleen"), ("lung_upper_lobe_left", "lung"), ("lung_lower_lobe_right", "lung")]:
        assert set(np.unique(labels[ts == TS[name]])) == {LABEL[anatomy]}, name
    assert set(np.unique(labels[np.isin(ts, [TS["trachea"], TS["rib_left_1"], 0])])) == {0}
    assert read_label_map(ct / "segmentations" / "train_1" / "train_1_a_1.nii.gz").shape == vol.array.shape


def test_manifest_truth_and_lexicon(tmp_path):
    studies = [CtStudy("train_12_a_1.nii.gz", positives=("Cardiomegaly", "Lung nodule", "Medical material")),
               CtStudy("train_12_a_2.nii.gz", positives=()),
               CtStudy("train_3_b_1.nii.gz", findings="", impression="Hiatal hernia.", positives=("Hiatal hernia",))]
    summary, ct, _ = _ingest(tmp_path, studies)
    manifest = _jsonl(ct / "manifest.jsonl")
    assert manifest[0] == {"id": "train_12_a_1", "patient_id": "train_12",
                           "volume": "volumes/train_12/train_12_a_1.nii.gz",
                           "segmentation": "segmentations/train_12/train_12_a_1.nii.gz",
                           "findings": "The heart is enlarged. Lungs are clear.", "impression": "Cardiomegaly.",
                           "clinical_information": "Not given.", "technique": "Non-contrast axial images, 1.5 mm."}
    assert [m["patient_id"] for m in manifest] == ["train_12", "train_12", "train_3"]
    assert manifest[2]["findings"] == "" and manifest[2]["impression"] == "Hiatal hernia."

    truth = _jsonl(ct / "ct_truth.jsonl")
    assert truth[0] == {"id": "train_12_a_1", "labels": {"lung": ["lung_nodule"], "heart": ["cardiomegaly"],
                                                         "aorta": [], "esophagus": []},
                        "study_labels": ["medical_material"], "unknown_labels": [], "lesion_mask": None, "lesions": [],
                        "border_touching": ["lung"]}
    assert truth[1]["labels"] == {"lung": [], "heart": [], "aorta": [], "esophagus": []}
    assert truth[2]["labels"]["esophagus"] == ["hiatal_hernia"]
    assert summary.details["positive_labels"]["cardiomegaly"] == 1
    assert summary.details["studies_with_truth"] == 3

    lexicon = load_anatomy_lexicon(str(ct / "anatomy_ct_rate.json"))
    assert [(a.id, a.label) for a in lexicon.anatomies] == [(a.id, a.label) for a in LEX.anatomies]
    assert len(lexicon.abnormalities) == 16
    by_id = {x.id: x.anatomy for x in lexicon.abnormalities}
    assert by_id["cardiomegaly"] == "heart" and by_id["hiatal_hernia"] == "esophagus"
    assert by_id["arterial_wall_calcification"] == "aorta" and by_id["interlobular_septal_thickening"] == "lung"
    raw = json.loads((ct / "anatomy_ct_rate.json").read_text())
    assert [x["id"] for x in raw["study_abnormalities"]] == ["medical_material", "lymphadenopathy"]
    report = json.loads((ct / "ingest_report.json").read_text())
    assert report["read"] == report["written"] + report["skipped"] == 3


def test_a_label_that_is_not_0_or_1_is_unknown_for_that_study_only(tmp_path):
    dataset, segs = write_ct_rate(tmp_path / "src", [CtStudy("train_1_a_1.nii.gz", positives=("Cardiomegaly",)),
                                                     CtStudy("train_2_a_1.nii.gz", positives=())])
    set_label_cell(dataset, "train", "train_1_a_1.nii.gz", "Emphysema", "-1")
    set_label_cell(dataset, "train", "train_1_a_1.nii.gz", "Hiatal hernia", "")
    summary = ingest_ct_rate(dataset, tmp_path / "data", segmentations=segs, progress=False)
    truth = _jsonl(tmp_path / "data" / "ct" / "ct_truth.jsonl")
    assert [t["id"] for t in truth] == ["train_1_a_1", "train_2_a_1"]          # known labels kept
    assert truth[0]["unknown_labels"] == ["hiatal_hernia", "emphysema"]         # table column order
    assert truth[0]["labels"]["heart"] == ["cardiomegaly"] and truth[0]["labels"]["lung"] == []
    assert truth[1]["unknown_labels"] == []
    assert summary.warnings.counts == {"unknown_label": 2}
    assert "Emphysema is '-1', not 0 or 1; emphysema is unknown for train_1_a_1" in \
        summary.warnings.examples["unknown_label"][1]
    assert summary.details["unknown_labels"]["emphysema"] == 1 and summary.details["positive_labels"][
        "emphysema"] == 0


def test_totalsegmentator_mask_folder_equals_multilabel_file(tmp_path):
    _, ct_file, _ = _ingest(tmp_path / "a", [CtStudy("train_1_a_1.nii.gz")])
    _, ct_dir, _ = _ingest(tmp_path / "b", [CtStudy("train_1_a_1.nii.gz", segmentation="folder")])
    rel = "segmentations/train_1/train_1_a_1.nii.gz"
    np.testing.assert_array_equal(nib.load(ct_file / rel).get_fdata(), nib.load(ct_dir / rel).get_fdata())


def test_fixed_volumes_keep_their_values_and_affine(tmp_path):
    dataset, segs = write_ct_rate(tmp_path / "src", [CtStudy("train_1_a_1.nii.gz"), CtStudy("train_2_a_1.nii.gz")])
    fixed = dataset / "train_fixed"
    affine = np.diag([-0.75, -0.75, 1.5, 1.0])
    for name, spacing in (("train_1_a_1", 0.75), ("train_2_a_1", 0.8)):
        path = fixed / name[:7] / name[:9] / f"{name}.nii.gz"
        path.parent.mkdir(parents=True)
        aff = affine.copy()
        aff[0, 0] = aff[1, 1] = -spacing
        nib.save(nib.Nifti1Image((stored_values(CtStudy(name)) - 1024).astype(np.int16), aff), path)
        nib.save(nib.Nifti1Image(class_map(), aff), segs / f"{name}.nii.gz")
    summary = ingest_ct_rate(dataset, tmp_path / "data", segmentations=segs, volumes_fixed=True, progress=False)
    assert summary.written == 1 and summary.skips.counts == {"geometry_mismatch": 1}
    assert "spacing [0.8, 0.8, 1.5] mm; metadata says [0.75, 0.75, 1.5]" in summary.skips.examples[
        "geometry_mismatch"][0]
    img = nib.load(tmp_path / "data" / "ct" / "volumes" / "train_1" / "train_1_a_1.nii.gz")
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), stored_values(CtStudy("train_1_a_1.nii.gz")) - 1024)


def _raw_row(name: str, tail: str = "Not given.,CT,Findings here.,Impression here.") -> str:
    return f"{name},{tail}"


# (study, reason it is skipped for, or None when it is kept)
BAD = [
    (CtStudy("train_1_a_1.nii.gz"), None),
    (CtStudy("train_2_a_1.nii.gz", volume="missing"), "missing_file"),
    (CtStudy("train_3_a_1.nii.gz", findings="", impression="nan"), "empty_report"),
    (CtStudy("train_4_a_1.nii.gz", report_row=b"train_4_a_1.nii.gz,Not given.,CT,\"Caf\xe9 finding.\",Fine."),
     "invalid_utf8"),
    (CtStudy("train_5_a_1.nii.gz", z="nan"), "nonfinite_value"),
    (CtStudy("train_6_a_1.nii.gz", xy="[0.75]"), "invalid_metadata"),
    (CtStudy("train_7_a_1.nii.gz", metadata=False), "missing_metadata"),
    (CtStudy("train_1_a_1.nii.gz", metadata=False, labels=None), "duplicate_id"),
    (CtStudy("x", volume="missing", segmentation="missing", metadata=False, labels=None,
             report_row=_raw_row("../train_8_a_1.nii.gz")), "path_escapes_source"),
    (CtStudy("y", volume="missing", segmentation="missing", metadata=False, labels=None,
             report_row=_raw_row("scan42.nii.gz")), "invalid_field"),
    (CtStudy("train_9_a_1.nii.gz", segmentation="missing"), "missing_segmentation"),
    (CtStudy("train_10_a_1.nii.gz", segmentation="shape"), "geometry_mismatch"),
    (CtStudy("train_11_a_1.nii.gz", rows_cols_slices=(20, 24, 13)), "geometry_mismatch"),
    (CtStudy("train_12_a_1.nii.gz", volume="truncated"), "unreadable_volume"),
    (CtStudy("train_13_a_1.nii.gz", volume="nan"), "nonfinite_voxels"),
    (CtStudy("train_14_a_1.nii.gz", segmentation="garbage"), "unreadable_segmentation"),
    (CtStudy("z", volume="missing", segmentation="missing", metadata=False, labels=None,
             report_row="train_17_a_1.nii.gz,Not given.,CT"), "invalid_row"),
    (CtStudy("train_15_a_1.nii.gz", labels=None), None),       # kept; no truth (missing_labels warning)
    (CtStudy("train_16_a_1.nii.gz", labels="nan"), None),      # kept; no truth (invalid_labels warning)
]


def test_bad_records_are_skipped_and_counted(tmp_path):
    summary, ct, dataset = _ingest(tmp_path, [s for s, _ in BAD])
    expected: dict[str, int] = {}
    for _, reason in BAD:
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
    assert summary.skips.counts == expected
    assert summary.read == len(BAD) and summary.written == 3 and summary.read == summary.written + summary.skipped
    assert [m["id"] for m in _jsonl(ct / "manifest.jsonl")] == ["train_1_a_1", "train_15_a_1", "train_16_a_1"]
    assert [t["id"] for t in _jsonl(ct / "ct_truth.jsonl")] == ["train_1_a_1"]
    assert summary.warnings.counts == {"missing_labels": 1, "invalid_labels": 1}

    reports = dataset / "radiology_text_reports" / "train_reports.csv"
    ex = summary.skips.examples
    assert ex["missing_file"] == [f"{reports} line 3 (train_2_a_1.nii.gz): volume train_2_a_1.nii.gz not found "
                                  f"under {str(dataset / 'train')!r} (looked for train_2/train_2_a/train_2_a_1.nii.gz "
                                  "and train_2_a_1.nii.gz)"]
    assert ex["duplicate_id"] == [f"{reports} line 9 (train_1_a_1.nii.gz): train_1_a_1.nii.gz already on "
                                  "train_reports.csv line 2"]
    assert ex["nonfinite_value"][0].endswith("train_metadata.csv line 6: ZSpacing 'nan' is not finite")
    assert "line 5 (train_4_a_1.nii.gz): holds bytes that are not valid UTF-8" in ex["invalid_utf8"][0]
    assert "'../train_8_a_1.nii.gz' leaves the source folder" in ex["path_escapes_source"][0]
    assert "segmentation train_10_a_1.nii.gz has shape (24, 20, 11), volume train_10_a_1.nii.gz has (24, 20, 12)" \
        in ex["geometry_mismatch"][0]
    assert "metadata Columns x Rows x NumberofSlices is (24, 20, 13)" in ex["geometry_mismatch"][1]
    assert "has 3 fields, the header has 5" in ex["invalid_row"][0]
    report = json.loads((ct / "ingest_report.json").read_text())
    assert report["skips"]["empty_report"]["count"] == 1 and report["warnings"]["invalid_labels"]["count"] == 1


@pytest.mark.parametrize("index", [i for i, (_, reason) in enumerate(BAD) if reason and reason != "duplicate_id"])
def test_strict_raises_at_the_first_bad_record_naming_file_and_line(tmp_path, index):
    bad, reason = BAD[index]
    dataset, segs = write_ct_rate(tmp_path / "src", [BAD[0][0], bad])
    with pytest.raises(IngestError) as err:
        ingest_ct_rate(dataset, tmp_path / "data", segmentations=segs, strict=True, progress=False)
    message = str(err.value)
    assert f"{dataset / 'radiology_text_reports' / 'train_reports.csv'} line 3 " in message
    assert f"[{reason}]" in message and "without --strict" in message


def test_strict_accepts_label_warnings_and_duplicates_fail(tmp_path):
    summary, _, _ = _ingest(tmp_path / "a", [CtStudy("train_1_a_1.nii.gz", labels=None)], strict=True)
    assert summary.written == 1 and summary.warnings.counts == {"missing_labels": 1}
    dataset, segs = write_ct_rate(tmp_path / "b", [BAD[0][0], BAD[7][0]])
    with pytest.raises(IngestError, match=r"train_reports.csv line 3 .*\[duplicate_id\]"):
        ingest_ct_rate(dataset, tmp_path / "b" / "data", segmentations=segs, strict=True, progress=False)


def test_whole_table_problems_are_errors(tmp_path):
    dataset, segs = write_ct_rate(tmp_path / "src", [CtStudy("train_1_a_1.nii.gz")])
    meta = dataset / "metadata" / "train_metadata.csv"
    meta.write_text(meta.read_text().replace("ZSpacing", "SliceGap"))
    with pytest.raises(IngestError, match=r"train_metadata.csv'.*missing column\(s\) \['ZSpacing'\]"):
        ingest_ct_rate(dataset, tmp_path / "data", segmentations=segs, progress=False)
    with pytest.raises(IngestError, match="no CT-RATE reports table"):
        ingest_ct_rate(tmp_path, tmp_path / "data2", segmentations=segs, progress=False)
    with pytest.raises(IngestError, match="segmentation folder"):
        ingest_ct_rate(dataset, tmp_path / "data3", segmentations=tmp_path / "nowhere", progress=False)


def test_output_folder_is_not_overwritten_silently(tmp_path):
    dataset, segs = write_ct_rate(tmp_path / "src", [CtStudy("train_1_a_1.nii.gz")])
    ingest_ct_rate(dataset, tmp_path / "data", segmentations=segs, progress=False)
    (tmp_path / "data" / "ct" / "stale.txt").write_text("old")
    with pytest.raises(IngestError, match="--overwrite"):
        ingest_ct_rate(dataset, tmp_path / "data", segmentations=segs, progress=False)
    ingest_ct_rate(dataset, tmp_path / "data", segmentations=segs, overwrite=True, progress=False)
    assert not (tmp_path / "data" / "ct" / "stale.txt").exists()


def test_metadata_parsing_of_real_cell_forms():
    row = {"RescaleSlope": "1.0", "RescaleIntercept": "-1024.0", "XYSpacing": "[0.7421875, 0.7421875]",
           "ZSpacing": "1.5", "ImageOrientationPatient": "[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]",
           "ImagePositionPatient": "[-190.0, -189.2578125, -311.5]", "Rows": "512", "Columns": "512",
           "NumberofSlices": "303"}
    g = parse_metadata(row)
    assert g.spacing == (0.7421875, 0.7421875, 1.5) and g.intercept == -1024.0 and g.shape == (512, 512, 303)
    assert g.position == (-190.0, -189.2578125, -311.5)
    assert parse_metadata({**row, "ImageOrientationPatient": "", "ImagePositionPatient": "nan"}).orientation is None


# ------------------------------------------------------------------ HU already applied (the *_fixed release) or not

FIXED_AFFINE = np.diag([-0.75, -0.75, 1.5, 1.0])          # the default study's spacing, as the fixed files carry it


def _outside_field_of_view() -> np.ndarray:
    """Voxels outside the circle inscribed in each slice, where scanners write their padding value."""
    x, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    outside = (x - (SHAPE[0] - 1) / 2) ** 2 + (y - (SHAPE[1] - 1) / 2) ** 2 > (min(SHAPE[:2]) / 2) ** 2
    return np.repeat(outside[:, :, None], SHAPE[2], axis=2)


def _raw_volume(study: CtStudy, dtype, padding: int | None) -> np.ndarray:
    """The raw release's form: stored values (air 24 with the usual intercept -1024), optionally padded."""
    stored = stored_values(study).astype(np.int32)
    if padding is not None:
        stored[_outside_field_of_view()] = padding
    return stored.astype(dtype)


def _fixed_volume(study: CtStudy, padding: int | None) -> np.ndarray:
    """The *_fixed release's form: int16 HU (air -1000), optionally padded (clipped air -1024, or -3024)."""
    hu = np.round(stored_values(study) * study.slope + study.intercept).astype(np.int16)
    if padding is not None:
        hu[_outside_field_of_view()] = padding
    return hu


def _place(dataset, segs, study: CtStudy, values: np.ndarray, fixed_folder: bool) -> None:
    """Put ``values`` where the study's volume is read from (``train/`` or ``train_fixed/``)."""
    path = dataset / ("train_fixed" if fixed_folder else "train") / study.nested()
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = FIXED_AFFINE if fixed_folder else np.eye(4)
    nib.save(nib.Nifti1Image(values, affine), path)
    nib.save(nib.Nifti1Image(class_map(), affine), segs / study.name)


RAW_FORMS = {"int16": (np.int16, None), "uint16 padded 0": (np.uint16, 0),
             "int16 padded -976 (-2000 HU)": (np.int16, -976)}
FIXED_FORMS = {"int16": None, "int16 padded -1024": -1024, "int16 padded -3024": -3024}


def test_air_level_leaves_the_padding_out():
    study = CtStudy("train_1_a_1.nii.gz")
    assert air_level(_raw_volume(study, np.uint16, 0)) == 24                 # air as a stored value
    assert air_level(_raw_volume(study, np.int16, -976)) == 24
    assert air_level(_fixed_volume(study, -3024)) == -1000                   # air in HU
    assert -900 <= air_level(_fixed_volume(study, None)) < -700              # air is the minimum: lung
    assert air_level(np.full(SHAPE, -1024.0)) is None


@pytest.mark.parametrize("form", RAW_FORMS)
def test_raw_volumes_are_rescaled(tmp_path, form):
    study = CtStudy("train_1_a_1.nii.gz")
    dataset, segs = write_ct_rate(tmp_path / "src", [study])
    raw = _raw_volume(study, *RAW_FORMS[form])
    _place(dataset, segs, study, raw, fixed_folder=False)
    summary = ingest_ct_rate(dataset, tmp_path / "data", segmentations=segs, progress=False)
    assert summary.written == 1
    hu = np.asanyarray(nib.load(tmp_path / "data" / "ct" / "volumes" / "train_1" / "train_1_a_1.nii.gz").dataobj)
    np.testing.assert_array_equal(hu, raw.astype(np.int32) - 1024)
    assert hu[12, 10, 6] == 40 and hu[12, 10, 0] == -1000               # organ and air in HU


@pytest.mark.parametrize("form", FIXED_FORMS)
def test_fixed_volumes_pass_with_volumes_fixed(tmp_path, form):
    study = CtStudy("train_1_a_1.nii.gz")
    dataset, segs = write_ct_rate(tmp_path / "src", [study])
    fixed = _fixed_volume(study, FIXED_FORMS[form])
    _place(dataset, segs, study, fixed, fixed_folder=True)
    summary = ingest_ct_rate(dataset, tmp_path / "data", segmentations=segs, volumes_fixed=True, progress=False)
    assert summary.written == 1
    hu = np.asanyarray(nib.load(tmp_path / "data" / "ct" / "volumes" / "train_1" / "train_1_a_1.nii.gz").dataobj)
    np.testing.assert_array_equal(hu, fixed)
    assert hu[12, 10, 6] == 40 and hu[12, 10, 0] == -1000


@pytest.mark.parametrize("form", FIXED_FORMS)
def test_hu_volumes_without_volumes_fixed_stop(tmp_path, form):
    study = CtStudy("train_1_a_1.nii.gz")
    dataset, segs = write_ct_rate(tmp_path / "src", [study])
    _place(dataset, segs, study, _fixed_volume(study, FIXED_FORMS[form]), fixed_folder=False)
    with pytest.raises(IngestError) as err:
        ingest_ct_rate(dataset, tmp_path / "data", segmentations=segs, progress=False)
    message, level = str(err.value), air_level(_fixed_volume(study, FIXED_FORMS[form]))
    assert message == (f"volume train_1_a_1.nii.gz ({dataset / 'train' / study.nested()}) is already in Hounsfield "
                       f"units: its air level (the 5th percentile of the voxels above its minimum) is {level:.0f}, "
                       "near air in HU (-1000), not air as a stored value (24 = (-1000 - RescaleIntercept -1024) / "
                       f"RescaleSlope 1); rescaling would move that level to {level - 1024:.0f} HU. It is a volume "
                       "of the corrected *_fixed release: rerun with --volumes-fixed (volumes_fixed=True)")
    assert not (tmp_path / "data" / "ct" / "volumes").exists()            # nothing shifted was written


@pytest.mark.parametrize("form", RAW_FORMS)
def test_stored_volumes_with_volumes_fixed_stop(tmp_path, form):
    study = CtStudy("train_1_a_1.nii.gz")
    dataset, segs = write_ct_rate(tmp_path / "src", [study])
    _place(dataset, segs, study, _raw_volume(study, *RAW_FORMS[form]), fixed_folder=True)
    with pytest.raises(IngestError) as err:
        ingest_ct_rate(dataset, tmp_path / "data", segmentations=segs, volumes_fixed=True, progress=False)
    level = air_level(_raw_volume(study, *RAW_FORMS[form]))
    assert str(err.value) == (
        f"volume train_1_a_1.nii.gz ({dataset / 'train_fixed' / study.nested()}) holds stored values, not Hounsfield "
        "units, although --volumes-fixed (volumes_fixed=True) is given: its air level (the 5th percentile of the "
        f"voxels above its minimum) is {level:.0f}, near air as a stored value (24 = (-1000 - RescaleIntercept "
        "-1024) / RescaleSlope 1), not air in HU (-1000). It is a volume of the raw release: rerun without "
        "--volumes-fixed so RescaleSlope / RescaleIntercept are applied, or point --volumes at the *_fixed folder")


def test_a_later_hu_volume_stops_the_run_and_says_overwrite(tmp_path):
    studies = [CtStudy("train_1_a_1.nii.gz"), CtStudy("train_2_a_1.nii.gz", seed=2)]
    dataset, segs = write_ct_rate(tmp_path / "src", studies)
    _place(dataset, segs, studies[1], _fixed_volume(studies[1], -1024), fixed_folder=False)
    with pytest.raises(IngestError, match=r"^volume train_2_a_1.nii.gz .* is already in Hounsfield units") as err:
        ingest_ct_rate(dataset, tmp_path / "data", segmentations=segs, progress=False)
    assert str(err.value).endswith(f"; add --overwrite, as {str(tmp_path / 'data' / 'ct')!r} holds this run's "
                                   "partial output")
    assert not (tmp_path / "data" / "ct" / "volumes" / "train_2").exists()


def test_no_check_where_the_rescale_barely_moves_air(tmp_path):
    # RescaleIntercept 0: stored values are HU already, and rescaling changes nothing; either flag works.
    study = CtStudy("train_1_a_1.nii.gz", intercept=0.0)
    summary, ct, _ = _ingest(tmp_path, [study])
    assert summary.written == 1
    np.testing.assert_array_equal(np.asanyarray(nib.load(ct / "volumes" / "train_1" / "train_1_a_1.nii.gz").dataobj),
                                  stored_values(study))
