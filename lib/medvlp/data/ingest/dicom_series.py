"""A tree of DICOM series -> NIfTI volumes in Hounsfield units, canonical RAS (one file per series).

The reading is :func:`medvlp.data.io.read_volume` (slices sorted along the slice normal by
``ImagePositionPatient``, ``RescaleSlope`` / ``RescaleIntercept`` applied, LPS -> RAS, reoriented to the
closest canonical RAS); this module only finds the series. Every file below ``src`` is tried as DICOM
(header only); files that are not DICOM, and DICOM files that are not slices of a volume (no
``ImagePositionPatient`` / ``ImageOrientationPatient`` / ``PixelSpacing``, e.g. a ``DICOMDIR``), are
counted as warnings. Slices are grouped by folder and ``SeriesInstanceUID``, so a folder holding two
series gives two volumes.

Outputs under ``dst``: ``<folder>.nii.gz`` for a folder with one series (``<src name>.nii.gz`` for ``src``
itself), ``<folder>/series_<SeriesNumber>_<last 8 of the UID>.nii.gz`` for a folder with several, and
``series.jsonl``: one line per volume written ``{folder, series_uid, slices, output, shape, spacing}``. A
manifest may name either the NIfTI file or the series folder itself as ``volume``.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medvlp.data.ingest.output_files import prepare_collection, write_jsonl
from medvlp.data.ingest.skip_log import IngestError, Skip, SkipLog
from medvlp.data.ingest.summary import REPORT_NAME, IngestSummary
from medvlp.data.io import Volume, nifti_gz_bytes, read_volume

__all__ = ["DicomSeries", "convert_dicom_tree", "find_series", "read_series"]

_SLICE_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


@dataclass(frozen=True)
class DicomSeries:
    """The slice files of one series in one folder (``folder`` relative to the tree, ``.`` for its root)."""

    folder: str
    uid: str
    number: str
    files: tuple[Path, ...]


def find_series(src: Path, warnings: SkipLog, progress: bool = False) -> list[DicomSeries]:
    """Every series below ``src``, sorted by folder then series number and UID."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    numbers: dict[tuple[str, str], str] = {}
    files = sorted(p for p in src.rglob("*") if p.is_file() and not any(part.startswith(".")
                                                                         for part in p.relative_to(src).parts))
    for path in tqdm(files, desc="dicom: headers", unit="file", disable=not progress):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as e:
            warnings.add("not_dicom", f"{path}: not a DICOM file ({type(e).__name__}); ignored")
            continue
        if any(ds.get(tag) is None for tag in _SLICE_TAGS):
            warnings.add("not_a_volume_slice", f"{path}: DICOM without {'/'.join(_SLICE_TAGS)}; ignored")
            continue
        folder = path.parent.relative_to(src).as_posix()
        key = (folder, str(ds.get("SeriesInstanceUID", "") or ""))
        groups[key].append(path)
        numbers.setdefault(key, str(ds.get("SeriesNumber", "") or ""))
    return [DicomSeries(folder, uid, numbers[(folder, uid)], tuple(paths))
            for (folder, uid), paths in sorted(groups.items(), key=lambda kv: (kv[0][0], numbers[kv[0]], kv[0][1]))]


def read_series(series: DicomSeries) -> Volume:
    """:func:`medvlp.data.io.read_volume` of exactly the series' files (linked into a temporary folder,
    so other files of their folder do not take part)."""
    with tempfile.TemporaryDirectory(prefix="medvlp-series-") as tmp:
        for i, path in enumerate(series.files):
            os.symlink(path.resolve(), Path(tmp) / f"{i:06d}_{path.name}")
        try:
            return read_volume(tmp)
        except Exception as e:  # name the real folder, not the temporary one
            raise ValueError(f"{type(e).__name__}: {str(e).replace(tmp, series.folder)}") from None


def _output_name(series: DicomSeries, root_name: str, several: bool) -> str:
    base = root_name if series.folder == "." else series.folder
    if not several:
        return f"{base}.nii.gz"
    return f"{base}/series_{series.number or 'x'}_{series.uid[-8:] or 'nouid'}.nii.gz"


def convert_dicom_tree(src: str | Path, dst: str | Path, *, overwrite: bool = False, strict: bool = False,
                       max_examples: int = 5, progress: bool = True) -> IngestSummary:
    """Convert every DICOM series below ``src`` into ``<dst>/<folder>.nii.gz`` (HU, canonical RAS).

    Args:
        src: a series folder or a tree of them.
        dst: output folder (must be empty unless ``overwrite``).
        overwrite / strict / max_examples / progress: as for the other adapters.

    Returns:
        :class:`IngestSummary` (also ``<dst>/ingest_report.json``); a series that does not read (missing
        slice, uneven gaps, mixed orientations) is skipped as ``unreadable_volume``.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise IngestError(f"DICOM folder {str(src)!r} not found; pass a series folder or a tree of them")
    if dst.resolve().is_relative_to(src.resolve()):
        raise IngestError(f"output folder {str(dst)!r} is inside the DICOM tree {str(src)!r}; write elsewhere")
    prepare_collection(dst, overwrite)
    summary = IngestSummary("dicom", str(src), str(dst), {"strict": strict}, SkipLog(max_examples, strict),
                            SkipLog(max_examples, strict=False))
    all_series = find_series(src, summary.warnings, progress)
    per_folder: dict[str, int] = defaultdict(int)
    for s in all_series:
        per_folder[s.folder] += 1

    def records():
        for series in tqdm(all_series, desc="dicom: series", unit="series", disable=not progress):
            summary.read += 1
            where = f"{src / series.folder} (series {series.uid or '?'}, {len(series.files)} files)"
            try:
                try:
                    vol = read_series(series)
                except Exception as e:
                    raise Skip("unreadable_volume", f"does not read as one volume ({e})") from None
                if not np.isfinite(vol.array).all():
                    raise Skip("nonfinite_voxels", "holds NaN or infinite voxels")
            except Skip as s:
                summary.skips.add(s.reason, f"{where}: {s.detail}")
                continue
            out = _output_name(series, src.name, per_folder[series.folder] > 1)
            (dst / out).parent.mkdir(parents=True, exist_ok=True)
            (dst / out).write_bytes(nifti_gz_bytes(vol.array, vol.affine))
            yield {"folder": series.folder, "series_uid": series.uid, "slices": len(series.files), "output": out,
                   "shape": list(vol.array.shape), "spacing": [round(float(x), 6) for x in vol.spacing]}

    summary.written = write_jsonl(dst / "series.jsonl", records())
    summary.outputs["series_index"] = str(dst / "series.jsonl")
    summary.write(dst / REPORT_NAME)
    return summary
