"""CT-RATE's tables: volume names, report text, per-volume metadata (rescale, spacing, orientation) and
the voxel-to-world affine it implies.

Columns (CT-RATE release on Hugging Face, ``ibrahimhamamci/CT-RATE``, as the code that reads it uses them):

- reports ``radiology_text_reports/{train,validation}_reports.csv``: ``VolumeName``,
  ``ClinicalInformation_EN``, ``Technique_EN``, ``Findings_EN``, ``Impressions_EN``;
- metadata ``metadata/{train,validation}_metadata.csv``: ``VolumeName``, ``RescaleSlope``,
  ``RescaleIntercept``, ``XYSpacing`` (a string list, ``"[0.75, 0.75]"``), ``ZSpacing``, and where present
  ``ImageOrientationPatient`` (string list of 6), ``ImagePositionPatient`` (string list of 3), ``Rows``,
  ``Columns``, ``NumberofSlices`` (and more, unused here);
- labels ``multi_abnormality_labels/{train,valid}_predicted_labels.csv``: ``VolumeName`` + the 18 label
  columns of :data:`medvlp.data.ingest.ct_rate_labels.CT_RATE_LABELS` (0 / 1).

Volume names are ``<split>_<patient>_<scan>_<reconstruction>.nii.gz`` (``train_1_a_1.nii.gz``), stored at
``<split>/<split>_<patient>/<split>_<patient>_<scan>/<name>``; the patient is ``<split>_<patient>``.

Geometry, as CT-RATE's own ``download_scripts/fix_metadata.py`` sets it: spacing ``(XYSpacing[0],
XYSpacing[1], ZSpacing)`` along array axes 0, 1, 2; axis 0 runs along the row direction cosine of
``ImageOrientationPatient`` (first 3 values), axis 1 along the column cosine (last 3), axis 2 along their
cross product; the origin is ``ImagePositionPatient``; all in DICOM LPS, converted here to RAS. Without
those two columns, the NIfTI file's own axis directions and origin are kept and only the spacing is set.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvlp.data.ingest.skip_log import Skip, SkipLog
from medvlp.data.ingest.source_tables import CsvRow, read_csv

__all__ = ["METADATA_COLUMNS", "REPORT_COLUMNS", "CtGeometry", "VolumeName", "affine_from_metadata", "keyed_rows",
           "parse_metadata", "parse_volume_name", "report_text"]

REPORT_COLUMNS = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
METADATA_COLUMNS = ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing")
_VOLUME_NAME = re.compile(r"(?P<split>[A-Za-z]+)_(?P<patient>\d+)_(?P<scan>[A-Za-z]+)_(?P<recon>\d+)"
                          r"(?P<suffix>\.nii\.gz|\.nii)")
_NUMBER = re.compile(r"[-+]?(?:nan|inf(?:inity)?|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", re.IGNORECASE)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_MISSING_TEXT = frozenset({"", "nan"})


@dataclass(frozen=True)
class VolumeName:
    """A CT-RATE volume name split up: ``train_1_a_1.nii.gz`` -> patient ``train_1``, scan ``train_1_a``,
    stem ``train_1_a_1`` (the study id)."""

    name: str
    patient_id: str
    scan: str
    stem: str

    def nested_path(self) -> str:
        """Where the release stores it, relative to the volumes folder."""
        return f"{self.patient_id}/{self.scan}/{self.name}"


def parse_volume_name(name: str) -> VolumeName:
    m = _VOLUME_NAME.fullmatch(name)
    if m is None:
        raise Skip("invalid_field", f"VolumeName {name!r} is not <split>_<patient>_<scan>_<reconstruction>.nii.gz")
    patient = f"{m['split']}_{m['patient']}"
    scan = f"{patient}_{m['scan']}"
    return VolumeName(name, patient, scan, f"{scan}_{m['recon']}")


def report_text(value: str | None) -> str:
    """A report cell as text: stripped; an empty cell or a literal ``nan`` (a pandas export of a missing
    value) is ``""``."""
    text = (value or "").strip()
    return "" if text.lower() in _MISSING_TEXT else text


def keyed_rows(path: Path, required: tuple[str, ...], what: str, warnings: SkipLog) -> dict[str, CsvRow]:
    """``{VolumeName: row}`` of a CT-RATE table; a repeated VolumeName keeps its first row (the later one
    is a ``duplicate_row`` warning), a row without a VolumeName an ``invalid_row`` warning."""
    _, rows = read_csv(path, required, what)
    out: dict[str, CsvRow] = {}
    for row in rows:
        name = row.values.get("VolumeName", "").strip()
        if not name:
            warnings.add("invalid_row", f"{path} line {row.line}: no VolumeName; row ignored")
            continue
        if name in out:
            warnings.add("duplicate_row", f"{path} line {row.line}: {name} already on line {out[name].line}; "
                                          "this row is ignored")
            continue
        out[name] = row
    return out


@dataclass(frozen=True)
class CtGeometry:
    """The metadata of one volume: HU rescale, voxel spacing (mm, array axes 0/1/2), and where present
    the DICOM orientation cosines (6, LPS), the first slice position (3, LPS, mm) and the stored shape
    ``(Columns, Rows, NumberofSlices)`` = array ``(X, Y, Z)``."""

    slope: float
    intercept: float
    spacing: tuple[float, float, float]
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    shape: tuple[int, int, int] | None


def _numbers(text: str, n: int, column: str) -> tuple[float, ...]:
    """``n`` numbers from a cell such as ``"[0.75, 0.75]"`` or ``"0.75"``."""
    found = _NUMBER.findall(text)
    if len(found) != n or _NUMBER.sub("", text).strip(" []()'\",;\t") != "":
        raise Skip("invalid_metadata", f"{column} {text!r} is not {n} number{'s' if n > 1 else ''}")
    values = tuple(float(x) for x in found)
    if not all(math.isfinite(v) for v in values):
        raise Skip("nonfinite_value", f"{column} {text!r} is not finite")
    return values


def _optional(values: dict[str, str], column: str, n: int) -> tuple[float, ...] | None:
    text = values.get(column, "").strip()
    if not text or text.lower() == "nan":
        return None
    return _numbers(text, n, column)


def parse_metadata(values: dict[str, str]) -> CtGeometry:
    """A metadata row -> :class:`CtGeometry`; raises :class:`Skip` (``invalid_metadata`` or
    ``nonfinite_value``) naming the bad column."""
    (slope,) = _numbers(values["RescaleSlope"], 1, "RescaleSlope")
    (intercept,) = _numbers(values["RescaleIntercept"], 1, "RescaleIntercept")
    xy = _numbers(values["XYSpacing"], 2, "XYSpacing")
    (z,) = _numbers(values["ZSpacing"], 1, "ZSpacing")
    spacing = (xy[0], xy[1], z)
    if min(spacing) <= 0:
        raise Skip("invalid_metadata", f"spacing {spacing} mm (XYSpacing, ZSpacing) must be positive")
    if slope == 0:
        raise Skip("invalid_metadata", "RescaleSlope is 0")
    orientation = _optional(values, "ImageOrientationPatient", 6)
    position = _optional(values, "ImagePositionPatient", 3)
    if orientation is not None:
        row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
        if min(np.linalg.norm(row), np.linalg.norm(col)) < 1e-6 or \
                abs(row @ col) > 1e-3 * np.linalg.norm(row) * np.linalg.norm(col):
            raise Skip("invalid_metadata", f"ImageOrientationPatient {orientation} is not two orthogonal directions")
    dims = [_optional(values, c, 1) for c in ("Columns", "Rows", "NumberofSlices")]
    shape = tuple(int(d[0]) for d in dims) if all(d is not None for d in dims) else None
    return CtGeometry(slope, intercept, spacing, orientation, position, shape)


def affine_from_metadata(geometry: CtGeometry, file_affine: np.ndarray) -> np.ndarray:
    """The RAS voxel-to-world affine ``[4, 4]`` of a CT-RATE volume (see the module docstring)."""
    spacing = np.asarray(geometry.spacing, dtype=np.float64)
    if geometry.orientation is not None:
        row = np.asarray(geometry.orientation[:3], dtype=np.float64)
        col = np.asarray(geometry.orientation[3:], dtype=np.float64)
        row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
        lps = np.stack([row, col, np.cross(row, col)], axis=1)
        directions = _LPS_TO_RAS[:3, :3] @ lps
    else:
        directions = np.asarray(file_affine, dtype=np.float64)[:3, :3]
        directions = directions / np.linalg.norm(directions, axis=0)
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing
    if geometry.position is not None:
        affine[:3, 3] = _LPS_TO_RAS[:3, :3] @ np.asarray(geometry.position, dtype=np.float64)
    else:
        affine[:3, 3] = np.asarray(file_affine, dtype=np.float64)[:3, 3]
    return affine
