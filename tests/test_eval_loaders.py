"""medvlp.eval.data: curated shards + truth files -> evaluation sets, against a direct reading of the truth.

Shards are written with the repository's own writer (``medvlp.curate.shards.write_shards``); the truth files
are written here, with the cases that matter: a compound figure whose panels hold findings, a figure without
a truth record, a finding outside the lexicon, mask paths; CT truth with (anatomy, abnormality) pairs, one of
them under the wrong anatomy, and a study without truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_train_fixtures import _study

from medvlp.curate.shards import encode_png, json_bytes, shard_dir, write_shards
from medvlp.eval.data import figure_findings, load_ct, load_figures, read_truth
from medvlp.lexicon import load_anatomy_lexicon, load_concept_lexicon

# id, meta modality (None: left out of the shard's json), caption
FIGURES = [("T0", "chest_xray", "Chest X-ray with an effusion."),
           ("T1", "ct_slice", "(a) CT with ascites. (b) CT with a hepatic lesion."),
           ("T2", "fundus", "Fundus photograph, no truth record."),
           ("T3", None, "Dermoscopy image."),
           ("T4", "histopathology", "Histology without findings."),
           ("T5", "brain_mri", "(a) MRI. (b) MRI with a glioma.")]
FIGURE_TRUTH = [
    {"id": "T0", "modality": "chest_xray", "findings": ["MC001"], "panels": [], "mask": "masks/T0.png"},
    {"id": "T1", "modality": "ct_slice", "findings": ["MC008"], "mask": "masks/T1.png",
     "panels": [{"label": "(a)", "findings": ["MC008"]}, {"label": "(b)", "findings": ["MC006", "MC026"]}]},
    {"id": "T3", "modality": "dermoscopy", "findings": ["MC018", "MC999"]},  # MC999: not in the lexicon
    {"id": "T4", "modality": "histopathology", "findings": [], "panels": None, "mask": "masks/T4.png"},
    {"id": "T5", "modality": "brain_mri", "findings": [], "mask": "masks/T5.png",
     "panels": [{"label": "(a)", "findings": []}, {"label": "(b)", "findings": ["MC010"]}]},
    {"id": "T9", "modality": "fundus", "findings": ["MC016"]},  # a truth record of a figure not in the split
]
CT_TRUTH = {  # study -> labels (Sval0001: no truth record)
    "Sval0000": {"lung": ["lung_nodule", "pleural_effusion"], "liver": ["gallstone"], "kidney": []},
    "Sval0002": {"gallbladder": ["gallstone"], "heart": ["cardiomegaly"]},
    "Sval0003": {},
    "Sval0004": {"spleen": ["splenomegaly"], "lung": ["lung_nodule"]},
}


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _image(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    shape = (20, 24) if i % 2 else (20, 24, 3)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_data")
    curated, data = root / "curated", root / "data"
    samples = []
    for i, (fid, modality, caption) in enumerate(FIGURES):
        meta = {"id": fid, "caption": caption, "article_id": f"A{i}", "split": "test", "concepts": []}
        if modality is not None:
            meta["modality"] = modality
        samples.append({"__key__": fid, "png": encode_png(_image(i)), "json": json_bytes(meta)})
    write_shards(samples, shard_dir(curated, "figures"), "test", 4)
    write_shards([{"__key__": "X0", "png": encode_png(_image(9)),
                   "json": json_bytes({"id": "X0", "caption": "train", "modality": "fundus"})}],
                 shard_dir(curated, "figures"), "train", 4)
    figures_truth = _jsonl(data / "figures" / "figures_truth.jsonl", FIGURE_TRUTH)

    rng = np.random.default_rng(0)
    write_shards((_study(i, rng, "val") for i in range(5)), shard_dir(curated, "ct"), "val", 2)
    ct_truth = _jsonl(data / "ct" / "ct_truth.jsonl", [{"id": k, "labels": v} for k, v in CT_TRUTH.items()])
    return curated, figures_truth, ct_truth


# ---------------------------------------------------------------------------------------------- figures


def test_figure_findings_merge_the_panels():
    assert figure_findings(FIGURE_TRUTH[1]) == ["MC006", "MC008", "MC026"]
    assert figure_findings(FIGURE_TRUTH[3]) == [] and figure_findings({"id": "x"}) == []
    assert figure_findings(FIGURE_TRUTH[4]) == ["MC010"]


def test_load_figures_labels_truth_and_masks(corpus):
    curated, truth_path, _ = corpus
    lexicon = load_concept_lexicon()
    got = load_figures(curated, "test", lexicon, truth_path)
    concept_ids = [c.id for c in lexicon.concepts]
    assert got.ids == [f[0] for f in FIGURES] and len(got) == len(FIGURES)
    assert got.captions == [f[2] for f in FIGURES] and got.concept_ids == concept_ids

    # the reference: a direct reading of the truth records
    truth = {r["id"]: r for r in FIGURE_TRUTH}
    want = np.zeros((len(FIGURES), len(concept_ids)), dtype=bool)
    for n, (fid, _, _) in enumerate(FIGURES):
        rec = truth.get(fid, {})
        found = set(rec.get("findings") or [])
        for panel in rec.get("panels") or []:
            found |= set(panel["findings"])
        for cid in found & set(concept_ids):
            want[n, concept_ids.index(cid)] = True
    assert got.labels.dtype == bool and np.array_equal(got.labels, want)
    assert want[1, concept_ids.index("MC006")] and want[1, concept_ids.index("MC026")]  # panel (b) of T1
    assert want[5, concept_ids.index("MC010")]  # a finding in a panel only
    assert got.has_truth.tolist() == [fid in truth for fid, _, _ in FIGURES] == [True, True, False, True, True, True]
    assert not got.labels[2].any()  # no truth: no label
    assert got.modalities == ["chest_xray", "ct_slice", "fundus", "dermoscopy", "histopathology", "brain_mri"]
    root = truth_path.parent
    assert got.mask_paths == [root / "masks/T0.png", root / "masks/T1.png", None, None, root / "masks/T4.png",
                              root / "masks/T5.png"]
    for n in range(len(FIGURES)):
        np.testing.assert_array_equal(got.images[n], _image(n))

    sub = got.subset([5, 1])
    assert sub.ids == ["T5", "T1"] and np.array_equal(sub.labels, want[[5, 1]])
    assert sub.mask_paths == [root / "masks/T5.png", root / "masks/T1.png"]


def test_load_figures_without_truth_and_with_a_limit(corpus):
    curated, truth_path, _ = corpus
    lexicon = load_concept_lexicon()
    bare = load_figures(curated, "test", lexicon, None)
    assert not bare.has_truth.any() and not bare.labels.any() and bare.mask_paths == [None] * len(FIGURES)
    assert bare.modalities[3] == ""  # neither the shard nor a truth record names it
    first = load_figures(curated, "test", lexicon, truth_path, limit=2)
    assert first.ids == ["T0", "T1"] and first.labels.shape == (2, len(lexicon.concepts))
    train = load_figures(curated, "train", lexicon, truth_path)
    assert train.ids == ["X0"] and not train.has_truth.any()


def test_read_truth_names_a_bad_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": 3, "x": 1}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 4"):
        read_truth(path)
    path.write_text('{"id": "a"}\n\n{"id": 3, "x": 1}\n', encoding="utf-8")
    assert read_truth(path) == {"a": {"id": "a"}, "3": {"id": 3, "x": 1}}
    assert read_truth(None) == {} and read_truth(tmp_path / "missing.jsonl") == {}


# ---------------------------------------------------------------------------------------------- CT


def test_load_ct_labels_are_anatomy_abnormality_pairs(corpus):
    curated, _, truth_path = corpus
    lexicon = load_anatomy_lexicon()
    got = load_ct(curated, "val", lexicon, (32, 32, 16), truth_path)
    ids = [f"Sval{i:04d}" for i in range(5)]
    assert got.ids == ids and len(got) == 5
    assert got.abnormality_ids == [x.id for x in lexicon.abnormalities]
    assert got.anatomy_of == [x.anatomy for x in lexicon.abnormalities]
    want = np.array([[abn in CT_TRUTH.get(sid, {}).get(x.anatomy, []) for x, abn in
                      zip(lexicon.abnormalities, got.abnormality_ids)] for sid in ids])
    assert got.labels.dtype == bool and np.array_equal(got.labels, want)
    gallstone = got.abnormality_ids.index("gallstone")
    assert not got.labels[0, gallstone]  # listed under the liver: not the gallbladder's gallstone
    assert got.labels[2, gallstone]
    assert int(got.labels.sum()) == 6
    assert got.has_truth.tolist() == [True, False, True, True, True]
    assert not got.labels[1].any()

    assert got.volumes.shape == (5, 1, 32, 32, 16) and got.volumes.dtype.is_floating_point
    assert float(got.volumes.min()) >= 0.0 and float(got.volumes.max()) <= 1.0
    assert got.label_maps.shape == (5, 32, 32, 16)
    labels = {int(v) for v in got.label_maps.unique()}
    assert {a.label for a in lexicon.anatomies} <= labels  # the crop keeps every anatomy
    rng = np.random.default_rng(0)
    metas = [json.loads(_study(i, rng, "val")["json"]) for i in range(5)]
    assert got.reports == [f"{m['impression']} {m['findings']}" for m in metas]
