"""DICOM series -> NIfTI: a series written from an array reads back with the spacing and orientation of the
NIfTI written from that array (axial, flipped, oblique), through ``io.read_volume`` and through
``ingest dicom``; trees with several series, stray files and a broken series."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

from medvlp.data.ingest import IngestError, convert_dicom_tree
from medvlp.data.io import read_volume, write_dicom_series


def _rotation(axis, angle):
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _affine(directions, spacing, origin):
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(directions, dtype=float) * np.asarray(spacing)
    aff[:3, 3] = origin
    return aff


GEOMETRIES = {
    # RAS affines; each column is where one array axis runs in the world.
    "axial": _affine(np.diag([-1.0, -1.0, 1.0]), (0.75, 0.75, 1.5), (190.0, 189.0, -311.5)),
    # Sagittal slices (array axis 2 along -x, i.e. right-to-left stacked), in-plane axes A and -S: flipped.
    "sagittal_flipped": _affine([[0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]], (0.9, 1.2, 2.5), (40.0, -80.0, 120.0)),
    # Oblique: rotated 25 degrees about a tilted axis, slices stacked towards the feet.
    "oblique": _affine(_rotation([0.3, 1.0, 0.2], 0.44) @ np.diag([1.0, -1.0, -1.0]), (0.8, 0.7, 3.0),
                       (-12.0, 30.0, 60.0)),
}


def _volume(shape=(9, 7, 5), seed=0):
    return np.random.default_rng(seed).integers(-1000, 1800, size=shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_series_reads_back_like_the_nifti_of_the_same_array(tmp_path, name):
    hu, affine = _volume(), GEOMETRIES[name]
    write_dicom_series(hu, affine, tmp_path / "tree" / "patient" / "series1", name=name)
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "ref.nii.gz")
    reference = read_volume(tmp_path / "ref.nii.gz")
    direct = read_volume(tmp_path / "tree" / "patient" / "series1")

    summary = convert_dicom_tree(tmp_path / "tree", tmp_path / "out", progress=False)
    assert (summary.read, summary.written, summary.skipped) == (1, 1, 0)
    converted_path = tmp_path / "out" / "patient" / "series1.nii.gz"
    converted = read_volume(converted_path)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(hu, affine))     # what nibabel itself makes of it
    for vol in (direct, converted):
        np.testing.assert_array_equal(vol.array, reference.array)
        np.testing.assert_array_equal(vol.array, canonical.get_fdata())
        np.testing.assert_allclose(vol.affine, reference.affine, atol=1e-4)
        np.testing.assert_allclose(vol.affine, canonical.affine, atol=1e-4)
        np.testing.assert_allclose(vol.spacing, canonical.header.get_zooms(), atol=1e-5)
    # The file itself is canonical RAS in HU (int16).
    img = nib.load(converted_path)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S") and img.get_data_dtype() == np.int16
    index = json.loads((tmp_path / "out" / "series.jsonl").read_text())
    assert index["folder"] == "patient/series1" and index["slices"] == 5 and index["output"] == "patient/series1.nii.gz"
    assert sorted(index["spacing"]) == sorted(np.round(np.linalg.norm(affine[:3, :3], axis=0), 6).tolist())


def _dicomdir(path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MediaStorageDirectoryStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "TEST"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def test_folder_with_two_series_and_stray_files(tmp_path):
    tree = tmp_path / "tree"
    write_dicom_series(_volume(seed=1), GEOMETRIES["axial"], tree / "study", name="first")
    second = write_dicom_series(_volume((9, 7, 4), seed=2), GEOMETRIES["oblique"], tmp_path / "tmp2", name="second")
    for i, p in enumerate(second):
        p.rename(tree / "study" / f"B{i}.dcm")             # a second series in the same folder
    (tree / "study" / "README.txt").write_text("not DICOM")
    _dicomdir(tree / "DICOMDIR")
    summary = convert_dicom_tree(tree, tmp_path / "out", progress=False)
    assert (summary.read, summary.written) == (2, 2)
    assert summary.warnings.counts == {"not_dicom": 1, "not_a_volume_slice": 1}
    outputs = sorted(json.loads(x)["output"] for x in (tmp_path / "out" / "series.jsonl").read_text().splitlines())
    assert len(outputs) == 2 and all(o.startswith("study/series_x_") for o in outputs)
    shapes = sorted(tuple(nib.load(tmp_path / "out" / o).shape) for o in outputs)
    assert [sorted(s) for s in shapes] == [[4, 7, 9], [5, 7, 9]]


def test_broken_series_is_skipped_or_raises(tmp_path):
    tree = tmp_path / "tree"
    write_dicom_series(_volume(seed=3), GEOMETRIES["axial"], tree / "good", name="good")
    files = write_dicom_series(_volume(seed=4), GEOMETRIES["axial"], tree / "gap", name="gap")
    files[2].unlink()                                        # a missing slice
    summary = convert_dicom_tree(tree, tmp_path / "out", progress=False)
    assert summary.written == 1 and summary.skips.counts == {"unreadable_volume": 1}
    message = summary.skips.examples["unreadable_volume"][0]
    assert message.startswith(f"{tree / 'gap'} (series ") and "slice gaps vary from 1.500 to 3.000 mm" in message
    with pytest.raises(IngestError, match=r"gap \(series .*\[unreadable_volume\]"):
        convert_dicom_tree(tree, tmp_path / "out2", strict=True, progress=False)
    with pytest.raises(IngestError, match="inside the DICOM tree"):
        convert_dicom_tree(tree, tree / "out", progress=False)
