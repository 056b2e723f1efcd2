"""Manifest validation: every bad input is skipped and counted under its reason, naming file and line."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medvlp.curate.records import CorpusError, RejectLog, load_ct_records, load_figure_records
from medvlp.data.io import write_dicom_series

CAPTION = "Chest X-ray with a small pleural effusion."


def _line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def _figure(fid: str, image: str = "images/ok.png", caption: str = CAPTION, **extra) -> dict:
    return {"id": fid, "image": image, "caption": caption, "article_id": "PMC1", "modality": "chest_xray",
            **extra}


@pytest.fixture()
def figures(tmp_path):
    """A figures folder with one good PNG, a truncated PNG and a text file named .png."""
    root = tmp_path / "figures"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / "images" / "ok.png")
    full = (root / "images" / "ok.png").read_bytes()
    (root / "images" / "cut.png").write_bytes(full[: len(full) // 3])
    (root / "images" / "notes.png").write_bytes(b"just some text, not an image\n")
    (tmp_path / "outside.png").write_bytes(full)
    return root


def _load_figures(root, lines: list[bytes], strict: bool = False):
    (root / "manifest.jsonl").write_bytes(b"".join(lines))
    log = RejectLog(max_examples=5, strict=strict)
    records, n = load_figure_records(root, log)
    return records, n, log


FIGURE_CASES = {
    "missing_file": (_line(_figure("F2", image="images/nope.png")), "image 'images/nope.png' not found"),
    "truncated_image": (_line(_figure("F2", image="images/cut.png")), "'images/cut.png' does not decode"),
    "non_image_file": (_line(_figure("F2", image="images/notes.png")), "'images/notes.png' does not decode"),
    "empty_caption": (_line(_figure("F2", caption="")), "caption is empty"),
    "whitespace_caption": (_line(_figure("F2", caption="  \t ")), "caption is empty"),
    "non_utf8_caption": (_line(_figure("F2", caption="@@")).replace(b"@@", b"r\xe9sum\xe9"),
                         "not valid UTF-8"),
    "duplicate_id": (_line(_figure("F1")), "id 'F1' already used on line 1"),
    "dotdot_path": (_line(_figure("F2", image="images/../../outside.png")), "leaves the collection folder"),
    "absolute_path": (_line(_figure("F2", image="/etc/passwd")), "is absolute"),
    "invalid_json": (b'{"id": "F2", "image": \n', "invalid JSON"),
    "missing_field": (_line({"id": "F2", "image": "images/ok.png", "article_id": "A"}),
                      "required field 'caption' missing"),
}
FIGURE_REASONS = {
    "missing_file": "missing_file", "truncated_image": "unreadable_image",
    "non_image_file": "unreadable_image", "empty_caption": "empty_caption",
    "whitespace_caption": "empty_caption", "non_utf8_caption": "invalid_utf8", "duplicate_id": "duplicate_id",
    "dotdot_path": "path_escapes_corpus", "absolute_path": "path_escapes_corpus",
    "invalid_json": "invalid_json", "missing_field": "missing_field",
}


@pytest.mark.parametrize("case", sorted(FIGURE_CASES))
def test_bad_figure_record_is_skipped_and_counted(figures, case):
    bad_line, detail = FIGURE_CASES[case]
    good = _line(_figure("F1"))
    records, n, log = _load_figures(figures, [good, bad_line, _line(_figure("F3"))])
    assert [r.id for r in records] == ["F1", "F3"]
    assert [r.line for r in records] == [1, 3]
    assert n == 3
    reason = FIGURE_REASONS[case]
    assert log.counts == {reason: 1}
    (message,) = log.examples[reason]
    assert message.startswith(f"{figures / 'manifest.jsonl'} line 2: ")
    assert detail in message


@pytest.mark.parametrize("case", ["missing_file", "non_utf8_caption", "dotdot_path"])
def test_strict_mode_raises_at_first_bad_figure(figures, case):
    bad_line, detail = FIGURE_CASES[case]
    with pytest.raises(CorpusError) as err:
        _load_figures(figures, [_line(_figure("F1")), bad_line, _line(_figure("F9", caption=""))],
                      strict=True)
    text = str(err.value)
    assert text.startswith(f"{figures / 'manifest.jsonl'} line 2: ")
    assert detail in text and "set curate.strict: false" in text


def test_every_line_is_kept_or_counted(figures):
    # Each bad case under its own id (all but the duplicate-id case), then a blank line.
    cases = sorted(FIGURE_CASES)
    bad = [FIGURE_CASES[c][0].replace(b'"F2"', f'"B{i}"'.encode()) for i, c in enumerate(cases)]
    lines = [_line(_figure("F1")), *bad, b"\n"]
    records, n, log = _load_figures(figures, lines)
    assert n == len(lines) == len(records) + log.total
    assert log.counts["unreadable_image"] == 2 and log.counts["invalid_json"] == 2   # the blank line too
    assert log.to_dict()["duplicate_id"]["count"] == 1


def test_examples_are_capped_per_reason(figures):
    lines = [_line(_figure(f"F{i}", image="images/nope.png")) for i in range(8)]
    (figures / "manifest.jsonl").write_bytes(b"".join(lines))
    log = RejectLog(max_examples=3)
    records, n = load_figure_records(figures, log)
    assert records == [] and n == 8
    assert log.counts == {"missing_file": 8}
    assert [m.split(":")[0].rsplit(" ", 1)[-1] for m in log.examples["missing_file"]] == ["1", "2", "3"]


def test_given_concepts_and_paths_are_normalised(figures):
    given = [{"concept_id": "MC001", "start_char": 27, "end_char": 43}]
    records, _, log = _load_figures(figures, [_line(_figure("F1", image="./images//ok.png", concepts=given))])
    assert log.total == 0
    assert records[0].image == "images/ok.png" and records[0].concepts == given


def test_on_image_receives_decoded_pixels(figures):
    (figures / "manifest.jsonl").write_bytes(_line(_figure("F1")))
    seen = {}
    load_figure_records(figures, RejectLog(), on_image=lambda rid, px: seen.setdefault(rid, px.shape))
    assert seen == {"F1": (32, 32)}


# ----------------------------------------------------------------------------------------------- CT

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _study(sid: str, volume: str = "volumes/ok.nii.gz", segmentation: str = "seg/ok.nii.gz",
           findings: str = "The liver is unremarkable.", impression: str = "No acute abnormality.") -> dict:
    return {"id": sid, "patient_id": "P1", "volume": volume, "segmentation": segmentation,
            "findings": findings, "impression": impression}


@pytest.fixture()
def ct(tmp_path):
    root = tmp_path / "ct"
    (root / "volumes").mkdir(parents=True)
    (root / "seg").mkdir()
    hu = np.full((6, 5, 4), -1000.0, dtype=np.float32)
    nib.save(nib.Nifti1Image(hu, AFFINE), root / "volumes" / "ok.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4), np.uint8), AFFINE), root / "seg" / "ok.nii.gz")
    nan, inf = hu.copy(), hu.copy()
    nan[1, 1, 1] = np.nan
    inf[2, 2, 2] = -np.inf
    nib.save(nib.Nifti1Image(nan, AFFINE), root / "volumes" / "nan.nii.gz")
    nib.save(nib.Nifti1Image(inf, AFFINE), root / "volumes" / "inf.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((6, 5, 3), np.uint8), AFFINE), root / "seg" / "short.nii.gz")
    full = (root / "volumes" / "ok.nii.gz").read_bytes()
    (root / "volumes" / "cut.nii.gz").write_bytes(full[: len(full) // 2])
    (root / "seg" / "cut.nii.gz").write_bytes((root / "seg" / "ok.nii.gz").read_bytes()[:60])
    write_dicom_series(np.zeros((6, 5, 4)), AFFINE, root / "volumes" / "dicom_series")
    return root


CT_CASES = {
    "nan_voxels": (_study("S2", volume="volumes/nan.nii.gz"), "nonfinite_voxels", "holds 1 NaN/infinite"),
    "inf_voxels": (_study("S2", volume="volumes/inf.nii.gz"), "nonfinite_voxels", "holds 1 NaN/infinite"),
    "segmentation_shape_mismatch": (_study("S2", segmentation="seg/short.nii.gz"),
                                    "segmentation_shape_mismatch", "has shape (6, 5, 3)"),
    "empty_report": (_study("S2", findings=" ", impression=""), "empty_report", "both empty"),
    "missing_volume": (_study("S2", volume="volumes/nope.nii.gz"), "missing_file",
                       "volume 'volumes/nope.nii.gz' not found"),
    "missing_segmentation": (_study("S2", segmentation="seg/nope.nii.gz"), "missing_file",
                             "segmentation 'seg/nope.nii.gz' not found"),
    "truncated_volume": (_study("S2", volume="volumes/cut.nii.gz"), "unreadable_volume", "does not decode"),
    "truncated_segmentation": (_study("S2", segmentation="seg/cut.nii.gz"), "unreadable_volume",
                               "segmentation 'seg/cut.nii.gz' does not decode"),
    "duplicate_id": (_study("S1"), "duplicate_id", "id 'S1' already used on line 1"),
    "dotdot_path": (_study("S2", volume="../ct/volumes/ok.nii.gz"), "path_escapes_corpus",
                    "leaves the collection"),
    "absolute_path": (_study("S2", segmentation="/tmp/seg.nii.gz"), "path_escapes_corpus", "is absolute"),
}


@pytest.mark.parametrize("case", sorted(CT_CASES))
def test_bad_ct_record_is_skipped_and_counted(ct, case):
    record, reason, detail = CT_CASES[case]
    (ct / "manifest.jsonl").write_bytes(_line(_study("S1")) + _line(record))
    log = RejectLog()
    records, n = load_ct_records(ct, log)
    assert [r.id for r in records] == ["S1"] and n == 2
    assert records[0].shape == (6, 5, 4)
    assert log.counts == {reason: 1}
    (message,) = log.examples[reason]
    assert message.startswith(f"{ct / 'manifest.jsonl'} line 2: ") and detail in message


def test_ct_strict_mode_names_first_bad_record(ct):
    lines = [_line(_study("S1")), _line(CT_CASES["nan_voxels"][0]), _line(CT_CASES["empty_report"][0])]
    (ct / "manifest.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(CorpusError, match=r"manifest\.jsonl line 2: volume 'volumes/nan\.nii\.gz' holds"):
        load_ct_records(ct, RejectLog(strict=True))


def test_ct_dicom_series_volume_is_accepted(ct):
    (ct / "manifest.jsonl").write_bytes(_line(_study("S1", volume="volumes/dicom_series")))
    log = RejectLog()
    records, _ = load_ct_records(ct, log)
    assert log.total == 0 and records[0].volume == "volumes/dicom_series" and records[0].shape == (6, 5, 4)
