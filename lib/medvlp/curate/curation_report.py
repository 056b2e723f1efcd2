"""The curation report (``reports/metrics/curation.json``): counts, rejects, text statistics, truth scores.

One section per collection (``figures``, ``ct``) built from what the pipeline computed, plus the
parameters used and two top-level summaries (``extraction``, ``anatomy_assignment``) that DVC shows
as metrics. Where the corpus ships ``*_truth.jsonl`` files (the synthetic corpus does), the section
gets a ``truth`` block scoring the curation against them. Truth files are read here only, for
evaluation; nothing that decides what is kept ever reads them. Floats are rounded to 4 decimals.

Bookkeeping identities (tested): ``records_read == valid + rejected`` and
``valid == kept + sum(duplicates_removed)``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from medvlp.curate.compound_captions import SubCaption
from medvlp.curate.concept_extraction import Mention
from medvlp.curate.dedup import Removal, score_dedup
from medvlp.curate.records import CTRecord, FigureRecord, RejectLog
from medvlp.curate.report_decomposition import ReportDecomposition
from medvlp.curate.split import SPLIT_NAMES
from medvlp.curate.text_metrics import score_compound_split, score_mentions, score_sentence_assignment
from medvlp.lexicon import AnatomyLexicon, ConceptLexicon
from medvlp.metrics_json import write_metrics

__all__ = ["counts_table", "ct_section", "figures_section", "read_truth", "rejects_table",
           "scores_table", "splits_table", "summarise", "write_report"]

FIGURES_TRUTH = "figures_truth.jsonl"
CT_TRUTH = "ct_truth.jsonl"


def read_truth(path: str | Path) -> dict[str, dict] | None:
    """``{id: truth record}`` from a ``*_truth.jsonl`` file, or None when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    out = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {number}: invalid JSON ({e.msg}); regenerate the truth "
                                     "file or remove it to skip the truth scores") from None
                out[rec["id"]] = rec
    return out


def _split_sizes(splits: Sequence[str], groups: Sequence[str]) -> dict[str, dict[str, int]]:
    return {s: {"records": sum(x == s for x in splits),
                "groups": len({g for g, x in zip(groups, splits) if x == s})} for s in SPLIT_NAMES}


def figures_section(*, manifest: str, records_read: int, rejects: RejectLog, warnings: RejectLog,
                    records: Sequence[FigureRecord], splits: Sequence[str], removed: Mapping[str, Removal],
                    mentions: Mapping[str, list[Mention]], subcaptions: Mapping[str, list[SubCaption]],
                    lexicon: ConceptLexicon, truth: Mapping[str, dict] | None) -> dict:
    """The ``figures`` section.

    Args:
        manifest: the manifest path as read (named in messages).
        records_read: manifest lines read.
        rejects / warnings: bad records and invalid given spans.
        records: the validated records ``[N]`` (before de-duplication); ``splits`` ``[N]`` their splits.
        removed: de-duplication removals by id.
        mentions / subcaptions: per id, the merged concept mentions and the compound sub-captions.
        lexicon: for concept names.
        truth: ``{id: figures_truth record}`` or None.

    Counts of modalities, compound captions, concepts and negations are over the *kept* figures
    (the curated output); the truth scores are over all validated figures.
    """
    kept = [(r, s) for r, s in zip(records, splits) if r.id not in removed]
    kept_ids = [r.id for r, _ in kept]
    names = {c.id: c.name for c in lexicon.concepts}
    positives = Counter(m.concept_id for i in kept_ids for m in mentions[i] if not m.negated)
    figures_with = Counter(c for i in kept_ids for c in {m.concept_id for m in mentions[i] if not m.negated})
    sources = Counter(m.source for i in kept_ids for m in mentions[i])
    section = {
        "manifest": manifest,
        "records_read": records_read,
        "valid": len(records),
        "rejected": rejects.total,
        "kept": len(kept),
        "rejects": rejects.to_dict(),
        "warnings": warnings.to_dict(),
        "duplicates_removed": dict(sorted(Counter(r.reason for r in removed.values()).items())),
        "splits": _split_sizes([s for _, s in kept], [r.article_id for r, _ in kept]),
        "modalities": dict(sorted(Counter(r.modality or "unknown" for r, _ in kept).items())),
        "compound_captions": sum(bool(subcaptions[i]) for i in kept_ids),
        "concepts": {c: {"name": names.get(c, c), "mentions": n, "figures": figures_with[c]}
                     for c, n in sorted(positives.items(), key=lambda kv: (-kv[1], kv[0]))},
        "positive_mentions": sum(positives.values()),
        "negated_mentions": sum(m.negated for i in kept_ids for m in mentions[i]),
        "figures_without_concepts": sum(not any(not m.negated for m in mentions[i]) for i in kept_ids),
        "given_spans": {"records_with_given": sum(bool(r.concepts) for r, _ in kept),
                        "given_mentions": sources.get("given", 0),
                        "extracted_mentions": sources.get("extracted", 0),
                        "invalid_given_spans": warnings.counts.get("invalid_given_span", 0)},
    }
    if truth is not None:
        section["truth"] = _figures_truth(records, removed, mentions, subcaptions, truth)
    return section


def _figures_truth(records: Sequence[FigureRecord], removed: Mapping[str, Removal],
                   mentions: Mapping[str, list[Mention]], subcaptions: Mapping[str, list[SubCaption]],
                   truth: Mapping[str, dict]) -> dict:
    scored = [r for r in records if r.id in truth]
    ids = [r.id for r in scored]
    extracted_only = [r.id for r in scored if not r.concepts]

    def mentions_score(subset: list[str]) -> dict:
        return score_mentions({i: mentions[i] for i in subset}, {i: truth[i]["mentions"] for i in subset})

    return {
        "records_scored": len(ids),
        "extraction": {"all_records": mentions_score(ids),
                       "extracted_only_records": mentions_score(extracted_only)},
        "compound_split": score_compound_split({i: subcaptions[i] for i in ids},
                                               {i: truth[i].get("subcaptions", []) for i in ids},
                                               captions={r.id: r.caption for r in scored}),
        "dedup": score_dedup({k: v for k, v in removed.items() if k in truth},
                             {i: truth[i].get("duplicate_of") for i in ids}, ids),
    }


def ct_section(*, manifest: str, records_read: int, rejects: RejectLog, records: Sequence[CTRecord],
               splits: Sequence[str], decompositions: Mapping[str, ReportDecomposition],
               lexicon: AnatomyLexicon, truth: Mapping[str, dict] | None) -> dict:
    """The ``ct`` section (see :func:`figures_section`); every validated study is kept."""
    anatomies = [a.id for a in lexicon.anatomies]
    n = len(records)
    sentences = [s for r in records for s in decompositions[r.id].sentences]
    section = {
        "manifest": manifest,
        "records_read": records_read,
        "valid": n,
        "rejected": rejects.total,
        "kept": n,
        "rejects": rejects.to_dict(),
        "splits": _split_sizes(splits, [r.patient_id for r in records]),
        "anatomy_normal_rate": {a: (sum(decompositions[r.id].is_normal.get(a, True) for r in records) / n
                                    if n else 0.0) for a in anatomies},
        "fully_normal_studies": sum(all(decompositions[r.id].is_normal.values()) for r in records),
        "sentences": {
            "total": len(sentences),
            "findings": sum(s.section == "findings" for s in sentences),
            "impression": sum(s.section == "impression" for s in sentences),
            "without_anatomy": sum(not s.anatomies for s in sentences),
            "with_two_or_more_anatomies": sum(len(s.anatomies) > 1 for s in sentences),
            "per_anatomy": {a: sum(a in s.anatomies for s in sentences) for a in anatomies},
        },
    }
    if truth is not None:
        ids = [r.id for r in records if r.id in truth]
        section["truth"] = {"records_scored": len(ids),
                            **score_sentence_assignment({i: decompositions[i] for i in ids},
                                                        {i: truth[i] for i in ids})}
    return section


def summarise(report: dict) -> dict:
    """Top-level ``extraction`` / ``anatomy_assignment`` summaries (the headline metrics) when scored."""
    out = {}
    fig_truth = report.get("figures", {}).get("truth")
    if fig_truth:
        ext = fig_truth["extraction"]["all_records"]
        out["extraction"] = {
            **{k: ext[k] for k in ("precision", "recall", "f1", "negation_accuracy")},
            "extracted_only_f1": fig_truth["extraction"]["extracted_only_records"]["f1"],
            "compound_split_accuracy": fig_truth["compound_split"]["accuracy"],
            "dedup_precision": fig_truth["dedup"]["precision"],
            "dedup_recall": fig_truth["dedup"]["recall"],
        }
    ct_truth = report.get("ct", {}).get("truth")
    if ct_truth:
        keys = ("accuracy", "split_accuracy", "normal_accuracy")
        out["anatomy_assignment"] = {k: ct_truth[k] for k in keys}
    return out


def write_report(report: dict, path: str | Path) -> Path:
    """Write ``report`` as indented JSON (floats rounded) to ``path``."""
    return write_metrics(path, report, sort_keys=False)


# ------------------------------------------------------------------------------------ report tables

def counts_table(report: dict) -> pd.DataFrame:
    """Records read, valid, rejected and kept per collection present."""
    keys = ("records_read", "valid", "rejected", "kept")
    return pd.DataFrame([{"collection": name, **{k: report[name][k] for k in keys}}
                         for name in ("figures", "ct") if report.get(name, {}).get("present")],
                        columns=["collection", *keys])


def rejects_table(report: dict) -> pd.DataFrame:
    """One row per (collection, reason) of rejected records and removed duplicates:
    ``collection, kind, reason, count, example`` (the first example message, if any)."""
    rows = []
    for name in ("figures", "ct"):
        section = report.get(name, {})
        for reason, entry in section.get("rejects", {}).items():
            rows.append({"collection": name, "kind": "rejected", "reason": reason, "count": entry["count"],
                         "example": (entry["examples"] or [""])[0]})
        for reason, count in section.get("duplicates_removed", {}).items():
            rows.append({"collection": name, "kind": "duplicate removed", "reason": reason, "count": count,
                         "example": ""})
        for reason, entry in section.get("warnings", {}).items():
            rows.append({"collection": name, "kind": "warning", "reason": reason, "count": entry["count"],
                         "example": (entry["examples"] or [""])[0]})
    return pd.DataFrame(rows, columns=["collection", "kind", "reason", "count", "example"])


def splits_table(report: dict) -> pd.DataFrame:
    """Records and groups per split and collection: ``collection, split, records, groups``."""
    rows = [{"collection": name, "split": split, **sizes}
            for name in ("figures", "ct") for split, sizes in report.get(name, {}).get("splits", {}).items()]
    return pd.DataFrame(rows, columns=["collection", "split", "records", "groups"])


def scores_table(report: dict) -> pd.DataFrame:
    """The truth scores as ``metric, value, n`` rows (empty when the corpus has no truth files)."""
    rows: list[dict] = []

    def add(metric: str, value: float, n: int) -> None:
        rows.append({"metric": metric, "value": value, "n": n})

    fig = report.get("figures", {}).get("truth")
    if fig:
        for subset, s in fig["extraction"].items():
            for k in ("precision", "recall", "f1"):
                add(f"concept extraction {k} ({subset.replace('_', ' ')})", s[k], s["n_records"])
        ext, cs, dd = fig["extraction"]["all_records"], fig["compound_split"], fig["dedup"]
        add("negation accuracy", ext["negation_accuracy"], ext["n_negation_scored"])
        add("compound split accuracy (all captions)", cs["accuracy"], cs["n_records"])
        add("compound split accuracy (compound captions)", cs["compound_accuracy"], cs["n_compound"])
        add("dedup precision", dd["precision"], dd["removed"])
        add("dedup recall", dd["recall"], dd["expected"])
    ct = report.get("ct", {}).get("truth")
    if ct:
        add("sentence anatomy assignment accuracy", ct["accuracy"], ct["n_sentences"])
        add("sentence split accuracy", ct["split_accuracy"], ct["n_sentences"])
        add("normal anatomy accuracy", ct["normal_accuracy"], ct["n_normal_scored"])
    return pd.DataFrame(rows, columns=["metric", "value", "n"])
