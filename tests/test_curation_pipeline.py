"""The curation stage end to end on a small hand-made corpus (PNG, JPEG, DICOM images; NIfTI and
DICOM-series volumes; planted bad records and duplicates; truth files), and the 01_curate notebook."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medvlp.curate import CorpusError, iter_shard_samples, list_shards, run_curation
from medvlp.curate.curation_report import counts_table, rejects_table, scores_table, splits_table
from medvlp.data.io import read_image, read_volume, write_dicom_series
from medvlp.params import load_params, stage_params

REPO = Path(__file__).resolve().parents[1]
AFFINE = np.diag([4.0, 4.0, 5.0, 1.0])


# -------------------------------------------------------------------------------------- the corpus

def _smooth(seed: int, rgb: bool = False) -> np.ndarray:
    """A distinct low-frequency 64 x 64 image (grey, or RGB)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 6, 3) if rgb else (6, 6), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC))


def _dicom_image(path: Path, pixels: np.ndarray) -> None:
    uid = generate_uid(entropy_srcs=[path.name])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, uid, "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _mention(caption: str, phrase: str, cid: str, negated: bool = False) -> dict:
    start = caption.index(phrase)
    return {"concept_id": cid, "start_char": start, "end_char": start + len(phrase), "negated": negated}


def _panels(caption: str, labels: list[str]) -> list[dict]:
    starts = [caption.index(f"({x})") for x in labels] + [len(caption)]
    return [{"label": f"({x})", "start_char": a, "end_char": b}
            for x, a, b in zip(labels, starts, starts[1:])]


# id, modality, article, image kind, caption, [(phrase, concept, negated)], duplicate_of
FIGURES = [
    ("F01", "chest_xray", "A1", "png", "Chest radiograph with a right pleural effusion. No pneumothorax.",
     [("pleural effusion", "MC001", False), ("pneumothorax", "MC002", True)], None),
    ("F02", "ct_slice", "A1", "png", "Axial CT image showing a hepatic lesion and ascites.",
     [("hepatic lesion", "MC006", False), ("ascites", "MC008", False)], None),
    ("F03", "brain_mri", "A2", "jpg", "Brain MRI without evidence of infarct.",
     [("infarct", "MC012", True)], None),
    ("F04", "fundus", "A3", "rgb", "Fundus photograph with drusen and hard exudates.",
     [("drusen", "MC016", False), ("hard exudate", "MC015", False)], None),
    ("F05", "dermoscopy", "A4", "rgb", "Dermoscopic image of a melanoma.",
     [("melanoma", "MC018", False)], None),
    ("F06", "histopathology", "A5", "rgb", "Biopsy. (a) Necrosis is present. (b) No mitotic figure is seen.",
     [("Necrosis", "MC023", False), ("mitotic figure", "MC022", True)], None),
    ("F07", "chest_xray", "A6", "dcm", "Chest X-ray showing cardiomegaly.",
     [("cardiomegaly", "MC003", False)], None),
    ("F08", "ct_slice", "A7", "copy:F02", "CT slice with ascites.", [("ascites", "MC008", False)], "F02"),
    ("F09", "fundus", "A8", "near:F04", "Retinal photograph with drusen.",
     [("drusen", "MC016", False)], "F04"),
    ("F10", "histopathology", "A9", "rgb", "H&E-stained section. Scale bar, 50 µm.", [], None),
    ("F11", "chest_xray", "A10", "png", "CXR demonstrating a lung nodule.", [("lung nodule", "MC005", False)],
     None),
    ("F12", "brain_mri", "A11", "png", "Axial FLAIR image with a glioma.",
     [("glioma", "MC010", False)], None),
]
GIVEN = {"F05": [{"concept_id": "MC018", "start_char": 23, "end_char": 31}],
         "F12": [{"concept_id": "MC999", "start_char": 0, "end_char": 5}]}       # an invalid given span
N_FIGURE_BAD = 3

# id, patient, volume kind, findings, impression, truth sentences [(section, text, anatomies)],
# abnormal labels
STUDIES = [
    ("S1", "P1", "nifti", "The lungs are clear. The liver is unremarkable.", "No acute abnormality.",
     [("findings", "The lungs are clear.", ["lung"]), ("findings", "The liver is unremarkable.", ["liver"]),
      ("impression", "No acute abnormality.", [])], {}),
    ("S2", "P1", "nifti", "A 1.2 cm pulmonary nodule is seen in the right lung. The kidneys are normal.",
     "Pulmonary nodule measuring 1.2 cm.",
     [("findings", "A 1.2 cm pulmonary nodule is seen in the right lung.", ["lung"]),
      ("findings", "The kidneys are normal.", ["kidney"]),
      ("impression", "Pulmonary nodule measuring 1.2 cm.", ["lung"])], {"lung": ["lung_nodule"]}),
    ("S3", "P2", "dicom", "Cholelithiasis is noted.", "1. Cholelithiasis.",
     [("findings", "Cholelithiasis is noted.", ["gallbladder"]),
      ("impression", "Cholelithiasis.", ["gallbladder"])],
     {"gallbladder": ["gallstone"]}),
    ("S4", "P3", "nifti", "The spleen is enlarged.", "Splenomegaly.",
     [("findings", "The spleen is enlarged.", ["spleen"]), ("impression", "Splenomegaly.", ["spleen"])],
     {"spleen": ["splenomegaly"]}),
]
N_CT_BAD = 2
ANATOMIES = ["lung", "heart", "aorta", "esophagus", "liver", "gallbladder", "spleen", "pancreas", "kidney",
             "stomach"]


def _jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def make_corpus(root: Path) -> Path:
    """Write the fixture corpus under ``root`` (``figures/`` and ``ct/``, with truth files)."""
    fig = root / "figures"
    (fig / "images").mkdir(parents=True)
    manifest, truth, pixels = [], [], {}
    for k, (fid, modality, article, kind, caption, mentions, dup) in enumerate(FIGURES):
        name = f"images/{fid}.{ {'jpg': 'jpg', 'dcm': 'dcm'}.get(kind, 'png') }"
        if kind.startswith("copy:"):
            (fig / name).write_bytes((fig / f"images/{kind[5:]}.png").read_bytes())
        elif kind.startswith("near:"):
            src = pixels[kind[5:]]
            shifted = np.pad(src, ((1, 1), (1, 1), (0, 0)), mode="edge")[:-2, 1:-1]
            near = np.clip(np.round(shifted * 1.04), 0, 255)
            Image.fromarray(near.astype(np.uint8)).save(fig / name)
        elif kind == "dcm":
            _dicom_image(fig / name, _smooth(100 + k))
        else:
            pixels[fid] = _smooth(100 + k, rgb=kind == "rgb")
            Image.fromarray(pixels[fid]).save(fig / name, **({"quality": 95} if kind == "jpg" else {}))
        rec = {"id": fid, "image": name, "caption": caption, "article_id": article, "modality": modality}
        if fid in GIVEN:
            rec["concepts"] = GIVEN[fid]
        manifest.append(rec)
        labels = [x for x in "ab" if f"({x})" in caption]
        truth.append({"id": fid, "modality": modality, "duplicate_of": dup,
                      "mentions": [_mention(caption, p, c, n) for p, c, n in mentions],
                      "subcaptions": _panels(caption, labels) if labels else []})
    manifest += [
        {"id": "F13", "image": "images/missing.png", "caption": "A lung nodule.", "article_id": "A12"},
        {"id": "F14", "image": "images/F01.png", "caption": " ", "article_id": "A13"},
        {"id": "F01", "image": "images/F01.png", "caption": "Again.", "article_id": "A14"},
    ]
    _jsonl(fig / "manifest.jsonl", manifest)
    _jsonl(fig / "figures_truth.jsonl", truth)

    ct = root / "ct"
    for sub in ("volumes", "segmentations"):
        (ct / sub).mkdir(parents=True)
    manifest, truth = [], []
    rng = np.random.default_rng(0)
    for sid, patient, kind, findings, impression, sentences, labels in STUDIES:
        hu = rng.integers(-1000, 400, size=(8, 8, 6)).astype(np.float32)
        seg = rng.integers(0, 11, size=(8, 8, 6)).astype(np.uint8)
        if kind == "dicom":
            write_dicom_series(hu, AFFINE, ct / "volumes" / sid, name=sid)
            volume = f"volumes/{sid}"
        else:
            nib.save(nib.Nifti1Image(hu, AFFINE), ct / "volumes" / f"{sid}.nii.gz")
            volume = f"volumes/{sid}.nii.gz"
        nib.save(nib.Nifti1Image(seg, AFFINE), ct / "segmentations" / f"{sid}.nii.gz")
        manifest.append({"id": sid, "patient_id": patient, "volume": volume,
                         "segmentation": f"segmentations/{sid}.nii.gz", "findings": findings,
                         "impression": impression})
        truth.append({"id": sid, "labels": {a: labels.get(a, []) for a in ANATOMIES},
                      "sentences": [{"section": s, "text": t, "anatomies": a} for s, t, a in sentences]})
    nan = np.zeros((8, 8, 6), np.float32)
    nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, AFFINE), ct / "volumes" / "S5.nii.gz")
    manifest += [
        {"id": "S5", "patient_id": "P4", "volume": "volumes/S5.nii.gz",
         "segmentation": "segmentations/S1.nii.gz", "findings": "Normal.", "impression": "Normal."},
        {**manifest[0], "patient_id": "P9"},
    ]
    _jsonl(ct / "manifest.jsonl", manifest)
    _jsonl(ct / "ct_truth.jsonl", truth)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "data")


def curate_params(corpus: Path, out: Path, **kw) -> dict:
    """params.yaml's ``curate`` section, reading ``corpus`` and writing under ``out``, with ``kw`` over it."""
    params = stage_params(load_params(REPO / "params.yaml"), "curate")
    return {**params, "data_dir": str(corpus), "out_dir": str(out / "curated"),
            "metrics_path": str(out / "metrics" / "curation.json"), "figures_dir": str(out / "figures"), **kw}


def _run(corpus: Path, out: Path, **kw) -> dict:
    return run_curation(**curate_params(corpus, out, **kw), progress=False)


@pytest.fixture(scope="module")
def curated(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    stale = out / "curated" / "shards" / "figures" / "train-000099.tar"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    # Everything to train except one article (A3: F04) in test, so F09 (near copy of F04) meets the eval rule.
    report = _run(corpus, out, split={"train": 1.0}, shard_max_samples=4)
    return out, report


# ------------------------------------------------------------------------------------------- tests

def test_report_counts_and_rejects(curated, corpus):
    out, report = curated
    assert json.loads((out / "metrics" / "curation.json").read_text()) == report
    fig, ct = report["figures"], report["ct"]
    assert fig["records_read"] == len(FIGURES) + N_FIGURE_BAD == fig["valid"] + fig["rejected"]
    assert fig["valid"] == fig["kept"] + sum(fig["duplicates_removed"].values())
    assert {r: e["count"] for r, e in fig["rejects"].items()} == {
        "missing_file": 1, "empty_caption": 1, "duplicate_id": 1}
    manifest = corpus / "figures" / "manifest.jsonl"
    assert fig["rejects"]["missing_file"]["examples"] == [
        f"{manifest} line 13: image 'images/missing.png' not found"]
    assert fig["rejects"]["duplicate_id"]["examples"] == [
        f"{manifest} line 15: id 'F01' already used on line 1"]
    assert fig["warnings"]["invalid_given_span"]["count"] == 1
    assert "line 12 (F12)" in fig["warnings"]["invalid_given_span"]["examples"][0]
    assert ct["records_read"] == len(STUDIES) + N_CT_BAD and ct["kept"] == len(STUDIES)
    assert {r: e["count"] for r, e in ct["rejects"].items()} == {"nonfinite_voxels": 1, "duplicate_id": 1}


def test_text_statistics(curated):
    _, report = curated
    fig = report["figures"]
    assert fig["compound_captions"] == 1
    assert fig["modalities"] == {"brain_mri": 2, "chest_xray": 3, "ct_slice": 1, "dermoscopy": 1, "fundus": 1,
                                 "histopathology": 2}
    assert fig["negated_mentions"] == 3                       # pneumothorax, infarct, mitotic figure
    assert fig["concepts"]["MC001"] == {"name": "pleural effusion", "mentions": 1, "figures": 1}
    assert fig["given_spans"]["records_with_given"] == 2 and fig["given_spans"]["given_mentions"] == 1
    ct = report["ct"]
    assert ct["sentences"]["total"] == sum(len(s[5]) for s in STUDIES)
    assert ct["anatomy_normal_rate"]["lung"] == 0.75 and ct["anatomy_normal_rate"]["heart"] == 1.0
    assert ct["fully_normal_studies"] == 1


def test_truth_scores(curated):
    _, report = curated
    truth = report["figures"]["truth"]
    assert truth["records_scored"] == len(FIGURES)
    ext = truth["extraction"]["all_records"]
    assert (ext["tp"], ext["fp"], ext["fn"]) == (12, 0, 0) and ext["f1"] == 1.0
    assert ext["negation_accuracy"] == 1.0
    assert truth["extraction"]["extracted_only_records"]["n_records"] == len(FIGURES) - len(GIVEN)
    assert truth["compound_split"]["compound_accuracy"] == 1.0 and truth["compound_split"]["n_compound"] == 1
    assert truth["dedup"] == {"precision": 1.0, "recall": 1.0, "tp": 2, "fp": 0, "fn": 0, "removed": 2,
                              "expected": 2}
    ct = report["ct"]["truth"]
    assert ct["n_sentences"] == sum(len(s[5]) for s in STUDIES) and ct["n_normal_scored"] == 40
    assert ct["accuracy"] == 1.0 and ct["normal_accuracy"] == 1.0
    assert report["extraction"]["f1"] == 1.0 and report["anatomy_assignment"]["accuracy"] == 1.0


def test_curated_tables(curated):
    out, report = curated
    figs = pd.read_parquet(out / "curated" / "figures.parquet")
    assert list(figs["id"]) == ["F01", "F02", "F03", "F04", "F05", "F06", "F07", "F10", "F11", "F12"]
    assert set(figs["split"]) == {"train"}
    row = figs.set_index("id").loc["F01"]
    assert row["image"] == "figures/images/F01.png"
    concepts = [dict(c) for c in row["concepts"]]  # every mention, the negated ones flagged
    assert concepts[0] == {"concept_id": "MC001", "start_char": 30, "end_char": 46, "source": "extracted",
                           "negated": False}
    assert [(c["concept_id"], c["negated"]) for c in concepts[1:]] == [("MC002", True)]
    assert list(row["negated_concepts"]) == ["MC002"]
    assert len(row["phash"]) == 16
    f05 = figs.set_index("id").loc["F05"]
    assert [c["source"] for c in f05["concepts"]] == ["given"]
    f06 = figs.set_index("id").loc["F06"]
    assert [(s["label"], s["start"] < s["end"]) for s in f06["subcaptions"]] == [("a", True), ("b", True)]
    cts = pd.read_parquet(out / "curated" / "ct.parquet")
    assert list(cts["id"]) == ["S1", "S2", "S3", "S4"]
    s2 = cts.set_index("id").loc["S2"]
    assert [x["anatomy"] for x in s2["is_normal"]] == ANATOMIES
    assert {x["anatomy"]: x["normal"] for x in s2["is_normal"]}["lung"] is False
    texts = {x["anatomy"]: x["text"] for x in s2["anatomy_text"]}
    assert texts["heart"] == "Heart shows no significant abnormalities."
    assert list(s2["shape"]) == [8, 8, 6] and cts.set_index("id").loc["S3", "volume"] == "ct/volumes/S3"


def test_shards_round_trip_and_stale_shards_removed(curated, corpus):
    out, report = curated
    paths = list_shards(out / "curated", "figures", "train")
    assert [p.name for p in paths] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]  # 10 / 4
    samples = list(iter_shard_samples(paths))
    assert [s["__key__"] for s in samples] == ["F01", "F02", "F03", "F04", "F05", "F06", "F07", "F10", "F11",
                                               "F12"]
    by_id = {s["__key__"]: s for s in samples}
    images = corpus / "figures" / "images"
    np.testing.assert_array_equal(by_id["F04"]["image"], read_image(images / "F04.png"))
    np.testing.assert_array_equal(by_id["F07"]["image"], read_image(images / "F07.dcm"))
    assert by_id["F01"]["meta"]["negated_concepts"] == ["MC002"] and by_id["F01"]["meta"]["split"] == "train"
    ct = {s["__key__"]: s for s in iter_shard_samples(list_shards(out / "curated", "ct", "train"))}
    assert sorted(ct) == ["S1", "S2", "S3", "S4"]
    dicom = read_volume(corpus / "ct" / "volumes" / "S3")
    np.testing.assert_array_equal(ct["S3"]["volume"], dicom.array)       # DICOM series -> NIfTI in the shard
    np.testing.assert_allclose(ct["S3"]["affine"], dicom.affine, atol=1e-4)
    nifti = read_volume(corpus / "ct" / "volumes" / "S1.nii.gz")
    np.testing.assert_array_equal(ct["S1"]["volume"], nifti.array)
    assert ct["S2"]["segmentation"].shape == (8, 8, 6)
    assert ct["S2"]["meta"]["is_normal"][0] == {"anatomy": "lung", "normal": False}
    assert report["outputs"]["shards"] == {"figures": {"train": 3, "val": 0, "test": 0},
                                           "ct": {"train": 1, "val": 0, "test": 0}}


def test_figures_written(curated):
    out, report = curated
    names = sorted(Path(p).name for p in report["outputs"]["figures"])
    assert names == ["concepts.png", "examples.png", "modalities.png", "splits.png"]
    for p in report["outputs"]["figures"]:
        with Image.open(p) as im:
            assert im.width > 300 and im.height > 200


def test_report_tables(curated):
    _, report = curated
    assert list(counts_table(report)["kept"]) == [10, 4]
    rej = rejects_table(report)
    assert set(rej["reason"]) >= {"missing_file", "duplicate", "nonfinite_voxels", "invalid_given_span"}
    assert int(splits_table(report).query("collection == 'ct' and split == 'train'")["groups"].iloc[0]) == 3
    scores = scores_table(report).set_index("metric")["value"]
    assert scores["dedup recall"] == 1.0


def test_near_duplicate_of_test_image_removed_from_train(corpus, tmp_path):
    """With the real hash split, F04's near copy F09 must leave train when F04 is in test, and vice versa."""
    from medvlp.curate.split import split_of

    fractions = {"train": 0.5, "val": 0.0, "test": 0.5}
    seed = next(s for s in range(100)
                if split_of("A3", fractions, s) == "test" and split_of("A8", fractions, s) == "train")
    report = _run(corpus, tmp_path, seed=seed, split=fractions)
    figs = pd.read_parquet(tmp_path / "curated" / "figures.parquet").set_index("id")
    assert "F09" not in figs.index and figs.loc["F04", "split"] == "test"
    assert report["figures"]["duplicates_removed"].get("near_duplicate_of_eval", 0) >= 1
    assert figs.groupby("article_id")["split"].nunique().max() == 1              # no article in two splits
    assert len(figs) + sum(report["figures"]["duplicates_removed"].values()) == len(FIGURES)


def test_deterministic_outputs(corpus, curated, tmp_path):
    out, report = curated
    again = _run(corpus, tmp_path, split={"train": 1.0}, shard_max_samples=4)
    for name in ("figures", "ct"):
        assert again[name] == report[name]
    for a in sorted((out / "curated" / "shards").rglob("*.tar")):
        b = tmp_path / "curated" / a.relative_to(out / "curated")
        assert a.read_bytes() == b.read_bytes(), a.name


def test_absent_collection_is_reported_not_fatal(corpus, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(corpus / "ct", data / "ct")
    report = _run(data, tmp_path / "out")
    assert report["figures"] == {"present": False, "manifest": str(data / "figures" / "manifest.jsonl")}
    assert report["ct"]["kept"] == len(STUDIES) and "extraction" not in report
    figs = pd.read_parquet(tmp_path / "out" / "curated" / "figures.parquet")
    assert len(figs) == 0 and "concepts" in figs.columns
    assert sorted(Path(p).name for p in report["outputs"]["figures"]) == ["splits.png"]
    with pytest.raises(FileNotFoundError, match="neither"):
        _run(tmp_path / "nothing", tmp_path / "out2")


def test_strict_mode_names_first_bad_record(corpus, tmp_path):
    with pytest.raises(CorpusError, match=r"figures/manifest\.jsonl line 13: image 'images/missing\.png' not "
                                          r"found .*set curate\.strict: false"):
        _run(corpus, tmp_path, strict=True)


def test_notebook_runs_with_papermill(corpus, tmp_path):
    from medvlp.notebooks import run_notebook

    params = curate_params(corpus, tmp_path)
    executed = run_notebook(REPO / "notebooks" / "01_curate.ipynb", tmp_path / "01_curate.ipynb", params,
                            cwd=tmp_path, progress=False)
    report = json.loads((tmp_path / "metrics" / "curation.json").read_text())
    assert report["figures"]["kept"] + report["ct"]["kept"] > 0
    text = executed.read_text()
    assert "image/png" in text and "dedup recall" in text


def test_a_missing_parameter_is_named_with_its_section(corpus, tmp_path):
    """params.yaml is the only home of the stage's parameters: no default stands in for a missing one."""
    from medvlp.cli import main
    from medvlp.stage_args import MissingParamsError

    params = curate_params(corpus, tmp_path)
    del params["phash_max_distance"], params["split"]
    with pytest.raises(MissingParamsError, match=r"run_curation: missing \['phash_max_distance', 'split'\] of "
                                                 r"params.yaml section 'curate'"):
        run_curation(**params, progress=False)
    with pytest.raises(TypeError, match="takes 0 positional arguments"):  # keyword-only: none by position
        run_curation(corpus, tmp_path, **{k: v for k, v in curate_params(corpus, tmp_path).items()
                                          if k not in ("data_dir", "out_dir")})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps({"curate": params}))  # JSON is YAML
    with pytest.raises(SystemExit, match=rf"{params_file}: run_curation: missing \['phash_max_distance', 'split'\]"):
        main(["curate", "--params", str(params_file)])
    assert not (tmp_path / "curated").exists()  # nothing written
