"""The real sample files that pydicom and nibabel ship load through medvlp's readers with the geometry the
libraries report (CT_small.dcm, MR_small.dcm; anatomical.nii, example4d.nii.gz, standard.nii.gz)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medvlp.data.ingest import convert_dicom_tree
from medvlp.data.io import read_image, read_label_map, read_volume

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _pydicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom {pydicom.__version__} does not ship {name}")
    return Path(path)


def _nibabel_file(name: str) -> Path:
    path = NIBABEL_DATA / name
    if not path.is_file():
        pytest.skip(f"nibabel {nib.__version__} does not ship tests/data/{name}")
    return path


def _windowed(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip(np.round((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _world_lps(ds, row: int, col: int) -> np.ndarray:
    """DICOM PS3.3 C.7.6.2.1.1: the patient position (LPS, mm) of pixel (row, col)."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    dr, dc = (float(x) for x in ds.PixelSpacing)             # spacing between rows, between columns
    return np.asarray(ds.ImagePositionPatient, dtype=float) + iop[:3] * dc * col + iop[3:] * dr * row


def test_ct_small_image_and_volume(tmp_path):
    path = _pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # No window in the file: the value range is mapped to [0, 255].
    assert ds.get("WindowCenter") is None
    np.testing.assert_array_equal(read_image(path), _windowed(hu, hu.min(), hu.max()))

    shutil.copy(path, tmp_path / "CT_small.dcm")
    vol = read_volume(tmp_path)
    assert vol.array.shape == (128, 128, 1)
    np.testing.assert_allclose(vol.spacing, [*(float(x) for x in ds.PixelSpacing), float(ds.SliceThickness)],
                               atol=1e-6)
    # Every pixel sits where the DICOM geometry puts it, with its HU value.
    inv = np.linalg.inv(vol.affine)
    for row, col in [(0, 0), (0, 127), (127, 0), (40, 77), (127, 127)]:
        world = np.append(LPS_TO_RAS @ _world_lps(ds, row, col), 1.0)
        i, j, k = np.round(inv @ world)[:3].astype(int)
        assert vol.array[i, j, k] == hu[row, col]
    assert vol.array.min() == -896 and vol.array.max() == 1167            # 128 - 1024, 2191 - 1024

    summary = convert_dicom_tree(tmp_path, tmp_path.parent / "converted", progress=False)
    assert summary.written == 1
    converted = read_volume(tmp_path.parent / "converted" / f"{tmp_path.name}.nii.gz")
    np.testing.assert_array_equal(converted.array, vol.array)
    np.testing.assert_allclose(converted.affine, vol.affine, atol=1e-4)


def test_mr_small_image_window_and_spacing(tmp_path):
    path = _pydicom_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    np.testing.assert_array_equal(read_image(path), _windowed(ds.pixel_array.astype(np.float64),
                                                              center - width / 2, center + width / 2))
    shutil.copy(path, tmp_path / "MR_small.dcm")
    vol = read_volume(tmp_path)
    assert vol.array.shape == (64, 64, 1)
    np.testing.assert_allclose(vol.spacing, [0.3125, 0.3125, float(ds.SliceThickness)], atol=1e-6)
    np.testing.assert_array_equal(vol.array[:, :, 0], np.flip(ds.pixel_array.T, axis=(0, 1)))  # LPS -> RAS


def test_nibabel_anatomical_keeps_world_positions():
    path = _nibabel_file("anatomical.nii")
    img = nib.load(path)
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
    vol = read_volume(path)
    assert vol.array.shape == img.shape and vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.spacing, img.header.get_zooms(), atol=1e-6)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    data = img.get_fdata()
    for idx in [(0, 0, 0), (32, 40, 24), (5, 17, 9)]:
        world = img.affine @ [*idx, 1]
        i, j, k = np.round(np.linalg.inv(vol.affine) @ world)[:3].astype(int)
        assert vol.array[i, j, k] == data[idx]


def test_nibabel_example4d_oblique_volume(tmp_path):
    path = _nibabel_file("example4d.nii.gz")
    with pytest.raises(ValueError, match=r"expected a 3D volume, got shape \(128, 96, 24, 2\)"):
        read_volume(path)
    img = nib.load(path)
    first = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header)
    nib.save(first, tmp_path / "first.nii.gz")
    vol = read_volume(tmp_path / "first.nii.gz")
    np.testing.assert_allclose(sorted(vol.spacing), sorted(img.header.get_zooms()[:3]), atol=1e-5)
    assert not np.allclose(vol.affine[:3, :3], np.diag(np.diag(vol.affine[:3, :3])))   # oblique kept
    data = first.get_fdata()
    for idx in [(0, 0, 0), (127, 95, 23), (60, 30, 11)]:
        world = img.affine @ [*idx, 1]
        i, j, k = np.round(np.linalg.inv(vol.affine) @ world)[:3].astype(int)
        assert vol.array[i, j, k] == data[idx]


def test_nibabel_standard_as_label_map():
    path = _nibabel_file("standard.nii.gz")
    img = nib.load(path)
    labels = read_label_map(path)
    assert labels.dtype == np.uint8 and labels.shape == (4, 5, 7)
    np.testing.assert_array_equal(labels, np.asanyarray(img.dataobj))         # already RAS: unchanged
    assert read_volume(path).spacing.tolist() == [1.0, 3.0, 2.0]
