"""The curation stage (docs/architecture.md): source corpus in ``data/`` -> curated manifests, shards, report.

:func:`run_curation` does, for each collection:

1. validate the manifest (:mod:`medvlp.curate.records`): bad records are skipped and counted by reason
   (or, with ``strict``, the first one raises naming its file and line);
2. text: figures -> compound sub-captions, concept mentions with negation, the corpus's given spans
   merged in; CT -> report sentences assigned to anatomies, per-anatomy texts, normal anatomies;
3. split by group (article / patient) with a seeded hash (:mod:`medvlp.curate.split`);
4. figures only: remove near-duplicates by perceptual hash, within a split and against val/test
   (:mod:`medvlp.curate.dedup`);
5. write the outputs below, the report JSON and its figures.

Outputs (paths relative to ``data_dir`` inside the tables):

``out_dir/figures.parquet``, one row per kept figure, in manifest order:

=================== ================================================ =========================================
column              type                                             meaning
=================== ================================================ =========================================
id                  string                                           figure id
image               string                                           image path relative to ``data_dir``
caption             string                                           caption as published
article_id          string                                           split group
modality            string (null when the manifest has none)         modality id
split               string                                           ``train`` / ``val`` / ``test``
concepts            list<struct<concept_id: string, start_char:      every concept mention, by start;
                    int32, end_char: int32, source: string,          ``source`` = ``given`` | ``extracted``;
                    negated: bool>>                                  ``negated``: a negated mention ("no X")
negated_concepts    list<string>                                     ids of negated mentions (first-seen
                                                                     order, no repeats)
subcaptions         list<struct<label: string, start: int32,         compound panels (``[]`` if not compound)
                    end: int32>>
phash               string                                           64-bit perceptual hash, 16 hex digits
=================== ================================================ =========================================

``out_dir/ct.parquet``, one row per kept study, in manifest order: ``id``, ``patient_id``, ``volume``,
``segmentation`` (paths relative to ``data_dir``; ``volume`` may be a DICOM folder), ``findings``,
``impression``, ``split``, ``shape`` (``list<int32>``, canonical ``[X, Y, Z]``), ``anatomy_text``
(``list<struct<anatomy: string, text: string>>``, one entry per lexicon anatomy in lexicon order:
fVLM's per-anatomy text), ``is_normal`` (``list<struct<anatomy: string, normal: bool>>``, same
order: anatomy not named in the impression), ``sentences`` (``list<struct<section: string, start:
int32, end: int32, text: string, anatomies: list<string>>>``, offsets into their section). Lists of
structs (rather than maps) keep the lexicon order and read back in pandas as lists of dicts.

``out_dir/shards/{figures,ct}/{split}-{NNNNNN}.tar``: WebDataset shards (:mod:`medvlp.curate.shards`),
rewritten from scratch on every run. ``metrics_path``: the report (:mod:`medvlp.curate.curation_report`).
``figures_dir``: ``modalities.png``, ``concepts.png``, ``splits.png``, ``examples.png``.

A collection whose ``manifest.jsonl`` is absent is skipped (reported with ``"present": false``, empty
table, no shards); both absent is an error.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from medvlp.curate.compound_captions import SubCaption, split_compound_caption
from medvlp.curate.concept_extraction import ConceptExtractor, Mention, merge_given_mentions
from medvlp.curate.curation_report import (
    CT_TRUTH,
    FIGURES_TRUTH,
    ct_section,
    figures_section,
    read_truth,
    summarise,
    write_report,
)
from medvlp.curate.dedup import Removal, deduplicate, phash64
from medvlp.curate.plots import (
    CaptionExample,
    plot_concept_frequencies,
    plot_examples,
    plot_modalities,
    plot_split_sizes,
)
from medvlp.curate.records import CTRecord, FigureRecord, RejectLog, load_ct_records, load_figure_records
from medvlp.curate.report_decomposition import AnatomyAssigner, ReportDecomposition, decompose_report
from medvlp.curate.shards import encode_png, json_bytes, shard_dir, write_shards
from medvlp.curate.split import SPLIT_NAMES, assign_splits, validate_fractions
from medvlp.data.io import nifti_gz_bytes, read_image, read_volume
from medvlp.lexicon import AnatomyLexicon, ConceptLexicon, load_anatomy_lexicon, load_concept_lexicon
from medvlp.metrics_json import round_floats
from medvlp.stage_args import stage_function

__all__ = ["CT_SCHEMA", "FIGURES_SCHEMA", "run_curation"]

_SPAN = pa.struct([("concept_id", pa.string()), ("start_char", pa.int32()), ("end_char", pa.int32()),
                   ("source", pa.string()), ("negated", pa.bool_())])
_PANEL = pa.struct([("label", pa.string()), ("start", pa.int32()), ("end", pa.int32())])
FIGURES_SCHEMA = pa.schema([
    ("id", pa.string()), ("image", pa.string()), ("caption", pa.string()), ("article_id", pa.string()),
    ("modality", pa.string()), ("split", pa.string()), ("concepts", pa.list_(_SPAN)),
    ("negated_concepts", pa.list_(pa.string())), ("subcaptions", pa.list_(_PANEL)), ("phash", pa.string()),
])
_SENTENCE = pa.struct([("section", pa.string()), ("start", pa.int32()), ("end", pa.int32()),
                       ("text", pa.string()), ("anatomies", pa.list_(pa.string()))])
CT_SCHEMA = pa.schema([
    ("id", pa.string()), ("patient_id", pa.string()), ("volume", pa.string()), ("segmentation", pa.string()),
    ("findings", pa.string()), ("impression", pa.string()), ("split", pa.string()),
    ("shape", pa.list_(pa.int32())),
    ("anatomy_text", pa.list_(pa.struct([("anatomy", pa.string()), ("text", pa.string())]))),
    ("is_normal", pa.list_(pa.struct([("anatomy", pa.string()), ("normal", pa.bool_())]))),
    ("sentences", pa.list_(_SENTENCE)),
])


@dataclass
class _Figures:
    """Everything computed for the figures collection (lists aligned with ``records``)."""

    root: Path
    manifest: str
    records_read: int = 0
    records: list[FigureRecord] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    hashes: dict[str, int] = field(default_factory=dict)
    mentions: dict[str, list[Mention]] = field(default_factory=dict)
    subcaptions: dict[str, list[SubCaption]] = field(default_factory=dict)
    removed: dict[str, Removal] = field(default_factory=dict)

    def kept(self) -> Iterator[tuple[FigureRecord, str]]:
        return ((r, s) for r, s in zip(self.records, self.splits) if r.id not in self.removed)


@dataclass
class _CT:
    root: Path
    manifest: str
    records_read: int = 0
    records: list[CTRecord] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    decompositions: dict[str, ReportDecomposition] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ figures

def _curate_figures(root: Path, rejects: RejectLog, warnings: RejectLog, lexicon: ConceptLexicon,
                    fractions: Mapping[str, float], seed: int, max_distance: int, progress: bool) -> _Figures:
    fig = _Figures(root, str(root / "manifest.jsonl"))

    def remember_hash(rid: str, pixels: np.ndarray) -> None:     # hashed while validating: one decode
        fig.hashes[rid] = phash64(pixels)

    fig.records, fig.records_read = load_figure_records(root, rejects, progress=progress,
                                                        on_image=remember_hash)
    extractor = ConceptExtractor(lexicon)
    for rec in tqdm(fig.records, desc="figures: text", unit="fig", disable=not progress):
        fig.subcaptions[rec.id] = split_compound_caption(rec.caption)
        extracted = extractor.extract(rec.caption)
        fig.mentions[rec.id], problems = merge_given_mentions(rec.caption, rec.concepts, extracted, lexicon)
        for problem in problems:
            warnings.add("invalid_given_span", f"{fig.manifest} line {rec.line} ({rec.id}): {problem}")
    fig.splits = assign_splits([r.article_id for r in fig.records], fractions, seed)
    fig.removed = deduplicate([r.id for r in fig.records], fig.splits,
                              [fig.hashes[r.id] for r in fig.records], max_distance)
    return fig


def _figures_table(fig: _Figures, data_prefix: str) -> pa.Table:
    rows = []
    for rec, split in fig.kept():
        ms = fig.mentions[rec.id]
        rows.append({
            "id": rec.id, "image": f"{data_prefix}/{rec.image}", "caption": rec.caption,
            "article_id": rec.article_id, "modality": rec.modality, "split": split,
            "concepts": [{"concept_id": m.concept_id, "start_char": m.start, "end_char": m.end,
                          "source": m.source, "negated": m.negated} for m in ms],
            "negated_concepts": list(dict.fromkeys(m.concept_id for m in ms if m.negated)),
            "subcaptions": [{"label": p.label, "start": p.start, "end": p.end}
                            for p in fig.subcaptions[rec.id]],
            "phash": f"{fig.hashes[rec.id]:016x}",
        })
    return pa.Table.from_pylist(rows, schema=FIGURES_SCHEMA)


def _figure_samples(fig: _Figures, table: pa.Table, split: str) -> Iterator[dict]:
    by_id = {r.id: r for r in fig.records}
    for row in table.filter(pc.equal(table["split"], split)).to_pylist():
        meta = {k: row[k] for k in ("id", "caption", "modality", "article_id", "split", "concepts",
                                    "negated_concepts", "subcaptions")}
        pixels = read_image(fig.root / by_id[row["id"]].image)
        yield {"__key__": row["id"], "png": encode_png(pixels), "json": json_bytes(meta)}


# ----------------------------------------------------------------------------------------------- CT

def _curate_ct(root: Path, rejects: RejectLog, lexicon: AnatomyLexicon, fractions: Mapping[str, float],
               seed: int, progress: bool) -> _CT:
    ct = _CT(root, str(root / "manifest.jsonl"))
    ct.records, ct.records_read = load_ct_records(root, rejects, progress=progress)
    assigner = AnatomyAssigner(lexicon)
    for rec in tqdm(ct.records, desc="ct: reports", unit="study", disable=not progress):
        ct.decompositions[rec.id] = decompose_report(rec.findings, rec.impression, assigner)
    ct.splits = assign_splits([r.patient_id for r in ct.records], fractions, seed)
    return ct


def _ct_table(ct: _CT, data_prefix: str, lexicon: AnatomyLexicon) -> pa.Table:
    anatomies = [a.id for a in lexicon.anatomies]
    rows = []
    for rec, split in zip(ct.records, ct.splits):
        d = ct.decompositions[rec.id]
        rows.append({
            "id": rec.id, "patient_id": rec.patient_id, "volume": f"{data_prefix}/{rec.volume}",
            "segmentation": f"{data_prefix}/{rec.segmentation}", "findings": rec.findings,
            "impression": rec.impression, "split": split, "shape": list(rec.shape),
            "anatomy_text": [{"anatomy": a, "text": d.anatomy_text[a]} for a in anatomies],
            "is_normal": [{"anatomy": a, "normal": bool(d.is_normal[a])} for a in anatomies],
            "sentences": [{"section": s.section, "start": s.start, "end": s.end, "text": s.text,
                           "anatomies": list(s.anatomies)} for s in d.sentences],
        })
    return pa.Table.from_pylist(rows, schema=CT_SCHEMA)


def _nifti_gz(path: Path) -> bytes:
    """``.nii.gz`` bytes of a volume: the file's own bytes (gzipped if plain ``.nii``) or, for a DICOM
    series folder, NIfTI made from the canonical volume."""
    if path.is_dir():
        vol = read_volume(path)
        return nifti_gz_bytes(vol.array, vol.affine)
    data = path.read_bytes()
    return data if data[:2] == b"\x1f\x8b" else gzip.compress(data, compresslevel=6, mtime=0)


def _ct_samples(ct: _CT, table: pa.Table, split: str) -> Iterator[dict]:
    by_id = {r.id: r for r in ct.records}
    for row in table.filter(pc.equal(table["split"], split)).to_pylist():
        rec = by_id[row["id"]]
        meta = {"id": rec.id, "patient_id": rec.patient_id, "split": split, "findings": rec.findings,
                "impression": rec.impression, "anatomy_text": row["anatomy_text"],
                "is_normal": row["is_normal"]}
        yield {"__key__": rec.id, "nii.gz": _nifti_gz(ct.root / rec.volume),
               "seg.nii.gz": _nifti_gz(ct.root / rec.segmentation), "json": json_bytes(meta)}


# -------------------------------------------------------------------------------------------- plots

def _examples(fig: _Figures) -> list[CaptionExample]:
    """One kept figure per modality: the first (manifest order) with positive and negated mentions,
    else the first with a positive mention, else the first."""
    best: dict[str, tuple[int, FigureRecord]] = {}
    for rec, _ in fig.kept():
        ms = fig.mentions[rec.id]
        score = 2 * any(not m.negated for m in ms) + any(m.negated for m in ms)
        mod = rec.modality or "unknown"
        if mod not in best or score > best[mod][0]:
            best[mod] = (score, rec)
    out = []
    for mod in sorted(best):
        rec = best[mod][1]
        out.append(CaptionExample(f"{rec.id} ({mod.replace('_', ' ')})", read_image(fig.root / rec.image),
                                  rec.caption, [(m.start, m.end, m.negated) for m in fig.mentions[rec.id]]))
    return out


def _plots(report: dict, fig: _Figures | None, figures_dir: Path) -> list[str]:
    figures_dir.mkdir(parents=True, exist_ok=True)
    written = []
    sizes = {name: {s: report[name]["splits"][s]["records"] for s in SPLIT_NAMES}
             for name in ("figures", "ct") if report[name].get("present")}
    written.append(plot_split_sizes(sizes, figures_dir / "splits.png"))
    if fig is not None:
        fr = report["figures"]
        written.append(plot_modalities(fr["modalities"], figures_dir / "modalities.png"))
        written.append(plot_concept_frequencies({v["name"]: v["mentions"] for v in fr["concepts"].values()},
                                                figures_dir / "concepts.png"))
        examples = _examples(fig)
        if examples:
            written.append(plot_examples(examples, figures_dir / "examples.png"))
    return [str(p) for p in written]


# ------------------------------------------------------------------------------------------ stage

def _absent(manifest: Path) -> dict:
    return {"present": False, "manifest": str(manifest)}


@stage_function("curate")
def run_curation(*, data_dir: str | Path, out_dir: str | Path, metrics_path: str | Path, figures_dir: str | Path,
                 strict: bool, seed: int, split: Mapping[str, float], phash_max_distance: int,
                 shard_max_samples: int, max_examples_per_reason: int, concept_lexicon: str | Path | None,
                 anatomy_lexicon: str | Path | None, progress: bool = True) -> dict:
    """Run the curation stage; returns the report dict (also written to ``metrics_path``).

    Every argument but ``progress`` is a key of params.yaml's ``curate`` section, and has no default here: a
    call without one raises :class:`~medvlp.stage_args.MissingParamsError` naming it.

    Args:
        data_dir: the source corpus (``figures/manifest.jsonl``, ``ct/manifest.jsonl``).
        out_dir: where the parquet manifests and ``shards/`` go (``shards/`` is emptied first).
        metrics_path: the report JSON.
        figures_dir: the report's PNG figures.
        strict: raise :class:`~medvlp.curate.records.CorpusError` at the first bad record.
        seed: split hash seed.
        split: group fractions ``{"train", "val", "test"}``.
        phash_max_distance: Hamming distance (bits of 64) at or under which figures are duplicates.
        shard_max_samples: samples per tar shard at most.
        max_examples_per_reason: messages kept per reject reason in the report.
        concept_lexicon, anatomy_lexicon: JSON lexicon paths (None: the ones shipped with medvlp).
        progress: tqdm progress bars.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    fractions = validate_fractions(split)
    concept_lex = load_concept_lexicon(str(concept_lexicon) if concept_lexicon else None)
    anatomy_lex = load_anatomy_lexicon(str(anatomy_lexicon) if anatomy_lexicon else None)
    fig_root, ct_root = data_dir / "figures", data_dir / "ct"
    if not (fig_root / "manifest.jsonl").is_file() and not (ct_root / "manifest.jsonl").is_file():
        raise FileNotFoundError(f"neither {fig_root / 'manifest.jsonl'} nor {ct_root / 'manifest.jsonl'} "
                                "exists; point data_dir at a corpus (see lib/medvlp/data/README.md) or run "
                                "`medvlp synth data/`")
    params = {"data_dir": str(data_dir), "out_dir": str(out_dir), "metrics_path": str(metrics_path),
              "figures_dir": str(figures_dir), "strict": strict, "seed": seed, "split": fractions,
              "phash_max_distance": phash_max_distance, "shard_max_samples": shard_max_samples,
              "max_examples_per_reason": max_examples_per_reason,
              "concept_lexicon": None if concept_lexicon is None else str(concept_lexicon),
              "anatomy_lexicon": None if anatomy_lexicon is None else str(anatomy_lexicon)}
    report: dict = {"params": params}

    fig = ct = None
    if (fig_root / "manifest.jsonl").is_file():
        rejects = RejectLog(max_examples_per_reason, strict)
        warnings = RejectLog(max_examples_per_reason, strict=False)
        fig = _curate_figures(fig_root, rejects, warnings, concept_lex, fractions, seed, phash_max_distance,
                              progress)
        report["figures"] = {"present": True, **figures_section(
            manifest=fig.manifest, records_read=fig.records_read, rejects=rejects, warnings=warnings,
            records=fig.records, splits=fig.splits, removed=fig.removed, mentions=fig.mentions,
            subcaptions=fig.subcaptions, lexicon=concept_lex, truth=read_truth(fig_root / FIGURES_TRUTH))}
    else:
        report["figures"] = _absent(fig_root / "manifest.jsonl")
    if (ct_root / "manifest.jsonl").is_file():
        rejects = RejectLog(max_examples_per_reason, strict)
        ct = _curate_ct(ct_root, rejects, anatomy_lex, fractions, seed, progress)
        report["ct"] = {"present": True, **ct_section(
            manifest=ct.manifest, records_read=ct.records_read, rejects=rejects, records=ct.records,
            splits=ct.splits, decompositions=ct.decompositions, lexicon=anatomy_lex,
            truth=read_truth(ct_root / CT_TRUTH))}
    else:
        report["ct"] = _absent(ct_root / "manifest.jsonl")

    out_dir.mkdir(parents=True, exist_ok=True)
    fig_table = _figures_table(fig, "figures") if fig else FIGURES_SCHEMA.empty_table()
    ct_table = _ct_table(ct, "ct", anatomy_lex) if ct else CT_SCHEMA.empty_table()
    pq.write_table(fig_table, out_dir / "figures.parquet")
    pq.write_table(ct_table, out_dir / "ct.parquet")

    shards_root = out_dir / "shards"
    if shards_root.exists():
        shutil.rmtree(shards_root)
    shards: dict[str, dict[str, int]] = {}
    for name, data, table, samples in (("figures", fig, fig_table, _figure_samples),
                                       ("ct", ct, ct_table, _ct_samples)):
        if data is None:
            continue
        shards[name] = {}
        for s in SPLIT_NAMES:
            n = int(pc.sum(pc.equal(table["split"], s)).as_py() or 0)
            it = tqdm(samples(data, table, s), total=n, desc=f"{name}: shards {s}", unit="rec",
                      disable=not progress)
            shards[name][s] = len(write_shards(it, shard_dir(out_dir, name), s, shard_max_samples))
    report["outputs"] = {"figures_table": str(out_dir / "figures.parquet"),
                         "ct_table": str(out_dir / "ct.parquet"), "shards": shards}
    report["outputs"]["figures"] = _plots(report, fig, Path(figures_dir))
    report = {**summarise(report), **report}
    write_report(report, metrics_path)
    return round_floats(report)
