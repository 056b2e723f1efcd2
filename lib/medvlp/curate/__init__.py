"""Curation (docs/architecture.md): validate the source corpus, process its text, split, de-duplicate, shard.

Entry point: :func:`run_curation` (what ``notebooks/01_curate.ipynb`` and ``medvlp curate`` call).

Modules, one job each:

- :mod:`~medvlp.curate.records`: manifest loading and validation, bad records counted by reason;
- :mod:`~medvlp.curate.concept_extraction`: concept mentions in captions, with negation and given spans;
- :mod:`~medvlp.curate.compound_captions`: "(a) ... (b) ..." captions cut into panel sub-captions;
- :mod:`~medvlp.curate.report_decomposition`: report sentences, their anatomies, normal anatomies;
- :mod:`~medvlp.curate.split`: seeded group-level train / val / test split;
- :mod:`~medvlp.curate.dedup`: perceptual-hash near-duplicates, within and across splits;
- :mod:`~medvlp.curate.shards`: WebDataset tar shards, written reproducibly and read back;
- :mod:`~medvlp.curate.text_metrics` and :mod:`~medvlp.curate.curation_report`: the report and its
  scores against the synthetic truth; :mod:`~medvlp.curate.plots`: its figures;
- :mod:`~medvlp.curate.pipeline`: the stage, and the curated table schemas.

The names below are imported lazily (PEP 562), so ``import medvlp.curate.shards`` in a training data
worker does not pull in matplotlib, pandas and the rest of the stage.
"""

from __future__ import annotations

from medvlp.lazy_exports import lazy_exports

_EXPORTS = {
    "compound_captions": ("SubCaption", "split_compound_caption"),
    "concept_extraction": ("ConceptExtractor", "Mention", "merge_given_mentions"),
    "dedup": ("Removal", "deduplicate", "near_pairs", "phash64", "score_dedup"),
    "pipeline": ("CT_SCHEMA", "FIGURES_SCHEMA", "run_curation"),
    "records": ("CTRecord", "CorpusError", "FigureRecord", "RejectLog", "load_ct_records",
                "load_figure_records"),
    "report_decomposition": ("AnatomyAssigner", "ReportDecomposition", "Sentence", "decompose_report",
                             "split_sentences"),
    "shards": ("iter_shard_samples", "list_shards", "write_shards"),
    "split": ("assign_splits", "split_of"),
    "text_metrics": ("score_compound_split", "score_mentions", "score_sentence_assignment"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
