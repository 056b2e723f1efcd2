"""The methods as their papers define them: fVLM's two calibrations (EMA teacher), RadCLIP's fixed temperature,
ConceptCLIP's PC-Align positives and negated mentions, and the intact anatomies of fVLM's zero-shot protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train_fixtures import tiny_params, write_curated

from medvlp.eval.data import intact_anatomies
from medvlp.losses import concept_alignment_loss
from medvlp.losses.anatomy_contrastive import _Targets, anatomy_contrastive_loss
from medvlp.models import build_model, load_medvlp_weights, save_model
from medvlp.train import train
from medvlp.train.data import FigureItems
from medvlp.train.ema import EMATextTower
from medvlp.train.steps import LossModule
from medvlp.train.transforms import ImageTransform


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    return write_curated(tmp_path_factory.mktemp("curated"))


# --------------------------------------------------------------------- fVLM: abnormal false negatives

def _naive_targets(normal, group, teacher, scale, weight, threshold):
    """fVLM's targets in float64 by loops: 1 for i == j, both normal, or equal texts; between two abnormal
    samples otherwise weight * softmax_j(scale * <t~_i, t~_j>) (0 below the threshold); rows normalised."""
    n = len(normal)
    sims = teacher.double() @ teacher.double().T
    soft = torch.softmax(scale * sims, dim=1)
    y = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if i == j or (normal[i] and normal[j]) or group[i] == group[j]:
                y[i, j] = 1.0
            elif not normal[i] and not normal[j] and (threshold is None or sims[i, j] >= threshold):
                y[i, j] = weight * soft[i, j]
    return y / y.sum(1, keepdim=True)


def _hand_made_batch():
    # samples 0, 1 normal; 2, 3, 4 abnormal; 2 and 3 have near-identical teacher texts, 4 is far from both
    teacher = F.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0.1, 0], [0, 1.0, 0], [0, 0.98, 0.2], [0, 0, 1.0]]), dim=1)
    normal = torch.tensor([True, True, False, False, False])
    group = torch.arange(5)
    return teacher, normal, group


@pytest.mark.parametrize(("weight", "threshold"), [(1.0, None), (0.5, 0.9), (2.0, 0.999)])
def test_abnormal_calibration_targets_exactly(weight, threshold):
    teacher, normal, group = _hand_made_batch()
    targets = _Targets(normal, group, normal, group, fn_emb=teacher, all_fn_emb=teacher, fn_scale=1 / 0.07,
                       fn_weight=weight, fn_threshold=threshold)
    got = targets(0, 5, torch.float64)
    want = _naive_targets(normal, group, teacher, 1 / 0.07, weight, threshold)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    similar = float(teacher[2] @ teacher[3])  # 0.98: above 0.9, below 0.999
    assert (got[2, 3] > 0) == (threshold is None or similar >= threshold)
    assert got[2, 4] == 0 if threshold is not None else got[2, 4] > 0  # cos 0 -> below any positive threshold
    assert torch.equal(got[0, 2:], torch.zeros(3, dtype=torch.float64))  # never between normal and abnormal


def test_abnormal_calibration_changes_the_loss_only_through_the_targets():
    teacher, normal, group = _hand_made_batch()
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    z = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    t = torch.tensor(1 / 0.07, dtype=torch.float64)
    got = anatomy_contrastive_loss(x, z, normal, group, t, false_negative_text_emb=teacher.double(),
                                   false_negative_scale=1 / 0.07, false_negative_weight=0.5,
                                   false_negative_threshold=0.9, chunk_size=None)
    y = _naive_targets(normal, group, teacher, 1 / 0.07, 0.5, 0.9)
    want = -0.5 * ((y * F.log_softmax(t * x @ z.T, 1)).sum() + (y * F.log_softmax(t * z @ x.T, 1)).sum()) / 5
    torch.testing.assert_close(got, want)
    plain = anatomy_contrastive_loss(x, z, normal, group, t, chunk_size=None)
    assert abs(float(got - plain)) > 1e-3


def test_ema_teacher_moves_by_the_momentum_and_never_trains():
    model = build_model("clip", clip_model="medvlp-tiny")
    teacher = EMATextTower(model.text, 0.9)
    before = [p.detach().clone() for p in teacher.tower.parameters()]
    with torch.no_grad():
        for p in model.text.parameters():
            p.add_(1.0)
    teacher.update(model.text)
    for old, new, student in zip(before, teacher.tower.parameters(), model.text.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * student)
        assert not new.requires_grad
    teacher.train()
    assert not teacher.tower.training
    with pytest.raises(ValueError, match="momentum"):
        EMATextTower(model.text, 1.0)


def test_calibrations_reach_the_loss_on_the_same_batch(curated):
    """fvlm (both), fvlm_normalcal and fvlm_nocal give different losses on one batch, and 'both' equals the
    loss computed with the teacher's text embeddings by hand."""
    from medvlp.losses import fvlm_loss
    from medvlp.train.config import TrainConfig
    from medvlp.train.data import ShardStream, collate, find_shards, index_shards
    from medvlp.train.loop import Trainer

    cfg = TrainConfig.from_params(tiny_params("fvlm", curated))
    trainer = Trainer(cfg, out_dir=curated / "unused", progress=False)
    try:
        stage = cfg.stages[0]
        paths = find_shards(curated, "ct", "train")
        stream = ShardStream(paths, index_shards(paths), trainer.data.items(stage, trainer.model), micro_batch=8,
                             shuffle=False, augment=False)
        batch = collate([item for _, item in zip(range(8), stream)])
        model = trainer.model.eval()
        with torch.no_grad():
            for p in trainer.teacher.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        losses = {}
        for calibration in ("none", "normal", "both"):
            module = LossModule(model, None, pc_align=None, teacher=trainer.teacher,
                                abnormal_calibration=cfg.abnormal_calibration)
            module.set_stage(type(stage)(**{**vars(stage), "calibration": calibration}))
            with torch.no_grad():
                losses[calibration] = float(module(batch)["loss"])
        assert len({round(v, 6) for v in losses.values()}) == 3, losses
        with torch.no_grad():
            out = model.encode_volume(batch["volume"], batch["label_map"])
            b, a, length = batch["anatomy_ids"].shape
            flat = batch["anatomy_ids"].reshape(b * a, length)
            text = model.encode_text(flat).embedding.reshape(b, a, -1)
            taught = trainer.teacher(flat).reshape(b, a, -1)
            want = fvlm_loss(out.embeddings, text, out.valid, batch["is_normal"], batch["text_group"],
                             model.logit_scale_exp(), calibrate=True, false_negative_text_emb=taught,
                             false_negative_scale=1 / 0.07, chunk_size=None)
        assert math.isclose(losses["both"], float(want), rel_tol=1e-5)
    finally:
        trainer.close()


def test_ema_teacher_is_saved_and_resumed(curated, tmp_path):
    params = tiny_params("fvlm", curated, steps=3, checkpoint_every=1)
    full = train(params, out_dir=tmp_path / "full", progress=False)
    state = torch.load(full.last_checkpoint, weights_only=True)["train_state"]
    student = torch.load(full.last_checkpoint, weights_only=True)["state_dict"]
    teacher = state["teacher"]
    assert teacher and all(k.startswith("tower.") for k in teacher)
    differs = [k for k in teacher if not torch.equal(teacher[k], student["text." + k.removeprefix("tower.")])]
    assert differs  # the teacher lags behind the student (momentum 0.9)
    assert not any(k.startswith("teacher") for k in torch.load(full.best_checkpoint, weights_only=True)["state_dict"])


# --------------------------------------------------------------------- RadCLIP: tau fixed at 0.07

def test_radclip_temperature_stays_fixed_through_training(curated, tmp_path):
    clip = train(tiny_params("clip", curated), out_dir=tmp_path / "clip", progress=False)
    params = tiny_params("radclip", curated, init_from={"path": str(clip.best_checkpoint), "parts": ["image", "text"]})
    result = train(params, out_dir=tmp_path / "radclip", progress=False)
    state = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    assert state["logit_scale"].item() == torch.tensor(math.log(1 / 0.07)).item()  # bit for bit, float32
    model = build_model("radclip", clip_model=params["architecture"]["clip_model"], max_slices=16)
    assert "logit_scale" not in dict(model.named_parameters())
    assert float(model.logit_scale_exp()) == pytest.approx(1 / 0.07)
    with pytest.raises(ValueError, match="fixed temperature"):
        load_medvlp_weights(model, clip.best_checkpoint, ["image", "logit_scale"])


def test_learnable_temperature_is_a_parameter_by_default(tmp_path):
    model = build_model("clip", clip_model="medvlp-tiny")
    assert "logit_scale" in dict(model.named_parameters())
    save_model(model, tmp_path / "m.pt")


# --------------------------------------------------------------------- ConceptCLIP: PC-Align as the official code

def _naive_pc_align(v, c, owner, ids, t, b, positives):
    """-(1/K) sum_ik log sigmoid(y_ik (t max_m <v_im, c_k> + b)) in float64 by loops; y_ik = +1 iff concept k
    belongs to image i: its own caption ('paper') or any caption naming the same concept ('concept')."""
    total = 0.0
    for i in range(v.shape[0]):
        for k in range(c.shape[0]):
            s = t * max(float(v[i, m] @ c[k]) for m in range(v.shape[1])) + b
            mine = ids[owner == i] if positives == "concept" else None
            y = 1.0 if (owner[k] == i if positives == "paper" else int(ids[k]) in set(mine.tolist())) else -1.0
            total += -math.log(1 / (1 + math.exp(-y * s)))
    return total / c.shape[0]


@pytest.mark.parametrize("positives", ["paper", "concept"])
def test_pc_align_positive_modes_equal_naive_references(positives):
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(4, 5, 6, generator=g, dtype=torch.float64), dim=-1)
    c = F.normalize(torch.randn(6, 6, generator=g, dtype=torch.float64), dim=-1)
    owner = torch.tensor([0, 0, 1, 2, 3, 3])
    ids = torch.tensor([7, 8, 7, 9, 8, 5])  # concept 7 in images 0 and 1, concept 8 in images 0 and 3
    got = concept_alignment_loss(v, c, owner, 3.0, -1.0, concept_ids=ids if positives == "concept" else None,
                                 chunk_size=None)
    assert float(got) == pytest.approx(_naive_pc_align(v, c, owner, ids, 3.0, -1.0, positives), rel=1e-12)


def test_loss_module_passes_concept_ids_only_in_concept_mode(monkeypatch):
    import medvlp.train.steps as steps

    seen = {}

    def fake_loss(*args, concept_ids=None, **kwargs):
        seen["ids"] = concept_ids
        return torch.zeros(())

    monkeypatch.setattr(steps, "concept_alignment_loss", fake_loss)
    model = build_model("conceptclip", clip_model="medvlp-tiny")
    ids = model.tokenize(["a lung nodule", "a lung nodule"])
    batch = {"image": torch.rand(2, 3, *model.image.image_size), "ids": ids,
             "concept_spans": torch.tensor([[2, 4], [2, 4]]), "concept_owner": torch.tensor([0, 1]),
             "concept_ids": torch.tensor([5, 5])}
    for positives, expected in (("paper", None), ("concept", [5, 5])):
        steps.image_text_terms(model, batch, loss="sigmoid", pc_align_weight=0.5, positives=positives)
        assert (seen["ids"] is None) if expected is None else seen["ids"].tolist() == expected


@pytest.mark.parametrize(("keep", "expected"), [(True, 2), (False, 1)])
def test_negated_mentions_are_kept_or_dropped(keep, expected):
    caption = "No effusion; a lung nodule."
    meta = {"caption": caption, "concepts": [
        {"concept_id": "C1", "start_char": 3, "end_char": 11, "negated": True},
        {"concept_id": "C2", "start_char": 15, "end_char": 26, "negated": False}]}
    items = FigureItems(ImageTransform(32), {"context_length": 24}, with_concepts=True, keep_negated=keep)
    item = items({"__key__": "F1", "meta": meta, "image": np.zeros((40, 40), np.uint8)}, None)
    assert item["concept_spans"].shape[0] == expected and item["concept_ids"].numel() == expected


# --------------------------------------------------------------------- fVLM zero-shot: intact anatomies

def test_intact_anatomies_need_no_border_contact_and_most_of_the_organ():
    maps = torch.zeros(3, 10, 10, 10, dtype=torch.int16)
    maps[:, 2:5, 2:5, 2:5] = 1  # anatomy 1: inside, 27 voxels
    maps[0, 0:3, 6:8, 6:8] = 2  # anatomy 2 touches the border in study 0
    maps[1, 4:7, 6:8, 6:8] = 2  # inside in study 1
    full = np.array([[27, 12], [30, 12], [27, 0]])  # study 1: 10% of anatomy 1 lies outside the crop
    got = intact_anatomies(maps, [1, 2], full, 0.9)
    assert got.tolist() == [[True, False], [True, True], [True, False]]
    assert intact_anatomies(maps, [1, 2], full, 0.95).tolist() == [[True, False], [False, True], [True, False]]
    with pytest.raises(ValueError, match="intact_min_fraction"):
        intact_anatomies(maps, [1, 2], full, 1.5)


# --------------------------------------------------------------------- a pretrained text tower fine-tunes slower

def test_text_lr_scale_gives_the_text_tower_its_own_learning_rate():
    from medvlp.train.optim import build_optimizer, build_scheduler

    model = build_model("conceptclip", clip_model="medvlp-tiny")
    opt = build_optimizer(model, lr=1e-3, lr_scales={"text": 0.1})
    by_name = {g["name"]: g for g in opt.param_groups}
    assert sorted(by_name) == ["decay", "decay@text", "no_decay", "no_decay@text"]
    text = {id(p) for p in model.text.parameters()}
    for name, group in by_name.items():
        assert all((id(p) in text) == name.endswith("@text") for p in group["params"]), name
        assert group["lr"] == pytest.approx(1e-4 if name.endswith("@text") else 1e-3)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    scheduler = build_scheduler(opt, warmup_steps=4, total_steps=10)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.5e-4, 2.5e-5, 2.5e-4, 2.5e-5])
    opt.step()  # (no gradients: a no-op, in the order torch expects before scheduler.step)
    scheduler.step()
    assert by_name["decay@text"]["lr"] == pytest.approx(0.1 * by_name["decay"]["lr"])
    plain = build_optimizer(model, lr=1e-3, lr_scales={"text": 1.0})
    assert [g["name"] for g in plain.param_groups] == ["decay", "no_decay"]
