"""TotalSegmentator label maps -> anatomy label maps of the source corpus (values = anatomy ``label``).

A TotalSegmentator v2 output is either one multilabel NIfTI (``TotalSegmentator -i ct.nii.gz -o seg.nii.gz
--ml``; voxel value = class id of the ``total`` task) or a folder of binary masks, one ``<class name>.nii.gz``
per class (its default output). A mapping file lists the classes that become anatomies:
``{"classes": [{"id": 52, "name": "aorta", "anatomy": "aorta"}, ...]}``; the default,
``medvlp/resources/totalsegmentator_v2.json``, says where its ids come from. Unlisted classes become 0.

Arrays stay in their stored orientation (not reoriented): a segmentation is produced on the grid of the
volume it was computed from, and is written back with that volume's affine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from medvlp.data.ingest.output_files import prepare_collection
from medvlp.data.ingest.skip_log import IngestError, Skip, SkipLog
from medvlp.data.ingest.summary import REPORT_NAME, IngestSummary
from medvlp.data.io import nifti_gz_bytes
from medvlp.lexicon import AnatomyLexicon, load_anatomy_lexicon

__all__ = ["DEFAULT_MAPPING", "LabelMap", "TotalSegClass", "TotalSegMapping", "anatomy_voxels",
           "border_anatomies", "convert_totalseg", "load_totalseg_mapping", "read_totalseg", "to_anatomy_labels"]

DEFAULT_MAPPING = "totalsegmentator_v2.json"
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class TotalSegClass:
    id: int
    name: str
    anatomy: str


@dataclass(frozen=True)
class TotalSegMapping:
    """The TotalSegmentator classes that map to anatomies, and the file they were read from."""

    classes: tuple[TotalSegClass, ...]
    path: str


@dataclass(frozen=True)
class LabelMap:
    """An integer label map ``[X, Y, Z]`` in its stored orientation, and its affine ``[4, 4]`` (mm, RAS)."""

    labels: np.ndarray
    affine: np.ndarray


def load_totalseg_mapping(path: str | Path | None = None, lexicon: AnatomyLexicon | None = None) -> TotalSegMapping:
    """Read and check a mapping file (default: the shipped TotalSegmentator v2 one).

    Raises:
        ValueError: an entry lacks ``id`` / ``name`` / ``anatomy``, repeats an id or name, or names an
            anatomy that ``lexicon`` (default: medvlp's) does not have.
    """
    lexicon = lexicon if lexicon is not None else load_anatomy_lexicon()
    if path is None:
        shown = f"medvlp/resources/{DEFAULT_MAPPING}"
        raw = json.loads(resources.files("medvlp.resources").joinpath(DEFAULT_MAPPING).read_text("utf-8"))
    else:
        shown = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"TotalSegmentator mapping {shown!r} not found")
        raw = json.loads(Path(path).read_text("utf-8"))
    known = {a.id for a in lexicon.anatomies}
    classes, ids, names = [], set(), set()
    for i, entry in enumerate(raw.get("classes", [])):
        where = f"TotalSegmentator mapping {shown}: classes[{i}] {entry!r}"
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), int) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("anatomy"), str)):
            raise ValueError(f"{where}: expected {{\"id\": int, \"name\": str, \"anatomy\": str}}")
        if entry["id"] <= 0 or entry["id"] in ids or entry["name"] in names:
            raise ValueError(f"{where}: id must be positive and ids and names unique")
        if entry["anatomy"] not in known:
            raise ValueError(f"{where}: unknown anatomy {entry['anatomy']!r}; the anatomy lexicon has {sorted(known)}")
        ids.add(entry["id"])
        names.add(entry["name"])
        classes.append(TotalSegClass(entry["id"], entry["name"], entry["anatomy"]))
    if not classes:
        raise ValueError(f"TotalSegmentator mapping {shown}: no classes")
    return TotalSegMapping(tuple(classes), shown)


def _integer_array(img: nib.spatialimages.SpatialImage, shown: str) -> np.ndarray:
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{shown}: expected a 3D label map, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.round(data)
        if not np.all(np.isfinite(data)) or np.abs(rounded - data).max(initial=0.0) > 1e-3:
            raise ValueError(f"{shown}: holds non-integer values; a label map stores class ids")
        data = rounded.astype(np.int32)
    if data.size and data.min() < 0:
        raise ValueError(f"{shown}: holds negative values; class ids are >= 0")
    return data


def _mask_files(folder: Path, mapping: TotalSegMapping) -> list[tuple[TotalSegClass, Path]]:
    found = []
    for c in mapping.classes:
        for suffix in _NIFTI_SUFFIXES:
            if (folder / f"{c.name}{suffix}").is_file():
                found.append((c, folder / f"{c.name}{suffix}"))
                break
    return found


def read_totalseg(path: str | Path, mapping: TotalSegMapping) -> LabelMap:
    """A TotalSegmentator output as class ids: a multilabel NIfTI file, or a folder of per-class masks
    (only the mapping's classes are read; a voxel in two masks gets the later class of the mapping).

    Raises:
        ValueError / OSError: unreadable, not 3D, non-integer or negative values, masks of different grids,
            or a folder without a mask of any mapped class.
    """
    path = Path(path)
    if path.is_file():
        img = nib.load(str(path))
        return LabelMap(_integer_array(img, str(path)), np.asarray(img.affine, dtype=np.float64))
    files = _mask_files(path, mapping)
    if not files:
        raise ValueError(f"{path}: no mask file of a mapped class (expected e.g. {mapping.classes[0].name}.nii.gz)")
    out = affine = None
    for c, f in files:
        img = nib.load(str(f))
        mask = _integer_array(img, str(f))
        if out is None:
            out, affine = np.zeros(mask.shape, dtype=np.int16), np.asarray(img.affine, dtype=np.float64)
        elif mask.shape != out.shape or not np.allclose(img.affine, affine, atol=1e-3):
            raise ValueError(f"{f}: shape {mask.shape} / affine differ from {files[0][1].name}'s; masks of one "
                             "TotalSegmentator run share one grid")
        out[mask > 0] = c.id
    return LabelMap(out, affine)


def to_anatomy_labels(class_ids: np.ndarray, mapping: TotalSegMapping, lexicon: AnatomyLexicon) -> np.ndarray:
    """TotalSegmentator class ids ``[X, Y, Z]`` -> anatomy labels (``uint8`` when they fit, else ``int16``)."""
    top = max(int(class_ids.max(initial=0)), max(c.id for c in mapping.classes))
    labels = {a.id: a.label for a in lexicon.anatomies}
    dtype = np.uint8 if max(labels.values()) <= 255 else np.int16
    lut = np.zeros(top + 1, dtype=dtype)
    for c in mapping.classes:
        lut[c.id] = labels[c.anatomy]
    return lut[class_ids]


def anatomy_voxels(labels: np.ndarray, lexicon: AnatomyLexicon) -> dict[str, int]:
    """Voxels per anatomy of an anatomy label map, in lexicon order."""
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(a.label for a in lexicon.anatomies) + 1)
    return {a.id: int(counts[a.label]) for a in lexicon.anatomies}


def border_anatomies(labels: np.ndarray, lexicon: AnatomyLexicon) -> list[str]:
    """Anatomies whose label is on a face of the array (a truncated field of view), in lexicon order."""
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    on_border = set(np.unique(np.concatenate([f.ravel() for f in faces])).tolist())
    return [a.id for a in lexicon.anatomies if a.label in on_border]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _inputs(src: Path, mapping: TotalSegMapping) -> list[Path]:
    if src.is_file() or (src.is_dir() and _mask_files(src, mapping)):
        return [src]
    if not src.is_dir():
        raise IngestError(f"TotalSegmentator output {str(src)!r} not found")
    found = [p for p in sorted(src.iterdir()) if not p.name.startswith(".")
             and ((p.is_file() and p.name.endswith(_NIFTI_SUFFIXES)) or (p.is_dir() and _mask_files(p, mapping)))]
    if not found:
        raise IngestError(f"{str(src)!r} holds no TotalSegmentator output (NIfTI files, or folders of "
                          "<class>.nii.gz masks)")
    return found


def convert_totalseg(src: str | Path, dst: str | Path, *, mapping: str | Path | None = None,
                     anatomy_lexicon: str | Path | None = None, overwrite: bool = False, strict: bool = False,
                     max_examples: int = 5, progress: bool = True) -> IngestSummary:
    """Convert TotalSegmentator outputs into anatomy label maps ``<dst>/<name>.nii.gz``.

    Args:
        src: one output (a multilabel file or a mask folder) or a folder of them.
        dst: output folder (must be empty unless ``overwrite``).
        mapping: TotalSegmentator class -> anatomy file (default: the shipped v2 mapping).
        anatomy_lexicon: anatomy lexicon JSON (default: medvlp's); its ``label`` values are written.
        overwrite / strict / max_examples / progress: as for the other adapters.

    Returns:
        :class:`IngestSummary` (also ``<dst>/ingest_report.json``); ``details["voxels"]``: voxels per
        anatomy over all maps written. An anatomy absent from a map is a warning (``anatomy_absent``).
    """
    src, dst = Path(src), Path(dst)
    lexicon = load_anatomy_lexicon(str(anatomy_lexicon) if anatomy_lexicon else None)
    table = load_totalseg_mapping(mapping, lexicon)
    inputs = _inputs(src, table)
    prepare_collection(dst, overwrite)
    summary = IngestSummary("totalseg", str(src), str(dst),
                            {"mapping": table.path, "anatomy_lexicon": None if anatomy_lexicon is None
                             else str(anatomy_lexicon), "strict": strict},
                            SkipLog(max_examples, strict), SkipLog(max_examples, strict=False))
    totals = dict.fromkeys((a.id for a in lexicon.anatomies), 0)
    for path in tqdm(inputs, desc="totalseg", unit="map", disable=not progress):
        summary.read += 1
        try:
            try:
                seg = read_totalseg(path, table)
            except Exception as e:
                raise Skip("unreadable_segmentation", f"does not decode ({type(e).__name__}: {e})") from None
        except Skip as s:
            summary.skips.add(s.reason, f"{path}: {s.detail}")
            continue
        labels = to_anatomy_labels(seg.labels, table, lexicon)
        voxels = anatomy_voxels(labels, lexicon)
        absent = [a for a, n in voxels.items() if n == 0]
        if absent:
            summary.warnings.add("anatomy_absent", f"{path}: no voxel of {absent}")
        for a, n in voxels.items():
            totals[a] += n
        (dst / f"{_stem(path)}.nii.gz").write_bytes(nifti_gz_bytes(labels, seg.affine))
        summary.written += 1
    summary.details = {"voxels": totals}
    summary.write(dst / REPORT_NAME)
    return summary
