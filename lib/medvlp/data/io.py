"""Image and volume readers for the source corpus: PNG / JPEG / DICOM images, NIfTI / DICOM-series volumes.

Every reader fully decodes what it reads (so truncated files fail here, not later in training) and
returns plain numpy arrays:

- ``read_image(path)`` -> ``uint8 [H, W]`` (grey) or ``[H, W, 3]`` (RGB).
- ``read_volume(path)`` -> :class:`Volume`: ``float32 [X, Y, Z]`` in Hounsfield units, the voxel-to-world
  affine ``[4, 4]`` (mm, RAS) and the voxel spacing ``(3,)`` in mm, for a NIfTI file or a DICOM series
  folder. Both paths end in the same *canonical RAS* orientation (``nibabel.as_closest_canonical``:
  array axes X, Y, Z increase closest to world +Right, +Anterior, +Superior), so the same scan stored
  either way gives the same array, affine and spacing.
- ``read_label_map(path)`` -> integer ``[X, Y, Z]`` (NIfTI), in the same canonical orientation.

Helpers for the shards: :func:`nifti_gz_bytes` (a volume as ``.nii.gz`` bytes, reproducible) and
:func:`volume_from_nifti_bytes`; for tests and exports: :func:`write_dicom_series`.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

__all__ = [
    "Volume",
    "decode_image_bytes",
    "is_dicom_file",
    "label_map_from_nifti_bytes",
    "nifti_gz_bytes",
    "read_image",
    "read_label_map",
    "read_volume",
    "volume_from_nifti_bytes",
    "write_dicom_series",
]

_DICOM_SUFFIXES = (".dcm", ".dicom")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Largest relative deviation between consecutive slice gaps accepted in a DICOM series.
_SLICE_GAP_TOLERANCE = 0.01


@dataclass(frozen=True)
class Volume:
    """A 3D scan in canonical RAS orientation.

    Attributes:
        array: ``float32 [X, Y, Z]``, Hounsfield units for CT.
        affine: ``float64 [4, 4]`` voxel index -> world (mm, RAS+).
        spacing: ``float64 (3,)`` voxel size in mm along X, Y, Z (column norms of ``affine[:3, :3]``).
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: np.ndarray


# ----------------------------------------------------------------------------------------------- images

def is_dicom_file(path: str | Path) -> bool:
    """True for a ``.dcm`` / ``.dicom`` file or any file with the ``DICM`` preamble marker."""
    path = Path(path)
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _to_uint8(values: np.ndarray, center: float | None = None, width: float | None = None) -> np.ndarray:
    """Window ``values`` to ``uint8``: ``[center - width/2, center + width/2]`` -> ``[0, 255]``,
    or the value range when no window is given (a constant image maps to 0)."""
    v = values.astype(np.float64)
    if center is None or width is None or width <= 0:
        lo, hi = float(v.min()), float(v.max())
    else:
        lo, hi = center - width / 2.0, center + width / 2.0
    if hi <= lo:
        return np.zeros(v.shape, dtype=np.uint8)
    return np.clip(np.round((v - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _first(value) -> float | None:
    """First number of a possibly multi-valued DICOM element (WindowCenter may hold several)."""
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return float(value[0]) if len(value) else None
    return float(value)


def _read_dicom_image(path: Path) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if int(getattr(ds, "SamplesPerPixel", 1)) == 3:
        return _to_uint8(pixels) if pixels.dtype != np.uint8 else np.ascontiguousarray(pixels)
    values = pixels.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1.0) or 1.0) \
        + float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    out = _to_uint8(values, _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth")))
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
    return out


def _pil_to_array(img: Image.Image) -> np.ndarray:
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in ("1", "LA"):
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return _to_uint8(np.asarray(img))
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: str | Path) -> np.ndarray:
    """Decode a PNG / JPEG (any Pillow format) or DICOM image completely.

    Args:
        path: the image file. DICOM is recognised by suffix or by its ``DICM`` marker.

    Returns:
        ``uint8 [H, W]`` for grey images, ``uint8 [H, W, 3]`` for colour (alpha and palettes are
        converted to RGB). 16-bit and float images are scaled from their value range to ``[0, 255]``;
        DICOM applies ``RescaleSlope`` / ``RescaleIntercept`` then its first ``WindowCenter`` /
        ``WindowWidth`` (else the value range), and inverts ``MONOCHROME1``. Multi-frame files give
        their first frame.

    Raises:
        OSError / ValueError (from Pillow or pydicom) when the file is truncated or not an image.
    """
    path = Path(path)
    if is_dicom_file(path):
        return _read_dicom_image(path)
    with Image.open(path) as img:
        img.load()                      # full decode: a truncated file raises here
        return _pil_to_array(img)


def decode_image_bytes(data: bytes) -> np.ndarray:
    """:func:`read_image` for in-memory PNG / JPEG bytes (used to read shards)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return _pil_to_array(img)


# ---------------------------------------------------------------------------------------------- volumes

def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def _canonical(img: nib.spatialimages.SpatialImage) -> nib.spatialimages.SpatialImage:
    return nib.as_closest_canonical(img)


def _read_nifti_volume(path: Path) -> Volume:
    img = _canonical(nib.load(str(path)))
    array = img.get_fdata(dtype=np.float32)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {array.shape}")
    affine = np.asarray(img.affine, dtype=np.float64)
    return Volume(np.ascontiguousarray(array), affine, _spacing(affine))


def _dicom_series_geometry(datasets: list, folder: Path) -> tuple[list, np.ndarray]:
    """Sort the slices along the slice normal; return them and the RAS affine of the stacked array
    ``[X = column, Y = row, Z = slice]``."""
    iops = np.array([[float(x) for x in ds.ImageOrientationPatient] for ds in datasets])
    if not np.allclose(iops, iops[0], atol=1e-4):
        raise ValueError(f"DICOM series {folder}: slices have different ImageOrientationPatient; "
                         "put one series per folder")
    row_dir, col_dir = iops[0, :3], iops[0, 3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(x) for x in ds.ImagePositionPatient] for ds in datasets])
    order = np.argsort(positions @ normal, kind="stable")
    datasets, positions = [datasets[i] for i in order], positions[order]
    depth = positions @ normal
    gaps = np.diff(depth)
    if len(gaps) and gaps.min() <= 1e-6:
        raise ValueError(f"DICOM series {folder}: two slices share a position; put one series per folder")
    if len(gaps) and (gaps.max() - gaps.min()) > _SLICE_GAP_TOLERANCE * gaps.mean():
        raise ValueError(f"DICOM series {folder}: slice gaps vary from {gaps.min():.3f} to "
                         f"{gaps.max():.3f} mm; a missing slice? Resample to uniform spacing first")
    if len(datasets) > 1:
        step = (positions[-1] - positions[0]) / (len(datasets) - 1)
    else:
        step = normal * float(getattr(datasets[0], "SliceThickness", 1.0) or 1.0)
    row_spacing, col_spacing = (float(x) for x in datasets[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing          # array axis 0 = column index, moves along the row direction
    lps[:3, 1] = col_dir * row_spacing          # array axis 1 = row index, moves along the column direction
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return datasets, _LPS_TO_RAS @ lps


def _read_dicom_series(folder: Path) -> Volume:
    import pydicom

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"DICOM series folder {folder} holds no files")
    datasets = [pydicom.dcmread(p) for p in files]
    datasets, affine = _dicom_series_geometry(datasets, folder)
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(shapes) != 1:
        raise ValueError(f"DICOM series {folder}: slices have different sizes {sorted(shapes)}")
    slices = []
    for ds in datasets:
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        slices.append((ds.pixel_array.astype(np.float32) * np.float32(slope) + np.float32(intercept)).T)
    array = np.stack(slices, axis=-1)           # [columns, rows, slices] = [X, Y, Z]
    img = _canonical(nib.Nifti1Image(array, affine))
    out = np.ascontiguousarray(img.get_fdata(dtype=np.float32))
    canonical_affine = np.asarray(img.affine, dtype=np.float64)
    return Volume(out, canonical_affine, _spacing(canonical_affine))


def read_volume(path: str | Path) -> Volume:
    """Read a 3D scan from a NIfTI file (``.nii`` / ``.nii.gz``) or a DICOM series folder.

    NIfTI: ``get_fdata(float32)`` (scaling applied) after ``nib.as_closest_canonical``. DICOM series:
    every file of the folder is one slice of one series; slices are sorted by ``ImagePositionPatient``
    projected on the slice normal (``row x column`` direction cosines), ``RescaleSlope`` /
    ``RescaleIntercept`` applied, the LPS geometry converted to RAS and reoriented to the same
    canonical RAS as the NIfTI path.

    Returns:
        :class:`Volume`: ``array`` ``float32 [X, Y, Z]`` (HU), ``affine`` ``[4, 4]``, ``spacing`` ``(3,)`` mm.

    Raises:
        ValueError / OSError / EOFError when the file or series is truncated or inconsistent.
    """
    path = Path(path)
    if path.is_dir():
        return _read_dicom_series(path)
    return _read_nifti_volume(path)


def read_label_map(path: str | Path) -> np.ndarray:
    """Read a NIfTI label map ``[X, Y, Z]`` in the canonical orientation of :func:`read_volume`.

    Returns the stored integer dtype (``uint8``, ``int16``, ...); a float-stored map is rounded to
    ``int32`` (and rejected if its values are not whole numbers).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"label map {path} is a folder; segmentations must be NIfTI files")
    img = _canonical(nib.load(str(path)))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D label map, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.round(data)
        if not np.all(np.isfinite(data)) or np.abs(rounded - data).max(initial=0.0) > 1e-3:
            raise ValueError(f"{path}: label map holds non-integer values; store labels as integers")
        data = rounded.astype(np.int32)
    return np.ascontiguousarray(data)


# --------------------------------------------------------------------------------------- NIfTI bytes

def nifti_gz_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """``.nii.gz`` bytes of ``array`` ``[X, Y, Z]`` with ``affine`` (reproducible: gzip mtime 0).

    Float arrays holding whole numbers within int16 range are stored as int16 (HU), others as-is.
    """
    data = np.asarray(array)
    if np.issubdtype(data.dtype, np.floating) and data.size and np.all(np.isfinite(data)):
        rounded = np.round(data)
        if np.array_equal(rounded, data) and rounded.min() >= -32768 and rounded.max() <= 32767:
            data = rounded.astype(np.int16)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _nifti_from_bytes(data: bytes) -> nib.Nifti1Image:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return nib.Nifti1Image.from_bytes(data)


def volume_from_nifti_bytes(data: bytes) -> Volume:
    """:class:`Volume` (canonical RAS, float32) from ``.nii`` or ``.nii.gz`` bytes."""
    img = _canonical(_nifti_from_bytes(data))
    affine = np.asarray(img.affine, dtype=np.float64)
    return Volume(np.ascontiguousarray(img.get_fdata(dtype=np.float32)), affine, _spacing(affine))


def label_map_from_nifti_bytes(data: bytes) -> np.ndarray:
    """Integer label map (canonical RAS) from ``.nii`` or ``.nii.gz`` bytes."""
    img = _canonical(_nifti_from_bytes(data))
    return np.ascontiguousarray(np.asanyarray(img.dataobj))


# ------------------------------------------------------------------------------------- DICOM writing

def write_dicom_series(array: np.ndarray, affine: np.ndarray, folder: str | Path, *,
                       intercept: float = -1024.0, name: str = "series") -> list[Path]:
    """Write ``array`` ``[X, Y, Z]`` (HU) with RAS ``affine`` as a CT DICOM series, one file per slice.

    The affine's first two columns must be orthogonal (in-plane axes); slice ``k`` is at
    ``affine @ [0, 0, k, 1]``. Pixels are stored as int16 ``HU - intercept`` (slope 1), so ``array``
    must hold whole numbers. UIDs are derived from ``name`` (deterministic). Files are named
    ``IM{k:04d}.dcm``.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    col_spacing, row_spacing = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row_dir, col_dir = lps[:3, 0] / col_spacing, lps[:3, 1] / row_spacing
    stored = np.round(np.asarray(array, dtype=np.float64) - intercept)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("write_dicom_series: values out of int16 range after the intercept")
    study, series = generate_uid(entropy_srcs=[name, "study"]), generate_uid(entropy_srcs=[name, "series"])
    paths = []
    for k in range(array.shape[2]):
        uid = generate_uid(entropy_srcs=[name, str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", name, k + 1
        pixels = stored[:, :, k].T.astype("<i2")                      # [rows, columns]
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [float(row_spacing), float(col_spacing)]
        ds.ImageOrientationPatient = [float(x) for x in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(x) for x in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = float(intercept), 1.0
        ds.PixelData = pixels.tobytes()
        path = folder / f"IM{k:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
