"""Concept mentions in figure captions: lexicon matching with NegEx-style negation.

Matching: every surface form of every concept of the lexicon (preferred name and synonyms) is
compiled into one case-insensitive regex (a character trie of the forms, longer continuations tried
first), on word boundaries, with an optional plural "s"/"es" after the form that stays outside the
span. One left-to-right scan gives non-overlapping mentions, the longest form winning at each position
("pleural effusion" over "effusion"). Spaces inside a form match any run of whitespace.

Negation, per clause (NegEx, Chapman et al. 2001, reduced to what captions need):

- a *pre-cue* (:data:`PRE_NEGATION_CUES`) negates every mention after it up to the end of its clause,
  so "no effusion or pneumothorax" and "no X, Y, or Z" negate every item of the list;
- a clause ends at :data:`CLAUSE_TERMINATOR_PUNCTUATION` (a "." that is not a decimal point) or at a
  word of :data:`CLAUSE_TERMINATOR_WORDS` ("no effusion, but a nodule is present" negates only the
  effusion);
- a *post-cue* (:data:`POST_NEGATION_CUES`) right after a mention negates it, and every mention
  chained to it by a list connector ("effusion or pneumothorax was excluded" negates both);
- a *pseudo-cue* (:data:`PSEUDO_NEGATION_CUES`, "no change in") looks like a cue but negates nothing.

Cue and terminator words inside a mention span are ignored. All lists are module constants that a
caller can extend and pass to :class:`ConceptExtractor`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from medvlp.lexicon import ConceptLexicon, load_concept_lexicon

__all__ = [
    "CLAUSE_TERMINATOR_PUNCTUATION",
    "CLAUSE_TERMINATOR_WORDS",
    "POST_NEGATION_CUES",
    "PRE_NEGATION_CUES",
    "PSEUDO_NEGATION_CUES",
    "ConceptExtractor",
    "Mention",
    "compile_surface_forms",
    "merge_given_mentions",
    "normalise_form",
]

#: Cues that negate the mentions after them, up to the end of the clause.
PRE_NEGATION_CUES: tuple[str, ...] = (
    "no", "no evidence of", "no evidence for", "no sign of", "no signs of", "no findings of",
    "without", "without evidence of", "without signs of",
    "negative for", "absence of", "free of", "ruled out for", "rules out",
    "not", "nor", "neither",
)

_BE = ("is", "are", "was", "were")
_ABSENT = ("absent", "not seen", "not identified", "not present", "not visible", "not evident",
           "not detected", "excluded", "ruled out")
#: Cues that negate the mention right before them ("effusion is absent").
POST_NEGATION_CUES: tuple[str, ...] = tuple(f"{be} {what}" for be in _BE for what in _ABSENT) + (
    "has been excluded", "have been excluded", "has been ruled out", "have been ruled out",
)

#: Phrases that contain a cue but negate nothing ("no change in the effusion").
PSEUDO_NEGATION_CUES: tuple[str, ...] = (
    "no change", "no interval change", "no significant change", "no increase", "no decrease",
    "no further", "not only", "not necessarily", "without change", "without interval change",
)

#: Words that end a negation's scope.
CLAUSE_TERMINATOR_WORDS: tuple[str, ...] = (
    "but", "however", "although", "though", "while", "whereas", "with", "except", "apart from",
    "aside from", "which",
)

#: Characters that end a negation's scope ("." only where it is not a decimal point).
CLAUSE_TERMINATOR_PUNCTUATION: tuple[str, ...] = (".", ";", ":", "(", ")", "?", "!")

# Separator allowed between two mentions of one list: ", ", " or ", ", and ", " nor ", "/".
_LIST_CONNECTOR = re.compile(r"\s*(?:,\s*)?(?:(?:or|and|nor|and/or)\s+)?|\s*/\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Mention:
    """One concept mention: ``caption[start:end]`` is the surface form (a plural "s" excluded)."""

    concept_id: str
    start: int          # char offset into the caption, inclusive
    end: int            # exclusive
    negated: bool
    source: str         # "extracted" | "given"

    def as_dict(self) -> dict:
        """The corpus-contract form: ``{concept_id, start_char, end_char, negated, source}``."""
        return {"concept_id": self.concept_id, "start_char": self.start, "end_char": self.end,
                "negated": self.negated, "source": self.source}


def normalise_form(text: str) -> str:
    """Lookup key of a surface form or a matched span: lower case, single spaces."""
    return " ".join(text.lower().split())


def _alternation(phrases: Iterable[str]) -> str:
    """Regex matching any of ``phrases`` (lower-cased; a space matches any run of whitespace).

    The phrases are factored into a character trie ("pleural (?:effusion|fluid)"), so the engine
    tries one branch per next character instead of every phrase at every position. At each trie node
    the longer continuations are tried before stopping there, so with backtracking the longest
    phrase that satisfies the rest of the pattern wins. ``""`` when there are no phrases.
    """
    trie: dict = {}
    for phrase in {normalise_form(p) for p in phrases if p.strip()}:
        node = trie
        for ch in phrase:
            node = node.setdefault(ch, {})
        node[""] = {}                       # a phrase ends here

    def emit(node: dict) -> str:
        branches = [(r"\s+" if ch == " " else re.escape(ch)) + emit(node[ch]) for ch in sorted(node) if ch]
        if not branches:
            return ""
        if len(branches) == 1 and "" not in node:
            return branches[0]
        return "(?:" + "|".join(branches) + ")" + ("?" if "" in node else "")

    return emit(trie)


def compile_surface_forms(forms: Iterable[str], plural: bool = True) -> re.Pattern[str]:
    """One case-insensitive regex matching any of ``forms`` on word boundaries.

    Group ``form`` is the surface form itself; with ``plural``, a trailing "s"/"es" is allowed after
    it (matched, but outside the group). At each position the longest form wins (see
    :func:`_alternation`); ``finditer`` then yields non-overlapping matches in one linear scan.
    """
    alt = _alternation(forms)
    if not alt:
        return re.compile(r"(?!)")          # an empty lexicon matches nothing
    suffix = r"(?:e?s)?" if plural else ""
    return re.compile(rf"(?<!\w)(?P<form>{alt}){suffix}(?!\w)", re.IGNORECASE)


def _word_group(name: str, phrases: Sequence[str]) -> str | None:
    alt = _alternation(phrases)
    return rf"(?P<{name}>(?<!\w)(?:{alt})(?!\w))" if alt else None


def _scope_regex(pre: Sequence[str], pseudo: Sequence[str], words: Sequence[str],
                 chars: Sequence[str]) -> re.Pattern[str]:
    """Pre-cues and terminators in one regex; earlier groups win where two start at one position.

    Pseudo-cues come first, so "no change" is not read as "no".
    """
    groups = [_word_group("pseudo", pseudo), _word_group("pre", pre), _word_group("term", words)]
    punct = [re.escape(c) for c in chars if c != "."]
    if "." in chars:
        punct.append(r"\.(?!\d)")
    if punct:
        groups.append(rf"(?P<punct>{'|'.join(punct)})")
    groups = [g for g in groups if g]
    return re.compile("|".join(groups) if groups else r"(?!)", re.IGNORECASE)


class ConceptExtractor:
    """Finds concept mentions in captions and flags the negated ones.

    Args:
        lexicon: concept lexicon (default: ``medvlp.lexicon.load_concept_lexicon()``). A surface form
            listed under two concepts goes to the first of them.
        pre_cues, post_cues, pseudo_cues: negation cue phrases (case-insensitive, word boundaries).
        terminator_words, terminator_punctuation: what ends a negation's scope.
    """

    def __init__(self, lexicon: ConceptLexicon | None = None, *,
                 pre_cues: Sequence[str] = PRE_NEGATION_CUES,
                 post_cues: Sequence[str] = POST_NEGATION_CUES,
                 pseudo_cues: Sequence[str] = PSEUDO_NEGATION_CUES,
                 terminator_words: Sequence[str] = CLAUSE_TERMINATOR_WORDS,
                 terminator_punctuation: Sequence[str] = CLAUSE_TERMINATOR_PUNCTUATION):
        self.lexicon = lexicon if lexicon is not None else load_concept_lexicon()
        self.form_to_concept: dict[str, str] = {}
        for concept in self.lexicon.concepts:
            for form in concept.surface_forms:
                self.form_to_concept.setdefault(normalise_form(form), concept.id)
        self._forms = compile_surface_forms(self.form_to_concept)
        self._scope = _scope_regex(pre_cues, pseudo_cues, terminator_words, terminator_punctuation)
        post_alt = _alternation(post_cues)
        self._post = re.compile(rf"\s*(?:{post_alt})(?!\w)", re.IGNORECASE) if post_alt else None
        self._post_any = re.compile(rf"(?<!\w)(?:{post_alt})(?!\w)", re.IGNORECASE) if post_alt else None

    def extract(self, text: str) -> list[Mention]:
        """Every concept mention of ``text``, sorted by start, with its negation flag.

        Linear in ``len(text)``: one scan for the surface forms, one for pre-cues and terminators,
        one for post-cues.
        """
        found = list(self._forms.finditer(text))
        if not found:
            return []
        starts = [m.start() for m in found]
        ends = [m.end() for m in found]
        # A pre-cue inside a post-cue ("not" in "was not seen") is part of the post-cue.
        post_spans = [(m.start(), m.end()) for m in self._post_any.finditer(text)] if self._post_any else []
        post_starts = [a for a, _ in post_spans]

        # Pre-cues: sweep cue/terminator events and mentions together, left to right.
        pre_negated = [False] * len(found)
        in_scope = False
        k = 0
        for ev in self._scope.finditer(text):
            while k < len(found) and starts[k] < ev.start():
                pre_negated[k] = in_scope
                k += 1
            i = bisect.bisect_right(starts, ev.start()) - 1
            if i >= 0 and ev.start() < ends[i]:
                continue                                    # a cue word inside a mention
            if ev.lastgroup == "pre":
                p = bisect.bisect_right(post_starts, ev.start()) - 1
                if p < 0 or ev.end() > post_spans[p][1]:
                    in_scope = True
            elif ev.lastgroup in ("term", "punct"):
                in_scope = False
        for j in range(k, len(found)):
            pre_negated[j] = in_scope

        # Post-cues: right after a mention, or after a list of mentions ending in one that has it.
        post_negated = [False] * len(found)
        if self._post is not None:
            for j in range(len(found) - 1, -1, -1):
                if self._post.match(text, ends[j]):
                    post_negated[j] = True
                elif j + 1 < len(found) and post_negated[j + 1]:
                    post_negated[j] = _LIST_CONNECTOR.fullmatch(text, ends[j], starts[j + 1]) is not None

        return [Mention(self.form_to_concept[normalise_form(m.group("form"))], m.start("form"),
                        m.end("form"), pre_negated[j] or post_negated[j], "extracted")
                for j, m in enumerate(found)]


@lru_cache(maxsize=8)
def _concept_index(lexicon: ConceptLexicon) -> tuple[frozenset[str], dict[str, str]]:
    """(concept ids, cui -> concept id) of a lexicon."""
    ids = frozenset(c.id for c in lexicon.concepts)
    by_cui: dict[str, str] = {}
    for c in lexicon.concepts:
        if c.cui:
            by_cui.setdefault(c.cui.upper(), c.id)
    return ids, by_cui


def _given_mention(i: int, entry: object, n_chars: int, ids: frozenset[str], by_cui: dict[str, str]
                   ) -> tuple[Mention | None, str | None]:
    """A given entry as a Mention, or None and the reason it is invalid."""
    where = f"given concept {i} {entry!r}"
    if not isinstance(entry, dict):
        return None, f"{where}: not an object; expected {{concept_id or cui, start_char, end_char}}"
    start, end = entry.get("start_char"), entry.get("end_char")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
        return None, f"{where}: start_char and end_char must be integers"
    if not 0 <= start < end <= n_chars:
        return None, (f"{where}: span [{start}, {end}) is out of range for a caption of {n_chars} "
                      "characters (offsets are 0-based, end exclusive)")
    if entry.get("concept_id") is not None:
        cid = entry["concept_id"]
        if cid not in ids:
            return None, f"{where}: unknown concept_id {cid!r}; use an id of the concept lexicon"
    elif entry.get("cui") is not None:
        cid = by_cui.get(str(entry["cui"]).upper())
        if cid is None:
            return None, (f"{where}: cui {entry['cui']!r} is not in the concept lexicon; add it to a "
                          "concept's \"cui\" field or give concept_id instead")
    else:
        return None, f"{where}: has neither concept_id nor cui"
    return Mention(cid, start, end, False, "given"), None


def merge_given_mentions(caption: str, given: list[dict], extracted: list[Mention],
                         lexicon: ConceptLexicon | None = None) -> tuple[list[Mention], list[str]]:
    """Keep the corpus's given spans and add the extracted mentions that do not overlap them.

    Args:
        caption: the caption the offsets point into.
        given: entries ``{"concept_id" or "cui", "start_char", "end_char"}`` (MedConcept-23M style);
            they become ``Mention(source="given", negated=False)``; a cui is mapped to a concept id
            through the lexicon's ``cui`` fields.
        extracted: mentions from :meth:`ConceptExtractor.extract` on the same caption.
        lexicon: concept lexicon (default: the shipped one).

    Returns:
        ``(mentions, problems)``: mentions sorted by start; problems are human-readable strings, one
        per invalid given entry (non-integer or out-of-range span, unknown id or cui, overlap with an
        earlier given span); invalid entries are dropped.
    """
    lexicon = lexicon if lexicon is not None else load_concept_lexicon()
    ids, by_cui = _concept_index(lexicon)
    kept: list[Mention] = []
    problems: list[str] = []
    for i, entry in enumerate(given or ()):
        m, problem = _given_mention(i, entry, len(caption), ids, by_cui)
        if m is not None and any(m.start < g.end and g.start < m.end for g in kept):
            m, problem = None, f"given concept {i} {entry!r}: overlaps an earlier given span; dropped"
        if m is None:
            problems.append(problem)
        else:
            kept.append(m)
    kept.sort(key=lambda m: m.start)
    starts = [g.start for g in kept]
    out = list(kept)
    for m in extracted:
        # Given spans are disjoint and sorted, so their ends are sorted too: only the last given
        # span starting before ``m`` ends can overlap it.
        j = bisect.bisect_left(starts, m.end)
        if j > 0 and kept[j - 1].end > m.start:
            continue
        out.append(m)
    out.sort(key=lambda m: (m.start, m.end))
    return out, problems
