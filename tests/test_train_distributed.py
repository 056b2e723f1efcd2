"""Two gloo processes under torchrun train like one process on the same global batch.

Covered: ConceptCLIP (two 2D stages, PC-Align across ranks; with open_clip's text tower and with a Hugging Face
BERT tower), fVLM (its recipe's calibrations with the EMA text teacher, per-anatomy losses across ranks, on the
conv3d tower with GroupNorm and on the 3D ViT) and RadCLIP (2D stage, then slice pooling on CT volumes), two of
them with ``grad_accum_steps=2`` (each micro-batch gathers over the ranks: two ranks x 2 samples x 2
micro-batches = one process x 4 samples x 2). No tower here has batch statistics (ViTs: LayerNorm; the conv3d
tower with ``norm: group``), so the split of a micro-batch over the ranks changes nothing but the floating-point
order."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from test_train_fixtures import TINY_CLIP, TINY_CONV3D, tiny_params, write_curated, write_text_encoder

from medvlp.train import TrainConfig, train
from medvlp.train.runlog import read_csv

pytestmark = pytest.mark.distributed

TIMING = ("step", "stage", "samples_per_s", "elapsed_s", "grad_norm")
# fVLM on the conv3d tower (the one params.yaml trains) with GroupNorm: BatchNorm's statistics would depend on
# how a micro-batch is split over the ranks
FVLM_CONV3D = {"clip_model": TINY_CLIP, "volume_tower": "conv3d", "conv3d": {**TINY_CONV3D, "norm": "group"},
               "pool_heads": 2}
HF_TEXT = "hf-text"  # placeholder replaced by the tiny BERT folder of the module fixture
CASES = [
    pytest.param("conceptclip", {}, ("it_align", "pc_align"), id="conceptclip"),
    pytest.param("conceptclip", {"architecture": {"clip_model": HF_TEXT, "text_pool": "mean"}},
                 ("it_align", "pc_align"), id="conceptclip-hf-text"),
    pytest.param("fvlm", {"grad_accum_steps": 2, "architecture": FVLM_CONV3D}, ("anatomy_align",),
                 id="fvlm-conv3d-accum2"),
    pytest.param("radclip", {"grad_accum_steps": 2}, ("vt_align",), id="radclip-accum2"),
    pytest.param("fvlm", {}, ("anatomy_align",), id="fvlm-vit3d"),
]


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    return write_curated(tmp_path_factory.mktemp("curated"))


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    return write_text_encoder(tmp_path_factory.mktemp("text_encoder"))


def with_text_encoder(extra: dict, folder) -> dict:
    """``extra`` with the HF_TEXT placeholder replaced by a CLIP config whose text tower is the tiny BERT."""
    arch = extra.get("architecture") or {}
    if arch.get("clip_model") != HF_TEXT:
        return extra
    clip = {**TINY_CLIP, "text_cfg": {"hf_model_name": str(folder), "context_length": 24, "hf_proj_type": "linear"}}
    return {**extra, "architecture": {**arch, "clip_model": clip}}


@pytest.mark.parametrize(("model", "extra", "terms"), CASES)
def test_two_process_torchrun_matches_one_process(tmp_path, repo_root, curated, text_encoder, model, extra, terms):
    common = tiny_params(model, curated, steps=2, global_batch_size=8, **with_text_encoder(extra, text_encoder))
    common.pop("model")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"pretrain": {"common": common, "models": {model: {}}}}))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medvlp.train", "--params", str(params_file), "--model", model,
           "--out-dir", str(tmp_path / "two"), "--no-progress"]
    # the one-process run trains while the two ranks start up
    with subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            one = train({**common, "model": model}, out_dir=tmp_path / "one", progress=False)
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            proc.kill()
    assert proc.returncode == 0, stderr[-4000:]

    rows_one, rows_two = read_csv(one.train_log), read_csv(tmp_path / "two" / "train_log.csv")
    n_stages = len(TrainConfig.from_params({**common, "model": model}).stages)
    assert len(rows_one) == len(rows_two) == 2 * n_stages
    assert list(rows_one[0]) == list(rows_two[0])
    for r1, r2 in zip(rows_one, rows_two):
        assert (r1["step"], r1["stage"]) == (r2["step"], r2["stage"])
        for key in r1:
            if key in TIMING or not (r1[key] or r2[key]):
                continue
            assert abs(float(r1[key]) - float(r2[key])) <= 1e-5 * max(1.0, abs(float(r1[key]))), \
                (r1["step"], key, r1[key], r2[key])
        assert float(r1["grad_norm"]) == pytest.approx(float(r2["grad_norm"]), rel=1e-5)
    for term in terms:  # the last stage's loss terms ran across both ranks
        assert rows_two[-1][term] != ""
    val_one, val_two = read_csv(one.val_log), read_csv(tmp_path / "two" / "val_log.csv")
    assert len(val_one) == len(val_two) >= n_stages
    assert [float(r["val_loss"]) for r in val_one] == pytest.approx([float(r["val_loss"]) for r in val_two],
                                                                     abs=1e-5)
    w1 = torch.load(one.last_checkpoint, weights_only=True)
    w2 = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert w2["train_state"]["world_size"] == 2 and len(w2["train_state"]["rng"]) == 2
    for key, value in w1["state_dict"].items():
        assert torch.allclose(value, w2["state_dict"][key], atol=1e-5), key
    # only rank 0 prints the summary
    assert stdout.count('"final_losses"') == 1
