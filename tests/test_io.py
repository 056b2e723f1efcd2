"""Image and volume readers: decoding, truncation, DICOM windowing, and DICOM-series vs NIfTI geometry."""

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medvlp.data.io import (
    decode_image_bytes,
    nifti_gz_bytes,
    read_image,
    read_label_map,
    read_volume,
    volume_from_nifti_bytes,
    write_dicom_series,
)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _affine(directions: np.ndarray, spacing: tuple[float, float, float], origin: tuple[float, float, float]):
    aff = np.eye(4)
    aff[:3, :3] = directions * np.asarray(spacing)
    aff[:3, 3] = origin
    return aff


GEOMETRIES = {
    # The usual axial DICOM series: rows run to patient left, columns to posterior (LPS +x, +y).
    "axial_lps": _affine(np.diag([-1.0, -1.0, 1.0]), (0.7, 0.8, 2.5), (120.0, 95.0, -40.0)),
    # Oblique, with slices stacked towards the feet (files come in descending order along the normal).
    "oblique_descending": _affine(_rotation(np.array([1.0, 2.0, 0.5]), 0.3) @ np.diag([1.0, 1.0, -1.0]),
                                  (0.9, 1.1, 3.0), (-10.0, 20.0, 55.0)),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_dicom_series_and_nifti_give_same_volume(tmp_path, name):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1500, size=(7, 5, 4)).astype(np.float32)
    affine = GEOMETRIES[name]
    files = write_dicom_series(hu, affine, tmp_path / "series", name=name)
    # File names must not carry the order: shuffle them.
    for i, j in enumerate(rng.permutation(len(files))):
        files[i].rename(tmp_path / "series" / f"x{j:02d}_{i}.dcm")
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "vol.nii.gz")

    from_dicom = read_volume(tmp_path / "series")
    from_nifti = read_volume(tmp_path / "vol.nii.gz")

    assert from_dicom.array.dtype == np.float32 and from_nifti.array.dtype == np.float32
    assert from_dicom.array.shape == from_nifti.array.shape
    np.testing.assert_array_equal(from_dicom.array, from_nifti.array)
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-4)
    np.testing.assert_allclose(from_dicom.spacing, from_nifti.spacing, atol=1e-5)
    np.testing.assert_allclose(sorted(from_nifti.spacing), sorted(np.linalg.norm(affine[:3, :3], axis=0)))
    # Canonical RAS: the affine's dominant direction of each axis is +R, +A, +S.
    dominant = np.argmax(np.abs(from_nifti.affine[:3, :3]), axis=0)
    assert dominant.tolist() == [0, 1, 2]
    assert np.all(from_nifti.affine[dominant, [0, 1, 2]] > 0)
    # The same voxel has the same world position in both readings and in the source geometry.
    src_world = affine @ np.array([2, 3, 1, 1.0])
    value = hu[2, 3, 1]
    idx = np.argwhere(from_dicom.array == value)
    worlds = [from_dicom.affine @ np.array([*i, 1.0]) for i in idx]
    assert any(np.allclose(w, src_world, atol=1e-3) for w in worlds)


def test_dicom_series_rejects_missing_slice(tmp_path):
    hu = np.zeros((4, 4, 5), dtype=np.float32)
    files = write_dicom_series(hu, np.diag([1.0, 1.0, 2.0, 1.0]), tmp_path / "s")
    files[2].unlink()
    with pytest.raises(ValueError, match="slice gaps vary"):
        read_volume(tmp_path / "s")


def test_label_map_follows_volume_orientation(tmp_path):
    labels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    flipped = np.diag([-2.0, 1.0, -3.0, 1.0])
    nib.save(nib.Nifti1Image(labels, flipped), tmp_path / "seg.nii.gz")
    nib.save(nib.Nifti1Image(labels.astype(np.float32), flipped), tmp_path / "vol.nii.gz")
    seg = read_label_map(tmp_path / "seg.nii.gz")
    vol = read_volume(tmp_path / "vol.nii.gz")
    assert seg.dtype == np.uint8
    np.testing.assert_array_equal(seg, vol.array.astype(np.uint8))
    np.testing.assert_array_equal(seg, labels[::-1, :, ::-1])
    np.testing.assert_allclose(vol.spacing, [2.0, 1.0, 3.0])


def test_nifti_bytes_round_trip_and_reproducible():
    rng = np.random.default_rng(1)
    hu = rng.integers(-1024, 2000, size=(6, 5, 3)).astype(np.float32)
    affine = np.diag([0.5, 0.6, 2.0, 1.0])
    data = nifti_gz_bytes(hu, affine)
    assert data == nifti_gz_bytes(hu, affine)
    vol = volume_from_nifti_bytes(data)
    np.testing.assert_array_equal(vol.array, hu)
    np.testing.assert_allclose(vol.affine, affine)
    frac = hu + 0.25
    np.testing.assert_array_equal(volume_from_nifti_bytes(nifti_gz_bytes(frac, affine)).array, frac)


def test_read_image_modes(tmp_path):
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, size=(9, 11), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(np.dstack([rgb, np.full((9, 11), 255, np.uint8)])).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    Image.fromarray(grey.astype(np.uint16) * 4).save(tmp_path / "g16.png")

    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), grey)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    jpg = read_image(tmp_path / "c.jpg")
    assert jpg.shape == (9, 11, 3) and jpg.dtype == np.uint8
    g16 = read_image(tmp_path / "g16.png")
    assert g16.dtype == np.uint8 and g16.min() == 0 and g16.max() == 255
    assert np.array_equal(np.argsort(g16.ravel(), kind="stable"), np.argsort(grey.ravel(), kind="stable"))
    np.testing.assert_array_equal(decode_image_bytes((tmp_path / "g.png").read_bytes()), grey)


def test_read_image_rejects_truncated_and_non_images(tmp_path):
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, size=(64, 64), dtype=np.uint8)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:300])
    (tmp_path / "text.png").write_bytes(b"this is not an image\n")
    with pytest.raises(OSError):
        read_image(tmp_path / "cut.png")
    with pytest.raises(OSError):
        read_image(tmp_path / "text.png")


def _dicom_2d(path, pixels: np.ndarray, slope: float, intercept: float, center: float, width: float,
              photometric: str = "MONOCHROME2") -> None:
    uid = generate_uid(entropy_srcs=[str(path)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, uid, "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = pixels.astype("<i2").tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def test_read_dicom_image_applies_rescale_and_window(tmp_path):
    stored = np.array([[0, 500, 1000], [1500, 2000, 3000]], dtype=np.int16)
    # HU = 2 * stored - 1000; window [0, 1000] HU -> stored 500 is 0 HU -> 0, stored 750 would be 127.5
    _dicom_2d(tmp_path / "x.dcm", stored, 2.0, -1000.0, 500.0, 1000.0)
    got = read_image(tmp_path / "x.dcm")
    expected = np.clip(np.round((2.0 * stored - 1000.0 - 0.0) * 255.0 / 1000.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
    _dicom_2d(tmp_path / "inv", stored, 2.0, -1000.0, 500.0, 1000.0, photometric="MONOCHROME1")
    np.testing.assert_array_equal(read_image(tmp_path / "inv"), 255 - expected)   # found by its DICM marker
