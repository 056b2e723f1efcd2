"""Concept mentions of a source corpus mapped to the concept lexicon, and a lexicon of the CUIs seen.

Curation (:func:`medvlp.curate.concept_extraction.merge_given_mentions`) accepts a given mention as
``{"concept_id", ...}`` with a concept id of its lexicon, or ``{"cui", ...}`` with a CUI that some
concept of its lexicon lists in ``"cui"``; any other entry is dropped with an ``invalid_given_span``
warning. The adapters therefore write ``concept_id`` (and the ``cui``) where the lexicon has the CUI,
and ``cui`` alone otherwise; :func:`lexicon_of_cuis` builds the lexicon (``concepts.json`` schema)
under which every written CUI resolves, for ``curate.concept_lexicon``.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from medvlp.curate.concept_extraction import normalise_form
from medvlp.lexicon import ConceptLexicon

__all__ = ["CUI_PATTERN", "CuiTally", "cui_index", "lexicon_of_cuis"]

#: A UMLS Concept Unique Identifier: "C" and seven digits.
CUI_PATTERN = re.compile(r"C\d{7}")
#: Synonyms kept per new concept (its most frequent surface forms after the name).
MAX_SYNONYMS = 8


def cui_index(lexicon: ConceptLexicon) -> dict[str, str]:
    """``{CUI (upper case): concept id}`` for the concepts that list a CUI (the first wins)."""
    out: dict[str, str] = {}
    for c in lexicon.concepts:
        if c.cui:
            out.setdefault(c.cui.upper(), c.id)
    return out


@dataclass
class CuiTally:
    """Surface forms and modalities seen per CUI (for :func:`lexicon_of_cuis`)."""

    forms: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    modalities: dict[str, set] = field(default_factory=lambda: defaultdict(set))

    def add(self, cui: str, surface: str, modality: str | None) -> None:
        form = normalise_form(surface)
        if form:
            self.forms[cui][form] += 1
        if modality:
            self.modalities[cui].add(modality)


def lexicon_of_cuis(tally: CuiTally, base: ConceptLexicon, description: str) -> dict:
    """A lexicon (``concepts.json`` schema) with one concept per CUI of ``tally``.

    A CUI that ``base`` lists keeps that concept entry unchanged (its id is what the manifest writes);
    any other CUI becomes a concept whose id and ``cui`` are the CUI, whose name is its most frequent
    surface form (lower case) and whose synonyms are the next ones. ``group`` is empty (the source does
    not say); ``modalities`` are the modality ids of the figures it was seen in. The modalities list is
    ``base``'s. Concepts are sorted by CUI.
    """
    by_cui = cui_index(base)
    by_id = {c.id: c for c in base.concepts}
    concepts = []
    for cui in sorted(set(tally.forms) | set(tally.modalities)):
        if cui in by_cui:
            c = by_id[by_cui[cui]]
            concepts.append({"id": c.id, "name": c.name, "synonyms": list(c.synonyms), "group": c.group,
                             "modalities": list(c.modalities), "cui": c.cui})
            continue
        ranked = [form for form, _ in sorted(tally.forms[cui].items(), key=lambda kv: (-kv[1], kv[0]))]
        concepts.append({"id": cui, "name": ranked[0] if ranked else cui.lower(),
                         "synonyms": ranked[1:1 + MAX_SYNONYMS], "group": "",
                         "modalities": sorted(tally.modalities.get(cui, ())), "cui": cui})
    return {"version": 1, "description": description,
            "modalities": [{"id": m.id, "name": m.name, "synonyms": list(m.synonyms)} for m in base.modalities],
            "concepts": concepts}
