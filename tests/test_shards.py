"""WebDataset shards: round trip, shard size limit, reproducible bytes, readable by webdataset."""

import tarfile

import numpy as np
import pytest

from medvlp.curate.shards import (
    encode_png,
    iter_shard_samples,
    json_bytes,
    list_shards,
    shard_dir,
    write_shards,
)
from medvlp.data.io import nifti_gz_bytes


def _figure_samples(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        shape = (12, 10) if i % 2 else (12, 10, 3)
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        meta = {"id": f"F{i}", "caption": f"caption {i} – µ", "concepts": [{"concept_id": "MC001",
                                                                          "start_char": 0, "end_char": 7}]}
        out.append({"__key__": f"F{i}", "image": image, "meta": meta})
    return out


def _encoded(samples: list[dict]) -> list[dict]:
    return [{"__key__": s["__key__"], "png": encode_png(s["image"]), "json": json_bytes(s["meta"])}
            for s in samples]


def test_figure_shards_round_trip(tmp_path):
    samples = _figure_samples(5)
    folder = shard_dir(tmp_path, "figures")
    paths = write_shards(iter(_encoded(samples)), folder, "train", max_samples=2)
    assert [p.name for p in paths] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert list_shards(tmp_path, "figures", "train") == paths
    got = list(iter_shard_samples(paths))
    assert [g["__key__"] for g in got] == [s["__key__"] for s in samples]
    for g, s in zip(got, samples):
        np.testing.assert_array_equal(g["image"], s["image"])
        assert g["meta"] == s["meta"]
        assert g["__shard__"] in {str(p) for p in paths}


def test_ct_shards_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    affine = np.diag([1.5, 1.5, 4.0, 1.0])
    volumes = [rng.integers(-1000, 1000, size=(6, 5, 4)).astype(np.float32) for _ in range(3)]
    segs = [rng.integers(0, 5, size=(6, 5, 4)).astype(np.uint8) for _ in range(3)]
    samples = [{"__key__": f"CT{i}", "nii.gz": nifti_gz_bytes(v, affine),
                "seg.nii.gz": nifti_gz_bytes(s, affine),
                "json": json_bytes({"id": f"CT{i}", "is_normal": [{"anatomy": "lung", "normal": True}]})}
               for i, (v, s) in enumerate(zip(volumes, segs))]
    paths = write_shards(samples, tmp_path / "ct", "test", max_samples=1000)
    got = list(iter_shard_samples(paths))
    assert [g["__key__"] for g in got] == ["CT0", "CT1", "CT2"]
    for g, v, s in zip(got, volumes, segs):
        assert g["volume"].dtype == np.float32
        np.testing.assert_array_equal(g["volume"], v)
        np.testing.assert_array_equal(g["segmentation"], s)
        np.testing.assert_allclose(g["affine"], affine)
        assert g["meta"]["is_normal"] == [{"anatomy": "lung", "normal": True}]


def test_shards_are_byte_reproducible_with_fixed_member_order(tmp_path):
    a = write_shards(_encoded(_figure_samples(3)), tmp_path / "a", "val", max_samples=10)
    b = write_shards(_encoded(_figure_samples(3)), tmp_path / "b", "val", max_samples=10)
    assert a[0].read_bytes() == b[0].read_bytes()
    with tarfile.open(a[0]) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["F0.json", "F0.png", "F1.json", "F1.png", "F2.json", "F2.png"]
    assert {m.mtime for m in members} == {0} and {m.uid for m in members} == {0}


def test_shards_read_by_webdataset(tmp_path):
    wds = pytest.importorskip("webdataset")
    paths = write_shards(_encoded(_figure_samples(4)), tmp_path, "train", max_samples=3)
    ds = wds.WebDataset([str(p) for p in paths], shardshuffle=False)
    got = [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in ds]
    assert got == [(f"F{i}", ["json", "png"]) for i in range(4)]


def test_no_samples_no_shards_and_bad_keys_rejected(tmp_path):
    assert write_shards([], tmp_path, "val", max_samples=5) == []
    assert list_shards(tmp_path, "figures", "val") == []
    with pytest.raises(ValueError, match="must be non-empty without"):
        write_shards([{"__key__": "a.b", "json": b"{}"}], tmp_path, "x", max_samples=5)
    with pytest.raises(ValueError, match="max_samples must be >= 1"):
        write_shards([], tmp_path, "x", max_samples=0)
