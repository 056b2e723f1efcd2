"""A tiny run of every model of the pipeline completes and leaves its checkpoints and logs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_train_fixtures import TWO_STAGES, tiny_params, write_curated

from medvlp.models import load_model
from medvlp.train import KNOWN_MODELS, train
from medvlp.train.runlog import read_csv

TERMS = {
    "clip": ["it_align"], "siglip": ["it_align"], "conceptclip": ["it_align", "pc_align"],
    "ct_clip_global": ["vt_align"], "fvlm": ["anatomy_align"], "fvlm_nocal": ["anatomy_align"],
    "fvlm_normalcal": ["anatomy_align"],
    "radclip": ["it_align", "vt_align"], "radclip_meanpool": ["it_align", "vt_align"],
}


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    return write_curated(tmp_path_factory.mktemp("curated"))


def test_every_pipeline_model_has_a_recipe():
    assert set(KNOWN_MODELS) == set(TERMS)


@pytest.mark.parametrize("model", sorted(TERMS))
def test_tiny_run_writes_checkpoints_and_logs(curated, tmp_path, model):
    result = train(tiny_params(model, curated, steps=2), out_dir=tmp_path, progress=False)
    n_steps = 4 if model in TWO_STAGES else 2
    assert result.steps == n_steps

    rows = read_csv(result.train_log)
    assert [int(r["step"]) for r in rows] == list(range(1, n_steps + 1))
    for term in TERMS[model]:
        assert any(r[term] != "" for r in rows), term
    for r in rows:
        assert math.isfinite(float(r["loss"])) and float(r["lr"]) > 0 and float(r["samples_per_s"]) > 0
    expected = {"loss", TERMS[model][-1]} | ({"it_align"} if model == "conceptclip" else set())
    assert set(result.final_losses) == expected
    assert result.final_val is not None and math.isfinite(result.final_val["loss"])
    assert len(read_csv(result.val_log)) >= 1

    info = json.loads(result.run_info.read_text())
    assert info["status"] == "finished" and info["model"] == model and info["steps_done"] == n_steps
    assert {"torch", "open_clip_torch", "monai", "numpy", "python"} <= set(info["versions"])
    assert info["device"]["type"] == "cpu" and info["precision"] == "fp32" and "sha" in info["git"]
    assert info["params"]["stages"][0]["steps"] == 2

    last = torch.load(result.last_checkpoint, weights_only=True)
    assert last["train_state"]["step"] == n_steps
    rebuilt = load_model(result.last_checkpoint)  # a last.pt is also a plain medvlp model file
    assert all(torch.equal(v, last["state_dict"][k]) for k, v in rebuilt.state_dict().items())
    best = torch.load(result.best_checkpoint, weights_only=True)
    last_stage = len(info["params"]["stages"]) - 1
    val_losses = [float(r["val_loss"]) for r in read_csv(result.val_log) if int(r["stage"]) == last_stage]
    assert "train_state" not in best and best["extra"]["val_loss"] == pytest.approx(min(val_losses))


def test_frozen_parts_stay_unchanged_in_their_stage(curated, tmp_path):
    """RadCLIP's slice-pooling stage with frozen towers trains only the pooling, projection and scale."""
    params = tiny_params("radclip", curated, steps=2)
    params["stages"][1]["freeze"] = ["image", "text"]
    snapshots = {}

    def snapshot(row):  # runs after the end-of-stage checkpoint
        if row["step"] == 2:
            snapshots["stage0"] = torch.load(tmp_path / "last.pt", weights_only=True)["state_dict"]

    result = train(params, out_dir=tmp_path, progress=False, callback=snapshot)
    before, after = snapshots["stage0"], torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    towers = [k for k in before if k.startswith(("image.", "text."))]
    pooling = [k for k in before if k.startswith(("slice_pool.", "volume_proj."))]
    assert towers and pooling
    assert all(torch.equal(before[k], after[k]) for k in towers)
    assert any(not torch.equal(before[k], after[k]) for k in pooling)


@pytest.mark.parametrize("model", ["conceptclip", "fvlm"])
def test_gradient_checkpointing_gives_the_same_training(curated, tmp_path, model):
    """Recomputing the blocks in backward (open_clip towers, MONAI ViT blocks) changes no number."""
    plain = train(tiny_params(model, curated, steps=1), out_dir=tmp_path / "plain", progress=False)
    ckpt = train(tiny_params(model, curated, steps=1, grad_checkpointing=True), out_dir=tmp_path / "ckpt",
                 progress=False)
    a = torch.load(plain.last_checkpoint, weights_only=True)["state_dict"]
    b = torch.load(ckpt.last_checkpoint, weights_only=True)["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert plain.final_losses == pytest.approx(ckpt.final_losses, abs=1e-6)


def test_task_must_fit_the_model(curated):
    from medvlp.train import TrainConfig

    with pytest.raises(ValueError, match="task 'anatomy_text' cannot train a 'dual_encoder' model"):
        TrainConfig.from_params({**tiny_params("clip", curated), "stages": [{"steps": 1, "task": "anatomy_text"}]})
    with pytest.raises(ValueError, match="pc_align_weight needs a model with concept heads"):
        TrainConfig.from_params({**tiny_params("siglip", curated), "stages": [{"steps": 1, "pc_align_weight": 0.5}]})
