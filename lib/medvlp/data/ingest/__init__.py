"""Adapters from public datasets into the source-corpus format (``lib/medvlp/data/README.md``).

One module per source kind; each function writes its output, an ``ingest_report.json`` next to it and
returns an :class:`IngestSummary`:

=============== ===================================== ===================================================
kind            function                              writes
=============== ===================================== ===================================================
``medconcept``  :func:`ingest_medconcept`             ``<dst>/figures/`` manifest + images (+ lexicon)
``roco``        :func:`ingest_roco`                   ``<dst>/figures/`` manifest + images
``ct_rate``     :func:`ingest_ct_rate`                ``<dst>/ct/`` manifest, HU volumes, anatomy label
                                                      maps, ``ct_truth.jsonl``, anatomy lexicon
``dicom``       :func:`convert_dicom_tree`            ``<dst>/<series>.nii.gz`` (HU, canonical RAS)
``totalseg``    :func:`convert_totalseg`              ``<dst>/<name>.nii.gz`` anatomy label maps
=============== ===================================== ===================================================

Bad records follow curation's rule: skipped and counted by reason with the first examples named (file
and line), or with ``strict=True`` the first one raises :class:`IngestError` (see
:mod:`medvlp.data.ingest.skip_log` for the reasons). Command line: ``python -m medvlp.data.ingest`` or
``medvlp ingest`` (:mod:`medvlp.data.ingest.cli`).

The names below are imported lazily (PEP 562), so building the ``medvlp`` command line does not load
nibabel and the adapters.
"""

from __future__ import annotations

from medvlp.lazy_exports import lazy_exports

_EXPORTS = {
    "ct_rate": ("ingest_ct_rate",),
    "dicom_series": ("convert_dicom_tree",),
    "medconcept": ("ingest_medconcept",),
    "roco": ("ingest_roco",),
    "skip_log": ("IngestError",),
    "summary": ("IngestSummary",),
    "totalseg": ("convert_totalseg", "load_totalseg_mapping"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
