"""ROCO (Radiology Objects in COntext, Pelka et al. 2018) -> ``<dst>/figures/`` of the source corpus.

The release (github.com/razorx89/roco-dataset, checked against its files) has one folder per split and
part, ``data/{train,validation,test}/{radiology,non-radiology}/``, each holding tab-separated text files
keyed by a ROCO id (``ROCO_00006``):

- captions: ``captions.txt`` (some parts ship a revised name, ``captions_fp_test_revised.txt``), lines
  ``ROCO_00006<TAB> Coronal plain computed tomography image ...``; the caption follows the tab after a
  leading space (sometimes two), which is stripped here;
- CUIs: ``cuis.txt`` / ``cuis_*_revised.txt``, lines ``ROCO_00006<TAB><TAB>C0040395<TAB>C0011334...``
  (an empty field after the id; a line may hold no CUI at all); image-level, without caption offsets;
- links: ``dlinks.txt`` / ``dlinks_*_revised.txt``, lines ``ROCO_00006<TAB>wget -r
  ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/70/6d/PMC4840839.tar.gz -P /path/to/Dir<TAB>ol-11-05-3298-g02.jpg``
  (one line in the file): the article (``PMC4840839``) and the image's name inside the article package;
- ``images/``: filled by the release's ``scripts/fetch.py`` with files named ``<PMC id>_<image name>``
  (``PMC4840839_ol-11-05-3298-g02.jpg``); mirrors that name files ``<ROCO id>.jpg`` are found too.

Where a part holds both a plain and a ``*revised*`` file of one kind, the revised one is read. Every
part below ``src`` (any folder holding a ``dlinks*.txt``) is ingested; ROCO's own split is kept as the
extra field ``source_split`` and otherwise ignored (curation splits by article). Each image listed in the
links file is one record::

    {"id": "ROCO_00006", "image": "images/<part>/<file>", "caption": <caption>,
     "article_id": "PMC4840839", "cuis": ["C0040395", ...], "source_split": "test/radiology"}

ROCO has no modality field and no concept offsets, so ``modality`` and ``concepts`` are absent
(curation extracts concepts from the caption); ``cuis`` is kept for reference and ignored by curation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from medvlp.data.ingest.concept_lexicon import CUI_PATTERN
from medvlp.data.ingest.figure_images import FigureImages
from medvlp.data.ingest.output_files import inside_source, prepare_collection, write_jsonl
from medvlp.data.ingest.skip_log import IngestError, Skip, SkipLog
from medvlp.data.ingest.source_tables import text_lines
from medvlp.data.ingest.summary import REPORT_NAME, IngestSummary

__all__ = ["find_parts", "ingest_roco"]

_ROCO_ID = re.compile(r"ROCO_\d+")
_PMC_PACKAGE = re.compile(r"/(PMC\d+)\.tar\.gz(?:\s|$)")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class _Entry:
    """One line of a ROCO text file: its fields after the id, where it is, or why it is unusable."""

    fields: list[str]
    where: str
    reason: str | None = None
    problem: str | None = None


@dataclass(frozen=True)
class RocoPart:
    """One ROCO folder (``data/test/radiology``) and its three files (captions, CUIs, links)."""

    folder: Path
    name: str
    captions: Path
    cuis: Path | None
    dlinks: Path


def _pick(folder: Path, kind: str, required: bool) -> Path | None:
    """The ``kind*.txt`` file of a part: the single ``*revised*`` one, else ``kind.txt``, else the only match."""
    matches = sorted(p for p in folder.glob(f"{kind}*.txt") if p.is_file())
    revised = [p for p in matches if "revised" in p.name]
    for choice in (revised, [p for p in matches if p.name == f"{kind}.txt"], matches):
        if len(choice) == 1:
            return choice[0]
        if len(choice) > 1:
            raise IngestError(f"ROCO part {str(folder)!r} has several {kind} files {[p.name for p in choice]}; "
                              "keep one of them")
    if required:
        raise IngestError(f"ROCO part {str(folder)!r} has no {kind}*.txt file; is this a ROCO split folder "
                          "(data/<split>/<radiology|non-radiology>)?")
    return None


def find_parts(src: Path) -> list[RocoPart]:
    """Every ROCO part at or below ``src`` (folders holding a ``dlinks*.txt``), sorted by path."""
    folders = sorted({p.parent for p in src.rglob("dlinks*.txt") if p.is_file()})
    if not folders:
        raise IngestError(f"no ROCO dlinks*.txt file at or below {str(src)!r}; point at the roco-dataset "
                          "folder or one of its data/<split>/<part> folders")
    parts = []
    for folder in folders:
        name = folder.relative_to(src).as_posix() if folder != src else folder.name
        parts.append(RocoPart(folder, name, _pick(folder, "captions", True), _pick(folder, "cuis", False),
                              _pick(folder, "dlinks", True)))
    return parts


def _read_keyed(path: Path, warnings: SkipLog) -> dict[str, _Entry]:
    """``{ROCO id: entry}`` of a ROCO text file; a repeated id keeps its first line (the later one is a
    warning), a line without a ROCO id is a warning."""
    out: dict[str, _Entry] = {}
    for number, text, problem in text_lines(path):
        where = f"{path} line {number}"
        if problem is not None:
            head = _ROCO_ID.match(text)
            if head is None:
                warnings.add("invalid_line", f"{where}: {problem}, and no ROCO id to attach it to")
            else:
                out.setdefault(head.group(0), _Entry([], where, "invalid_utf8", problem))
            continue
        if not text.strip():
            continue
        rid, _, rest = text.partition("\t")
        rid = rid.strip()
        if not _ROCO_ID.fullmatch(rid):
            warnings.add("invalid_line", f"{where}: expected 'ROCO_<digits><TAB>...', got {text[:40]!r}")
            continue
        if rid in out:
            warnings.add("duplicate_line", f"{where}: {rid} already on {out[rid].where}; this line is ignored")
            continue
        out[rid] = _Entry(rest.split("\t"), where)
    return out


class _PartConverter:
    def __init__(self, part: RocoPart, images: FigureImages, warnings: SkipLog):
        self.part, self.images, self.warnings = part, images, warnings
        self.captions = _read_keyed(part.captions, warnings)
        self.cuis = _read_keyed(part.cuis, warnings) if part.cuis is not None else {}

    def _image(self, rid: str, pmc: str, name: str) -> Path:
        folder = self.part.folder / "images"
        tried = [folder / f"{pmc}_{name}", folder / name] + [folder / f"{rid}{s}" for s in _IMAGE_SUFFIXES]
        for path in tried:
            if path.is_file():
                return path
        raise Skip("missing_file", f"image of {rid} not found (looked for {str(tried[0])!r} as fetch.py names it, "
                                   f"{tried[1].name!r} and {rid}.jpg/.png)")

    def __call__(self, rid: str, link: _Entry) -> dict:
        if link.reason:
            raise Skip(link.reason, link.problem)
        url = link.fields[0] if link.fields else ""
        found = _PMC_PACKAGE.search(url)
        if found is None or len(link.fields) < 2 or not link.fields[-1].strip():
            raise Skip("invalid_row", "expected 'ROCO_id<TAB>wget ... /PMC<digits>.tar.gz ...<TAB><image name>'")
        pmc, name = found.group(1), link.fields[-1].strip()
        if "/" in inside_source(name, "image"):
            raise Skip("invalid_field", f"image name {name!r} is a path; dlinks names a file of the article package")
        caption = self.captions.get(rid)
        if caption is None:
            raise Skip("empty_caption", f"{self.part.captions.name} has no line for {rid}")
        if caption.reason:
            raise Skip(caption.reason, f"{caption.where}: {caption.problem}")
        text = "\t".join(caption.fields).strip()
        if not text:
            raise Skip("empty_caption", f"caption of {rid} is empty ({caption.where})")
        source = self._image(rid, pmc, name)
        self.images.verify(source, source.name)
        cuis = []
        entry = self.cuis.get(rid)
        if entry is not None and not entry.reason:
            for token in (t.strip() for t in entry.fields if t.strip()):
                if CUI_PATTERN.fullmatch(token):
                    cuis.append(token)
                else:
                    self.warnings.add("invalid_cui", f"{entry.where}: {token!r} is not a CUI; dropped")
        elif entry is not None:
            self.warnings.add(entry.reason, f"{entry.where}: {entry.problem}; {rid} keeps no CUI")
        return {"id": rid, "image": self.images.place(source, f"{self.part.name}/{source.name}"), "caption": text,
                "article_id": pmc, "cuis": cuis, "source_split": self.part.name}


def _links(part: RocoPart) -> Iterator[tuple[str | None, _Entry]]:
    """``(ROCO id or None, entry)`` per non-blank line of the links file, in file order (repeats kept,
    so they count as duplicates)."""
    for number, text, problem in text_lines(part.dlinks):
        where = f"{part.dlinks} line {number}"
        if problem is not None:
            head = _ROCO_ID.match(text)
            yield (head.group(0) if head else None), _Entry([], where, "invalid_utf8", problem)
            continue
        if not text.strip():
            continue
        rid, _, rest = text.partition("\t")
        rid = rid.strip()
        if not _ROCO_ID.fullmatch(rid):
            yield None, _Entry([], where, "invalid_row", f"expected 'ROCO_<digits><TAB>...', got {text[:40]!r}")
            continue
        yield rid, _Entry(rest.split("\t"), where)


def ingest_roco(src: str | Path, dst: str | Path, *, images_mode: str = "copy", check_images: bool = True,
                overwrite: bool = False, strict: bool = False, max_examples: int = 5,
                progress: bool = True) -> IngestSummary:
    """Convert the ROCO parts at or below ``src`` into ``<dst>/figures/`` (manifest, images, report).

    Args:
        src: the roco-dataset folder, its ``data/`` folder or one ``data/<split>/<part>`` folder.
        dst: the corpus folder (``data/``).
        images_mode / check_images / overwrite / strict / max_examples / progress: as for
            :func:`medvlp.data.ingest.medconcept.ingest_medconcept`.

    Returns:
        :class:`IngestSummary` (also written to ``<dst>/figures/ingest_report.json``).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise IngestError(f"ROCO folder {str(src)!r} not found")
    parts = find_parts(src)
    collection = prepare_collection(dst / "figures", overwrite)
    summary = IngestSummary("roco", str(src), str(dst),
                            {"parts": [p.name for p in parts], "images_mode": images_mode,
                             "check_images": check_images, "strict": strict},
                            SkipLog(max_examples, strict), SkipLog(max_examples, strict=False))
    images = FigureImages(collection, images_mode, check_images)
    seen: dict[str, str] = {}

    def records():
        for part in parts:
            convert = _PartConverter(part, images, summary.warnings)
            for rid, link in tqdm(list(_links(part)), desc=f"roco {part.name}", unit="fig", disable=not progress):
                summary.read += 1
                try:
                    if rid is None:
                        raise Skip(link.reason, link.problem)
                    if rid in seen:
                        raise Skip("duplicate_id", f"id {rid!r} already used on {seen[rid]}")
                    seen[rid] = link.where
                    yield convert(rid, link)
                except Skip as s:
                    summary.skips.add(s.reason, f"{link.where} ({rid or '?'}): {s.detail}")

    summary.written = write_jsonl(collection / "manifest.jsonl", records())
    summary.outputs["manifest"] = str(collection / "manifest.jsonl")
    summary.write(collection / REPORT_NAME)
    return summary
