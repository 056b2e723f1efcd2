"""Scores of the curation text processing against the synthetic ground truth (``*_truth.jsonl``).

Each function takes predictions and truth keyed by record id and scores over the ids of ``truth``
(a truth id without a prediction counts as an empty prediction; predictions without truth are
ignored). A truth value may be the list the function scores, or the whole truth record
(``figures_truth.jsonl`` / ``ct_truth.jsonl`` line), from which the list is taken. Ratios whose
denominator is 0 are reported as 0.0; the accompanying counts tell them apart.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from .compound_captions import SubCaption
from .concept_extraction import Mention
from .report_decomposition import ReportDecomposition

__all__ = ["prf", "score_compound_split", "score_mentions", "score_sentence_assignment"]

# A panel label at the start of a truth sub-caption span: "(a)", "(A)", "a)", "a.".
_TRUTH_LABEL = re.compile(r"\s*\(?[A-Za-z][).]")


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def prf(tp: int, fp: int, fn: int) -> dict:
    """Precision, recall and F1 (0.0 where undefined) with the counts."""
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"precision": p, "recall": r, "f1": _ratio(2 * tp, 2 * tp + fp + fn), "tp": tp, "fp": fp, "fn": fn}


def _truth_list(value: object, key: str) -> list[dict]:
    if isinstance(value, Mapping):
        return list(value.get(key) or [])
    return list(value or [])


def score_mentions(pred: dict[str, list[Mention]], truth: dict[str, list[dict]]) -> dict:
    """Concept-extraction precision/recall/F1 and negation accuracy.

    Args:
        pred: record id -> predicted mentions.
        truth: record id -> true mentions ``{concept_id, start_char, end_char, negated}`` (or the
            truth record, whose ``mentions`` are used).

    Returns:
        ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn`` over positive (non-negated) mentions,
        matched exactly on ``(concept_id, start, end)``; ``negated`` the same P/R/F1 dict for negated
        mentions; ``negation_accuracy`` over the true mentions (negated or not) found with the
        right span and concept: the fraction whose negated flag is right (``n_negation_scored``
        of them); ``n_records``.
    """
    counts = {False: [0, 0, 0], True: [0, 0, 0]}     # negated -> [tp, fp, fn]
    neg_right = neg_total = 0
    for rid, value in truth.items():
        true = {(t["concept_id"], t["start_char"], t["end_char"]): bool(t.get("negated", False))
                for t in _truth_list(value, "mentions")}
        got = {(m.concept_id, m.start, m.end): m.negated for m in pred.get(rid, ())}
        for negated in (False, True):
            t = {k for k, v in true.items() if v == negated}
            g = {k for k, v in got.items() if v == negated}
            counts[negated][0] += len(t & g)
            counts[negated][1] += len(g - t)
            counts[negated][2] += len(t - g)
        for k, v in true.items():
            if k in got:
                neg_total += 1
                neg_right += got[k] == v
    return {**prf(*counts[False]), "negated": prf(*counts[True]),
            "negation_accuracy": _ratio(neg_right, neg_total), "n_negation_scored": neg_total,
            "n_records": len(truth)}


def _truth_panel(p: Mapping, caption: str | None) -> tuple[str, int, int]:
    """(label, start, end) of a truth sub-caption; with the caption, label and whitespace stripped."""
    label = str(p["label"]).strip("()[]. ").lower()
    start, end = int(p["start_char"]), int(p["end_char"])
    if caption is not None:
        m = _TRUTH_LABEL.match(caption, start, end)
        if m:
            start = m.end()
        seg = caption[start:end]
        start += len(seg) - len(seg.lstrip())
        end = max(start, end - (len(seg) - len(seg.rstrip())))
    return label, start, end


def _panels_match(pred: list[SubCaption], truth: list[tuple[str, int, int]], exact: bool) -> bool:
    if len(pred) != len(truth):
        return False
    for p, (label, start, end) in zip(pred, truth):
        if p.label != label:
            return False
        if exact and (p.start, p.end) != (start, end):
            return False
        if not exact and not start <= p.start <= p.end <= end:
            return False
    return True


def score_compound_split(pred: dict[str, list[SubCaption]], truth: dict[str, list[dict]],
                         captions: Mapping[str, str] | None = None) -> dict:
    """Fraction of captions whose predicted panels equal the true ones.

    Args:
        pred: record id -> predicted sub-captions (``[]`` for a non-compound caption).
        truth: record id -> true sub-captions ``{label, start_char, end_char}`` (``[]`` when not
            compound), or the truth record, whose ``subcaptions`` are used. A truth label may be
            "(a)", "A", ...; it is compared lower-cased without brackets.
        captions: record id -> caption text. With it, each truth span is stripped of its leading
            label and surrounding whitespace and must equal the predicted ``(start, end)`` exactly.
            Without it, a predicted panel matches when its span lies inside the truth span (truth
            spans tile the caption, so a split at a wrong place still fails).

    Returns:
        ``accuracy`` (``n_correct`` of ``n_records``), and ``compound_accuracy`` over the records
        whose truth is compound (``n_compound``).
    """
    n_correct = n_compound = n_compound_correct = 0
    for rid, value in truth.items():
        caption = captions.get(rid) if captions is not None else None
        panels = [_truth_panel(p, caption) for p in _truth_list(value, "subcaptions")]
        ok = _panels_match(list(pred.get(rid, ())), panels, exact=caption is not None)
        n_correct += ok
        if panels:
            n_compound += 1
            n_compound_correct += ok
    return {"accuracy": _ratio(n_correct, len(truth)), "n_correct": n_correct, "n_records": len(truth),
            "compound_accuracy": _ratio(n_compound_correct, n_compound), "n_compound": n_compound}


def _norm(text: str) -> str:
    return " ".join(text.split())


def score_sentence_assignment(pred: dict[str, ReportDecomposition], truth: dict[str, list[dict]],
                              labels: Mapping[str, Mapping[str, list]] | None = None) -> dict:
    """Sentence splitting + anatomy assignment accuracy, and normal-anatomy agreement.

    Args:
        pred: study id -> decomposition.
        truth: study id -> true sentences ``{section, text, anatomies}``, or the truth record
            (``ct_truth.jsonl`` line), whose ``sentences`` and ``labels`` are used.
        labels: study id -> ``{anatomy_id: [abnormality ids]}``, for truth given as sentence lists.

    Returns:
        ``accuracy``: fraction of truth sentences (``n_sentences``) matched by a predicted sentence of
        the same section with the same whitespace-normalised text and the same anatomy set (each
        predicted sentence matches at most once); ``split_accuracy``: the same ignoring anatomies;
        ``normal_accuracy``: agreement of ``is_normal`` with the truth (normal iff
        ``labels[anatomy] == []``) over ``n_normal_scored`` (study, anatomy) pairs; ``n_records``.
    """
    n = right = split_right = normal_right = normal_total = 0
    for rid, value in truth.items():
        d = pred.get(rid)
        sentences = d.sentences if d is not None else ()
        got = Counter((s.section, _norm(s.text), tuple(sorted(s.anatomies))) for s in sentences)
        got_text = Counter((sec, text) for sec, text, _ in got.elements())
        for t in _truth_list(value, "sentences"):
            n += 1
            key = (t["section"], _norm(t["text"]), tuple(sorted(t.get("anatomies", ()))))
            if got[key] > 0:
                got[key] -= 1
                right += 1
            if got_text[key[:2]] > 0:
                got_text[key[:2]] -= 1
                split_right += 1
        study_labels = value.get("labels") if isinstance(value, Mapping) else None
        if study_labels is None and labels is not None:
            study_labels = labels.get(rid)
        for anatomy, abns in (study_labels or {}).items():
            normal_total += 1
            normal_right += d is not None and d.is_normal.get(anatomy) == (len(abns) == 0)
    return {"accuracy": _ratio(right, n), "n_correct": right, "n_sentences": n,
            "split_accuracy": _ratio(split_right, n),
            "normal_accuracy": _ratio(normal_right, normal_total), "n_normal_scored": normal_total,
            "n_records": len(truth)}
