"""Evaluation sets: a curated split of figures or CT studies, decoded once, joined with its truth.

The curated shards (``reports/curated/shards``) hold what training saw; the ground truth that only
evaluation may read (finding labels, lesion masks) comes from the source corpus' ``*_truth.jsonl``
files (``data/figures/figures_truth.jsonl``, ``data/ct/ct_truth.jsonl``). A sample without a truth
record keeps its place but has no labels (``has_truth`` False); metrics skip it.

Figures are decoded at their stored size and kept as ``uint8``; :func:`figure_tensors` turns them
into model inputs for one image size. CT studies go through the evaluation branch of the training
:class:`~medvlp.train.transforms.VolumeTransform` (no randomness).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from medvlp.data.io import read_label_map, read_volume
from medvlp.lexicon import AnatomyLexicon, ConceptLexicon
from medvlp.train.data import ShardReader, decode_sample, find_shards, index_shards
from medvlp.train.transforms import ImageTransform, VolumeTransform


def read_truth(path: str | Path | None) -> dict[str, dict]:
    """``{id: record}`` of a ``*_truth.jsonl`` file; ``{}`` when ``path`` is None or missing."""
    if path is None or not Path(path).is_file():
        return {}
    out = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {line_no}: not valid JSON ({err.msg})") from err
            out[str(rec["id"])] = rec
    return out


def figure_findings(truth: dict) -> list[str]:
    """Finding concept ids drawn in a figure: its own and those of its panels (compound figures)."""
    found = list(truth.get("findings") or [])
    for panel in truth.get("panels") or []:
        found.extend(panel.get("findings") or [])
    return sorted(set(found))


def _iter_split(curated_dir: str | Path, collection: str, split: str, limit: int | None, desc: str):
    paths = find_shards(curated_dir, collection, split)
    refs = index_shards(paths)[:limit]
    reader = ShardReader(paths)
    try:
        for ref in tqdm(refs, desc=desc, unit="sample", leave=False, disable=len(refs) < 50):
            yield decode_sample(reader.read(ref), f"shard {paths[ref.shard]}: ")
    finally:
        reader.close()


@dataclass
class FigureSet:
    """A split of 2D figures with their truth.

    ids, captions, modalities: per figure. images: list of ``uint8 [H, W]`` or ``[H, W, 3]`` arrays.
    labels: ``[N, C]`` bool, finding ``concept_ids[c]`` drawn in figure n (False without truth).
    has_truth: ``[N]`` bool. concept_ids: the C concepts of the lexicon, in lexicon order.
    mask_paths: per figure the truth mask PNG (absolute path) or None.
    """

    ids: list[str]
    captions: list[str]
    modalities: list[str]
    images: list[np.ndarray]
    labels: np.ndarray
    has_truth: np.ndarray
    concept_ids: list[str]
    mask_paths: list[Path | None]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: Sequence[int]) -> FigureSet:
        idx = list(index)
        return FigureSet([self.ids[i] for i in idx], [self.captions[i] for i in idx],
                         [self.modalities[i] for i in idx], [self.images[i] for i in idx],
                         self.labels[idx], self.has_truth[idx], self.concept_ids,
                         [self.mask_paths[i] for i in idx])


def load_figures(curated_dir: str | Path, split: str, lexicon: ConceptLexicon,
                 truth_path: str | Path | None = None, limit: int | None = None) -> FigureSet:
    """Decode the figures of ``split`` from the curated shards and attach their truth.

    Args:
        curated_dir: the curate stage's output folder (``reports/curated``).
        split: ``train``, ``val`` or ``test``.
        lexicon: the concept lexicon (its concepts are the label columns).
        truth_path: ``figures_truth.jsonl`` (None: no labels).
        limit: keep only the first ``limit`` figures in shard order.
    """
    truth = read_truth(truth_path)
    root = Path(truth_path).parent if truth_path is not None else None
    concept_ids = [c.id for c in lexicon.concepts]
    column = {c: i for i, c in enumerate(concept_ids)}
    ids, captions, modalities, images, rows, has_truth, masks = [], [], [], [], [], [], []
    for sample in _iter_split(curated_dir, "figures", split, limit, f"figures/{split}"):
        meta = sample["meta"]
        fid = str(meta["id"])
        rec = truth.get(fid)
        row = np.zeros(len(concept_ids), dtype=bool)
        if rec is not None:
            row[[column[c] for c in figure_findings(rec) if c in column]] = True
        ids.append(fid)
        captions.append(meta["caption"])
        modalities.append(meta.get("modality") or (rec or {}).get("modality") or "")
        images.append(sample["image"])
        rows.append(row)
        has_truth.append(rec is not None)
        masks.append(root / rec["mask"] if rec is not None and rec.get("mask") and root is not None else None)
    labels = np.stack(rows) if rows else np.zeros((0, len(concept_ids)), dtype=bool)
    return FigureSet(ids, captions, modalities, images, labels, np.asarray(has_truth, dtype=bool),
                     concept_ids, masks)


def figure_tensors(images: Sequence[np.ndarray], image_size: int) -> torch.Tensor:
    """Evaluation transform of every figure (resize + centre crop, CLIP normalisation): ``[N, 3, S, S]``."""
    transform = ImageTransform(image_size)
    if not images:
        return torch.zeros(0, 3, image_size, image_size)
    return torch.stack([transform(im, None) for im in images])


@dataclass
class CTSet:
    """A split of CT studies with their truth, transformed for one volume size.

    volumes: ``[N, 1, X, Y, Z]`` float32 in [0, 1]; label_maps: ``[N, X, Y, Z]`` int16; reports:
    per study the report text (impression + findings); labels: ``[N, K]`` bool, abnormality
    ``abnormality_ids[k]`` present; anatomy_of: per abnormality its anatomy id; has_truth: ``[N]``.
    anatomy_ids: the A anatomies of the lexicon, in order; intact: ``[N, A]`` bool, the anatomy is intact
    in the crop (:func:`intact_anatomies`; None = not computed, everything counts as intact);
    anatomy_texts: per study ``{anatomy: text}`` of the curated report decomposition (fVLM), or None.
    known: ``[N, K]`` bool, the label of the pair is known (False: the truth lists it in ``unknown_labels``,
    e.g. a CT-RATE cell of -1; such pairs are not scored); None = every label known.
    """

    ids: list[str]
    volumes: torch.Tensor
    label_maps: torch.Tensor
    reports: list[str]
    labels: np.ndarray
    has_truth: np.ndarray
    abnormality_ids: list[str]
    anatomy_of: list[str]
    anatomy_ids: list[str] | None = None
    intact: np.ndarray | None = None
    anatomy_texts: list[dict[str, str]] | None = None
    known: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def intact_anatomies(label_maps: torch.Tensor, labels: Sequence[int], full_sizes: np.ndarray,
                     min_fraction: float) -> np.ndarray:
    """Which anatomies are intact in each crop, as fVLM's zero-shot protocol scores only those.

    Anatomy a is intact in study n when it has voxels in the crop, none of them on the crop's outermost
    voxel layer, and the crop holds at least ``min_fraction`` of it (fVLM: about 90% of the organ).

    Args:
        label_maps: ``[N, X, Y, Z]`` integer labels of the crops (0 = background).
        labels: the A label values, in anatomy order.
        full_sizes: ``[N, A]`` voxels of each anatomy in the whole (uncropped) segmentation, in the crop's
            voxel units.
        min_fraction: in [0, 1].

    Returns:
        ``[N, A]`` bool.

    Raises:
        ValueError: ``min_fraction`` outside [0, 1], or ``full_sizes`` not ``[N, A]``.
    """
    if not 0.0 <= float(min_fraction) <= 1.0:
        raise ValueError(f"intact_min_fraction must be in [0, 1], got {min_fraction!r}")
    lab = torch.as_tensor(list(labels), dtype=label_maps.dtype)
    n = label_maps.shape[0]
    full = np.asarray(full_sizes, dtype=np.float64)
    if full.shape != (n, len(lab)):
        raise ValueError(f"full_sizes must be [N, A] = [{n}, {len(lab)}], got {full.shape}")
    counts = torch.stack([(label_maps == v).reshape(n, -1).sum(1) for v in lab], dim=1).numpy()  # [N, A]
    faces = torch.cat([label_maps[:, [0, -1]].reshape(n, -1), label_maps[:, :, [0, -1]].reshape(n, -1),
                       label_maps[:, :, :, [0, -1]].reshape(n, -1)], dim=1)
    border = torch.stack([(faces == v).any(1) for v in lab], dim=1).numpy()  # [N, A]
    return (counts > 0) & ~border & (counts >= float(min_fraction) * full)


def load_ct(curated_dir: str | Path, split: str, lexicon: AnatomyLexicon, spatial_size: Sequence[int],
            truth_path: str | Path | None = None, hu_window: Sequence[float] = (-1150.0, 350.0),
            report_sections: Sequence[str] = ("impression", "findings"), limit: int | None = None,
            intact_min_fraction: float | None = None) -> CTSet:
    """Decode and transform the CT studies of ``split`` and attach their abnormality labels.

    Args:
        spatial_size: (X, Y, Z) of the model input (the crop around the anatomies).
        report_sections: joined in this order into the report text (as in training).
        intact_min_fraction: mark the intact anatomies (:func:`intact_anatomies`): the crop must hold this
            least fraction of the anatomy's voxels in the whole segmentation; None leaves ``intact`` unset.
            (Evaluation does not resample: voxel counts of the source and the crop are comparable.)
    """
    samples = _iter_split(curated_dir, "ct", split, limit, f"ct/{split}")
    return ct_set(samples, lexicon, spatial_size, read_truth(truth_path), hu_window=hu_window,
                  report_sections=report_sections, intact_min_fraction=intact_min_fraction)


def ct_set(samples: Iterable[dict], lexicon: AnatomyLexicon, spatial_size: Sequence[int], truth: dict[str, dict], *,
           hu_window: Sequence[float], report_sections: Sequence[str], intact_min_fraction: float | None) -> CTSet:
    """:class:`CTSet` of decoded CT samples (curated shards or an ingested corpus), through the evaluation
    branch of :class:`~medvlp.train.transforms.VolumeTransform`.

    Args:
        samples: dicts ``{"meta": {"id", report sections, optional "anatomy_text"}, "volume": [X, Y, Z] HU,
            "segmentation": [X, Y, Z] ints, "affine": [4, 4] or absent}`` (the form of the shards' decoder).
        truth: ``{id: truth record}`` (:func:`read_truth`); a record's ``unknown_labels`` mark pairs whose
            label is unknown (``known`` False).
        hu_window, report_sections, intact_min_fraction: as for :func:`load_ct`.
    """
    abn = list(lexicon.abnormalities)
    transform = VolumeTransform(spatial_size, hu_window=hu_window)
    ids, vols, labs, reports, rows, known, has_truth, texts, full = [], [], [], [], [], [], [], [], []
    anatomy_labels = [a.label for a in lexicon.anatomies]
    for sample in samples:
        meta = sample["meta"]
        sid = str(meta["id"])
        vol, lab = transform(sample["volume"], sample["segmentation"], sample.get("affine"), None)
        rec = truth.get(sid)
        row = np.zeros(len(abn), dtype=bool)
        if rec is not None:
            present = {(anatomy, a) for anatomy, found in (rec.get("labels") or {}).items() for a in found}
            row[:] = [(a.anatomy, a.id) in present for a in abn]
        unknown = set((rec or {}).get("unknown_labels") or ())
        ids.append(sid)
        vols.append(vol)
        labs.append(lab.to(torch.int16))
        reports.append(" ".join(str(meta.get(s) or "").strip() for s in report_sections).strip())
        texts.append(_anatomy_texts(meta.get("anatomy_text")))
        full.append([int((sample["segmentation"] == v).sum()) for v in anatomy_labels])
        rows.append(row)
        known.append([a.id not in unknown for a in abn])
        has_truth.append(rec is not None)
    size = tuple(int(s) for s in spatial_size)
    label_maps = torch.stack(labs) if labs else torch.zeros(0, *size, dtype=torch.int16)
    intact = None
    if intact_min_fraction is not None:
        full_sizes = np.asarray(full, dtype=np.float64).reshape(len(ids), len(anatomy_labels))
        intact = intact_anatomies(label_maps, anatomy_labels, full_sizes, intact_min_fraction)
    return CTSet(ids, torch.stack(vols) if vols else torch.zeros(0, 1, *size), label_maps, reports,
                 np.stack(rows) if rows else np.zeros((0, len(abn)), dtype=bool),
                 np.asarray(has_truth, dtype=bool), [a.id for a in abn], [a.anatomy for a in abn],
                 [a.id for a in lexicon.anatomies], intact, texts,
                 np.asarray(known, dtype=bool).reshape(len(ids), len(abn)))


def ingested_ct_samples(ct_dir: str | Path, ids: Sequence[str]) -> Iterator[dict]:
    """The studies ``ids`` of an ingested ``<corpus>/ct`` folder (``manifest.jsonl``; volume and
    segmentation paths relative to the folder), decoded as the curated shards decode them (canonical RAS,
    HU, the file's affine): dicts for :func:`ct_set`.

    Raises:
        KeyError: an id the manifest lacks.
    """
    root = Path(ct_dir)
    manifest = read_truth(root / "manifest.jsonl")  # {id: record}: any JSON Lines keyed by ``id``
    for sid in tqdm(ids, desc=f"{root.name} (ingested)", unit="study", leave=False, disable=len(ids) < 50):
        if sid not in manifest:
            raise KeyError(f"{root / 'manifest.jsonl'} has no study {sid!r}")
        rec = manifest[sid]
        vol = read_volume(root / rec["volume"])
        yield {"meta": rec, "volume": vol.array, "affine": vol.affine,
               "segmentation": read_label_map(root / rec["segmentation"])}


def load_ingested_ct(ct_dir: str | Path, ids: Sequence[str], lexicon: AnatomyLexicon, spatial_size: Sequence[int], *,
                     intact_min_fraction: float | None, hu_window: Sequence[float] = (-1150.0, 350.0),
                     report_sections: Sequence[str] = ("impression", "findings")) -> CTSet:
    """:func:`load_ct` for an ingested corpus (``medvlp ingest``'s ``<dst>/ct`` folder) instead of curated
    shards: the studies ``ids`` in that order, their truth from the folder's ``ct_truth.jsonl``, the same
    transform; ``anatomy_texts`` are empty (no curation ran). Returns a :class:`CTSet` of N = len(ids).

    Raises:
        KeyError: an id the folder's manifest lacks.
    """
    return ct_set(ingested_ct_samples(ct_dir, ids), lexicon, spatial_size, read_truth(Path(ct_dir) / "ct_truth.jsonl"),
                  hu_window=hu_window, report_sections=report_sections, intact_min_fraction=intact_min_fraction)


def _anatomy_texts(value) -> dict[str, str]:
    """``{anatomy: text}`` from the curated ``anatomy_text`` (a dict, or a list of ``{anatomy, text}``)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    return {row["anatomy"]: row["text"] for row in value}
