"""Radiology reports to per-anatomy texts (fVLM): sentence splitting, anatomy assignment, normal marking.

A report has a findings and an impression section. Each is split into sentences
(:func:`split_sentences`); each sentence is assigned the anatomies it names (:class:`AnatomyAssigner`:
an anatomy's surface form, or an abnormality's, which implies its anatomy). Following fVLM, an
anatomy that no impression sentence names is *normal*; its text is the lexicon's normal sentence
(plus its findings sentences, if any); an abnormal anatomy's text is its impression sentences then
its findings sentences (:func:`decompose_report`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from medvlp.lexicon import AnatomyLexicon, load_anatomy_lexicon

from .concept_extraction import compile_surface_forms, normalise_form

__all__ = [
    "ABBREVIATIONS",
    "AnatomyAssigner",
    "ReportDecomposition",
    "Sentence",
    "decompose_report",
    "split_sentences",
]

#: Tokens whose final "." does not end a sentence (compared lower-cased).
ABBREVIATIONS: frozenset[str] = frozenset({
    "approx.", "e.g.", "i.e.", "vs.", "cf.", "ca.", "resp.", "fig.", "figs.", "dr.", "mr.", "mrs.", "ms.",
    "prof.", "st.",
})

# A sentence end: ".", "?" or "!" followed by whitespace or the end; or a blank line.
_BOUNDARY = re.compile(r"[.?!](?=\s|$)|\n[ \t]*\n")
# A list number left at a sentence start when the number's "." was not a boundary: "1) ...".
_ITEM_PAREN = re.compile(r"\d{1,3}\)\s+")
_ITEM_NUMBER = re.compile(r"\d{1,3}")


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the token ending with the "." at ``dot`` is in :data:`ABBREVIATIONS`."""
    lo = dot
    while lo > 0 and not text[lo - 1].isspace():
        lo -= 1
    return text[lo:dot + 1].lstrip("([\"'").lower() in ABBREVIATIONS


def _stripped(text: str, lo: int, hi: int) -> tuple[int, int]:
    seg = text[lo:hi]
    start = lo + (len(seg) - len(seg.lstrip()))
    return start, max(start, hi - (len(seg) - len(seg.rstrip())))


def split_sentences(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets of the sentences of ``text``, stripped of whitespace.

    A sentence ends at ".", "?" or "!" followed by whitespace or the end of ``text`` (the end mark is
    part of the sentence), or at a blank line; the rest after the last end is a sentence too. A "."
    does not end a sentence inside a decimal ("1.2 cm") or after an abbreviation of
    :data:`ABBREVIATIONS` ("approx.", "e.g.", "i.e.", "vs.", "Dr.", ...). A list number ("1. ", "2) ")
    at the start of a sentence is not part of it: for "1. The liver is enlarged. 2. ..." the first
    sentence is "The liver is enlarged." (its offsets start after "1. ").
    """
    out: list[tuple[int, int]] = []
    pos = 0
    for m in _BOUNDARY.finditer(text):
        if m.group() == ".":
            head = text[pos:m.start()].strip()
            if _ITEM_NUMBER.fullmatch(head):       # "2." opening a list item: skip the number
                pos = m.end()
                continue
            if _is_abbreviation(text, m.start()):
                continue
        end = m.end() if m.group() in ".?!" else m.start()
        out.append(_stripped(text, pos, end))
        pos = m.end()
    out.append(_stripped(text, pos, len(text)))
    spans = []
    for start, end in out:
        item = _ITEM_PAREN.match(text, start, end)
        if item:
            start = item.end()
        if end > start:
            spans.append((start, end))
    return spans


class AnatomyAssigner:
    """Assigns sentences to the anatomies they name.

    An anatomy is assigned when one of its surface forms, or a surface form of one of its
    abnormalities, occurs in the sentence (case-insensitive, word boundaries, optional plural "s"/"es",
    longest match first: "pericardial effusion" -> heart). A form listed under two anatomies assigns
    both.

    Args:
        lexicon: anatomy lexicon (default: ``medvlp.lexicon.load_anatomy_lexicon()``).
    """

    def __init__(self, lexicon: AnatomyLexicon | None = None):
        self.lexicon = lexicon if lexicon is not None else load_anatomy_lexicon()
        self.form_to_anatomies: dict[str, frozenset[str]] = {}
        pairs = [(f, a.id) for a in self.lexicon.anatomies for f in a.surface_forms]
        pairs += [(f, x.anatomy) for x in self.lexicon.abnormalities for f in x.surface_forms]
        for form, anatomy in pairs:
            key = normalise_form(form)
            self.form_to_anatomies[key] = self.form_to_anatomies.get(key, frozenset()) | {anatomy}
        self._forms = compile_surface_forms(self.form_to_anatomies)

    @property
    def anatomy_ids(self) -> tuple[str, ...]:
        """Every anatomy id of the lexicon, in lexicon order."""
        return tuple(a.id for a in self.lexicon.anatomies)

    def assign(self, sentence: str) -> tuple[str, ...]:
        """Sorted ids of the anatomies ``sentence`` names (``()`` when it names none)."""
        found: set[str] = set()
        for m in self._forms.finditer(sentence):
            found |= self.form_to_anatomies[normalise_form(m.group("form"))]
        return tuple(sorted(found))


@dataclass(frozen=True)
class Sentence:
    """A report sentence: ``section_text[start:end] == text``."""

    section: str        # "findings" | "impression"
    start: int
    end: int
    text: str           # stripped, includes its final "."
    anatomies: tuple[str, ...]   # sorted anatomy ids


@dataclass(frozen=True)
class ReportDecomposition:
    """A report cut into sentences and per-anatomy texts."""

    sentences: tuple[Sentence, ...]
    anatomy_text: dict[str, str]   # every anatomy id of the lexicon -> its fVLM text
    is_normal: dict[str, bool]     # every anatomy id -> not mentioned in the impression


@lru_cache(maxsize=1)
def _default_assigner() -> AnatomyAssigner:
    return AnatomyAssigner()


def _single_spaced(parts: list[str]) -> str:
    return " ".join(" ".join(parts).split())


def decompose_report(findings: str, impression: str, assigner: AnatomyAssigner | None = None
                     ) -> ReportDecomposition:
    """Split a report into sentences, assign anatomies, mark normal anatomies and build their texts.

    Args:
        findings, impression: the two report sections (either may be empty).
        assigner: anatomy assigner (default: one over the shipped anatomy lexicon).

    Returns:
        sentences of the findings then the impression (offsets into their own section);
        ``is_normal[a]`` is True when no impression sentence is assigned to anatomy ``a``;
        ``anatomy_text[a]`` is, for an abnormal ``a``, its impression sentences then its findings
        sentences, and for a normal ``a``, ``lexicon.normal_text(a)`` then its findings sentences,
        joined with single spaces.
    """
    assigner = assigner if assigner is not None else _default_assigner()
    sentences: list[Sentence] = []
    for section, text in (("findings", findings or ""), ("impression", impression or "")):
        for start, end in split_sentences(text):
            s = text[start:end]
            sentences.append(Sentence(section, start, end, s, assigner.assign(s)))

    by_anatomy: dict[str, dict[str, list[str]]] = {
        a: {"findings": [], "impression": []} for a in assigner.anatomy_ids}
    for s in sentences:
        for a in s.anatomies:
            if a in by_anatomy:
                by_anatomy[a][s.section].append(s.text)
    is_normal = {a: not parts["impression"] for a, parts in by_anatomy.items()}
    anatomy_text = {
        a: _single_spaced(([assigner.lexicon.normal_text(a)] if is_normal[a] else parts["impression"])
                          + parts["findings"])
        for a, parts in by_anatomy.items()
    }
    return ReportDecomposition(tuple(sentences), anatomy_text, is_normal)
