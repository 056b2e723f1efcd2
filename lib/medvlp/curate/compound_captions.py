"""Splitting compound (multi-panel) figure captions into per-panel sub-captions.

A compound caption (PMC style) has an optional shared lead, then panels labelled "(a)", "(b)", ...
or "(A)", "(B)", ...; each label starts a sub-caption that runs to the next label (the last one to
the end of the caption). A caption is compound only when it holds at least two labels in sequence
(a, b, c, ... in one letter case); a lone "(a)", or labels out of sequence, leave it whole. Labels
that do not continue the sequence are kept as ordinary text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SubCaption", "panel_labels", "split_compound_caption"]

# "(a)" not glued to a preceding word ("f(a)" is not a label); text may follow without a space.
_LABEL = re.compile(r"(?<!\w)\(([A-Za-z])\)")


@dataclass(frozen=True)
class SubCaption:
    """One panel's sub-caption: ``caption[start:end] == text`` (stripped, label excluded)."""

    label: str | None   # "a", "b", ... lower-cased; None for a non-compound caption or the lead text
    start: int
    end: int
    text: str


def _chain_from(labels: list[re.Match[str]], first: int) -> list[re.Match[str]]:
    """Greedy label sequence starting at ``labels[first]`` (an "a"/"A"): next letter, same case."""
    chain = [labels[first]]
    for m in labels[first + 1:]:
        if ord(m.group(1)) == ord(chain[-1].group(1)) + 1:
            chain.append(m)
    return chain


def panel_labels(caption: str) -> list[re.Match[str]]:
    """The panel-label matches of ``caption``: the longest "(a) (b) ..." sequence, or [] if shorter than 2.

    Every sequence starts at an "(a)" or "(A)"; among equally long ones the earliest wins.
    """
    labels = list(_LABEL.finditer(caption))
    best: list[re.Match[str]] = []
    for i, m in enumerate(labels):
        if m.group(1) in "aA":
            chain = _chain_from(labels, i)
            if len(chain) > len(best):
                best = chain
    return best if len(best) >= 2 else []


def split_compound_caption(caption: str) -> list[SubCaption]:
    """One :class:`SubCaption` per panel of a compound caption; ``[]`` for a non-compound one.

    A panel's text runs from the end of its label to the start of the next label (or the end of the
    caption), stripped of surrounding whitespace; ``start``/``end`` point at the stripped text. Lead
    text before the first label is not a panel. A label followed by nothing but whitespace gives an
    empty panel (``start == end``) rather than being dropped, so labels and panels stay aligned.
    """
    labels = panel_labels(caption)
    out: list[SubCaption] = []
    for k, m in enumerate(labels):
        lo = m.end()
        hi = labels[k + 1].start() if k + 1 < len(labels) else len(caption)
        raw = caption[lo:hi]
        if raw.strip():
            start, end = lo + (len(raw) - len(raw.lstrip())), hi - (len(raw) - len(raw.rstrip()))
        else:
            start = end = lo                     # an empty panel sits right after its label
        out.append(SubCaption(m.group(1).lower(), start, end, caption[start:end]))
    return out
