"""A corpus file that is a symlink is read only when it resolves inside the collection folder or into the DVC
cache of the repository holding the corpus; any other target is rejected as ``path_escapes_corpus``
(counted, or raising in strict mode), however lexically clean the manifest's path is."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medvlp.curate.records import CorpusError, RejectLog, dvc_cache_dirs, load_ct_records, load_figure_records
from medvlp.data.io import write_dicom_series

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _line(record: dict) -> bytes:
    return (json.dumps(record) + "\n").encode("utf-8")


def _figure(fid: str, image: str) -> dict:
    return {"id": fid, "image": image, "caption": "Chest X-ray, no effusion.", "article_id": "PMC1"}


def _png(path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)).save(path, "PNG")


@pytest.fixture()
def repo(tmp_path):
    """A repository with a DVC cache, a figures corpus and a private file outside both."""
    root = tmp_path / "repo"
    (root / ".dvc").mkdir(parents=True)
    figures = root / "data" / "figures"
    _png(figures / "images" / "plain.png")                                   # an ordinary file
    _png(root / ".dvc" / "cache" / "files" / "md5" / "ab" / "cdef0123", 1)   # what `dvc checkout` links to
    os.symlink(root / ".dvc/cache/files/md5/ab/cdef0123", figures / "images" / "cached.png")
    os.symlink("plain.png", figures / "images" / "alias.png")                # a link within the corpus
    _png(tmp_path / "private" / "secret.png", 2)
    os.symlink(tmp_path / "private" / "secret.png", figures / "images" / "escape.png")
    os.symlink(tmp_path / "private", figures / "linked_dir")                # a folder link out of the corpus
    return root


def _load(figures, names: list[str], strict: bool = False):
    (figures / "manifest.jsonl").write_bytes(b"".join(_line(_figure(f"F{i}", n)) for i, n in enumerate(names)))
    log = RejectLog(strict=strict)
    records, n = load_figure_records(figures, log)
    return [r.image for r in records], n, log


def test_link_out_of_the_corpus_is_rejected_and_counted(repo, tmp_path):
    figures = repo / "data" / "figures"
    kept, n, log = _load(figures, ["images/plain.png", "images/cached.png", "images/escape.png",
                                   "images/alias.png", "linked_dir/secret.png"])
    assert kept == ["images/plain.png", "images/cached.png", "images/alias.png"] and n == 5
    assert log.counts == {"path_escapes_corpus": 2}
    first, second = log.examples["path_escapes_corpus"]
    assert first.startswith(f"{figures / 'manifest.jsonl'} line 3: image 'images/escape.png' is a link to ")
    assert str((tmp_path / "private" / "secret.png").resolve()) in first
    assert "line 5: image 'linked_dir/secret.png' is a link to" in second


def test_a_link_loop_is_a_missing_file(repo):
    figures = repo / "data" / "figures"
    os.symlink("loop_b.png", figures / "images" / "loop_a.png")
    os.symlink("loop_a.png", figures / "images" / "loop_b.png")
    kept, _, log = _load(figures, ["images/plain.png", "images/loop_a.png"])
    assert kept == ["images/plain.png"] and log.counts == {"missing_file": 1}


def test_link_out_of_the_corpus_raises_in_strict_mode(repo):
    figures = repo / "data" / "figures"
    assert _load(figures, ["images/plain.png", "images/cached.png"], strict=True)[0] == ["images/plain.png",
                                                                                         "images/cached.png"]
    with pytest.raises(CorpusError, match=r"line 2: image 'images/escape\.png' is a link to .*"
                                          r"\[path_escapes_corpus\]"):
        _load(figures, ["images/plain.png", "images/escape.png"], strict=True)


def test_only_the_cache_of_the_repository_holding_the_corpus_counts(tmp_path):
    # the same link into a DVC cache, from a corpus in no DVC repository: another repository's cache is outside
    other = tmp_path / "other"
    _png(other / ".dvc" / "cache" / "files" / "md5" / "ab" / "cdef0123")
    figures = tmp_path / "loose" / "figures"
    _png(figures / "images" / "plain.png")
    os.symlink(other / ".dvc/cache/files/md5/ab/cdef0123", figures / "images" / "cached.png")
    assert dvc_cache_dirs(figures) == ()
    kept, _, log = _load(figures, ["images/plain.png", "images/cached.png"])
    assert kept == ["images/plain.png"] and log.counts == {"path_escapes_corpus": 1}


def test_a_cache_dir_set_in_the_dvc_config_is_allowed(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / ".dvc" / "config").write_text("[cache]\n    dir = ../../shared-cache\n")
    _png(tmp_path / "shared-cache" / "files" / "md5" / "12" / "3456")
    figures = repo / "data" / "figures"
    _png(figures / "images" / "plain.png")
    os.symlink(tmp_path / "shared-cache/files/md5/12/3456", figures / "images" / "cached.png")
    assert (tmp_path / "shared-cache").resolve() in dvc_cache_dirs(figures)
    kept, _, log = _load(figures, ["images/plain.png", "images/cached.png"])
    assert kept == ["images/plain.png", "images/cached.png"] and log.total == 0


def test_ct_volume_segmentation_and_series_files_are_checked(repo, tmp_path):
    ct = repo / "data" / "ct"
    for sub in ("volumes", "seg"):
        (ct / sub).mkdir(parents=True)
    hu = np.full((6, 5, 4), -1000.0, dtype=np.float32)
    nib.save(nib.Nifti1Image(hu, AFFINE), ct / "volumes" / "ok.nii.gz")
    cached_seg = repo / ".dvc" / "cache" / "files" / "md5" / "cd" / "ef"
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4), np.uint8), AFFINE), tmp_path / "seg.nii.gz")
    cached_seg.parent.mkdir(parents=True)
    os.replace(tmp_path / "seg.nii.gz", cached_seg)
    os.symlink(cached_seg, ct / "seg" / "ok.nii.gz")                         # into the cache: fine
    nib.save(nib.Nifti1Image(hu, AFFINE), tmp_path / "private" / "vol.nii.gz")
    os.symlink(tmp_path / "private" / "vol.nii.gz", ct / "volumes" / "escape.nii.gz")
    write_dicom_series(np.zeros((6, 5, 4)), AFFINE, ct / "volumes" / "series")
    write_dicom_series(np.zeros((6, 5, 4)), AFFINE, ct / "volumes" / "leaky")
    victim = sorted((ct / "volumes" / "leaky").iterdir())[0]
    os.replace(victim, tmp_path / "private" / victim.name)
    os.symlink(tmp_path / "private" / victim.name, victim)                   # one slice read from outside

    def study(sid, volume):
        return {"id": sid, "patient_id": "P1", "volume": volume, "segmentation": "seg/ok.nii.gz",
                "findings": "The liver is unremarkable.", "impression": "No acute abnormality."}

    (ct / "manifest.jsonl").write_bytes(b"".join(_line(study(f"S{i}", v)) for i, v in enumerate(
        ["volumes/ok.nii.gz", "volumes/escape.nii.gz", "volumes/series", "volumes/leaky"])))
    log = RejectLog()
    records, n = load_ct_records(ct, log)
    assert [r.id for r in records] == ["S0", "S2"] and n == 4
    assert log.counts == {"path_escapes_corpus": 2}
    escape, leaky = log.examples["path_escapes_corpus"]
    assert "line 2: volume 'volumes/escape.nii.gz' is a link to" in escape
    assert f"line 4: volume 'volumes/leaky' holds {victim.name!r}, a link to" in leaky
