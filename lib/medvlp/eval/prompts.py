"""Zero-shot prompts: templates x class names, with the character span of the class name in each.

A prompt knows where its class name sits (``span``), so that ConceptCLIP's local scoring can embed
the class name's tokens in the PC-Align space exactly as training embeds concept mentions.

- 2D findings (ConceptCLIP): :data:`FINDING_TEMPLATES` x every surface form (name + synonyms) of a
  concept, each with one surface form of the image's modality.
- CT diseases (fVLM): the positive prompt ``"<disease>."`` per surface form and the negative
  ``"Not <disease>."`` (plus the anatomy's normal text with ``negative="normal"``).
- Concept annotation (ConceptCLIP): ``"This is <modality> of <concept>."`` vs ``"This is <modality>."``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from medvlp.lexicon import Abnormality, AnatomyLexicon, Concept, Modality

#: ``{modality}`` and ``{concept}`` are filled in; the concept's span is recorded.
FINDING_TEMPLATES: tuple[str, ...] = (
    "{modality} showing {concept}.",
    "This is {modality} of {concept}.",
    "{concept} on {modality}.",
    "{modality} demonstrates {concept}.",
)
#: Templates for images of unknown modality.
PLAIN_TEMPLATES: tuple[str, ...] = ("{concept}.", "An image showing {concept}.")
#: Negative CT prompt styles: fVLM's "Not <disease>.", and the fVLM normal-anatomy text.
NEGATIVE_STYLES = ("not", "normal")


class Prompt(NamedTuple):
    """A prompt text and the (start_char, end_char) of its class name (end exclusive)."""

    text: str
    span: tuple[int, int]


def fill(template: str, concept: str, modality: str | None = None) -> Prompt:
    """Fill ``{concept}`` (and ``{modality}``) into ``template``; sentence-initial letters capitalised.

    >>> fill("{concept} on {modality}.", "pleural effusion", "chest X-ray")
    Prompt(text='Pleural effusion on chest X-ray.', span=(0, 16))
    """
    if "{concept}" not in template:
        raise ValueError(f"template {template!r} has no {{concept}} field")
    head, tail = template.split("{concept}", 1)
    if modality is not None:
        head, tail = head.replace("{modality}", modality), tail.replace("{modality}", modality)
    elif "{modality}" in template:
        raise ValueError(f"template {template!r} needs a modality")
    text = head + concept + tail
    if text[:1].islower():
        text = text[:1].upper() + text[1:]
    return Prompt(text, (len(head), len(head) + len(concept)))


def finding_prompts(concept: Concept, modality: Modality | None,
                    templates: Sequence[str] = FINDING_TEMPLATES) -> list[Prompt]:
    """Every template x every surface form of ``concept``; the modality's surface forms rotate over
    the prompts. Without a modality, :data:`PLAIN_TEMPLATES` are used."""
    forms = concept.surface_forms
    if modality is None:
        return [fill(t, f) for t in PLAIN_TEMPLATES for f in forms]
    mods = tuple(dict.fromkeys((modality.name, *modality.synonyms)))
    return [fill(t, f, mods[(i + j) % len(mods)]) for i, t in enumerate(templates) for j, f in enumerate(forms)]


def disease_prompts(abnormality: Abnormality, lexicon: AnatomyLexicon,
                    negative: str = "not") -> tuple[list[Prompt], list[Prompt]]:
    """fVLM's positive / negative prompts of one CT abnormality.

    positive: ``"<form>."`` for every surface form; negative: ``"Not <form>."`` (``negative="not"``)
    or the anatomy's normal text, e.g. ``"Liver shows no significant abnormalities."`` (``"normal"``).
    """
    if negative not in NEGATIVE_STYLES:
        raise ValueError(f"negative prompt style must be one of {NEGATIVE_STYLES}, got {negative!r}")
    forms = abnormality.surface_forms
    positive = [fill("{concept}.", f) for f in forms]
    if negative == "not":
        negatives = [fill("Not {concept}.", f) for f in forms]
    else:
        text = lexicon.normal_text(abnormality.anatomy)
        negatives = [Prompt(text, (0, len(text)))]
    return positive, negatives


def concept_prompt(concept_name: str, modality: str | None = None) -> Prompt:
    """ConceptCLIP's concept prompt ``"This is <modality> of <concept>."`` (``"This is <concept>."``
    without a modality), with the concept's span."""
    if not concept_name or not concept_name.strip():
        raise ValueError("concept_prompt: concept_name is empty; pass the concept's preferred name")
    if modality:
        return fill("This is {modality} of {concept}.", concept_name, modality)
    return fill("This is {concept}.", concept_name)


def annotation_prompts(concept_name: str, modality: str) -> tuple[Prompt, Prompt]:
    """ConceptCLIP concept annotation: ``"This is <modality> of <concept>."`` vs ``"This is <modality>."``."""
    return concept_prompt(concept_name, modality), Prompt(f"This is {modality}.", (8, 8 + len(modality)))
