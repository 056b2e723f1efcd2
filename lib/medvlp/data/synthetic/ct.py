"""The synthetic 3D CT corpus (``data/ct``): volumes, anatomy label maps, reports and ground truth.

``generate_ct`` writes, deterministically from ``seed`` (byte-identical on every machine):

- ``manifest.jsonl``: one record per study (``id``, ``patient_id``, ``volume``, ``segmentation``,
  ``findings``, ``impression``), as the corpus README specifies; after the good studies come 7
  deliberately broken records (``BAD_RECORDS``) that curation must reject, one per reason.
- ``ct_truth.jsonl``: per good study ``labels``, ``sentences``, ``lesion_mask``, ``lesions`` and
  ``border_touching`` (anatomies whose label touches the volume border: truncated field of view).
- ``volumes/<id>.nii.gz`` (int16 HU), ``segmentations/<id>.nii.gz`` and ``lesions/<id>.nii.gz``
  (uint8), shape ``[64, 64, 40]`` (x, y, z), spacing 6 x 6 x 8 mm, RAS, centred.

Randomness: study ``i`` draws from ``default_rng(SeedSequence([seed, i]))``; a patient's layout
from ``SeedSequence([seed, p], spawn_key=(1,))``; the broken records from ``spawn_key=(2,)``; the
patient plan (1-2 studies each) from ``spawn_key=(3,)``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medvlp.lexicon import AnatomyLexicon, load_anatomy_lexicon

from ._nifti import affine_for, nifti_gz_bytes
from ._phantom import SHAPE, SPACING, Patient, Study, render_study, sample_patient
from ._reports import write_report

AFFINE = affine_for(SHAPE, SPACING)
P_SECOND_STUDY = 0.4
SUBDIRS = ("volumes", "segmentations", "lesions")

#: The deliberately broken records appended to the manifest: (id, defect).
BAD_RECORDS: tuple[tuple[str, str], ...] = (
    ("CTX0001", "missing_volume"),
    ("CTX0002", "truncated_volume"),
    ("CTX0003", "non_finite_volume"),
    ("CTX0004", "segmentation_shape_mismatch"),
    ("CTX0005", "empty_report"),
    ("CTX0006", "path_outside_corpus"),
    ("CT00001", "duplicate_id"),
)


def study_id(i: int) -> str:
    """Id of the ``i``-th (0-based) study: ``CT00001``, ..."""
    return f"CT{i + 1:05d}"


def patient_id(p: int) -> str:
    """Id of the ``p``-th (0-based) patient: ``P00001``, ..."""
    return f"P{p + 1:05d}"


def patient_plan(seed: int, n_studies: int) -> list[int]:
    """Patient index of each study: consecutive studies share a patient (1 or 2 studies each).

    Prefix-stable: the first ``n`` entries do not depend on ``n_studies``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed], spawn_key=(3,)))
    two = rng.random(n_studies) < P_SECOND_STUDY
    plan: list[int] = []
    p = 0
    while len(plan) < n_studies:
        plan.extend([p] * (2 if two[p] else 1))
        p += 1
    return plan[:n_studies]


def _patient(seed: int, p: int) -> Patient:
    return sample_patient(np.random.default_rng(np.random.SeedSequence([seed, p], spawn_key=(1,))))


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n"


def _clear(out_dir: Path) -> None:
    """Remove the files a previous run wrote (so a smaller corpus leaves no stale volumes behind)."""
    for name in ("manifest.jsonl", "ct_truth.jsonl"):
        (out_dir / name).unlink(missing_ok=True)
    for sub in SUBDIRS:
        d = out_dir / sub
        d.mkdir(parents=True, exist_ok=True)
        for f in sorted(d.glob("*.nii.gz")):
            f.unlink()


def _write_study(out_dir: Path, sid: str, study: Study) -> dict[str, str | None]:
    vol, seg = f"volumes/{sid}.nii.gz", f"segmentations/{sid}.nii.gz"
    (out_dir / vol).write_bytes(nifti_gz_bytes(study.volume, AFFINE))
    (out_dir / seg).write_bytes(nifti_gz_bytes(study.segmentation, AFFINE))
    les = None
    if study.lesions:
        les = f"lesions/{sid}.nii.gz"
        (out_dir / les).write_bytes(nifti_gz_bytes(study.lesion_mask, AFFINE))
    return {"volume": vol, "segmentation": seg, "lesion_mask": les}


def _bad_records(out_dir: Path, seed: int, lex: AnatomyLexicon) -> list[dict]:
    """Write the files of the broken records and return their manifest records (fixed, seed-only)."""
    records = []
    for k, (rid, defect) in enumerate(BAD_RECORDS):
        rng = np.random.default_rng(np.random.SeedSequence([seed, k], spawn_key=(2,)))
        study = render_study(rng, sample_patient(rng), lex)
        report = write_report(rng, study.labels, study.facts, lex)
        stem = f"CTX{k + 1:04d}"
        vol, seg = f"volumes/{stem}.nii.gz", f"segmentations/{stem}.nii.gz"
        rec = {"id": rid, "patient_id": f"PX{k + 1:04d}", "volume": vol, "segmentation": seg,
               "findings": report.findings, "impression": report.impression}
        vol_bytes = nifti_gz_bytes(study.volume, AFFINE)
        seg_data = study.segmentation
        if defect == "missing_volume":
            vol_bytes = None
        elif defect == "truncated_volume":
            vol_bytes = vol_bytes[:200]
        elif defect == "non_finite_volume":
            v = study.volume.astype(np.float32)
            v[10:14, 30:34, 20] = np.nan
            v[40:42, 20:22, 5] = np.inf
            v[5, 5, 35] = -np.inf
            vol_bytes = nifti_gz_bytes(v, AFFINE)
        elif defect == "segmentation_shape_mismatch":
            seg_data = np.ascontiguousarray(seg_data[:, :, :32])
        elif defect == "empty_report":
            rec["findings"], rec["impression"] = "", ""
        elif defect == "path_outside_corpus":
            rec["volume"], vol_bytes = "../outside.nii.gz", None
        if vol_bytes is not None:
            (out_dir / vol).write_bytes(vol_bytes)
        (out_dir / seg).write_bytes(nifti_gz_bytes(seg_data, AFFINE))
        records.append(rec)
    return records


def generate_ct(out_dir: Path, *, seed: int = 0, n_studies: int = 600, progress: bool = True) -> dict:
    """Write the synthetic CT corpus to ``out_dir`` (normally ``data/ct``); see the module docstring.

    Files under ``volumes/``, ``segmentations/``, ``lesions/`` left by an earlier run are removed
    first. Returns summary counts: studies, patients, fully normal studies, studies with a border-
    touching anatomy, per-abnormality counts, lesion masks, the broken records and the bytes written.
    """
    if n_studies < 1:
        raise ValueError(f"generate_ct: n_studies must be >= 1, got {n_studies}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear(out_dir)
    lex = load_anatomy_lexicon()
    plan = patient_plan(seed, n_studies)

    manifest, truth = [], []
    counts: Counter[str] = Counter()
    n_normal = n_border = n_lesion = 0
    patient: Patient | None = None
    for i in tqdm(range(n_studies), desc="synthetic CT", unit="study", disable=not progress):
        if i == 0 or plan[i] != plan[i - 1]:
            patient = _patient(seed, plan[i])
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        study = render_study(rng, patient, lex)
        report = write_report(rng, study.labels, study.facts, lex)
        sid = study_id(i)
        paths = _write_study(out_dir, sid, study)
        manifest.append({"id": sid, "patient_id": patient_id(plan[i]), "volume": paths["volume"],
                         "segmentation": paths["segmentation"], "findings": report.findings,
                         "impression": report.impression})
        truth.append({"id": sid, "labels": {a.id: study.labels[a.id] for a in lex.anatomies},
                      "sentences": report.sentences, "lesion_mask": paths["lesion_mask"],
                      "lesions": study.lesions, "border_touching": study.border_touching})
        counts.update(x for v in study.labels.values() for x in v)
        n_normal += not any(study.labels.values())
        n_border += bool(study.border_touching)
        n_lesion += paths["lesion_mask"] is not None

    manifest.extend(_bad_records(out_dir, seed, lex))
    (out_dir / "manifest.jsonl").write_text("".join(_dumps(r) for r in manifest), encoding="utf-8")
    (out_dir / "ct_truth.jsonl").write_text("".join(_dumps(r) for r in truth), encoding="utf-8")
    total = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    return {
        "n_studies": n_studies,
        "n_patients": plan[-1] + 1,
        "n_records": len(manifest),
        "n_normal": n_normal,
        "n_border_touching": n_border,
        "n_lesion_masks": n_lesion,
        "abnormality_counts": {x.id: counts[x.id] for x in lex.abnormalities},
        "bad_records": [{"id": rid, "defect": d} for rid, d in BAD_RECORDS],
        "bytes": total,
    }


__all__ = ["BAD_RECORDS", "generate_ct", "patient_id", "patient_plan", "study_id"]
