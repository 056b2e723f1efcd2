"""CT-RATE's 18 multi-abnormality labels: their anatomy, the truth record, the anatomy lexicon.

CT-RATE labels each volume with 18 binary findings (``multi_abnormality_labels/*_predicted_labels.csv``,
one column each, named as in :data:`CT_RATE_LABELS`). Each is tied here to the anatomy of the lexicon it
describes, or to none (``Medical material``: devices anywhere; ``Lymphadenopathy``: lymph nodes, not an
anatomy of the lexicon), and kept then as a study-level label. Abnormality ids are the names in snake
case, the same ids as medvlp's lexicon where both have the finding (``lung_nodule``, ``cardiomegaly``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from medvlp.lexicon import AnatomyLexicon

__all__ = ["CT_RATE_LABELS", "CtRateLabel", "anatomy_lexicon_json", "labelled_anatomies", "truth_labels"]


@dataclass(frozen=True)
class CtRateLabel:
    """One CT-RATE label column: its abnormality id, the anatomy it belongs to (None: study level),
    and synonyms for matching report text."""

    column: str
    id: str
    anatomy: str | None
    synonyms: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.column.lower()


#: The 18 label columns of CT-RATE's multi-abnormality label tables, in the tables' column order.
CT_RATE_LABELS: tuple[CtRateLabel, ...] = (
    CtRateLabel("Medical material", "medical_material", None, ("catheter", "pacemaker", "surgical clips", "stent")),
    CtRateLabel("Arterial wall calcification", "arterial_wall_calcification", "aorta",
                ("aortic calcification", "atherosclerotic calcification", "calcified atheroma")),
    CtRateLabel("Cardiomegaly", "cardiomegaly", "heart", ("enlarged heart", "cardiac enlargement")),
    CtRateLabel("Pericardial effusion", "pericardial_effusion", "heart", ("pericardial fluid",)),
    CtRateLabel("Coronary artery wall calcification", "coronary_artery_wall_calcification", "heart",
                ("coronary calcification", "coronary artery calcification")),
    CtRateLabel("Hiatal hernia", "hiatal_hernia", "esophagus", ("hiatus hernia",)),
    CtRateLabel("Lymphadenopathy", "lymphadenopathy", None, ("enlarged lymph node", "lymph node enlargement")),
    CtRateLabel("Emphysema", "emphysema", "lung", ("emphysematous change",)),
    CtRateLabel("Atelectasis", "atelectasis", "lung", ("atelectatic change", "subsegmental atelectasis")),
    CtRateLabel("Lung nodule", "lung_nodule", "lung", ("pulmonary nodule", "nodular opacity")),
    CtRateLabel("Lung opacity", "lung_opacity", "lung", ("ground-glass opacity", "pulmonary opacity")),
    CtRateLabel("Pulmonary fibrotic sequela", "pulmonary_fibrotic_sequela", "lung",
                ("fibrotic sequela", "fibrotic change", "fibrosis")),
    CtRateLabel("Pleural effusion", "pleural_effusion", "lung", ("pleural fluid",)),
    CtRateLabel("Mosaic attenuation pattern", "mosaic_attenuation_pattern", "lung", ("mosaic attenuation",)),
    CtRateLabel("Peribronchial thickening", "peribronchial_thickening", "lung", ("bronchial wall thickening",)),
    CtRateLabel("Consolidation", "consolidation", "lung", ("airspace consolidation",)),
    CtRateLabel("Bronchiectasis", "bronchiectasis", "lung", ("bronchiectatic change",)),
    CtRateLabel("Interlobular septal thickening", "interlobular_septal_thickening", "lung",
                ("septal thickening",)),
)


def labelled_anatomies(lexicon: AnatomyLexicon) -> list[str]:
    """The anatomies, in lexicon order, that some CT-RATE label speaks about (the others are unlabelled)."""
    used = {x.anatomy for x in CT_RATE_LABELS if x.anatomy}
    return [a.id for a in lexicon.anatomies if a.id in used]


def truth_labels(positive: set[str], lexicon: AnatomyLexicon) -> tuple[dict[str, list[str]], list[str]]:
    """``({anatomy: [abnormality ids]}, [study-level ids])`` of the positive label columns.

    The first dict has every anatomy of :func:`labelled_anatomies` (empty list = normal for all 18
    labels); anatomies no label speaks about are absent, not normal.
    """
    labels = {a: [] for a in labelled_anatomies(lexicon)}
    study = []
    for x in CT_RATE_LABELS:
        if x.column in positive:
            (labels[x.anatomy] if x.anatomy else study).append(x.id)
    return labels, study


def anatomy_lexicon_json(base: AnatomyLexicon) -> dict:
    """An anatomy lexicon (``anatomy.json`` schema) whose abnormalities are CT-RATE's labels.

    The anatomies are ``base``'s unchanged (ids and segmentation labels, so fVLM and the TotalSegmentator
    mapping agree with it); ``abnormalities`` are the 16 anatomy-bound labels; the 2 study-level labels are
    listed under ``study_abnormalities`` (the lexicon loader ignores that key).
    """
    known = {a.id for a in base.anatomies}
    missing = sorted({x.anatomy for x in CT_RATE_LABELS if x.anatomy} - known)
    if missing:
        raise ValueError(f"the anatomy lexicon lacks {missing}, which CT-RATE labels need; add them or use "
                         "medvlp's lexicon")
    return {
        "version": 1,
        "description": "Anatomies of medvlp's lexicon with CT-RATE's 18 multi-abnormality labels as abnormalities "
                       "(written by medvlp ingest ct_rate). Use as curate.anatomy_lexicon.",
        "normal_template": base.normal_template,
        "anatomies": [{"id": a.id, "label": a.label, "name": a.name, "synonyms": list(a.synonyms)}
                      for a in base.anatomies],
        "abnormalities": [{"id": x.id, "anatomy": x.anatomy, "name": x.name, "synonyms": list(x.synonyms),
                           "ct_rate_column": x.column} for x in CT_RATE_LABELS if x.anatomy],
        "study_abnormalities": [{"id": x.id, "name": x.name, "synonyms": list(x.synonyms),
                                 "ct_rate_column": x.column} for x in CT_RATE_LABELS if not x.anatomy],
    }
