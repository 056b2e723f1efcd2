"""MedConcept-23M (ConceptCLIP's pre-training corpus) -> ``<dst>/figures/`` of the source corpus.

The source, as the ConceptCLIP release ships it (checked against its sample file
``pre_training/src/pretraining_sample_data/pretraining_meta_file_sample.jsonl`` in
github.com/JerrryNie/ConceptCLIP): one JSON object per line with ``pmid`` and ``pmc`` (PubMed / PMC ids
as digit strings, ``pmc`` without the ``PMC`` prefix), ``caption`` (and the same text as
``fig_caption``), ``fig_id``, ``fig_label``, ``graphic_ref``, ``href``, ``image`` (the image file name,
relative to the image folder, e.g. ``000047b7b29449bca11de6f3cde9485f.jpg``) and ``umls_meta_info``: a
list of ``{umls_cui, umls_similarity, start_char, end_char, tokens, start_token, end_token}``, the
character offsets 0-based into ``caption`` with ``end_char`` exclusive. Linked spans of one caption may
repeat a CUI and, in general, may overlap.

Each kept record becomes a manifest line::

    {"id": <image path without suffix, made a shard key>, "image": "images/<image>",
     "caption": <caption>, "article_id": "PMC<pmc>", "modality": <only if the source has one>,
     "concepts": [{"concept_id"?: <lexicon id>, "cui": <CUI>, "start_char", "end_char"}, ...]}

Spans: kept when ``umls_similarity >= similarity_threshold`` (default 0.8), the CUI is ``C`` + 7 digits
and ``0 <= start_char < end_char <= len(caption)``; of overlapping spans the one with the higher
similarity is kept (then the longer, then the earlier). Every dropped span is counted by reason in the
report's warnings (``below_threshold``, ``invalid_span``, ``out_of_range_span``, ``overlapping_span``).
A CUI is written with ``concept_id`` where the concept lexicon lists it (see
:mod:`medvlp.data.ingest.concept_lexicon`), as ``cui`` alone otherwise; ``write_lexicon`` writes the
lexicon of every CUI kept, under which curation resolves all of them.
"""

from __future__ import annotations

import json
import math
import posixpath
from pathlib import Path

from tqdm import tqdm

from medvlp.data.ingest.concept_lexicon import CUI_PATTERN, CuiTally, cui_index, lexicon_of_cuis
from medvlp.data.ingest.figure_images import FigureImages
from medvlp.data.ingest.output_files import inside_source, prepare_collection, safe_id, write_json, write_jsonl
from medvlp.data.ingest.skip_log import IngestError, Skip, SkipLog
from medvlp.data.ingest.source_tables import count_lines, text_lines
from medvlp.data.ingest.summary import REPORT_NAME, IngestSummary
from medvlp.lexicon import load_concept_lexicon

__all__ = ["DEFAULT_SIMILARITY_THRESHOLD", "ingest_medconcept", "select_spans"]

DEFAULT_SIMILARITY_THRESHOLD = 0.8
_REQUIRED = ("caption", "image", "pmc")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def select_spans(caption: str, meta_info: object, threshold: float, by_cui: dict[str, str],
                 warnings: SkipLog, where: str) -> list[dict]:
    """The usable, non-overlapping concept spans of one caption, sorted by start.

    Args:
        caption: the caption the offsets point into.
        meta_info: the record's ``umls_meta_info`` (a list of span objects; None = no spans).
        threshold: the least ``umls_similarity`` kept.
        by_cui: ``{CUI: concept id}`` of the concept lexicon.
        warnings: where dropped spans are counted (by reason, with ``where`` in the message).

    Returns:
        ``[{"concept_id"?, "cui", "start_char", "end_char"}]``, end exclusive.
    """
    if meta_info is None:
        return []
    if not isinstance(meta_info, list):
        warnings.add("invalid_span", f"{where}: umls_meta_info is a {type(meta_info).__name__}, not a list")
        return []
    candidates = []
    for i, entry in enumerate(meta_info):
        what = f"{where}: umls_meta_info[{i}]"
        if not isinstance(entry, dict):
            warnings.add("invalid_span", f"{what} is not an object")
            continue
        cui, sim = entry.get("umls_cui"), entry.get("umls_similarity")
        start, end = entry.get("start_char"), entry.get("end_char")
        if not (isinstance(cui, str) and CUI_PATTERN.fullmatch(cui.strip().upper())):
            warnings.add("invalid_span", f"{what}: umls_cui {cui!r} is not a CUI (C + 7 digits)")
            continue
        if not (_is_int(start) and _is_int(end)):
            warnings.add("invalid_span", f"{what}: start_char / end_char {start!r} / {end!r} are not integers")
            continue
        if not (isinstance(sim, int | float) and not isinstance(sim, bool) and math.isfinite(sim)):
            warnings.add("invalid_span", f"{what}: umls_similarity {sim!r} is not a finite number")
            continue
        if sim < threshold:
            warnings.add("below_threshold", f"{what}: umls_similarity {sim:.3f} < {threshold}")
            continue
        if not 0 <= start < end <= len(caption):
            warnings.add("out_of_range_span", f"{what}: span [{start}, {end}) is out of range for a caption of "
                                              f"{len(caption)} characters")
            continue
        candidates.append((float(sim), start, end, cui.strip().upper(), i))
    kept: list[tuple[float, int, int, str, int]] = []
    for cand in sorted(candidates, key=lambda c: (-c[0], -(c[2] - c[1]), c[1])):
        _, start, end, _, i = cand
        clash = next((k for k in kept if start < k[2] and k[1] < end), None)
        if clash is not None:
            warnings.add("overlapping_span", f"{where}: umls_meta_info[{i}] [{start}, {end}) overlaps "
                                             f"umls_meta_info[{clash[4]}] [{clash[1]}, {clash[2]}); the latter is kept")
            continue
        kept.append(cand)
    out = []
    for _, start, end, cui, _ in sorted(kept, key=lambda c: c[1]):
        span = {"cui": cui, "start_char": start, "end_char": end}
        if cui in by_cui:
            span = {"concept_id": by_cui[cui], **span}
        out.append(span)
    return out


def _parse(text: str) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise Skip("invalid_json", f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise Skip("invalid_json", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _article_id(pmc: object) -> str:
    if _is_int(pmc):
        pmc = str(pmc)
    if not isinstance(pmc, str):
        raise Skip("invalid_field", f"field 'pmc' must be a string of digits, got {pmc!r}")
    pmc = pmc.strip()
    digits = pmc[3:] if pmc.upper().startswith("PMC") else pmc
    if not digits.isdigit():
        raise Skip("invalid_field", f"field 'pmc' {pmc!r} is not a PMC id")
    return f"PMC{digits}"


class _Converter:
    """One MedConcept-23M line -> one manifest record (or :class:`Skip`)."""

    def __init__(self, images_root: Path, images: FigureImages, threshold: float, by_cui: dict[str, str],
                 warnings: SkipLog, tally: CuiTally):
        self.images_root, self.images, self.threshold = images_root, images, threshold
        self.by_cui, self.warnings, self.tally = by_cui, warnings, tally
        self.seen: dict[str, int] = {}
        self.spans_kept = self.spans_mapped = 0

    def __call__(self, obj: dict, number: int, where: str) -> dict:
        for name in _REQUIRED:
            if obj.get(name) is None:
                raise Skip("missing_field", f"required field {name!r} missing")
        caption, image = obj["caption"], obj["image"]
        for name, value in (("caption", caption), ("image", image)):
            if not isinstance(value, str):
                raise Skip("invalid_field", f"field {name!r} must be a string, got {type(value).__name__}")
        modality = obj.get("modality")
        if modality is not None and not isinstance(modality, str):
            raise Skip("invalid_field", f"field 'modality' must be a string, got {type(modality).__name__}")
        article = _article_id(obj["pmc"])
        rel = inside_source(image, "image")
        rid = safe_id(posixpath.splitext(rel)[0])
        if not rid:
            raise Skip("invalid_field", f"image {image!r} gives an empty id")
        if rid in self.seen:
            raise Skip("duplicate_id", f"id {rid!r} (image {image!r}) already used on line {self.seen[rid]}")
        self.seen[rid] = number
        if not caption.strip():
            raise Skip("empty_caption", "caption is empty")
        source = self.images_root / rel
        self.images.verify(source, image)
        spans = select_spans(caption, obj.get("umls_meta_info"), self.threshold, self.by_cui, self.warnings, where)
        record = {"id": rid, "image": self.images.place(source, rel), "caption": caption, "article_id": article,
                  "concepts": spans}
        if modality:
            record["modality"] = modality
        for s in spans:
            self.tally.add(s["cui"], caption[s["start_char"]:s["end_char"]], modality)
        self.spans_kept += len(spans)
        self.spans_mapped += sum("concept_id" in s for s in spans)
        return record


def ingest_medconcept(metadata: str | Path, dst: str | Path, *, images: str | Path | None = None,
                      similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
                      concept_lexicon: str | Path | None = None, write_lexicon: str | Path | None = None,
                      images_mode: str = "copy", check_images: bool = True, overwrite: bool = False,
                      strict: bool = False, max_examples: int = 5, progress: bool = True) -> IngestSummary:
    """Convert MedConcept-23M metadata + images into ``<dst>/figures/`` (manifest, images, report).

    Args:
        metadata: the metadata JSON Lines file.
        dst: the corpus folder (``data/``); ``<dst>/figures/`` is written.
        images: the image folder the ``image`` paths are relative to (default: the metadata's folder).
        similarity_threshold: least ``umls_similarity`` of a kept span.
        concept_lexicon: lexicon mapping CUIs to concept ids (default: medvlp's).
        write_lexicon: also write the lexicon of every kept CUI here (``concepts.json`` schema).
        images_mode: ``copy`` / ``symlink`` / ``hardlink``.
        check_images: decode every image (else only check it exists).
        overwrite: replace a non-empty ``<dst>/figures/``.
        strict: raise :class:`IngestError` at the first bad record.
        max_examples: messages kept per reason.
        progress: tqdm progress bar.

    Returns:
        :class:`IngestSummary` (also written to ``<dst>/figures/ingest_report.json``).
    """
    metadata, dst = Path(metadata), Path(dst)
    if not metadata.is_file():
        raise IngestError(f"MedConcept-23M metadata {str(metadata)!r} not found; pass the JSON Lines file")
    images_root = Path(images) if images is not None else metadata.parent
    lexicon = load_concept_lexicon(str(concept_lexicon) if concept_lexicon else None)
    collection = prepare_collection(dst / "figures", overwrite)
    summary = IngestSummary(
        "medconcept", str(metadata), str(dst),
        {"images": str(images_root), "similarity_threshold": similarity_threshold,
         "concept_lexicon": None if concept_lexicon is None else str(concept_lexicon),
         "write_lexicon": None if write_lexicon is None else str(write_lexicon), "images_mode": images_mode,
         "check_images": check_images, "strict": strict},
        SkipLog(max_examples, strict), SkipLog(max_examples, strict=False))
    tally = CuiTally()
    convert = _Converter(images_root, FigureImages(collection, images_mode, check_images), similarity_threshold,
                         cui_index(lexicon), summary.warnings, tally)

    def records():
        lines = text_lines(metadata)
        bar = tqdm(lines, desc="medconcept", unit="rec", disable=not progress,
                   total=count_lines(metadata) if progress else None)
        for number, text, problem in bar:
            if problem is None and not text.strip():
                continue                                   # a blank line carries no record
            summary.read += 1
            where = f"{metadata} line {number}"
            try:
                if problem is not None:
                    raise Skip("invalid_utf8", problem)
                yield convert(_parse(text), number, where)
            except Skip as s:
                summary.skips.add(s.reason, f"{where}: {s.detail}")

    summary.written = write_jsonl(collection / "manifest.jsonl", records())
    summary.outputs["manifest"] = str(collection / "manifest.jsonl")
    cui_only = convert.spans_kept - convert.spans_mapped
    summary.details = {"spans_kept": convert.spans_kept, "spans_with_concept_id": convert.spans_mapped,
                       "spans_cui_only": cui_only, "distinct_cuis": len(tally.forms), "notes": []}
    if write_lexicon is not None:
        lex_path = write_json(Path(write_lexicon), lexicon_of_cuis(
            tally, lexicon, f"Concepts of the CUIs kept from MedConcept-23M metadata {metadata.name} "
                            f"(umls_similarity >= {similarity_threshold}); written by medvlp ingest medconcept."))
        summary.outputs["concept_lexicon"] = str(lex_path)
        summary.details["notes"].append(f"set curate.concept_lexicon: {lex_path} so curation resolves every CUI")
    elif cui_only:
        summary.details["notes"].append(
            f"{cui_only} kept spans name a CUI that the concept lexicon does not list; curation drops them "
            "(invalid_given_span) unless curate.concept_lexicon lists them: rerun with --write-lexicon PATH")
    summary.write(collection / REPORT_NAME)
    return summary
