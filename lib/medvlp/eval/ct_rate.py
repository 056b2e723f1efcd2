"""CT-RATE's public zero-shot protocol on an ingested corpus: 18 labels, per scan, two prompt styles.

Papers on CT-RATE (CT-CLIP, fVLM, ...) report zero-shot multi-abnormality classification on its validation
split: per label the AUROC of a positive-vs-negative prompt score over the validation scans, and the mean
over the labels. :func:`score_ct_rate` runs that protocol for any CT model medvlp evaluates (fVLM with its
anatomy embeddings, the global-embedding models) straight on ``medvlp ingest ct_rate``'s output
(``<corpus>/ct``: manifest, HU volumes, anatomy label maps, ``ct_truth.jsonl``, ``anatomy_ct_rate.json``),
through the evaluation transform and encoder of the ``zero_shot`` stage
(:func:`~medvlp.eval.data.load_ingested_ct`, :func:`~medvlp.eval.encode.encode_volumes`).

Items are scans. CT-RATE names a volume ``<split>_<patient>_<scan>_<reconstruction>``; the reconstructions
of one scan (``valid_12_a_1``, ``valid_12_a_2``: one acquisition, several reconstructions) share one report
and so one label row. Each volume is encoded and scored on its own; then per (scan, label) pair:

- score: the mean of the scores of the scan's reconstructions that have one (:data:`SCORE_RULE`);
- label: the value its reconstructions' truth records give, where known; when two known values disagree the
  pair is left out (``labels_disagree``).

Every (scan, label) pair of the split is scored or left out under exactly one reason (the first that applies,
in :data:`EXCLUSION_REASONS` order), and the counts are written:

- ``no_truth``: no reconstruction has a truth record (the ingest's ``missing_labels`` / ``invalid_labels``);
- ``unknown_label``: no reconstruction has a known value for the label (a ``-1`` / empty cell: the truth
  record's ``unknown_labels``);
- ``labels_disagree``: the reconstructions' known values differ;
- ``no_anatomy_embedding``: an anatomy-embedding model (fVLM) and a label without an anatomy (``Medical
  material``, ``Lymphadenopathy``); fVLM's own evaluation scores only the 16 anatomy-bound labels;
- ``anatomy_absent``: fVLM, and no reconstruction has a token of the label's anatomy;
- ``anatomy_not_intact``: with ``intact_min_fraction``, the anatomy is not intact in any reconstruction's crop
  (:func:`~medvlp.eval.data.intact_anatomies`; every model alike, as in the ``zero_shot`` stage).

Prompt styles (:data:`PROMPT_STYLES`, :func:`label_prompts`):

- ``fvlm``: fVLM's official CT-RATE evaluation pairs, one prompt each: positive ``"<word>."``, negative
  ``"Not <word>."``, where the word is the label's column name except for four labels
  (:data:`FVLM_PROMPT_WORDS`: ``"Atelectatic."``, ``"Nodule."``, ``"Opacity."``, ``"Pulmonary fibrotic."``).
  fVLM gives no prompt for the two labels without an anatomy; the same pattern is used for them (scored by
  global-embedding models only).
- ``normal``: medvlp's ``ct_negative_prompt: normal`` (:func:`~medvlp.eval.prompts.disease_prompts` over the
  ingested lexicon): positive ``"<form>."`` for the label's name and synonyms (ensembled), negative the
  anatomy's normal text (``"Lung shows no significant abnormalities."``); the two labels without an anatomy
  have no normal text and keep the ``"Not <form>."`` negatives.

The score is ``softmax(t * [<v, p>, <v, n>])[0]`` (:func:`~medvlp.eval.zero_shot.prompt_pair_scores`), v the
label's anatomy embedding (fVLM) or the volume embedding. Outputs, in ``out_dir``:

- ``ct_rate_<style>.json``: per label ``auc``, ``ci`` (95% percentile bootstrap over scans,
  :func:`~medvlp.eval.metrics.auroc_table`), ``n_pos``, ``n_neg``, ``prompts {positive, negative}``; ``macro``
  (mean over the labels with both classes, with its CI) and ``macro_anatomy_labels`` (the same over the 16
  anatomy-bound labels, comparable between fVLM and global models); ``excluded_pairs`` by reason; the model
  description; the ingest's warning counts;
- ``ct_rate_<style>_scores.parquet``: ``item`` (scan id), ``class`` (label), ``label``, ``score``: the scored
  pairs, from which every AUROC can be recomputed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from torch import nn

from medvlp.data.ingest.ct_rate import LEXICON_NAME
from medvlp.data.ingest.ct_rate_labels import CT_RATE_LABELS, CtRateLabel
from medvlp.data.ingest.ct_rate_tables import parse_volume_name
from medvlp.data.ingest.skip_log import Skip
from medvlp.eval.data import load_ingested_ct, read_truth
from medvlp.eval.encode import encode_volumes
from medvlp.eval.evaluate import score_frame
from medvlp.eval.metrics import auroc_table
from medvlp.eval.prompts import Prompt, disease_prompts, fill
from medvlp.eval.zero_shot import prompt_pair_scores
from medvlp.lexicon import Abnormality, AnatomyLexicon, load_anatomy_lexicon
from medvlp.metrics_json import write_metrics
from medvlp.models import FVLM
from medvlp.models.volume_tower import has_volume_tower, volume_size

__all__ = ["EXCLUSION_REASONS", "FVLM_PROMPT_WORDS", "PROMPT_STYLES", "SCORE_RULE", "CtRateResult", "ScanTable",
           "fvlm_prompts", "label_prompts", "normal_prompts", "scan_of", "scan_table", "score_ct_rate",
           "volume_truth"]

PROMPT_STYLES = ("fvlm", "normal")
#: fVLM's official CT-RATE evaluation (its ``eval.py`` test items): the word of a label's prompt pair where it
#: is not the label's column name.
FVLM_PROMPT_WORDS = {"Atelectasis": "Atelectatic", "Lung nodule": "Nodule", "Lung opacity": "Opacity",
                     "Pulmonary fibrotic sequela": "Pulmonary fibrotic"}
#: Why a (scan, label) pair is not scored, in the order the reasons are tried.
EXCLUSION_REASONS = ("no_truth", "unknown_label", "labels_disagree", "no_anatomy_embedding", "anatomy_absent",
                     "anatomy_not_intact")
SCORE_RULE = ("item = scan (<split>_<patient>_<scan>); score = mean of the scores of its reconstructions that "
              "have one; label = its reconstructions' known label, the pair left out when they disagree")
COLUMNS = [x.column for x in CT_RATE_LABELS]


class ScanTable(NamedTuple):
    """Per-scan items. scans: S ids; labels ``[S, K]`` bool; scores ``[S, K]`` float (NaN where not
    valid); valid ``[S, K]`` bool (scored pairs); reconstructions ``[S]`` int; excluded: pairs left out by
    reason (every reason of :data:`EXCLUSION_REASONS`, zeros included)."""

    scans: list[str]
    labels: np.ndarray
    scores: np.ndarray
    valid: np.ndarray
    reconstructions: np.ndarray
    excluded: dict[str, int]


class CtRateResult(NamedTuple):
    """report: the JSON content (floats unrounded, NaN as None); scores: the parquet table; paths: the two
    files written (JSON, parquet)."""

    report: dict
    scores: pd.DataFrame
    paths: tuple[Path, Path]


def scan_of(volume_id: str) -> str:
    """The scan of a CT-RATE volume id: ``valid_12_a_2`` -> ``valid_12_a``.

    Raises:
        ValueError: the id is not ``<split>_<patient>_<scan>_<reconstruction>``.
    """
    try:
        return parse_volume_name(f"{volume_id}.nii.gz").scan
    except Skip as err:
        raise ValueError(f"{volume_id!r} is not a CT-RATE volume id (<split>_<patient>_<scan>_<reconstruction>)"
                         ) from err


def fvlm_prompts(label: CtRateLabel) -> tuple[list[Prompt], list[Prompt]]:
    """fVLM's pair of one label: ``(["<word>."], ["Not <word>."])`` (:data:`FVLM_PROMPT_WORDS`)."""
    word = FVLM_PROMPT_WORDS.get(label.column, label.column)
    return [fill("{concept}.", word)], [fill("Not {concept}.", word)]


def normal_prompts(label: CtRateLabel, lexicon: AnatomyLexicon) -> tuple[list[Prompt], list[Prompt]]:
    """medvlp's ``normal`` prompts of one label (:func:`~medvlp.eval.prompts.disease_prompts` with its
    lexicon entry); a label without an anatomy gets the ``not`` negatives.

    Raises:
        KeyError: ``lexicon`` lacks the label (not the ingested ``anatomy_ct_rate.json``).
    """
    if label.anatomy is None:
        return disease_prompts(Abnormality(label.id, "", label.name, label.synonyms), lexicon, "not")
    entry = {x.id: x for x in lexicon.abnormalities}.get(label.id)
    if entry is None:
        raise KeyError(f"the anatomy lexicon has no abnormality {label.id!r}; use the ingest's {LEXICON_NAME}")
    return disease_prompts(entry, lexicon, "normal")


def label_prompts(style: str, lexicon: AnatomyLexicon) -> list[tuple[list[Prompt], list[Prompt]]]:
    """``(positives, negatives)`` of each of the 18 labels, in :data:`CT_RATE_LABELS` order.

    Raises:
        ValueError: ``style`` not in :data:`PROMPT_STYLES`.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {style!r}")
    if style == "fvlm":
        return [fvlm_prompts(x) for x in CT_RATE_LABELS]
    return [normal_prompts(x, lexicon) for x in CT_RATE_LABELS]


def volume_truth(truth: dict[str, dict], ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels [V, 18], known [V, 18], has_truth [V])`` bool of volumes ``ids`` from their truth records
    (``labels`` by anatomy + ``study_labels`` positive; ``unknown_labels`` not known; no record: nothing
    known)."""
    labels = np.zeros((len(ids), len(CT_RATE_LABELS)), dtype=bool)
    known = np.zeros_like(labels)
    has_truth = np.zeros(len(ids), dtype=bool)
    for i, vid in enumerate(ids):
        rec = truth.get(vid)
        if rec is None:
            continue
        positive = {a for found in (rec.get("labels") or {}).values() for a in found}
        positive |= set(rec.get("study_labels") or ())
        unknown = set(rec.get("unknown_labels") or ())
        labels[i] = [x.id in positive for x in CT_RATE_LABELS]
        known[i] = [x.id not in unknown for x in CT_RATE_LABELS]
        has_truth[i] = True
    return labels, known, has_truth


def _scan_pair(labels: np.ndarray, known: np.ndarray, has_truth: np.ndarray, scores: np.ndarray,
               unscored: np.ndarray) -> tuple[bool | None, float, str | None]:
    """One (scan, label) pair from its R reconstructions (``[R]`` arrays): ``(label, score, reason)``, with
    ``reason`` None when the pair is scored."""
    if not has_truth.any():
        return None, math.nan, "no_truth"
    values = set(labels[known & has_truth].tolist())
    if not values:
        return None, math.nan, "unknown_label"
    if len(values) > 1:
        return None, math.nan, "labels_disagree"
    finite = np.isfinite(scores)
    if not finite.any():
        given = [r for r in unscored if r]
        if not given:
            raise ValueError("a volume's score is NaN without a reason; every NaN needs one of EXCLUSION_REASONS")
        return None, math.nan, min(given, key=EXCLUSION_REASONS.index)
    return values.pop(), float(scores[finite].mean()), None


def scan_table(volume_ids: Sequence[str], labels: np.ndarray, known: np.ndarray, has_truth: np.ndarray,
               scores: np.ndarray, unscored: np.ndarray) -> ScanTable:
    """Group V volumes into scans (first-appearance order) and build the per-scan items (module docstring).

    Args:
        volume_ids: V CT-RATE volume ids.
        labels, known: ``[V, K]`` bool; has_truth: ``[V]`` bool (:func:`volume_truth`).
        scores: ``[V, K]`` float, NaN where the volume is not scored.
        unscored: ``[V, K]`` str, the reason (of :data:`EXCLUSION_REASONS`) of each NaN score.

    Raises:
        ValueError: a volume id that is not CT-RATE's, arrays of other shapes, or a NaN score without a reason.
    """
    n, k = np.shape(scores)
    if np.shape(labels) != (n, k) or np.shape(known) != (n, k) or np.shape(unscored) != (n, k) or \
            np.shape(has_truth) != (n,) or len(volume_ids) != n:
        raise ValueError(f"scan_table: labels, known, unscored must be [V, K] = {(n, k)} like scores, has_truth [V] "
                         f"and volume_ids V; got {np.shape(labels)}, {np.shape(known)}, {np.shape(unscored)}, "
                         f"{np.shape(has_truth)}, {len(volume_ids)}")
    groups: dict[str, list[int]] = {}
    for i, vid in enumerate(volume_ids):
        groups.setdefault(scan_of(vid), []).append(i)
    s = len(groups)
    out_labels, valid = np.zeros((s, k), dtype=bool), np.zeros((s, k), dtype=bool)
    out_scores = np.full((s, k), np.nan)
    excluded = dict.fromkeys(EXCLUSION_REASONS, 0)
    unscored = np.asarray(unscored, dtype=object)
    for row, rows in enumerate(groups.values()):
        for c in range(k):
            label, score, reason = _scan_pair(labels[rows, c], known[rows, c], has_truth[rows], scores[rows, c],
                                              unscored[rows, c])
            if reason is not None:
                excluded[reason] += 1
                continue
            out_labels[row, c], out_scores[row, c], valid[row, c] = label, score, True
    return ScanTable(list(groups), out_labels, out_scores, valid,
                     np.asarray([len(r) for r in groups.values()]), excluded)


def _ct_folder(ingested_dir: str | Path) -> Path:
    """``<corpus>/ct`` (or the folder itself when it holds the manifest).

    Raises:
        FileNotFoundError: no ingested CT-RATE corpus there.
    """
    root = Path(ingested_dir)
    for folder in (root, root / "ct"):
        if (folder / "manifest.jsonl").is_file() and (folder / LEXICON_NAME).is_file():
            return folder
    raise FileNotFoundError(f"{str(root)!r} holds no ingested CT-RATE corpus (manifest.jsonl and {LEXICON_NAME} "
                            "in it or in its ct/ folder); run `medvlp ingest ct_rate` first")


def _split_ids(ct_dir: Path, split: str) -> list[str]:
    """Manifest ids of the volumes of ``split`` (``valid_*`` for ``valid``), manifest order.

    Raises:
        ValueError: none.
    """
    ids = [vid for vid in read_truth(ct_dir / "manifest.jsonl") if vid.split("_", 1)[0] == split]
    if not ids:
        raise ValueError(f"{ct_dir / 'manifest.jsonl'} has no volume of split {split!r} (ids {split}_<patient>_...)")
    return ids


def _unscored_reasons(model: nn.Module, lexicon: AnatomyLexicon, present: np.ndarray | None,
                      intact: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scorable [V, 18] bool, reason [V, 18] str)`` of each volume and label (module docstring)."""
    anatomy = {a.id: i for i, a in enumerate(lexicon.anatomies)}
    reason = np.full((n, len(CT_RATE_LABELS)), "", dtype=object)
    for c, x in enumerate(CT_RATE_LABELS):
        a = anatomy.get(x.anatomy) if x.anatomy else None
        if intact is not None and a is not None:
            reason[~intact[:, a], c] = "anatomy_not_intact"
        if isinstance(model, FVLM):
            if a is None:
                reason[:, c] = "no_anatomy_embedding"
            else:
                reason[~present[:, a], c] = "anatomy_absent"
    return reason == "", reason


def _label_metrics(table: ScanTable, names: list[str], n_boot: int, seed: int) -> dict:
    """:func:`~medvlp.eval.metrics.auroc_table` of the scan items over the columns ``names``."""
    cols = [COLUMNS.index(x) for x in names]
    return auroc_table(table.labels[:, cols], table.scores[:, cols], names, n_boot=n_boot, seed=seed,
                       valid=table.valid[:, cols])


def _none_if_nan(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _macro(result: dict) -> dict:
    m = result["macro"]
    return {"auc": _none_if_nan(m["auc"]), "ci": [_none_if_nan(m["ci_low"]), _none_if_nan(m["ci_high"])],
            "n_labels": m["n_classes"], "labels": [x for x in result if x not in ("macro", "skipped")]}


def _report(table: ScanTable, prompts: list[tuple[list[Prompt], list[Prompt]]], n_boot: int, seed: int) -> dict:
    """The per-label and macro part of the JSON report."""
    every = _label_metrics(table, COLUMNS, n_boot, seed)
    anatomy_bound = _label_metrics(table, [x.column for x in CT_RATE_LABELS if x.anatomy], n_boot, seed)
    labels = {}
    for c, (x, (pos, neg)) in enumerate(zip(CT_RATE_LABELS, prompts)):
        got = every.get(x.column, {})
        y, ok = table.labels[:, c], table.valid[:, c]
        labels[x.column] = {
            "id": x.id, "anatomy": x.anatomy, "auc": _none_if_nan(got.get("auc", math.nan)),
            "ci": [_none_if_nan(got.get("ci_low", math.nan)), _none_if_nan(got.get("ci_high", math.nan))],
            "n_pos": int((y & ok).sum()), "n_neg": int((~y & ok).sum()),
            "n_boot_valid": int(got.get("n_boot_valid", 0)),
            "prompts": {"positive": [p.text for p in pos], "negative": [p.text for p in neg]}}
    return {"labels": labels, "macro": _macro(every), "macro_anatomy_labels": _macro(anatomy_bound),
            "skipped_labels": list(every["skipped"])}


def _ingest_warnings(ct_dir: Path) -> dict[str, int]:
    path = ct_dir / "ingest_report.json"
    if not path.is_file():
        return {}
    return {k: v["count"] for k, v in json.loads(path.read_text("utf-8")).get("warnings", {}).items()}


def score_ct_rate(model: nn.Module, ingested_dir: str | Path, *, split: str, prompt_style: str, n_boot: int,
                  seed: int, out_dir: str | Path, description: str, intact_min_fraction: float | None,
                  spatial_size: Sequence[int] | None = None, slice_stride: int = 1,
                  batch_size: int = 8) -> CtRateResult:
    """CT-RATE's zero-shot protocol (module docstring) for ``model`` on an ingested corpus; writes
    ``<out_dir>/ct_rate_<prompt_style>.json`` and ``<out_dir>/ct_rate_<prompt_style>_scores.parquet``.

    Args:
        model: a medvlp CT model (fVLM, ct_global, RadCLIP).
        ingested_dir: ``medvlp ingest ct_rate``'s destination (or its ``ct/`` folder).
        split: the volumes' id prefix: ``valid`` (the papers' benchmark) or ``train``.
        prompt_style: ``fvlm`` or ``normal`` (:data:`PROMPT_STYLES`).
        n_boot, seed: bootstrap replicates (over scans) of each 95% CI and their seed.
        out_dir: folder of the two outputs (created).
        description: the model as it should be named in the report (e.g. its file and run).
        intact_min_fraction: score a label only where its anatomy is intact in the crop with at least this
            fraction of its voxels (the ``zero_shot`` stage's rule); None: every anatomy with voxels.
        spatial_size: (X, Y, Z) of the model input; None: the volume tower's input size (RadCLIP, which has
            no volume tower, needs it: its run's ``volume.spatial_size``).
        slice_stride, batch_size: as for :func:`~medvlp.eval.encode.encode_volumes`.

    Returns:
        :class:`CtRateResult`: the report (the JSON's content unrounded), the scores table, the paths.

    Raises:
        FileNotFoundError: no ingested corpus at ``ingested_dir``.
        ValueError: an unknown style, no volume of ``split``, no ``spatial_size`` for a model without a
            volume tower, or an fVLM model that shares no anatomy with the lexicon (one that knows fewer
            anatomies, as fVLM's release, is scored on those it knows: :func:`~medvlp.eval.encode.in_anatomy_order`).
    """
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
    ct_dir = _ct_folder(ingested_dir)
    lexicon = load_anatomy_lexicon(str(ct_dir / LEXICON_NAME))
    if spatial_size is None:
        if not has_volume_tower(model.config):
            raise ValueError(f"a {model.config.get('kind')!r} model has no volume tower: pass spatial_size (the CT "
                             "size it was trained with, its run's volume.spatial_size)")
        spatial_size = volume_size(model.config)
    ids = _split_ids(ct_dir, split)
    studies = load_ingested_ct(ct_dir, ids, lexicon, spatial_size, intact_min_fraction=intact_min_fraction)
    feats = encode_volumes(model, studies.volumes, studies.label_maps, batch_size=batch_size,
                           slice_stride=slice_stride, anatomy_labels=[a.label for a in lexicon.anatomies])
    prompts = label_prompts(prompt_style, lexicon)
    anatomy = {a.id: i for i, a in enumerate(lexicon.anatomies)}
    scores = prompt_pair_scores(model, feats, [p for p, _ in prompts], [n for _, n in prompts],
                                [anatomy[x.anatomy] if x.anatomy else None for x in CT_RATE_LABELS])
    present = None if feats.present is None else feats.present.numpy()
    scorable, reasons = _unscored_reasons(model, lexicon, present, studies.intact, len(ids))
    scores[~scorable] = np.nan
    table = scan_table(ids, *volume_truth(read_truth(ct_dir / "ct_truth.jsonl"), ids), scores, reasons)
    report = {"protocol": "CT-RATE zero-shot multi-abnormality classification, per scan", "model": description,
              "model_kind": model.config.get("kind"), "ingested": str(ct_dir), "split": split,
              "prompt_style": prompt_style, "n_boot": n_boot, "seed": seed, "intact_min_fraction": intact_min_fraction,
              "spatial_size": [int(s) for s in spatial_size], "score_rule": SCORE_RULE, "n_volumes": len(ids),
              "n_scans": len(table.scans), "n_pairs": int(table.valid.size), "n_pairs_scored": int(table.valid.sum()),
              "excluded_pairs": table.excluded, **_report(table, prompts, n_boot, seed),
              "ingest_warnings": _ingest_warnings(ct_dir)}
    frame = score_frame("ct_rate", table.scans, COLUMNS, table.labels, table.scores, table.valid).drop(columns="task")
    out = Path(out_dir)
    json_path = write_metrics(out / f"ct_rate_{prompt_style}.json", report, sort_keys=False)
    parquet_path = out / f"ct_rate_{prompt_style}_scores.parquet"
    frame.to_parquet(parquet_path, index=False)
    return CtRateResult(report, frame, (json_path, parquet_path))
