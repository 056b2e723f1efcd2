"""TotalSegmentator v2 -> anatomy label maps: the shipped mapping's class ids, conversion of multilabel files
and per-class mask folders, and bad inputs."""

from __future__ import annotations

import json
from importlib import resources

import nibabel as nib
import numpy as np
import pytest
from test_ingest_fixtures import TS, class_map

from medvlp.data.ingest import IngestError, convert_totalseg, load_totalseg_mapping
from medvlp.data.ingest.totalseg import anatomy_voxels, border_anatomies, read_totalseg, to_anatomy_labels
from medvlp.lexicon import load_anatomy_lexicon

LEX = load_anatomy_lexicon()
LABEL = {a.id: a.label for a in LEX.anatomies}
AFFINE = np.array([[-0.8, 0, 0, 90.0], [0, -0.8, 0, 110.0], [0, 0, 2.0, -300.0], [0, 0, 0, 1]])

# Class ids of TotalSegmentator v2's task "total" (class_map["total"] in totalsegmentator/map_to_binary.py).
OFFICIAL_V2 = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver", 6: "stomach",
               7: "pancreas", 10: "lung_upper_lobe_left", 11: "lung_lower_lobe_left", 12: "lung_upper_lobe_right",
               13: "lung_middle_lobe_right", 14: "lung_lower_lobe_right", 15: "esophagus", 18: "small_bowel",
               23: "kidney_cyst_left", 24: "kidney_cyst_right", 51: "heart", 52: "aorta", 61: "atrial_appendage_left"}


def test_shipped_mapping_uses_v2_class_ids_and_covers_every_anatomy():
    mapping = load_totalseg_mapping()
    assert {c.id: c.name for c in mapping.classes} == OFFICIAL_V2
    by_anatomy: dict[str, list[str]] = {}
    for c in mapping.classes:
        by_anatomy.setdefault(c.anatomy, []).append(c.name)
    assert sorted(by_anatomy) == sorted(a.id for a in LEX.anatomies)
    assert sorted(by_anatomy["lung"]) == sorted(n for n in OFFICIAL_V2.values() if n.startswith("lung_"))
    assert by_anatomy["aorta"] == ["aorta"] and by_anatomy["heart"] == ["heart", "atrial_appendage_left"]
    raw = json.loads(resources.files("medvlp.resources").joinpath("totalsegmentator_v2.json").read_text("utf-8"))
    assert "map_to_binary.py" in raw["source"] and "0275d3046117a9615a9876e6e4eefd5156843f1c" in raw["source"]


def test_class_ids_become_anatomy_labels():
    mapping = load_totalseg_mapping()
    ts = class_map()
    labels = to_anatomy_labels(ts, mapping, LEX)
    assert labels.dtype == np.uint8 and labels.shape == ts.shape
    assert set(np.unique(labels[ts == TS["heart"]])) == {LABEL["heart"]}
    assert set(np.unique(labels[ts == TS["lung_upper_lobe_left"]])) == {LABEL["lung"]}
    assert set(np.unique(labels[np.isin(ts, [TS["trachea"], TS["rib_left_1"]])])) == {0}
    voxels = anatomy_voxels(labels, LEX)
    assert voxels["heart"] == 8 * 6 * 6 and voxels["lung"] == 2 * 6 * 16 * 8 and voxels["pancreas"] == 0
    assert border_anatomies(labels, LEX) == ["lung"]


def test_convert_multilabel_files_and_mask_folders(tmp_path):
    src = tmp_path / "ts"
    src.mkdir()
    nib.save(nib.Nifti1Image(class_map(), AFFINE), src / "ct_001.nii.gz")
    folder = src / "ct_002"                      # TotalSegmentator's default output: one mask per class
    folder.mkdir()
    for name, cid in TS.items():
        nib.save(nib.Nifti1Image((class_map() == cid).astype(np.uint8), AFFINE), folder / f"{name}.nii.gz")
    (src / "notes.txt").write_text("ignored")
    summary = convert_totalseg(src, tmp_path / "out", progress=False)
    assert (summary.read, summary.written, summary.skipped) == (2, 2, 0)
    a, b = nib.load(tmp_path / "out" / "ct_001.nii.gz"), nib.load(tmp_path / "out" / "ct_002.nii.gz")
    np.testing.assert_allclose(a.affine, AFFINE, atol=1e-6)
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), to_anatomy_labels(class_map(), load_totalseg_mapping(),
                                                                              LEX))
    assert summary.details["voxels"]["heart"] == 2 * 8 * 6 * 6
    # The fixture has no gallbladder, pancreas, kidney or stomach: named, not silently missing.
    assert summary.warnings.counts == {"anatomy_absent": 2}
    assert "['gallbladder', 'pancreas', 'kidney', 'stomach']" in summary.warnings.examples["anatomy_absent"][0]
    assert json.loads((tmp_path / "out" / "ingest_report.json").read_text())["written"] == 2


def test_bad_label_maps(tmp_path):
    src = tmp_path / "ts"
    src.mkdir()
    nib.save(nib.Nifti1Image(class_map(), AFFINE), src / "good.nii.gz")
    nib.save(nib.Nifti1Image(class_map().astype(np.float32) + 0.5, AFFINE), src / "fractional.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.uint8), AFFINE), src / "four_d.nii.gz")
    summary = convert_totalseg(src, tmp_path / "out", progress=False)
    assert summary.skips.counts == {"unreadable_segmentation": 2} and summary.written == 1
    assert f"{src / 'fractional.nii.gz'}: does not decode (ValueError" in summary.skips.examples[
        "unreadable_segmentation"][1]
    with pytest.raises(IngestError, match=r"four_d.nii.gz: does not decode .*expected a 3D label map.*"
                                          r"\[unreadable_segmentation\]"):
        convert_totalseg(src, tmp_path / "out2", strict=True, progress=False)


def test_mapping_file_is_checked(tmp_path):
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({"classes": [{"id": 52, "name": "aorta", "anatomy": "aortic_arch"}]}))
    with pytest.raises(ValueError, match="unknown anatomy 'aortic_arch'"):
        load_totalseg_mapping(path)
    path.write_text(json.dumps({"classes": [{"id": 52, "name": "aorta", "anatomy": "aorta"},
                                            {"id": 52, "name": "heart", "anatomy": "heart"}]}))
    with pytest.raises(ValueError, match="ids and names unique"):
        load_totalseg_mapping(path)
    folder = tmp_path / "masks"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), AFFINE), folder / "aorta.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((3, 3, 4), np.uint8), AFFINE), folder / "heart.nii.gz")
    with pytest.raises(ValueError, match="share one grid"):
        read_totalseg(folder, load_totalseg_mapping())
