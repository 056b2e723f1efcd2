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

Spans: the release's character offsets drift from the text they name (they appear to count a copy of the
caption with spaces around the punctuation inside words, e.g. ``55 - year - old``, so the drift grows
along the caption and some spans end past it), so each span is first placed on its ``tokens``
(:func:`realign_span`). The tokens (uncased WordPiece pieces, ``##``
joined to the piece before) give the span's text; a span whose given ``[start_char, end_char)`` already
holds that text is kept as given; otherwise the text is looked for, case- and accent-insensitively and
allowing the tokenizer's splitting of whitespace and punctuation, with its first and last word whole,
within ``span_window`` characters (default 50) of the given ``start_char`` and of that start corrected
by the drift of the caption's previous placed span; the occurrence nearest the corrected start wins (then
the earlier), and the span takes its offsets (counted as ``span_realigned``). A span whose tokens are
not found there is dropped (``span_unresolved``). A span without usable tokens is kept as given when
``0 <= start_char < end_char <= len(caption)`` (``span_unverified``), dropped otherwise
(``out_of_range_span``). Before that, a span is dropped when ``umls_similarity < similarity_threshold``
(default 0.8, ``below_threshold``) or its CUI (``C`` + 7 digits), offsets (integers) or similarity are
unusable (``invalid_span``); after it, of overlapping spans the one with the higher similarity is kept
(then the longer, then the earlier; ``overlapping_span``). Every span counts under one of these reasons
in the report's warnings, or none when it is kept as given (``span_realigned`` and ``span_unverified``
count kept spans only). A record whose spans are all dropped is kept with ``concepts: []``.
A CUI is written with ``concept_id`` where the concept lexicon lists it (see
:mod:`medvlp.data.ingest.concept_lexicon`), as ``cui`` alone otherwise; ``write_lexicon`` writes the
lexicon of every CUI kept, under which curation resolves all of them.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import posixpath
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from medvlp.data.ingest.concept_lexicon import CUI_PATTERN, CuiTally, cui_index, lexicon_of_cuis
from medvlp.data.ingest.figure_images import FigureImages
from medvlp.data.ingest.output_files import inside_source, prepare_collection, safe_id, write_json, write_jsonl
from medvlp.data.ingest.skip_log import IngestError, Skip, SkipLog
from medvlp.data.ingest.source_tables import count_lines, text_lines
from medvlp.data.ingest.summary import REPORT_NAME, IngestSummary
from medvlp.lexicon import load_concept_lexicon

__all__ = ["DEFAULT_SIMILARITY_THRESHOLD", "DEFAULT_SPAN_WINDOW", "FoldedCaption", "ingest_medconcept",
           "realign_span", "select_spans", "token_pattern"]

DEFAULT_SIMILARITY_THRESHOLD = 0.8
#: Characters either side of a span's given start (and of that start corrected by the caption's drift so
#: far) within which its tokens are looked for. The release's sample drifts 1-18 characters.
DEFAULT_SPAN_WINDOW = 50
_REQUIRED = ("caption", "image", "pmc")
#: Most characters of whitespace / punctuation between two pieces that are not joined by ``##``.
_MAX_GAP = 8
#: Longest word WordPiece turns into ``[UNK]`` (BERT's ``max_input_chars_per_word``).
_MAX_UNK = 100
_GAP = rf"[\W_]{{0,{_MAX_GAP}}}"
_WORD_BEFORE = r"(?<![^\W_])"                   # not preceded by a letter or digit
_WORD_AFTER = r"(?![^\W_])"                     # not followed by a letter or digit
_ASCII_DROPPED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dropped(char: str) -> bool:
    """Whether an uncased WordPiece tokenizer drops ``char`` (an accent, a control or format character)."""
    category = unicodedata.category(char)
    return category == "Mn" or (category[0] == "C" and char not in "\t\n\r") or char == "\ufffd"


def _fold(text: str) -> str:
    """``text`` as an uncased WordPiece tokenizer sees it: lower case, accents and control characters gone."""
    if text.isascii() and not _ASCII_DROPPED.search(text):
        return text.lower()
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if not _dropped(c))


class FoldedCaption:
    """A caption folded as its tokens were (:func:`_fold`), with the caption index of each folded character.

    ``text`` is what :func:`token_pattern` patterns are matched against; :meth:`to_caption` maps a match
    back to caption offsets (end exclusive), :meth:`to_folded` maps a caption offset to the folded text.
    """

    def __init__(self, caption: str):
        self.caption = caption
        if caption.isascii() and not _ASCII_DROPPED.search(caption):
            self.text, self.index = caption.lower(), None
            return
        chars, index = [], []
        for i, c in enumerate(caption):
            for f in unicodedata.normalize("NFD", c.lower()):
                if not _dropped(f):
                    chars.append(f)
                    index.append(i)
        self.text, self.index = "".join(chars), index

    def to_folded(self, pos: int) -> int:
        """The folded position of caption offset ``pos`` (clamped to the caption)."""
        pos = min(max(pos, 0), len(self.caption))
        return pos if self.index is None else bisect.bisect_left(self.index, pos)

    def to_caption(self, start: int, end: int) -> tuple[int, int]:
        """Caption offsets ``[start, end)`` of the folded ``[start, end)`` (a trailing accent included)."""
        if self.index is None:
            return start, end
        first, last = self.index[start], self.index[end - 1] + 1
        while last < len(self.caption) and unicodedata.category(self.caption[last]) == "Mn":
            last += 1
        return first, last


def _tokens(value: object) -> tuple[str, ...] | None:
    """A span's ``tokens`` as a tuple of pieces (a string is split at whitespace); None when unusable."""
    if isinstance(value, str):
        value = value.split()
    if not (isinstance(value, list) and value and all(isinstance(t, str) and t.strip() for t in value)):
        return None
    return tuple(t.strip() for t in value)


@functools.lru_cache(maxsize=4096)
def token_pattern(tokens: tuple[str, ...]) -> tuple[re.Pattern, int] | None:
    """The regular expression of the text that WordPiece ``tokens`` came from, and its longest match.

    A ``##`` piece continues the piece before it with nothing between; other pieces are separated by at
    most ``_MAX_GAP`` characters of whitespace or punctuation; ``[UNK]`` stands for one word. The first
    and last word must be whole (no letter or digit just before / after). Match it against
    :class:`FoldedCaption` text. None when a piece is empty once folded.
    """
    parts, longest = [], 0
    for k, token in enumerate(tokens):
        joined = token.startswith("##")
        piece = _fold(token[2:] if joined else token)
        if not piece:
            return None
        if k and not joined:
            parts.append(_GAP)
            longest += _MAX_GAP
        if token == "[UNK]":
            parts.append(rf"\S{{1,{_MAX_UNK}}}?")
            longest += _MAX_UNK
        else:
            parts.append(re.escape(piece))
            longest += len(piece)
    first, last = _fold(tokens[0].removeprefix("##"))[:1], _fold(tokens[-1])[-1:]
    if tokens[0] != "[UNK]" and not tokens[0].startswith("##") and first.isalnum():
        parts.insert(0, _WORD_BEFORE)
    if tokens[-1] == "[UNK]" or last.isalnum():
        parts.append(_WORD_AFTER)
    return re.compile("".join(parts)), longest


def realign_span(folded: FoldedCaption, tokens: tuple[str, ...], start: int, end: int, shift: int = 0,
                 window: int = DEFAULT_SPAN_WINDOW) -> tuple[int, int] | None:
    """Caption offsets ``[start, end)`` of the text ``tokens`` came from, near where the span says it is.

    Args:
        folded: the caption (:class:`FoldedCaption`).
        tokens: the span's WordPiece tokens.
        start / end: the span's given character offsets (end exclusive; they may lie past the caption).
        shift: the drift (characters, given minus found start) of the caption's previous placed span.
        window: characters either side of ``start`` and of ``start - shift`` searched.

    Returns:
        ``(start, end)`` unchanged when they already hold the tokens' text; else the offsets of the
        occurrence starting within the window that is nearest ``start - shift`` (then the earlier); None
        when the tokens are not found there (or give no pattern).
    """
    built = token_pattern(tokens)
    if built is None:
        return None
    pattern, longest = built
    text, n = folded.text, len(folded.caption)
    if 0 <= start < end <= n:
        m = pattern.match(text, folded.to_folded(start))
        if m is not None and folded.to_caption(m.start(), m.end()) == (start, end):
            return start, end
    centre = start - shift
    lo, hi = folded.to_folded(min(start, centre) - window), folded.to_folded(max(start, centre) + window)
    best: tuple[int, int] | None = None
    for m in pattern.finditer(text, lo, min(len(text), hi + longest + 1)):     # no match is cut at the end
        if m.start() > hi:
            break
        found = folded.to_caption(m.start(), m.end())
        if best is None or (abs(found[0] - centre), found[0]) < (abs(best[0] - centre), best[0]):
            best = found
    return best


@dataclass
class _Candidate:
    """A span that passed the CUI / similarity checks, placed on the caption."""

    sim: float
    start: int
    end: int
    cui: str
    index: int
    moved_from: tuple[int, int] | None = None          # the given offsets, when realigned
    verified: bool = True                              # False: no tokens to check the offsets against


def _place(caption: str, checked: list[tuple[int, dict, float, str]], window: int, warnings: SkipLog,
           where: str) -> list[_Candidate]:
    """Place the checked spans ``(index, entry, similarity, CUI)`` on the caption in order of given start
    (the drift of each placed span centres the search of the next); unplaceable ones are counted."""
    folded: FoldedCaption | None = None
    shift, out = 0, []
    for i, entry, sim, cui in sorted(checked, key=lambda c: (c[1]["start_char"], c[0])):
        what = f"{where}: umls_meta_info[{i}]"
        start, end = entry["start_char"], entry["end_char"]
        tokens = _tokens(entry.get("tokens"))
        if tokens is None:
            if not 0 <= start < end <= len(caption):
                warnings.add("out_of_range_span", f"{what}: span [{start}, {end}) is out of range for a caption of "
                                                  f"{len(caption)} characters (and no tokens to find it by)")
                continue
            out.append(_Candidate(sim, start, end, cui, i, verified=False))
            continue
        folded = folded or FoldedCaption(caption)
        found = realign_span(folded, tokens, start, end, shift, window)
        if found is None:
            warnings.add("span_unresolved", f"{what}: tokens {' '.join(tokens)!r} not found within {window} "
                                            f"characters of [{start}, {end}) (caption of {len(caption)} characters)")
            continue
        shift = start - found[0]
        out.append(_Candidate(sim, *found, cui, i, moved_from=None if found == (start, end) else (start, end)))
    return out


def select_spans(caption: str, meta_info: object, threshold: float, by_cui: dict[str, str],
                 warnings: SkipLog, where: str, window: int = DEFAULT_SPAN_WINDOW) -> list[dict]:
    """The usable, non-overlapping concept spans of one caption, placed on their tokens, sorted by start.

    Args:
        caption: the caption the offsets point into.
        meta_info: the record's ``umls_meta_info`` (a list of span objects; None = no spans).
        threshold: the least ``umls_similarity`` kept.
        by_cui: ``{CUI: concept id}`` of the concept lexicon.
        warnings: where dropped, moved and unchecked spans are counted (by reason, with ``where`` in the
            message).
        window: characters searched either side of a span's given start (:func:`realign_span`).

    Returns:
        ``[{"concept_id"?, "cui", "start_char", "end_char"}]``, end exclusive.
    """
    if meta_info is None:
        return []
    if not isinstance(meta_info, list):
        warnings.add("invalid_span", f"{where}: umls_meta_info is a {type(meta_info).__name__}, not a list")
        return []
    checked = []
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
        checked.append((i, entry, float(sim), cui.strip().upper()))
    kept: list[_Candidate] = []
    for cand in sorted(_place(caption, checked, window, warnings, where),
                       key=lambda c: (-c.sim, -(c.end - c.start), c.start)):
        clash = next((k for k in kept if cand.start < k.end and k.start < cand.end), None)
        if clash is not None:
            warnings.add("overlapping_span", f"{where}: umls_meta_info[{cand.index}] [{cand.start}, {cand.end}) "
                                             f"overlaps umls_meta_info[{clash.index}] [{clash.start}, {clash.end}); "
                                             "the latter is kept")
            continue
        kept.append(cand)
    out = []
    for cand in sorted(kept, key=lambda c: c.start):
        what = f"{where}: umls_meta_info[{cand.index}]"
        if cand.moved_from is not None:
            given = cand.moved_from
            warnings.add("span_realigned", f"{what}: [{given[0]}, {given[1]}) {caption[given[0]:given[1]]!r} moved "
                                           f"to [{cand.start}, {cand.end}) {caption[cand.start:cand.end]!r}, "
                                           "where its tokens are")
        elif not cand.verified:
            warnings.add("span_unverified", f"{what}: no tokens to check [{cand.start}, {cand.end}) "
                                            f"{caption[cand.start:cand.end]!r} against; kept as given")
        span = {"cui": cand.cui, "start_char": cand.start, "end_char": cand.end}
        if cand.cui in by_cui:
            span = {"concept_id": by_cui[cand.cui], **span}
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

    def __init__(self, images_root: Path, images: FigureImages, threshold: float, window: int,
                 by_cui: dict[str, str], warnings: SkipLog, tally: CuiTally):
        self.images_root, self.images, self.threshold, self.window = images_root, images, threshold, window
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
        spans = select_spans(caption, obj.get("umls_meta_info"), self.threshold, self.by_cui, self.warnings, where,
                             self.window)
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
                      span_window: int = DEFAULT_SPAN_WINDOW,
                      concept_lexicon: str | Path | None = None, write_lexicon: str | Path | None = None,
                      images_mode: str = "copy", check_images: bool = True, overwrite: bool = False,
                      strict: bool = False, max_examples: int = 5, progress: bool = True) -> IngestSummary:
    """Convert MedConcept-23M metadata + images into ``<dst>/figures/`` (manifest, images, report).

    Args:
        metadata: the metadata JSON Lines file.
        dst: the corpus folder (``data/``); ``<dst>/figures/`` is written.
        images: the image folder the ``image`` paths are relative to (default: the metadata's folder).
        similarity_threshold: least ``umls_similarity`` of a kept span.
        span_window: characters either side of a span's given start within which its tokens are looked for
            when its offsets do not hold them (:func:`realign_span`).
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
    if not _is_int(span_window) or span_window < 0:
        raise IngestError(f"span_window {span_window!r} must be a whole number of characters >= 0 "
                          f"(default {DEFAULT_SPAN_WINDOW})")
    images_root = Path(images) if images is not None else metadata.parent
    lexicon = load_concept_lexicon(str(concept_lexicon) if concept_lexicon else None)
    collection = prepare_collection(dst / "figures", overwrite)
    summary = IngestSummary(
        "medconcept", str(metadata), str(dst),
        {"images": str(images_root), "similarity_threshold": similarity_threshold, "span_window": span_window,
         "concept_lexicon": None if concept_lexicon is None else str(concept_lexicon),
         "write_lexicon": None if write_lexicon is None else str(write_lexicon), "images_mode": images_mode,
         "check_images": check_images, "strict": strict},
        SkipLog(max_examples, strict), SkipLog(max_examples, strict=False))
    tally = CuiTally()
    convert = _Converter(images_root, FigureImages(collection, images_mode, check_images), similarity_threshold,
                         span_window, cui_index(lexicon), summary.warnings, tally)

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
