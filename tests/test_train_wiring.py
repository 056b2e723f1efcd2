"""The training glue (medvlp.train.steps / loop / config) against direct calls of the losses on model outputs.

Tiny real models and hand-built batches: each step function's terms equal ``medvlp.losses`` applied to what
the model's encoders return; the logged total is the recipe's combination of its terms (ConceptCLIP's second
stage: IT-Align + 0.5 x PC-Align); a stage's frozen parts; fVLM's calibration switch; ``init_from``; gradient
accumulation; the validation split.
"""

from __future__ import annotations

import copy
import inspect
import math

import numpy as np
import pytest
import torch
from test_train_fixtures import TINY_CLIP, TINY_VIT3D, tiny_params, write_curated

from medvlp.curate.shards import iter_shard_samples, list_shards
from medvlp.lexicon import load_anatomy_lexicon
from medvlp.losses import anatomy_contrastive_loss, concept_alignment_loss, contrastive_loss, sigmoid_loss
from medvlp.models import build_model, load_medvlp_weights, load_model, save_model, tokenize_with_concepts
from medvlp.train import loop, run_batches
from medvlp.train.config import RECIPES, StageConfig, TrainConfig
from medvlp.train.data import FigureItems, collate
from medvlp.train.determinism import seed_everything
from medvlp.train.loop import freeze_for_stage, optimizer_step, train
from medvlp.train.optim import build_optimizer
from medvlp.train.runlog import read_csv
from medvlp.train.steps import LossModule, anatomy_text_terms, image_text_terms, volume_text_terms
from medvlp.train.transforms import ImageTransform, volume_to_slices

CAPTIONS = [
    ("Chest X-ray showing a pleural effusion.", ["pleural effusion"]),
    ("Fundus photograph with drusen and exudates.", ["drusen", "exudates"]),
    ("Axial CT with ascites.", ["ascites"]),
    ("Radiograph: pleural effusion and cardiomegaly.", ["pleural effusion", "cardiomegaly"]),
    ("Brain MRI without findings.", []),
    ("Dermoscopy of a melanoma.", ["melanoma"]),
]


def stage(task_or_recipe: str, index: int = 0, **overrides) -> StageConfig:
    """A parsed stage: the ``index``-th stage of a recipe, or a bare task."""
    raw = dict(RECIPES[task_or_recipe].stages[index]) if task_or_recipe in RECIPES else {"task": task_or_recipe}
    return StageConfig.parse({**raw, "steps": 1, **overrides}, "test stage")


def calibration_kwargs(calibrate: bool) -> dict:
    """fVLM's calibration switch, in the API of the day (``calibrate`` bool, or ``calibration`` none/normal)."""
    if "calibration" in inspect.signature(anatomy_text_terms).parameters:
        return {"calibration": "normal" if calibrate else "none"}
    return {"calibrate": calibrate}


def is_calibrated(stage_cfg: StageConfig) -> bool:
    value = getattr(stage_cfg, "calibration", None)
    return value != "none" if value is not None else bool(stage_cfg.calibrate)


def caption_batch(model, seed=0) -> dict[str, torch.Tensor]:
    """Images, caption ids and concept spans as FigureItems + collate give them (distinct concepts get
    distinct ids; "pleural effusion" is named by two captions)."""
    rows = list(range(len(CAPTIONS)))
    g = torch.Generator().manual_seed(seed)
    captions = [CAPTIONS[i][0] for i in rows]
    spans = [[(c.index(n), c.index(n) + len(n)) for n in CAPTIONS[i][1]] for i, c in zip(rows, captions)]
    tok = tokenize_with_concepts(model.tokenizer, captions, spans, model.context_length)
    names = [CAPTIONS[rows[i]][1][j] for i, j in tok.source.tolist()]
    ids = {n: k for k, n in enumerate(sorted(set(names)))}
    return {"image": torch.randn(len(rows), 3, 32, 32, generator=g), "ids": tok.ids, "concept_spans": tok.spans,
            "concept_owner": tok.owner, "concept_ids": torch.tensor([ids[n] for n in names])}


@pytest.fixture(scope="module")
def conceptclip():
    torch.manual_seed(0)
    model = build_model("conceptclip", clip_model=TINY_CLIP)
    with torch.no_grad():  # away from the init so that scale and bias matter
        model.logit_scale.fill_(math.log(8.0))
        model.logit_bias.fill_(-2.0)
        model.concept_logit_scale.fill_(math.log(5.0))
        model.concept_logit_bias.fill_(-1.0)
    return model


def reference_image_text(model, batch, loss: str, concept_ids=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(IT-Align, PC-Align) from the encoders' outputs and the loss functions, materialised (chunk_size=None)."""
    image = model.encode_image(batch["image"])
    text = model.encode_text(batch["ids"])
    if loss == "contrastive":
        it = contrastive_loss(image.embedding, text.embedding, model.logit_scale_exp(), chunk_size=None)
    else:
        it = sigmoid_loss(image.embedding, text.embedding, model.logit_scale_exp(), model.logit_bias, chunk_size=None)
    patches = model.patch_concept_embeddings(image.patch_tokens)
    concepts = model.concept_embeddings(text.token_states, batch["concept_spans"], batch["concept_owner"])
    pc = concept_alignment_loss(patches, concepts, batch["concept_owner"], model.concept_logit_scale_exp(),
                                model.concept_logit_bias, concept_ids=concept_ids, chunk_size=None)
    return it, pc


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    return bool(torch.allclose(a.detach(), b.detach(), rtol=rtol, atol=1e-6))


# ------------------------------------------------------------------------------------------- image_text


@pytest.mark.parametrize("loss", ["contrastive", "sigmoid"])
@pytest.mark.parametrize("weight", [0.0, 0.5, 0.25])
def test_image_text_terms_equal_the_losses_on_the_model_outputs(conceptclip, loss, weight):
    model = conceptclip.train()
    batch = {k: v for k, v in caption_batch(model).items() if k != "concept_ids"}  # owner-only positives
    terms = image_text_terms(model, batch, loss=loss, pc_align_weight=weight)
    it, pc = reference_image_text(model, batch, loss)
    assert close(terms["it_align"], it)
    if weight == 0:
        assert "pc_align" not in terms and close(terms["loss"], it)
        return
    assert close(terms["pc_align"], pc) and abs(pc.item()) > 0.1
    want = it + weight * pc
    assert close(terms["loss"], want)
    # ``loss`` carries the gradient of that combination, to every part it involves
    params = [p for p in model.parameters() if p.requires_grad]
    got_g = torch.autograd.grad(terms["loss"], params, allow_unused=True)
    want_g = torch.autograd.grad(want, params, allow_unused=True)
    for a, b in zip(got_g, want_g):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert got_g[[i for i, p in enumerate(params) if p is model.concept_logit_bias][0]] is not None


@pytest.mark.skipif("positives" not in inspect.signature(image_text_terms).parameters,
                    reason="no PC-Align 'positives' switch in this version")
def test_pc_align_positives_by_concept_identity(conceptclip):
    model = conceptclip.train()
    batch = caption_batch(model)
    terms = image_text_terms(model, batch, loss="sigmoid", pc_align_weight=0.5, positives="concept")
    _, pc = reference_image_text(model, batch, "sigmoid", concept_ids=batch["concept_ids"])
    _, owner_only = reference_image_text(model, batch, "sigmoid")
    assert close(terms["pc_align"], pc) and not close(pc, owner_only)


def test_conceptclip_recipe_logs_it_plus_half_pc(conceptclip):
    """The recipe's weights (0 then 0.5), and the total that one optimiser step logs in each stage."""
    first, second = (s.get("pc_align_weight", 0.0) for s in RECIPES["conceptclip"].stages)
    assert (first, second) == (0.0, 0.5)
    model = copy.deepcopy(conceptclip)
    batch = {k: v for k, v in caption_batch(model).items() if k != "concept_ids"}
    for index, weight in ((0, first), (1, second)):
        cfg = stage("conceptclip", index)
        assert cfg.pc_align_weight == weight and cfg.loss == "sigmoid"
        module = LossModule(model)
        module.set_stage(cfg)
        freeze_for_stage(model, cfg)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(trainable, lr=0.0)
        with torch.no_grad():
            it, pc = reference_image_text(model, batch, "sigmoid")
        logged, _, _ = optimizer_step(module, iter([batch]), optimizer, _constant(optimizer), _no_scaler(), trainable)
        assert logged["it_align"].item() == pytest.approx(it.item(), rel=1e-5)
        if weight == 0:
            assert "pc_align" not in logged and logged["loss"].item() == pytest.approx(it.item(), rel=1e-5)
        else:
            assert logged["pc_align"].item() == pytest.approx(pc.item(), rel=1e-5)
            assert logged["loss"].item() == pytest.approx(it.item() + 0.5 * pc.item(), rel=1e-5)
            assert logged["loss"].item() - it.item() > 0.1  # PC-Align adds to what is optimised


# ------------------------------------------------------------------------------------------ volume_text


def _volumes(b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 32, 32, 16, generator=g)


@pytest.mark.parametrize("name", ["ct_clip_global", "radclip"])
def test_volume_text_terms_equal_the_contrastive_loss(name):
    torch.manual_seed(2)
    if name == "radclip":
        model = build_model("radclip", clip_model=TINY_CLIP, max_slices=16, slice_heads=2)
    else:
        model = build_model("ct_clip_global", clip_model=TINY_CLIP, volume_tower="vit3d", vit3d=TINY_VIT3D)
    model.train()
    volume = _volumes()
    reports = ["Lung nodule.", "Normal study.", "Liver cyst and gallstone.", "Splenomegaly."]
    batch = {"volume": volume, "report_ids": model.tokenize(reports)}
    for stride in (1, 2):
        terms = volume_text_terms(model, batch, loss="contrastive", slice_stride=stride)
        if name == "radclip":
            slices = volume_to_slices(volume, 32, stride)
            assert slices.shape == (4, math.ceil(16 / stride), 3, 32, 32)
            emb = model.encode_volume(slices).embedding
        else:
            emb = model.encode_volume(volume).embedding
        want = contrastive_loss(emb, model.encode_text(batch["report_ids"]).embedding, model.logit_scale_exp(),
                                chunk_size=None)
        assert close(terms["vt_align"], want) and close(terms["loss"], want)
    # RadCLIP's stride reaches the slices: every other slice gives another volume embedding
    one = volume_text_terms(model, batch, loss="contrastive", slice_stride=1)["loss"]
    two = volume_text_terms(model, batch, loss="contrastive", slice_stride=2)["loss"]
    assert (abs(one.item() - two.item()) > 1e-6) == (name == "radclip")


# ------------------------------------------------------------------------------------------ anatomy_text


@pytest.fixture(scope="module")
def fvlm():
    torch.manual_seed(3)
    model = build_model("fvlm", clip_model=TINY_CLIP, vit3d=TINY_VIT3D, pool_heads=2)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(6.0))
    return model.train()


def anatomy_batch(model, b=6, seed=4) -> dict[str, torch.Tensor]:
    """Every anatomy a box inside the crop except: the lung touches the border in sample 0 (not intact),
    the aorta is absent from sample 1. Normal flags: the heart is normal in samples 0-2 (three normal samples
    of an anatomy that also has abnormal ones, two of them with the same text); identical texts share a text
    group."""
    lexicon = load_anatomy_lexicon()
    rng = np.random.default_rng(seed)
    label_map = torch.zeros(b, 32, 32, 16, dtype=torch.int16)
    texts, normal = [], np.zeros((b, len(lexicon.anatomies)), dtype=bool)
    for i in range(b):
        row = []
        for a_idx, anatomy in enumerate(lexicon.anatomies):
            if not (anatomy.id == "aorta" and i == 1):
                x0, y0, z0 = 2 + 7 * (a_idx % 4) + i % 2, 2 + 9 * (a_idx // 4), 3 + (i + a_idx) % 4
                if anatomy.id == "lung" and i == 0:
                    x0 = 0
                label_map[i, x0:x0 + 5, y0:y0 + 6, z0:z0 + 6] = anatomy.label
            normal[i, a_idx] = (i < 3) if anatomy.id == "heart" else bool(rng.random() < 0.5)
            # normal texts as the curate stage writes them: the normal sentence, then the anatomy's findings
            # sentences (equal texts make the normal pairs' targets a no-op: their text embeddings coincide)
            row.append(f"{lexicon.normal_text(anatomy.id)} Seen on series {i % 2}." if normal[i, a_idx]
                       else f"{anatomy.name} lesion {i % 3}.")
        texts.append(row)
    groups = {t: k for k, t in enumerate(sorted({t for row in texts for t in row}))}
    return {"volume": _volumes(b, seed), "label_map": label_map,
            "anatomy_ids": torch.stack([model.tokenize(row) for row in texts]), "is_normal": torch.as_tensor(normal),
            "text_group": torch.tensor([[groups[t] for t in row] for row in texts])}


def reference_anatomy_loss(model, batch, calibrate: bool) -> torch.Tensor:
    """Sum over the anatomies with a valid abnormal sample of the per-anatomy loss on its valid samples; each
    text encoded on its own."""
    out = model.encode_volume(batch["volume"], batch["label_map"])
    valid, normal, group = out.valid, batch["is_normal"], batch["text_group"]
    total = torch.zeros(())
    for k in range(valid.shape[1]):
        rows = torch.nonzero(valid[:, k]).flatten()
        if not (~normal[rows, k]).any():
            continue
        images = out.embeddings[rows, k]
        texts = torch.cat([model.encode_text(batch["anatomy_ids"][i, k][None]).embedding for i in rows.tolist()])
        if calibrate:
            total = total + anatomy_contrastive_loss(images, texts, normal[rows, k], group[rows, k],
                                                     model.logit_scale_exp(), chunk_size=None)
        else:
            total = total + contrastive_loss(images, texts, model.logit_scale_exp(), chunk_size=None)
    return total


def test_anatomy_batch_has_what_calibration_needs(fvlm):
    batch = anatomy_batch(fvlm)
    out = fvlm.encode_volume(batch["volume"], batch["label_map"])
    lexicon = load_anatomy_lexicon()
    ids = [a.id for a in lexicon.anatomies]
    heart, lung, aorta = ids.index("heart"), ids.index("lung"), ids.index("aorta")
    assert not out.valid[0, lung] and out.token_mask[0, lung].any()  # present, cut by the border
    assert not out.valid[1, aorta] and not out.token_mask[1, aorta].any()
    assert out.valid[:, heart].all() and int(batch["is_normal"][:, heart].sum()) == 3


@pytest.mark.parametrize("calibrate", [True, False])
def test_anatomy_text_terms_equal_the_per_anatomy_losses(fvlm, calibrate):
    batch = anatomy_batch(fvlm)
    terms = anatomy_text_terms(fvlm, batch, **calibration_kwargs(calibrate))
    want = reference_anatomy_loss(fvlm, batch, calibrate)
    assert close(terms["anatomy_align"], want) and close(terms["loss"], want)


def test_calibration_switch_reaches_the_loss(fvlm):
    batch = anatomy_batch(fvlm)
    calibrated = anatomy_text_terms(fvlm, batch, **calibration_kwargs(True))["loss"]
    plain = anatomy_text_terms(fvlm, batch, **calibration_kwargs(False))["loss"]
    assert abs(calibrated.item() - plain.item()) > 1e-3  # normal pairs of the heart (and shared texts) count
    # the recipes: fvlm calibrates, fvlm_nocal does not; LossModule passes the stage's switch through
    assert is_calibrated(stage("fvlm")) and not is_calibrated(stage("fvlm_nocal"))
    module = LossModule(fvlm)
    module.set_stage(stage("fvlm_nocal"))
    assert close(module(batch)["loss"], reference_anatomy_loss(fvlm, batch, False))
    module.set_stage(stage("anatomy_text", **calibration_kwargs(True)))
    assert close(module(batch)["loss"], reference_anatomy_loss(fvlm, batch, True))


# ------------------------------------------------------------------------------------------- freezing

HEADS = ("image_proj", "text_proj", "concept_logit_scale", "concept_logit_bias")


def _trains(model, attr: str) -> set[bool]:
    target = getattr(model, attr)
    params = [target] if isinstance(target, torch.nn.Parameter) else list(target.parameters())
    return {p.requires_grad for p in params}


def test_concept_heads_frozen_in_stage_1_and_trained_in_stage_2(conceptclip):
    model = copy.deepcopy(conceptclip).train()
    batch = caption_batch(model)
    for index, heads_train in ((0, False), (1, True)):
        cfg = stage("conceptclip", index)
        frozen = freeze_for_stage(model, cfg)
        assert set(HEADS) <= set(frozen) if not heads_train else not set(HEADS) & set(frozen)
        for attr in HEADS:
            assert _trains(model, attr) == {heads_train}, (index, attr)
        for attr in ("image", "text", "logit_scale", "logit_bias"):
            assert _trains(model, attr) == {True}, (index, attr)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        module = LossModule(model)
        module.set_stage(cfg)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(model, lr=1e-2)
        optimizer_step(module, iter([batch]), optimizer, _constant(optimizer), _no_scaler(), trainable)
        after = model.state_dict()
        heads_moved = [k for k in before if k.startswith(HEADS) and not torch.equal(before[k], after[k])]
        assert bool(heads_moved) == heads_train, index
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("image."))


def test_radclip_stages_freeze_what_the_recipe_says():
    torch.manual_seed(5)
    model = build_model("radclip", clip_model=TINY_CLIP, max_slices=16, slice_heads=2)
    first = freeze_for_stage(model, stage("radclip", 0))
    assert {"text", "slice_pool", "volume_proj"} <= set(first)
    assert _trains(model, "text") == {False} and _trains(model, "slice_pool") == {False}
    assert _trains(model, "image") == {True}
    second = freeze_for_stage(model, stage("radclip", 1))
    assert {"text", "image"} <= set(second) and "slice_pool" not in second
    assert _trains(model, "slice_pool") == {True} and _trains(model, "volume_proj") == {True}
    assert _trains(model, "image") == {False} and _trains(model, "text") == {False}


# ------------------------------------------------------------------------------------------ init_from


def _randomised(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize(("source_name", "target_name", "parts"), [
    ("clip", "radclip", ("image", "text")),
    ("conceptclip", "conceptclip", ("text",)),  # not text_proj: a part is a whole module name
    ("clip", "fvlm", ("text",)),
])
def test_load_medvlp_weights_copies_exactly_the_named_parts(tmp_path, source_name, target_name, parts):
    extra = {"radclip": {"max_slices": 16, "slice_heads": 2}, "fvlm": {"vit3d": TINY_VIT3D, "pool_heads": 2}}
    torch.manual_seed(6)
    source = _randomised(build_model(source_name, clip_model=TINY_CLIP), 7)
    path = tmp_path / "source.pt"
    save_model(source, path)
    torch.manual_seed(8)
    target = _randomised(build_model(target_name, clip_model=TINY_CLIP, **extra.get(target_name, {})), 9)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    src = source.state_dict()
    copied = load_medvlp_weights(target, path, parts)
    after = target.state_dict()
    expected = sorted(k for k in before if k.split(".")[0] in parts and k in src)
    assert copied == expected and expected
    for k in before:
        want = src[k] if k in expected else before[k]
        assert torch.equal(after[k], want), k
    # what was not named differs from the source where both models have it (the check has teeth)
    shared_other = [k for k in before if k in src and k not in expected]
    assert shared_other and all(not torch.equal(after[k], src[k]) for k in shared_other)


def test_trainer_init_from_copies_the_configured_parts(tmp_path):
    curated = write_curated(tmp_path / "curated", n_figures=(8, 4), n_studies=(4, 2))
    torch.manual_seed(10)
    source = _randomised(build_model("clip", clip_model=TINY_CLIP), 11)
    save_model(source, tmp_path / "clip.pt")
    params = tiny_params("radclip", curated, init_from={"path": str(tmp_path / "clip.pt"), "parts": ["image"]})
    cfg = TrainConfig.from_params(params)
    trainer = loop.Trainer(cfg, out_dir=tmp_path / "run", progress=False)
    try:
        got = trainer.model.state_dict()
    finally:
        trainer.close()
    seed_everything(cfg.seed)
    fresh = build_model(cfg.preset, **cfg.architecture).state_dict()
    src = source.state_dict()
    image = [k for k in got if k.startswith("image.")]
    assert image and all(torch.equal(got[k], src[k]) for k in image)
    others = [k for k in got if not k.startswith("image.")]
    assert all(torch.equal(got[k], fresh[k]) for k in others)
    assert any(not torch.equal(fresh[k], src[k]) for k in others if k.startswith("text."))


# ----------------------------------------------------------------------------------- gradient accumulation


def _constant(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _no_scaler():
    return torch.amp.GradScaler("cpu", enabled=False)


@pytest.mark.parametrize("optimiser", ["sgd", "adamw_clipped"])
def test_grad_accum_2_steps_on_the_mean_of_the_micro_batch_losses(conceptclip, optimiser):
    """Two micro-batches accumulated = one step with the gradient of their mean loss, computed here in one
    backward pass. The tiny ViT tower has no batch statistics (LayerNorm only, no dropout), so each
    micro-batch's forward depends on its own samples only; a BatchNorm tower (medvlp-conv) would make the
    forward depend on how the samples are split. (The contrastive losses themselves are not sums over samples:
    a step on the 6 samples at once is a different step, with more negatives; DDP is what reproduces that,
    see test_train_distributed.py.)"""
    cfg = stage("conceptclip", 1)
    batch = caption_batch(conceptclip)
    a = {k: v[:3] for k, v in batch.items() if k in ("image", "ids")}
    b = {k: v[3:] for k, v in batch.items() if k in ("image", "ids")}
    owner = batch["concept_owner"]
    a.update(concept_spans=batch["concept_spans"][owner < 3], concept_owner=owner[owner < 3])
    b.update(concept_spans=batch["concept_spans"][owner >= 3], concept_owner=owner[owner >= 3] - 3)
    lr, clip_norm = 0.05, (None if optimiser == "sgd" else 0.5)

    def make(model):
        freeze_for_stage(model, cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr) if optimiser == "sgd" else torch.optim.AdamW(params, lr=lr)
        return params, opt

    accumulated = copy.deepcopy(conceptclip).train()
    params, opt = make(accumulated)
    module = LossModule(accumulated)
    module.set_stage(cfg)
    logged, used_lr, grad_norm = optimizer_step(module, iter([a, b]), opt, _constant(opt), _no_scaler(), params,
                                                grad_accum_steps=2, grad_clip_norm=clip_norm)

    reference = copy.deepcopy(conceptclip).train()
    ref_params, ref_opt = make(reference)
    ref_module = LossModule(reference)
    ref_module.set_stage(cfg)
    ta, tb = ref_module(a), ref_module(b)
    mean = (ta["loss"] + tb["loss"]) / 2
    grads = torch.autograd.grad(mean, ref_params, allow_unused=True)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))
    coef = 1.0 if clip_norm is None else min(1.0, clip_norm / (float(norm) + 1e-6))
    assert clip_norm is None or coef < 0.9  # the clipping acts
    for p, g in zip(ref_params, grads):
        p.grad = None if g is None else g * coef
    ref_opt.step()

    assert used_lr == lr
    assert (grad_norm is None) == (clip_norm is None)
    if grad_norm is not None:
        assert float(grad_norm) == pytest.approx(float(norm), rel=1e-4)
    for key in ("loss", "it_align", "pc_align"):
        assert logged[key].item() == pytest.approx((ta[key].item() + tb[key].item()) / 2, rel=1e-5), key
    moved = 0
    for (name, p), q in zip(accumulated.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=2e-6, msg=name)
        moved += not torch.equal(p, conceptclip.state_dict()[name])
    assert moved > 10


# --------------------------------------------------------------------------------------------- validation


def test_validation_reads_the_val_split(tmp_path, monkeypatch):
    curated = write_curated(tmp_path / "curated", n_figures=(12, 8), n_studies=(2, 2))
    seen: list[tuple[str, bool]] = []

    class Recording(FigureItems):
        def __call__(self, sample, rng):
            seen.append((sample["meta"]["id"], rng is None))
            return super().__call__(sample, rng)

    monkeypatch.setattr(run_batches, "FigureItems", Recording)
    result = train(tiny_params("clip", curated, steps=1, val_max_samples=8), out_dir=tmp_path / "run",
                   progress=False)
    val_ids = [s["__key__"] for s in iter_shard_samples(list_shards(curated, "figures", "val"))]
    assert val_ids == [f"Fval{i:04d}" for i in range(8)]
    evaluated = [fid for fid, no_augment in seen if no_augment]
    trained = [fid for fid, no_augment in seen if not no_augment]
    assert evaluated == val_ids  # the whole val split, in shard order, without augmentation
    assert trained and all(fid.startswith("Ftrain") for fid in trained)

    # the logged validation loss is the mean loss of the two val batches under the final weights
    model = load_model(result.last_checkpoint).eval()
    module = LossModule(model)
    module.set_stage(stage("clip"))
    items = FigureItems(ImageTransform(32), model.config["clip_model"]["text_cfg"])
    samples = list(iter_shard_samples(list_shards(curated, "figures", "val")))
    with torch.no_grad():
        losses = [module(collate([items(s, None) for s in samples[i:i + 4]]))["loss"].item() for i in (0, 4)]
    rows = read_csv(result.val_log)
    assert len(rows) == 1 and int(rows[0]["val_samples"]) == 8
    assert float(rows[0]["val_loss"]) == pytest.approx(np.mean(losses), rel=1e-5)
