"""CT-RATE (chest CT volumes + reports + 18 abnormality labels) -> ``<dst>/ct/`` of the source corpus.

For each row of the reports table (see :mod:`medvlp.data.ingest.ct_rate_tables` for the files and
columns), the volume is read, converted to Hounsfield units (``stored * RescaleSlope + RescaleIntercept``,
rounded to whole HU, as CT-RATE's own fix script casts to int16) and written with the affine the metadata
gives; its TotalSegmentator output (``segmentations``: a folder with, per volume, ``<VolumeName>`` /
``<stem>.nii.gz``, a ``<stem>/`` folder of class masks, or the same under the release's nested
``<patient>/<scan>/`` folders) is mapped to anatomy labels (:mod:`medvlp.data.ingest.totalseg`) and
written with the same affine. It must share the volume's grid: the same stored shape, and the affine of
the source file or the corrected one (TotalSegmentator run on the raw or the fixed volume).

``volumes_fixed=True`` is for the release's ``train_fixed`` / ``valid_fixed`` volumes, whose HU and
geometry are already corrected: no rescale is applied, the file's affine is kept and its spacing checked
against the metadata.

Before any rescale the volume's values are checked against ``volumes_fixed``, as rescaling a volume that
is already in HU shifts it by ``RescaleIntercept`` (-1024 HU). The volume's air level is the
``AIR_PERCENTILE``-th (5th) percentile of its voxels above its minimum value (every second voxel along
each axis; the minimum is left out because scanners put it outside the reconstructed field of view, or
clip air to it, in both releases, e.g. stored 0 or HU -1024 / -3024). A chest CT has far more than 5 %
air and lung, so the level lies near air: near ``AIR_HU`` (-1000) when the values are HU, near
``(AIR_HU - RescaleIntercept) / RescaleSlope`` (24 for the usual -1024 / 1) when they are stored values.
The nearer of the two decides; when they lie less than ``MIN_AIR_SEPARATION`` (200) apart the rescale
barely moves air and nothing is checked. HU values without ``volumes_fixed``, or stored values with it,
stop the run with an :class:`IngestError` naming the volume, its air level and the flag to use (no
shifted volume is written).

Outputs under ``<dst>/ct/``:

- ``manifest.jsonl``: ``{id: <stem>, patient_id: <split>_<patient>, volume: volumes/<patient>/<stem>.nii.gz,
  segmentation: segmentations/<patient>/<stem>.nii.gz, findings: Findings_EN, impression: Impressions_EN,
  clinical_information: ClinicalInformation_EN, technique: Technique_EN}`` (the last two are extra fields
  that curation ignores);
- ``ct_truth.jsonl``: ``{id, labels: {anatomy: [abnormality ids]}, study_labels: [ids], unknown_labels: [ids],
  lesion_mask: null, lesions: [], border_touching: [anatomies on the volume border]}``; ``labels`` holds the
  anatomies some CT-RATE label speaks about (lung, heart, aorta, esophagus with medvlp's lexicon): the others
  are unlabelled, so absent rather than normal. CT-RATE has no sentence-level truth, so no ``sentences``;

Label values: a cell that is not 0 or 1 (``-1``, empty, ``nan``, text) leaves that one label unknown for the
volume: its id goes to ``unknown_labels`` (neither positive nor negative; evaluation leaves out exactly that
(volume, label) pair) and an ``unknown_label`` warning is counted per cell, while the row's known labels are
kept. A row with no known label at all, or a malformed row, writes no truth record (``invalid_labels``
warning); a volume without a labels row neither (``missing_labels``). ``ingest_report.json``'s details count
the unknown cells per label (``unknown_labels``);
- ``anatomy_ct_rate.json``: the anatomy lexicon with CT-RATE's labels as abnormalities (for
  ``curate.anatomy_lexicon``);
- ``ingest_report.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from medvlp.data.ingest.ct_rate_labels import CT_RATE_LABELS, anatomy_lexicon_json, truth_labels
from medvlp.data.ingest.ct_rate_tables import (
    METADATA_COLUMNS,
    REPORT_COLUMNS,
    CtGeometry,
    VolumeName,
    affine_from_metadata,
    keyed_rows,
    parse_metadata,
    parse_volume_name,
    report_text,
)
from medvlp.data.ingest.output_files import inside_source, prepare_collection, write_json, write_jsonl
from medvlp.data.ingest.skip_log import IngestError, Skip, SkipLog
from medvlp.data.ingest.source_tables import CsvRow, read_csv
from medvlp.data.ingest.summary import REPORT_NAME, IngestSummary
from medvlp.data.ingest.totalseg import (
    TotalSegMapping,
    border_anatomies,
    load_totalseg_mapping,
    read_totalseg,
    to_anatomy_labels,
)
from medvlp.data.io import nifti_gz_bytes
from medvlp.lexicon import AnatomyLexicon, load_anatomy_lexicon

__all__ = ["AIR_HU", "AIR_PERCENTILE", "DEFAULT_FILES", "LEXICON_NAME", "MIN_AIR_SEPARATION", "CtRateSplit",
           "air_level", "default_splits", "ingest_ct_rate"]

#: Per split: reports, metadata and labels tables, and the volumes folder, relative to the ``dataset`` folder.
DEFAULT_FILES = {
    "train": ("radiology_text_reports/train_reports.csv", "metadata/train_metadata.csv",
              "multi_abnormality_labels/train_predicted_labels.csv", "train"),
    "valid": ("radiology_text_reports/validation_reports.csv", "metadata/validation_metadata.csv",
              "multi_abnormality_labels/valid_predicted_labels.csv", "valid"),
}
LEXICON_NAME = "anatomy_ct_rate.json"
#: Largest difference (mm) between two affines' entries for them to describe one grid.
_AFFINE_TOLERANCE = 1e-3
#: Air in Hounsfield units.
AIR_HU = -1000.0
#: Percentile of a volume's voxels above its minimum taken as its air level (:func:`air_level`).
AIR_PERCENTILE = 5.0
#: Least distance (in the file's values) between air in HU and air as a stored value for a volume's air
#: level to tell the two apart.
MIN_AIR_SEPARATION = 200.0


@dataclass(frozen=True)
class CtRateSplit:
    """The tables and volume folder of one CT-RATE split (``labels`` may be None: no truth written)."""

    name: str
    reports: Path
    metadata: Path
    labels: Path | None
    volumes: Path


def _dataset_root(src: Path) -> Path:
    return src / "dataset" if (src / "dataset").is_dir() and not (src / "metadata").is_dir() else src


def default_splits(src: Path, names: tuple[str, ...] = ("train", "valid"), volumes_fixed: bool = False
                   ) -> list[CtRateSplit]:
    """The splits of a CT-RATE ``dataset`` folder (or the folder above it) whose reports table exists."""
    root = _dataset_root(src)
    out = []
    for name in names:
        if name not in DEFAULT_FILES:
            raise IngestError(f"unknown CT-RATE split {name!r}; use {sorted(DEFAULT_FILES)}")
        reports, metadata, labels, volumes = DEFAULT_FILES[name]
        if (root / reports).is_file():
            out.append(CtRateSplit(name, root / reports, root / metadata,
                                   root / labels if (root / labels).is_file() else None,
                                   root / (f"{volumes}_fixed" if volumes_fixed else volumes)))
    if not out:
        raise IngestError(f"no CT-RATE reports table under {str(root)!r} (looked for "
                          f"{[DEFAULT_FILES[n][0] for n in names if n in DEFAULT_FILES]}); point at the "
                          "dataset folder or pass the table paths")
    return out


def _first_existing(candidates: list[Path], folders: bool = False) -> Path | None:
    for p in candidates:
        if p.is_file() or (folders and p.is_dir()):
            return p
    return None


def _same_grid(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, atol=_AFFINE_TOLERANCE, rtol=0.0))


def air_level(values: np.ndarray) -> float | None:
    """A CT volume's air level, in its own units (HU or stored values): the ``AIR_PERCENTILE``-th percentile
    of its voxels (every second one along each axis) above its minimum value; None when no voxel is above
    the minimum. The minimum is left out: it is the scanner's padding outside the field of view or its
    clipped air, whose value says nothing of the units."""
    sample = values[::2, ::2, ::2]
    sample = sample[sample > sample.min()]
    return float(np.percentile(sample, AIR_PERCENTILE)) if sample.size else None


def _label_value(text: str) -> bool | None:
    """A label cell: True (1), False (0), or None (unknown: ``-1``, empty, ``nan``, anything else)."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return {1.0: True, 0.0: False}.get(value)


class _StudyConverter:
    """One reports row -> files written, manifest record and truth record (or :class:`Skip`)."""

    def __init__(self, collection: Path, segmentations: Path, mapping: TotalSegMapping, lexicon: AnatomyLexicon,
                 volumes_fixed: bool, warnings: SkipLog):
        self.collection, self.segmentations, self.mapping = collection, segmentations, mapping
        self.lexicon, self.volumes_fixed, self.warnings = lexicon, volumes_fixed, warnings
        self.seen: dict[str, str] = {}
        self.label_counts = {x.id: 0 for x in CT_RATE_LABELS}
        self.unknown_counts = {x.id: 0 for x in CT_RATE_LABELS}

    def _segmentation(self, vn: VolumeName) -> Path:
        root, nested = self.segmentations, self.segmentations / vn.patient_id / vn.scan
        found = _first_existing([root / vn.name, root / f"{vn.stem}.nii.gz", root / f"{vn.stem}.nii", root / vn.stem,
                                 nested / vn.name, nested / vn.stem], folders=True)
        if found is None:
            raise Skip("missing_segmentation", f"no TotalSegmentator output for {vn.name} in "
                                               f"{str(self.segmentations)!r} (looked for {vn.name}, "
                                               f"{vn.stem}.nii.gz, {vn.stem}/)")
        return found

    def _volume(self, path: Path, vn: VolumeName) -> tuple[np.ndarray, np.ndarray]:
        try:
            img = nib.load(str(path))
            data = img.get_fdata(dtype=np.float32)
        except Exception as e:
            raise Skip("unreadable_volume", f"volume {vn.name} does not decode ({type(e).__name__}: {e})") from None
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise Skip("unreadable_volume", f"volume {vn.name} has shape {data.shape}, not 3D")
        if not np.isfinite(data).all():
            raise Skip("nonfinite_voxels", f"volume {vn.name} holds {int((~np.isfinite(data)).sum())} NaN/infinite "
                                           "voxels")
        return data, np.asarray(img.affine, dtype=np.float64)

    def _check_units(self, stored: np.ndarray, geometry: CtGeometry, path: Path, name: str) -> None:
        """Raise :class:`IngestError` when the volume's air level (:func:`air_level`) says HU but
        ``volumes_fixed`` is off (a rescale would shift it), or stored values while it is on."""
        slope, intercept = geometry.slope, geometry.intercept
        stored_air = (AIR_HU - intercept) / slope
        level = air_level(stored)
        if abs(stored_air - AIR_HU) < MIN_AIR_SEPARATION or level is None:
            return
        in_hu = abs(level - AIR_HU) < abs(level - stored_air)
        if in_hu == self.volumes_fixed:
            return
        level_is = f"its air level (the {AIR_PERCENTILE:g}th percentile of the voxels above its minimum) is {level:.0f}"
        as_stored = (f"air as a stored value ({stored_air:.0f} = ({AIR_HU:g} - RescaleIntercept {intercept:g}) / "
                     f"RescaleSlope {slope:g})")
        if in_hu:
            message = (f"volume {name} ({path}) is already in Hounsfield units: {level_is}, near air in HU "
                       f"({AIR_HU:g}), not {as_stored}; rescaling would move that level to "
                       f"{level * slope + intercept:.0f} HU. It is a volume of the corrected *_fixed release: "
                       "rerun with --volumes-fixed (volumes_fixed=True)")
        else:
            message = (f"volume {name} ({path}) holds stored values, not Hounsfield units, although --volumes-fixed "
                       f"(volumes_fixed=True) is given: {level_is}, near {as_stored}, not air in HU ({AIR_HU:g}). "
                       "It is a volume of the raw release: rerun without --volumes-fixed so RescaleSlope / "
                       "RescaleIntercept are applied, or point --volumes at the *_fixed folder")
        if (self.collection / "volumes").exists():
            message += f"; add --overwrite, as {str(self.collection)!r} holds this run's partial output"
        raise IngestError(message)

    def __call__(self, row: CsvRow, split: CtRateSplit, metadata: dict[str, CsvRow]
                 ) -> tuple[dict, VolumeName, list[str]]:
        """``(manifest record, volume name, anatomies on the volume border)``; the files are written."""
        if row.problem:
            raise Skip(row.reason, row.problem)
        name = row.values["VolumeName"].strip()
        if not name:
            raise Skip("missing_field", "VolumeName is empty")
        if "/" in inside_source(name, "VolumeName"):
            raise Skip("invalid_field", f"VolumeName {name!r} must be a file name, not a path")
        vn = parse_volume_name(name)
        if vn.stem in self.seen:
            raise Skip("duplicate_id", f"{name} already on {self.seen[vn.stem]}")
        self.seen[vn.stem] = f"{split.reports.name} line {row.line}"
        findings, impression = report_text(row.values["Findings_EN"]), report_text(row.values["Impressions_EN"])
        if not (findings or impression):
            raise Skip("empty_report", "Findings_EN and Impressions_EN are both empty")
        meta = metadata.get(name)
        if meta is None:
            raise Skip("missing_metadata", f"{split.metadata.name} has no row for {name}")
        if meta.problem:
            raise Skip(meta.reason, f"{split.metadata} line {meta.line}: {meta.problem}")
        try:
            geometry = parse_metadata(meta.values)
        except Skip as s:
            raise Skip(s.reason, f"{split.metadata} line {meta.line}: {s.detail}") from None
        vol_path = _first_existing([split.volumes / vn.nested_path(), split.volumes / name])
        if vol_path is None:
            raise Skip("missing_file", f"volume {name} not found under {str(split.volumes)!r} (looked for "
                                       f"{vn.nested_path()} and {name})")
        seg_path = self._segmentation(vn)
        stored, file_affine = self._volume(vol_path, vn)
        if geometry.shape is not None and tuple(stored.shape) != geometry.shape:
            raise Skip("geometry_mismatch", f"volume {name} has shape {stored.shape}; metadata Columns x Rows x "
                                            f"NumberofSlices is {geometry.shape}")
        self._check_units(stored, geometry, vol_path, name)
        if self.volumes_fixed:
            affine, hu = file_affine, stored
            file_spacing = np.linalg.norm(file_affine[:3, :3], axis=0)
            if not np.allclose(file_spacing, geometry.spacing, atol=_AFFINE_TOLERANCE):
                raise Skip("geometry_mismatch", f"volume {name} has spacing {np.round(file_spacing, 4).tolist()} mm; "
                                                f"metadata says {list(geometry.spacing)}")
        else:
            affine = affine_from_metadata(geometry, file_affine)
            hu = stored * np.float32(geometry.slope) + np.float32(geometry.intercept)
        hu = np.round(hu)
        try:
            seg = read_totalseg(seg_path, self.mapping)
        except Exception as e:
            raise Skip("unreadable_segmentation", f"segmentation {seg_path.name} of {name} does not decode "
                                                  f"({type(e).__name__}: {e})") from None
        if seg.labels.shape != stored.shape:
            raise Skip("geometry_mismatch", f"segmentation {seg_path.name} has shape {seg.labels.shape}, volume "
                                            f"{name} has {stored.shape}")
        if not (_same_grid(seg.affine, file_affine) or _same_grid(seg.affine, affine)):
            raise Skip("geometry_mismatch", f"segmentation {seg_path.name} has an affine that is neither {name}'s "
                                            "nor the one its metadata gives; was it computed from this volume?")
        labels = to_anatomy_labels(seg.labels, self.mapping, self.lexicon)
        rel_vol = f"volumes/{vn.patient_id}/{vn.stem}.nii.gz"
        rel_seg = f"segmentations/{vn.patient_id}/{vn.stem}.nii.gz"
        for rel, array in ((rel_vol, hu), (rel_seg, labels)):
            (self.collection / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.collection / rel).write_bytes(nifti_gz_bytes(array, affine))
        record = {"id": vn.stem, "patient_id": vn.patient_id, "volume": rel_vol, "segmentation": rel_seg,
                  "findings": findings, "impression": impression,
                  "clinical_information": report_text(row.values["ClinicalInformation_EN"]),
                  "technique": report_text(row.values["Technique_EN"])}
        return record, vn, border_anatomies(labels, self.lexicon)

    def truth(self, vn: VolumeName, border: list[str], labels_row: CsvRow | None, table: Path | None
              ) -> dict | None:
        """The truth record of a written study (unknown cells listed in ``unknown_labels``, one ``unknown_label``
        warning each), or None (a ``missing_labels`` / ``invalid_labels`` warning)."""
        if table is None:
            return None
        if labels_row is None:
            self.warnings.add("missing_labels", f"{table} has no row for {vn.name}; no truth record for {vn.stem}")
            return None
        where = f"{table} line {labels_row.line}"
        if labels_row.problem:
            self.warnings.add("invalid_labels", f"{where}: {labels_row.problem}; no truth record for {vn.stem}")
            return None
        values = {x.column: _label_value(labels_row.values.get(x.column, "")) for x in CT_RATE_LABELS}
        unknown = [x for x in CT_RATE_LABELS if values[x.column] is None]
        if len(unknown) == len(CT_RATE_LABELS):
            cells = sorted({labels_row.values.get(x.column, "").strip() for x in CT_RATE_LABELS})
            self.warnings.add("invalid_labels", f"{where}: no label is 0 or 1 (values {cells}); no truth record "
                                                f"for {vn.stem}")
            return None
        for x in unknown:
            self.warnings.add("unknown_label", f"{where}: {x.column} is {labels_row.values.get(x.column, '')!r}, "
                                               f"not 0 or 1; {x.id} is unknown for {vn.stem} (left out of evaluation)")
            self.unknown_counts[x.id] += 1
        positive = {column for column, value in values.items() if value}
        by_anatomy, study = truth_labels(positive, self.lexicon)
        for x in CT_RATE_LABELS:
            self.label_counts[x.id] += x.column in positive
        return {"id": vn.stem, "labels": by_anatomy, "study_labels": study, "unknown_labels": [x.id for x in unknown],
                "lesion_mask": None, "lesions": [], "border_touching": border}


def _splits(src: Path, splits: tuple[str, ...] | None, reports, metadata, labels, volumes,
            volumes_fixed: bool) -> list[CtRateSplit]:
    explicit = {"reports": reports, "metadata": metadata, "labels": labels, "volumes": volumes}
    if all(v is None for v in explicit.values()):
        return default_splits(src, splits or ("train", "valid"), volumes_fixed)
    if splits is not None and len(splits) != 1:
        raise IngestError("table paths (--reports / --metadata / --labels / --volumes) describe one split; "
                          "pass a single --split")
    name = splits[0] if splits else "train"
    root = _dataset_root(src)
    defaults = DEFAULT_FILES.get(name)
    if defaults is None and any(v is None for k, v in explicit.items() if k != "labels"):
        raise IngestError(f"split {name!r} has no default file names; pass --reports, --metadata and --volumes")
    paths = {}
    for i, key in enumerate(("reports", "metadata", "labels", "volumes")):
        given = explicit[key]
        if given is not None:
            paths[key] = Path(given)
        elif defaults is not None:
            default = root / (f"{defaults[i]}_fixed" if key == "volumes" and volumes_fixed else defaults[i])
            paths[key] = default if key != "labels" or default.is_file() else None
        else:
            paths[key] = None
    return [CtRateSplit(name, paths["reports"], paths["metadata"], paths["labels"], paths["volumes"])]


def ingest_ct_rate(src: str | Path, dst: str | Path, *, segmentations: str | Path,
                   splits: tuple[str, ...] | None = None, reports: str | Path | None = None,
                   metadata: str | Path | None = None, labels: str | Path | None = None,
                   volumes: str | Path | None = None, volumes_fixed: bool = False,
                   totalseg_mapping: str | Path | None = None, anatomy_lexicon: str | Path | None = None,
                   limit: int | None = None, overwrite: bool = False, strict: bool = False, max_examples: int = 5,
                   progress: bool = True) -> IngestSummary:
    """Convert CT-RATE into ``<dst>/ct/`` (manifest, HU volumes, anatomy label maps, truth, lexicon, report).

    Args:
        src: CT-RATE's ``dataset`` folder (or the folder holding it).
        dst: the corpus folder (``data/``).
        segmentations: folder of TotalSegmentator outputs, found by volume name.
        splits: CT-RATE splits to read (default: ``train`` and ``valid``, those present).
        reports / metadata / labels / volumes: explicit table and folder paths of a single split.
        volumes_fixed: the volumes are the release's corrected ``*_fixed`` ones (no rescale, own affine).
        totalseg_mapping: TotalSegmentator class -> anatomy file (default: the shipped v2 one).
        anatomy_lexicon: base anatomy lexicon (default: medvlp's); its anatomies and labels are used.
        limit: read at most this many report rows per split (a trial run).
        overwrite / strict / max_examples / progress: as for the other adapters.

    Returns:
        :class:`IngestSummary` (also ``<dst>/ct/ingest_report.json``).
    """
    src, dst = Path(src), Path(dst)
    seg_root = Path(segmentations)
    if not seg_root.is_dir():
        raise IngestError(f"segmentation folder {str(seg_root)!r} not found; run TotalSegmentator on the volumes "
                          "first (see lib/medvlp/data/README.md, 'Bringing a public dataset')")
    lexicon = load_anatomy_lexicon(str(anatomy_lexicon) if anatomy_lexicon else None)
    mapping = load_totalseg_mapping(totalseg_mapping, lexicon)
    lexicon_json = anatomy_lexicon_json(lexicon)
    chosen = _splits(src, tuple(splits) if splits else None, reports, metadata, labels, volumes, volumes_fixed)
    collection = prepare_collection(dst / "ct", overwrite)
    summary = IngestSummary(
        "ct_rate", str(src), str(dst),
        {"splits": [{"name": s.name, "reports": str(s.reports), "metadata": str(s.metadata),
                     "labels": None if s.labels is None else str(s.labels), "volumes": str(s.volumes)} for s in chosen],
         "segmentations": str(seg_root), "volumes_fixed": volumes_fixed, "totalseg_mapping": mapping.path,
         "anatomy_lexicon": None if anatomy_lexicon is None else str(anatomy_lexicon), "limit": limit,
         "strict": strict},
        SkipLog(max_examples, strict), SkipLog(max_examples, strict=False))
    convert = _StudyConverter(collection, seg_root, mapping, lexicon, volumes_fixed, summary.warnings)
    truths: list[dict] = []

    def records():
        for split in chosen:
            _, rows = read_csv(split.reports, REPORT_COLUMNS, "the CT-RATE reports table")
            meta = keyed_rows(split.metadata, METADATA_COLUMNS, "the CT-RATE metadata table", summary.warnings)
            label_rows = {} if split.labels is None else keyed_rows(
                split.labels, ("VolumeName", *(x.column for x in CT_RATE_LABELS)), "the CT-RATE labels table",
                summary.warnings)
            for row in tqdm(rows[:limit] if limit is not None else rows, desc=f"ct_rate {split.name}",
                            unit="volume", disable=not progress):
                summary.read += 1
                where = f"{split.reports} line {row.line} ({row.values.get('VolumeName', '?').strip() or '?'})"
                try:
                    record, vn, border = convert(row, split, meta)
                except Skip as s:
                    summary.skips.add(s.reason, f"{where}: {s.detail}")
                    continue
                truth = convert.truth(vn, border, label_rows.get(vn.name), split.labels)
                if truth is not None:
                    truths.append(truth)
                yield record

    summary.written = write_jsonl(collection / "manifest.jsonl", records())
    summary.outputs["manifest"] = str(collection / "manifest.jsonl")
    if any(s.labels is not None for s in chosen):
        write_jsonl(collection / "ct_truth.jsonl", truths)
        summary.outputs["truth"] = str(collection / "ct_truth.jsonl")
    lex_path = write_json(collection / LEXICON_NAME, lexicon_json)
    summary.outputs["anatomy_lexicon"] = str(lex_path)
    summary.details = {"studies_with_truth": len(truths), "positive_labels": convert.label_counts,
                       "unknown_labels": convert.unknown_counts,
                       "notes": [f"set curate.anatomy_lexicon: {lex_path} to curate with CT-RATE's abnormalities"]}
    summary.write(collection / REPORT_NAME)
    return summary
