"""Byte-reproducible NIfTI-1 (``.nii.gz``) encoding for the synthetic CT corpus.

The header is built field by field (no defaults that depend on the nibabel version) and the gzip
member carries no time stamp, no file name and a fixed OS byte, so the same array gives the same
bytes on every machine.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np

#: gzip header byte 9 (OS). zlib writes the build platform's code (3 on Unix, 19 on recent macOS);
#: 255 ("unknown") is used everywhere so that the bytes do not depend on it.
_GZIP_OS_UNKNOWN = 255


def affine_for(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS voxel-to-world affine ``[4, 4]`` (mm): diagonal spacing, origin so the volume is centred."""
    aff = np.eye(4, dtype=np.float64)
    for i in range(3):
        aff[i, i] = spacing[i]
        aff[i, 3] = -0.5 * (shape[i] - 1) * spacing[i]
    return aff


def nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """Uncompressed single-file NIfTI-1 bytes of ``data`` ``[X, Y, Z]`` (int16, uint8 or float32).

    qform and sform are both set to ``affine`` with code 1 (scanner), units mm / s, scl_slope 1 and
    scl_inter 0 (values are stored as they are: Hounsfield units or label values).
    """
    if data.ndim != 3:
        raise ValueError(f"nifti_bytes: expected a 3D array, got shape {data.shape}")
    if data.dtype not in (np.int16, np.uint8, np.float32):
        raise ValueError(f"nifti_bytes: dtype {data.dtype} not supported; use int16, uint8 or float32")
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(data.dtype)
    hdr.set_data_shape(data.shape)
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm", "sec")
    hdr["pixdim"][1:4] = np.abs(np.diag(affine)[:3])
    hdr["pixdim"][4:] = 0.0
    hdr["scl_slope"] = 1.0
    hdr["scl_inter"] = 0.0
    hdr["vox_offset"] = 352.0
    hdr["cal_min"] = 0.0
    hdr["cal_max"] = 0.0
    hdr["descrip"] = b"medvlp synthetic CT"
    # 348-byte header + 4-byte empty extension flag, then the voxels in Fortran (x fastest) order.
    return hdr.binaryblock + b"\x00\x00\x00\x00" + np.asfortranarray(data).tobytes(order="F")


def gzip_bytes(raw: bytes) -> bytes:
    """gzip ``raw`` (level 6, mtime 0, no file name) with a platform-independent header."""
    out = bytearray(gzip.compress(raw, compresslevel=6, mtime=0))
    out[9] = _GZIP_OS_UNKNOWN
    return bytes(out)


def nifti_gz_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """``.nii.gz`` file contents of ``data`` (see :func:`nifti_bytes`)."""
    return gzip_bytes(nifti_bytes(data, affine))
