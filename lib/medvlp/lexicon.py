"""The concept and anatomy lexicons shipped as package data (``medvlp/resources/*.json``).

The 2D lexicon lists finding concepts (id, preferred name, synonyms, semantic group, the modalities
they are drawn in, and a UMLS CUI only where verified). The 3D lexicon lists anatomies (with their
segmentation label value) and per-anatomy CT abnormalities. Both the synthetic corpus generator
and the curation stage read them from here; a team with its own data passes its own JSON path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class Modality:
    id: str
    name: str
    synonyms: tuple[str, ...]


@dataclass(frozen=True)
class Concept:
    id: str
    name: str
    synonyms: tuple[str, ...]
    group: str
    modalities: tuple[str, ...]
    cui: str | None = None

    @property
    def surface_forms(self) -> tuple[str, ...]:
        """Preferred name first, then synonyms, without repeats."""
        return tuple(dict.fromkeys((self.name, *self.synonyms)))


@dataclass(frozen=True)
class Anatomy:
    id: str
    label: int
    name: str
    synonyms: tuple[str, ...]

    @property
    def surface_forms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.name, *self.synonyms)))


@dataclass(frozen=True)
class Abnormality:
    id: str
    anatomy: str
    name: str
    synonyms: tuple[str, ...]

    @property
    def surface_forms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.name, *self.synonyms)))


@dataclass(frozen=True)
class ConceptLexicon:
    modalities: tuple[Modality, ...]
    concepts: tuple[Concept, ...]

    def concept(self, concept_id: str) -> Concept:
        for c in self.concepts:
            if c.id == concept_id:
                return c
        raise KeyError(f"unknown concept id {concept_id!r}; known: {[c.id for c in self.concepts]}")

    def for_modality(self, modality: str) -> tuple[Concept, ...]:
        return tuple(c for c in self.concepts if modality in c.modalities)


@dataclass(frozen=True)
class AnatomyLexicon:
    anatomies: tuple[Anatomy, ...]
    abnormalities: tuple[Abnormality, ...]
    normal_template: str

    def anatomy(self, anatomy_id: str) -> Anatomy:
        for a in self.anatomies:
            if a.id == anatomy_id:
                return a
        raise KeyError(f"unknown anatomy id {anatomy_id!r}; known: {[a.id for a in self.anatomies]}")

    def abnormalities_of(self, anatomy_id: str) -> tuple[Abnormality, ...]:
        return tuple(x for x in self.abnormalities if x.anatomy == anatomy_id)

    def normal_text(self, anatomy_id: str) -> str:
        """fVLM's text for an anatomy the impression does not mention."""
        name = self.anatomy(anatomy_id).name
        return self.normal_template.format(name=name[:1].upper() + name[1:])


def _read_json(path: str | Path | None, default_name: str) -> dict:
    if path is None:
        return json.loads(resources.files("medvlp.resources").joinpath(default_name).read_text("utf-8"))
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"lexicon file {str(p)!r} not found; pass a JSON lexicon or None for the default")
    return json.loads(p.read_text("utf-8"))


@lru_cache(maxsize=8)
def load_concept_lexicon(path: str | None = None) -> ConceptLexicon:
    """Load the 2D concept lexicon (default: the one shipped with medvlp)."""
    raw = _read_json(path, "concepts.json")
    mods = tuple(Modality(m["id"], m["name"], tuple(m.get("synonyms", ()))) for m in raw["modalities"])
    concepts = tuple(
        Concept(c["id"], c["name"], tuple(c.get("synonyms", ())), c.get("group", ""),
                tuple(c.get("modalities", ())), c.get("cui"))
        for c in raw["concepts"]
    )
    ids = [c.id for c in concepts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"concept lexicon {path or 'concepts.json'}: duplicate concept ids")
    return ConceptLexicon(mods, concepts)


@lru_cache(maxsize=8)
def load_anatomy_lexicon(path: str | None = None) -> AnatomyLexicon:
    """Load the 3D anatomy/abnormality lexicon (default: the one shipped with medvlp)."""
    raw = _read_json(path, "anatomy.json")
    anatomies = tuple(Anatomy(a["id"], int(a["label"]), a["name"], tuple(a.get("synonyms", ())))
                      for a in raw["anatomies"])
    known = {a.id for a in anatomies}
    abn = tuple(Abnormality(x["id"], x["anatomy"], x["name"], tuple(x.get("synonyms", ())))
                for x in raw["abnormalities"])
    for x in abn:
        if x.anatomy not in known:
            raise ValueError(f"abnormality {x.id!r} names unknown anatomy {x.anatomy!r}")
    return AnatomyLexicon(anatomies, abn, raw.get("normal_template", "{name} shows no significant abnormalities."))
