"""Radiology reports to per-anatomy texts (fVLM): sentence splitting, anatomy assignment, normal marking.

A report has a findings and an impression section. Each is split into sentences
(:func:`split_sentences`); each sentence is assigned the anatomies it names (:class:`AnatomyAssigner`:
an anatomy's surface form, or an abnormality's, which implies its anatomy), negated or not.

Normal marking. Following fVLM, an anatomy is *normal* unless the impression mentions it, where
"mentions" means names it as present: an impression sentence marks an anatomy abnormal only through a
non-negated mention (:meth:`AnatomyAssigner.abnormal_anatomies`). Negation is the curation's NegEx
(:class:`~medvlp.curate.concept_extraction.ConceptExtractor`, with its pre-, post- and pseudo-cues and
scope terminators: "No change in the pulmonary nodule." negates nothing, "No effusion, but a lung
nodule is seen." negates only the effusion), run over the anatomy and abnormality forms of the lexicon,
the generic finding words of :data:`FINDING_TERMS` ("lesion", "mass", "atelectasis", "enlarged", ...;
they name no anatomy) and the normal statements of :data:`NORMAL_PHRASES` ("normal", "clear",
"unremarkable", "within normal limits", ...). In one impression sentence:

- a *positive* statement is a non-negated finding mention (an abnormality of the lexicon, or a
  finding word); a *negative* statement is a negated finding mention, or a non-negated normal phrase
  (a negated one, "not normal", states nothing by itself). An abnormality is about its anatomy; a
  finding word or a normal phrase that names no anatomy is about every anatomy the sentence names;
- an anatomy is *named* by a non-negated mention of one of its surface forms; an anatomy mention
  inside a negation ("No nodule was detected in both lungs.") names nothing.

The sentence marks anatomy ``A`` abnormal when (1) it holds a positive statement about ``A`` ("Lung
nodule.", "No change in the pulmonary nodule.", "Liver lesion, no ascites."), or (2) it names ``A``
and holds no negative statement about ``A``: fVLM's own rule, for an anatomy named without saying it
is normal ("The lungs are hyperinflated."). So these leave their anatomies normal: "No pleural
effusion.", "No evidence of pneumothorax or pleural effusion.", "Liver without focal lesion.", "The
lungs are clear.", "No mass, nodule or infiltration was detected in both lungs." and the lexicon's
own normal sentence, "Lung shows no significant abnormalities." (the pre-cue "no" negates the finding
word "abnormalities"; a normal phrase holds no negation cue, so "no significant abnormality or
nodule" still negates the nodule). A sentence marks only anatomies it is assigned to.

Where this errs: a finding word that names no anatomy is credited to every anatomy of its sentence
("Normal liver, splenic lesion." marks both abnormal, as the plain fVLM rule did; an abnormality of
the lexicon is credited to its own anatomy only, so "Normal liver, enlarged spleen." marks the spleen
alone); a positive word outside :data:`FINDING_TERMS` next to a negative statement is missed ("Lungs
hyperinflated, no effusion." leaves the lung normal), and a normal statement outside
:data:`NORMAL_PHRASES` is read as a finding ("The lungs are well aerated." marks the lung); negation
is as good as the cue lists of :mod:`~medvlp.curate.concept_extraction` ("Effusion was not
observed." is not negated: "not observed" is no post-cue there).

Texts (:func:`decompose_report`): a normal anatomy's text is the lexicon's normal sentence
("<Anatomy> shows no significant abnormalities.") then its findings sentences, exactly as fVLM; an
impression sentence that only negates something about it (e.g. "No pleural effusion." for a normal
lung) is left out, being what the normal sentence already says. An abnormal anatomy's text is every
impression sentence assigned to it, in report order (the ones that mark it abnormal and any negative
ones: "Lung nodule. No pleural effusion."), then its findings sentences.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from medvlp.lexicon import AnatomyLexicon, Concept, ConceptLexicon, load_anatomy_lexicon

from .concept_extraction import ConceptExtractor, compile_surface_forms, normalise_form

__all__ = [
    "ABBREVIATIONS",
    "FINDING_TERMS",
    "NORMAL_PHRASES",
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

#: Finding words that name no anatomy: in an impression sentence, a non-negated one is a positive
#: statement about every anatomy the sentence names, a negated one a negative statement. None holds a
#: negation cue or an anatomy form of the shipped lexicon. Matched like lexicon forms (plural "s"/"es").
FINDING_TERMS: tuple[str, ...] = (
    "abnormality", "abnormalities", "anomaly", "finding", "pathology", "pathological", "pathologic",
    "lesion", "mass", "nodule", "nodular", "nodularity", "opacity", "opacities", "infiltrate", "infiltration",
    "infiltrative", "ground glass", "ground-glass", "atelectasis", "atelectatic", "fibrosis", "fibrotic",
    "bronchiectasis", "bulla", "bullae", "bullous", "air trapping", "honeycombing", "reticulation", "scar",
    "scarring", "granuloma", "sequela", "sequelae", "cavity", "cavitation", "pneumonia", "pneumonic",
    "infection", "inflammation", "inflammatory", "effusion", "pneumothorax", "fluid", "ascites", "collection",
    "abscess", "hematoma", "hemorrhage", "edema", "enlarged", "enlargement", "dilated", "dilatation",
    "dilation", "ectasia", "ectatic", "aneurysm", "dissection", "stenosis", "narrowing", "occlusion",
    "thrombus", "thrombosis", "embolism", "embolus", "thickening", "thickened", "calcification", "calcified",
    "calcific", "atherosclerosis", "atherosclerotic", "plaque", "cyst", "cystic", "stone", "calculus",
    "calculi", "lithiasis", "hernia", "fracture", "tumor", "tumour", "tumoral", "neoplasm", "malignancy",
    "malignant", "metastasis", "metastases", "metastatic", "lymphadenopathy", "adenopathy", "steatosis",
    "hepatosteatosis", "cirrhosis", "hepatomegaly", "atrophy", "atrophic", "hypodense", "hypodensity",
    "hyperdense", "hypoattenuating", "hypoattenuation", "hydronephrosis", "increased", "decreased",
)

#: Phrases stating that what a sentence names is normal: a non-negated one is a negative statement.
#: "natural" is CT-RATE's word for normal ("Heart contour and size are natural."). None holds a negation
#: cue, so "no significant abnormality" is negative through the pre-cue "no" and the finding word.
NORMAL_PHRASES: tuple[str, ...] = (
    "normal", "normally", "unremarkable", "clear", "within normal limits", "natural",
)

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


@dataclass(frozen=True)
class _Form:
    """What a surface form of the marking extractor stands for."""

    kind: str                    # "anatomy" | "finding" | "normal"
    anatomies: frozenset[str]    # the anatomies it names (empty for most finding words and normal phrases)


class AnatomyAssigner:
    """Assigns sentences to the anatomies they name, and finds the anatomies an impression sentence marks
    abnormal.

    An anatomy is assigned when one of its surface forms, or a surface form of one of its
    abnormalities, occurs in the sentence (case-insensitive, word boundaries, optional plural "s"/"es",
    longest match first: "pericardial effusion" -> heart), negated or not. A form listed under two
    anatomies assigns both. For the marking, see :meth:`abnormal_anatomies` and the module docstring.

    Args:
        lexicon: anatomy lexicon (default: ``medvlp.lexicon.load_anatomy_lexicon()``).
        finding_terms: finding words that name no anatomy (default :data:`FINDING_TERMS`); one that
            contains an anatomy form is a finding of that anatomy.
        normal_phrases: normal statements (default :data:`NORMAL_PHRASES`).
    """

    def __init__(self, lexicon: AnatomyLexicon | None = None, *,
                 finding_terms: Sequence[str] = FINDING_TERMS, normal_phrases: Sequence[str] = NORMAL_PHRASES):
        self.lexicon = lexicon if lexicon is not None else load_anatomy_lexicon()
        self.form_to_anatomies: dict[str, frozenset[str]] = {}
        pairs = [(f, a.id) for a in self.lexicon.anatomies for f in a.surface_forms]
        pairs += [(f, x.anatomy) for x in self.lexicon.abnormalities for f in x.surface_forms]
        for form, anatomy in pairs:
            key = normalise_form(form)
            self.form_to_anatomies[key] = self.form_to_anatomies.get(key, frozenset()) | {anatomy}
        self._forms = compile_surface_forms(self.form_to_anatomies)

        # The marking extractor: one concept per surface form, so the curation's ConceptExtractor gives
        # every mention with its negation flag. A lexicon form wins over a finding word or normal
        # phrase of the same spelling, an abnormality form over an anatomy form.
        kinds: dict[str, _Form] = {}
        for kind, terms in (("normal", normal_phrases), ("finding", finding_terms)):
            for term in terms:
                kinds[normalise_form(term)] = _Form(kind, frozenset(self.assign(term)))
        abnormality_forms = {normalise_form(f) for x in self.lexicon.abnormalities for f in x.surface_forms}
        for key, anatomies in self.form_to_anatomies.items():
            kinds[key] = _Form("finding" if key in abnormality_forms else "anatomy", anatomies)
        self._marking_forms = kinds
        concepts = tuple(Concept(key, key, (), form.kind, ()) for key, form in kinds.items())
        self._extractor = ConceptExtractor(ConceptLexicon((), concepts))

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

    def abnormal_anatomies(self, sentence: str) -> tuple[str, ...]:
        """Sorted ids of the anatomies that ``sentence``, read as an impression sentence, marks abnormal.

        The anatomies with a positive statement about them, and the anatomies the sentence names
        (non-negated) with no negative statement about them; always a subset of :meth:`assign`.
        See the module docstring for the terms.
        """
        named: set[str] = set()
        positive: set[str] = set()
        negative: set[str] = set()
        positive_any = negative_any = False      # a statement that names no anatomy: about all named
        for m in self._extractor.extract(sentence):
            form = self._marking_forms[m.concept_id]
            if form.kind == "anatomy":
                if not m.negated:
                    named |= form.anatomies
            elif form.kind == "finding" and not m.negated:
                positive |= form.anatomies
                positive_any |= not form.anatomies
            elif form.kind == "finding" or not m.negated:      # a negated finding or a normal phrase
                negative |= form.anatomies
                negative_any |= not form.anatomies
        marked = positive | {a for a in named if positive_any or not (negative_any or a in negative)}
        return tuple(sorted(marked & set(self.assign(sentence))))


@dataclass(frozen=True)
class Sentence:
    """A report sentence: ``section_text[start:end] == text``."""

    section: str        # "findings" | "impression"
    start: int
    end: int
    text: str           # stripped, includes its final "."
    anatomies: tuple[str, ...]   # sorted anatomy ids the sentence names (negated or not)
    abnormal: tuple[str, ...] = ()   # impression only: the anatomies it marks abnormal (sorted, in anatomies)


@dataclass(frozen=True)
class ReportDecomposition:
    """A report cut into sentences and per-anatomy texts."""

    sentences: tuple[Sentence, ...]
    anatomy_text: dict[str, str]   # every anatomy id of the lexicon -> its fVLM text
    is_normal: dict[str, bool]     # every anatomy id -> no impression sentence marks it abnormal


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
        sentences of the findings then the impression (offsets into their own section; an impression
        sentence's ``abnormal`` from :meth:`AnatomyAssigner.abnormal_anatomies`);
        ``is_normal[a]`` is True when no impression sentence marks anatomy ``a`` abnormal;
        ``anatomy_text[a]`` is, for an abnormal ``a``, every impression sentence assigned to it then its
        findings sentences, and for a normal ``a``, ``lexicon.normal_text(a)`` then its findings
        sentences, joined with single spaces (see the module docstring).
    """
    assigner = assigner if assigner is not None else _default_assigner()
    sentences: list[Sentence] = []
    for section, text in (("findings", findings or ""), ("impression", impression or "")):
        for start, end in split_sentences(text):
            s = text[start:end]
            abnormal = assigner.abnormal_anatomies(s) if section == "impression" else ()
            sentences.append(Sentence(section, start, end, s, assigner.assign(s), abnormal))

    by_anatomy: dict[str, dict[str, list[str]]] = {
        a: {"findings": [], "impression": []} for a in assigner.anatomy_ids}
    marked: set[str] = set()
    for s in sentences:
        marked.update(s.abnormal)
        for a in s.anatomies:
            if a in by_anatomy:
                by_anatomy[a][s.section].append(s.text)
    is_normal = {a: a not in marked for a in by_anatomy}
    anatomy_text = {
        a: _single_spaced(([assigner.lexicon.normal_text(a)] if is_normal[a] else parts["impression"])
                          + parts["findings"])
        for a, parts in by_anatomy.items()
    }
    return ReportDecomposition(tuple(sentences), anatomy_text, is_normal)
