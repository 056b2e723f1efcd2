"""Skip-and-count bookkeeping of the ingest adapters: the curation stage's convention, for source files.

A bad source record is skipped and counted under one reason, keeping the first messages of each
reason; each message names the file and line (``reports.csv line 42 (train_1_a_1.nii.gz): ...``).
With ``strict`` the first bad record raises :class:`IngestError` with that message instead.

Reasons used by the adapters (one per bad record, the first check it fails):

============================== ==================================================================
reason                         when
============================== ==================================================================
``invalid_utf8``               the line / row is not UTF-8
``invalid_json``               (JSONL) not one JSON object
``invalid_row``                (CSV / TSV) the row has the wrong number of fields, or no id
``missing_field``              a required field is absent or empty-null
``invalid_field``              a field has the wrong type or form (a CT-RATE VolumeName that is not
                               ``<split>_<patient>_<scan>_<reconstruction>.nii.gz``)
``path_escapes_source``        a path is absolute or leaves the source folder
``duplicate_id``               an earlier record already used the id (the later one is skipped)
``empty_caption``              (figures) no caption, or only whitespace
``empty_report``               (CT) findings and impression both empty
``missing_file``               the image / volume file does not exist
``missing_metadata``           (CT-RATE) the metadata table has no row for the volume
``invalid_metadata``           (CT-RATE) spacing / orientation / rescale values unusable
``nonfinite_value``            a NaN or infinite number where a number is required
``missing_segmentation``       (CT-RATE) no TotalSegmentator output for the volume
``unreadable_image``           the image does not decode
``unreadable_volume``          the volume / DICOM series does not decode
``unreadable_segmentation``    the segmentation does not decode or holds non-integer labels
``nonfinite_voxels``           the volume holds NaN or infinite voxels
``geometry_mismatch``          shapes or affines disagree (segmentation vs volume, volume vs metadata)
============================== ==================================================================

Warnings (never fatal, also counted with examples) are findings that do not drop a record: concept
spans dropped (``below_threshold``, ``invalid_span``, ``out_of_range_span``, ``overlapping_span``), a
ROCO CUI that is not one (``invalid_cui``), a side-table line without an id or repeating one
(``invalid_line``, ``duplicate_line``, ``invalid_row``, ``duplicate_row``), a CT-RATE study whose labels
are absent or none of them 0 / 1 (``missing_labels``, ``invalid_labels``: its truth record is left out), a
CT-RATE label cell that is not 0 / 1 (``unknown_label``: that label is unknown for the study), a file
that is no volume slice (``not_dicom``, ``not_a_volume_slice``), an anatomy with no voxel in a label map
(``anatomy_absent``).
"""

from __future__ import annotations

from medvlp.curate.records import BadRecord, CorpusError, RejectLog

__all__ = ["STRICT_HINT", "IngestError", "Skip", "SkipLog"]

STRICT_HINT = "run without --strict (strict=False) to skip and count bad records"


class IngestError(CorpusError):
    """A bad source record in strict mode, or a source that cannot be ingested at all (a missing
    table, a table without its columns); the message names the file and what to do."""


#: Raised inside an adapter for a bad record: ``reason`` (a key of the table above) and ``detail``.
Skip = BadRecord


class SkipLog(RejectLog):
    """:class:`~medvlp.curate.records.RejectLog` whose strict failure speaks of ``--strict``."""

    def add(self, reason: str, message: str) -> None:
        if self.strict:
            raise IngestError(f"{message} [{reason}]; fix or remove the record, or {STRICT_HINT}")
        super().add(reason, message)
