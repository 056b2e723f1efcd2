"""Builders of small sources in the real formats of MedConcept-23M, ROCO, CT-RATE and TotalSegmentator
(no tests here). Everything is generated into a temporary folder; nothing binary is committed.

The formats follow the releases (see the docstrings of ``medvlp.data.ingest.medconcept`` / ``roco`` /
``ct_rate_tables`` for the sources): MedConcept-23M's JSONL fields and ``umls_meta_info`` entries; ROCO's
tab-separated ``captions.txt`` (a leading space before the caption), ``cuis*.txt`` (an empty field after
the id), ``dlinks*.txt`` (a wget command line with the PMC package URL) and ``images/<PMC>_<name>``;
CT-RATE's reports / metadata / labels CSVs (``XYSpacing`` as a string list) and nested volume folders;
TotalSegmentator v2 multilabel maps (class ids of task ``total``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from medvlp.data.ingest.ct_rate_labels import CT_RATE_LABELS

# TotalSegmentator v2 class ids (task "total") used by the fixtures.
TS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5, "stomach": 6, "pancreas": 7,
      "lung_upper_lobe_left": 10, "lung_lower_lobe_right": 14, "esophagus": 15, "trachea": 16, "heart": 51,
      "aorta": 52, "rib_left_1": 92}


# ------------------------------------------------------------------------------------------ images

def smooth_image(seed: int, size: int = 48, rgb: bool = True) -> np.ndarray:
    """A distinct low-frequency image (distinct perceptual hashes for distinct seeds)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 6, 3) if rgb else (6, 6), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def save_image(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


# -------------------------------------------------------------------------------------- MedConcept

def umls_span(caption: str, phrase: str, cui: str, similarity: float = 1.0, occurrence: int = 0) -> dict:
    """A ``umls_meta_info`` entry as MedConcept-23M writes it (char offsets end-exclusive, plus tokens)."""
    start = -1
    for _ in range(occurrence + 1):
        start = caption.index(phrase, start + 1)
    words = phrase.lower().split()
    n_before = len(caption[:start].split())
    return {"umls_cui": cui, "umls_similarity": similarity, "start_char": start, "end_char": start + len(phrase),
            "tokens": words, "start_token": n_before, "end_token": n_before + len(words)}


def medconcept_record(i: int, caption: str, spans: list[dict], image: str, pmc: str) -> dict:
    """One metadata line with every field of the release."""
    return {"pmid": str(30000000 + i), "pmc": pmc, "fig_caption": caption, "fig_id": f"F{i}",
            "fig_label": f"Figure {i}", "fig_list-items": [], "graphic_ref": f"g{i:03d}", "href": f"g{i:03d}",
            "caption": caption, "image": image, "umls_meta_info": spans}


def write_jsonl_lines(path: Path, lines: list[dict | str | bytes]) -> Path:
    """JSON Lines from dicts, raw text lines or raw bytes lines (to plant broken lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            f.write((line.encode("utf-8") if isinstance(line, str) else line) + b"\n")
    return path


FINDINGS = [("pleural effusion", "C0032227"), ("lung nodule", "C0034079"), ("cardiomegaly", "C0018800"),
            ("ascites", "C0003962"), ("drusen", "C0730316"), ("melanoma", "C0025202")]


def medconcept_corpus(root: Path, n: int = 20) -> tuple[Path, Path]:
    """``n`` good MedConcept-23M figures (2 per article), distinct images; returns (metadata, image folder)."""
    images, lines = root / "images", []
    for i in range(n):
        name, cui = FINDINGS[i % len(FINDINGS)]
        caption = f"Figure {i}: an image showing {name} in a patient; scale bar 1 cm."
        image = f"{i:032x}.jpg" if i % 2 else f"{i:032x}.png"
        save_image(images / image, smooth_image(100 + i))
        spans = [umls_span(caption, name, cui, 0.97), umls_span(caption, "patient", "C0030705", 0.91),
                 umls_span(caption, "scale", "C0175659", 0.55)]
        lines.append(medconcept_record(i, caption, spans, image, str(5000000 + i // 2)))
    return write_jsonl_lines(root / "meta.jsonl", lines), images


# ------------------------------------------------------------------------------------------- ROCO

@dataclass
class RocoFigure:
    rid: str
    caption: str | bytes | None          # None: no caption line; bytes: a raw (possibly non-UTF-8) line tail
    cuis: list[str]
    pmc: str
    image: str
    write_image: bool = True
    image_bytes: bytes | None = None      # a broken image file instead of a real one
    leading: str = " "                    # the release's space(s) between the tab and the caption


def write_roco_part(part: Path, figures: list[RocoFigure], *, revised: bool = False,
                    extra_links: list[bytes] = ()) -> Path:
    """One ROCO split folder: captions / cuis / dlinks files and ``images/`` as fetch.py fills it."""
    part.mkdir(parents=True, exist_ok=True)
    suffix = "_tp_test_revised" if revised else ""
    with open(part / "captions.txt", "wb") as cap, open(part / f"cuis{suffix}.txt", "wb") as cui, \
            open(part / f"dlinks{suffix}.txt", "wb") as links:
        for f in figures:
            if f.caption is not None:
                tail = f.caption if isinstance(f.caption, bytes) else f.caption.encode("utf-8")
                cap.write(f.rid.encode() + b"\t" + f.leading.encode() + tail + b"\n")
            cui.write(("\t".join([f.rid, "", *f.cuis]) if f.cuis else f"{f.rid}\t").encode() + b"\n")
            url = f"ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/8d/34/{f.pmc}.tar.gz"
            links.write(f"{f.rid}\twget -r {url} -P /path/to/Dir\t{f.image}\n".encode())
        for raw in extra_links:
            links.write(raw + b"\n")
    for i, f in enumerate(figures):
        target = part / "images" / f"{f.pmc}_{f.image}"
        if f.image_bytes is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.image_bytes)
        elif f.write_image and "/" not in f.image:
            save_image(target, smooth_image(300 + i + 17 * len(part.name)))
    return part


# ---------------------------------------------------------------------------------------- CT-RATE

REPORT_HEADER = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
METADATA_HEADER = ["VolumeName", "Manufacturer", "SeriesDescription", "ManufacturerModelName", "PatientSex",
                   "PatientAge", "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns", "XYSpacing",
                   "RescaleIntercept", "RescaleSlope", "RescaleType", "NumberofSlices", "ZSpacing", "StudyDate"]
LABEL_HEADER = ["VolumeName", *(x.column for x in CT_RATE_LABELS)]
SHAPE = (24, 20, 12)                      # stored array [X = Columns, Y = Rows, Z = slices]


def _fmt(values) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


@dataclass
class CtStudy:
    """One CT-RATE volume and its table rows; fields left None write the usual value."""

    name: str                                             # VolumeName, e.g. train_3_a_1.nii.gz
    findings: str = "The heart is enlarged. Lungs are clear."
    impression: str = "Cardiomegaly."
    positives: tuple[str, ...] = ("Cardiomegaly",)
    slope: float = 1.0
    intercept: float = -1024.0
    xy: str = "[0.75, 0.75]"
    z: str = "1.5"
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    position: tuple[float, ...] = (-9.0, -7.5, -40.0)
    rows_cols_slices: tuple[int, int, int] | None = None  # (Rows, Columns, NumberofSlices); None: from SHAPE
    seed: int = 0
    volume: str = "nifti"                  # nifti | missing | truncated | nan
    segmentation: str = "file"             # file | missing | shape | garbage | folder
    report_row: str | bytes | None = None  # a raw CSV line replacing the generated one
    metadata: bool = True
    labels: str | None = "ok"              # ok | None (no row) | a raw value for every label cell
    extra_meta: dict = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return self.name.removesuffix(".nii.gz")

    def nested(self) -> str:
        parts = self.stem.split("_")
        return f"{parts[0]}_{parts[1]}/{parts[0]}_{parts[1]}_{parts[2]}/{self.name}"


def stored_values(study: CtStudy) -> np.ndarray:
    """The stored (pre-rescale) int16 voxels of a study: air around a body, organs brighter."""
    rng = np.random.default_rng(study.seed)
    hu = np.full(SHAPE, -1000.0)
    hu[3:-3, 3:-3, 1:-1] = rng.integers(-900, -700, size=(SHAPE[0] - 6, SHAPE[1] - 6, SHAPE[2] - 2))
    hu[8:16, 7:13, 3:9] = 40 + study.seed
    stored = np.round((hu - study.intercept) / study.slope)
    return stored.astype(np.int16)


def class_map(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A TotalSegmentator v2 multilabel map: a few organs as boxes (lung at the x border)."""
    seg = np.zeros(shape, dtype=np.uint8)
    seg[0:6, 2:18, 2:10] = TS["lung_upper_lobe_left"]     # touches the border x = 0
    seg[18:24, 2:18, 2:10] = TS["lung_lower_lobe_right"]  # touches x = X - 1
    seg[8:16, 7:13, 3:9] = TS["heart"]
    seg[10:12, 14:17, 2:10] = TS["aorta"]
    seg[12:14, 14:17, 2:10] = TS["esophagus"]
    seg[6:8, 2:6, 1:3] = TS["liver"]
    seg[16:18, 2:5, 1:3] = TS["spleen"]
    seg[8:10, 2:4, 1:2] = TS["trachea"]                  # not an anatomy of the lexicon: becomes 0
    seg[14:16, 17:19, 5:7] = TS["rib_left_1"]             # neither
    return seg


RAW_AFFINE = np.eye(4)                                    # raw CT-RATE files carry no usable geometry


def write_ct_rate(root: Path, studies: list[CtStudy], split: str = "train") -> tuple[Path, Path]:
    """A CT-RATE ``dataset`` folder for one split and a TotalSegmentator output folder.

    Returns ``(dataset folder, segmentation folder)``.
    """
    dataset, segs = root / "dataset", root / "totalseg"
    volumes = dataset / split
    prefix = "train" if split == "train" else "validation"
    label_prefix = "train" if split == "train" else "valid"
    segs.mkdir(parents=True, exist_ok=True)
    report_lines, meta_rows, label_rows = [], [], []
    for s in studies:
        stored = stored_values(s)
        if s.volume in ("nifti", "nan", "truncated"):
            path = volumes / s.nested()
            path.parent.mkdir(parents=True, exist_ok=True)
        if s.volume == "nifti":
            nib.save(nib.Nifti1Image(stored, RAW_AFFINE), path)
        elif s.volume == "nan":
            bad = stored.astype(np.float32)
            bad[1, 1, 1] = np.nan
            nib.save(nib.Nifti1Image(bad, RAW_AFFINE), path)
        elif s.volume == "truncated":
            nib.save(nib.Nifti1Image(stored, RAW_AFFINE), path)
            path.write_bytes(path.read_bytes()[:300])
        if s.segmentation == "file":
            nib.save(nib.Nifti1Image(class_map(), RAW_AFFINE), segs / s.name)
        elif s.segmentation == "shape":
            nib.save(nib.Nifti1Image(class_map((24, 20, 11)), RAW_AFFINE), segs / s.name)
        elif s.segmentation == "garbage":
            (segs / s.name).write_bytes(b"not a nifti file at all")
        elif s.segmentation == "folder":                   # TotalSegmentator's default: one mask per class
            folder = segs / s.stem
            folder.mkdir()
            for name, cid in TS.items():
                nib.save(nib.Nifti1Image((class_map() == cid).astype(np.uint8), RAW_AFFINE), folder / f"{name}.nii.gz")
        if s.report_row is None:
            report_lines.append(["Not given.", "Non-contrast axial images, 1.5 mm.", s.findings, s.impression])
        else:
            report_lines.append(s.report_row)
        rows, cols, slices = s.rows_cols_slices or (SHAPE[1], SHAPE[0], SHAPE[2])
        if s.metadata:
            meta = {"VolumeName": s.name, "Manufacturer": "SIEMENS", "SeriesDescription": "THORAX 1.5 B31f",
                    "ManufacturerModelName": "SOMATOM", "PatientSex": "M", "PatientAge": "065Y",
                    "ImagePositionPatient": _fmt(s.position), "ImageOrientationPatient": _fmt(s.orientation),
                    "Rows": str(rows), "Columns": str(cols), "XYSpacing": s.xy, "RescaleIntercept": repr(s.intercept),
                    "RescaleSlope": repr(s.slope), "RescaleType": "HU", "NumberofSlices": str(slices),
                    "ZSpacing": s.z, "StudyDate": "20200101", **s.extra_meta}
            meta_rows.append([meta[c] for c in METADATA_HEADER])
        if s.labels == "ok":
            label_rows.append([s.name, *("1" if x.column in s.positives else "0" for x in CT_RATE_LABELS)])
        elif s.labels is not None:
            label_rows.append([s.name, *(s.labels for _ in CT_RATE_LABELS)])
    reports = dataset / "radiology_text_reports" / f"{prefix}_reports.csv"
    reports.parent.mkdir(parents=True, exist_ok=True)
    with open(reports, "wb") as f:
        buf = _csv_text([REPORT_HEADER]).encode()
        for s, line in zip(studies, report_lines):
            if isinstance(line, bytes):
                buf += line + b"\r\n"
            elif isinstance(line, str):
                buf += line.encode() + b"\r\n"
            else:
                buf += _csv_text([[s.name, *line]]).encode()
        f.write(buf)
    _write_csv(dataset / "metadata" / f"{prefix}_metadata.csv", [METADATA_HEADER, *meta_rows])
    _write_csv(dataset / "multi_abnormality_labels" / f"{label_prefix}_predicted_labels.csv",
               [LABEL_HEADER, *label_rows])
    return dataset, segs


def set_label_cell(dataset: Path, split: str, volume: str, column: str, value: str) -> None:
    """Overwrite one cell of a split's labels table written by :func:`write_ct_rate` (e.g. a ``-1`` label).

    Raises:
        KeyError: no row for ``volume``.
    """
    path = dataset / "multi_abnormality_labels" / f"{'train' if split == 'train' else 'valid'}_predicted_labels.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    col = rows[0].index(column)
    hits = [row for row in rows[1:] if row[0] == volume]
    if not hits:
        raise KeyError(f"{path} has no row for {volume}")
    for row in hits:
        row[col] = value
    _write_csv(path, rows)


def _csv_text(rows: list[list[str]]) -> str:
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows(rows)                       # CRLF line ends and minimal quoting, as pandas writes
    return buf.getvalue()


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_csv_text(rows), encoding="utf-8", newline="")


def ct_rate_corpus(root: Path, n_patients: int = 8) -> tuple[Path, Path]:
    """A good CT-RATE split: ``n_patients`` patients, the first two with two reconstructions."""
    findings = ["The heart is enlarged. There is a small pericardial effusion. Lungs are clear.",
                "A 6 mm nodule in the right upper lobe. Emphysema in both lungs. The heart is normal in size.",
                "Bilateral pleural effusion with atelectasis. Aortic wall calcification.",
                "Hiatal hernia. The lungs and heart are unremarkable."]
    impressions = ["Cardiomegaly with pericardial effusion.", "Lung nodule. Emphysema.",
                   "Pleural effusion and atelectasis; arterial wall calcification.", "Hiatal hernia."]
    positives = [("Cardiomegaly", "Pericardial effusion"), ("Lung nodule", "Emphysema"),
                 ("Pleural effusion", "Atelectasis", "Arterial wall calcification", "Medical material"),
                 ("Hiatal hernia", "Lymphadenopathy")]
    studies = []
    for p in range(1, n_patients + 1):
        for r in range(1, 3 if p <= 2 else 2):
            k = (p - 1) % 4
            studies.append(CtStudy(f"train_{p}_a_{r}.nii.gz", findings[k], impressions[k], positives[k], seed=p + r))
    return write_ct_rate(root, studies)
