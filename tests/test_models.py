"""Model configs, the 2D dual encoder, checkpoints and open_clip weight loading."""

import math
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F

from medvlp.models import (
    build_model,
    get_clip_config,
    load_model,
    load_open_clip_weights,
    read_model_file,
    resolve_model_config,
    save_model,
    span_mean,
)

B = 3


@pytest.fixture(scope="module")
def cclip():
    torch.manual_seed(0)
    return build_model("conceptclip").eval()


@pytest.fixture(scope="module")
def batch(cclip):
    torch.manual_seed(1)
    images = torch.randn(B, 3, 64, 64)
    ids = cclip.tokenize(["a pulmonary nodule.", "no pleural effusion, but cardiomegaly", "normal chest"])
    return images, ids


def _unit(x):
    return torch.allclose(x.norm(dim=-1), torch.ones(x.shape[:-1]), atol=1e-5)


# ---- configs ----------------------------------------------------------------------------------------

def test_presets_resolve():
    cfg = resolve_model_config("conceptclip")
    assert cfg["kind"] == "dual_encoder" and cfg["text_pool"] == "mean" and cfg["concept_heads"]
    assert cfg["clip_model_name"] == "medvlp-tiny" and cfg["clip_model"]["vision_cfg"]["patch_size"] == 8
    assert resolve_model_config("clip")["init_logit_bias"] is None
    assert resolve_model_config("siglip")["init_logit_bias"] == -10.0
    assert resolve_model_config("radclip_meanpool")["slice_pooling"] == "mean"
    # an open_clip model name: config only, no weights
    big = resolve_model_config("clip", clip_model="ViT-B-16")
    assert big["clip_model"]["vision_cfg"]["width"] == 768 and big["clip_model"]["embed_dim"] == 512
    # nested overrides merge key by key
    fv = resolve_model_config("fvlm", vit3d={"num_layers": 2}, token_depths=[0, 1])
    assert fv["vit3d"]["num_layers"] == 2 and fv["vit3d"]["hidden_size"] == 128


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        resolve_model_config("clip", colour="red")
    with pytest.raises(ValueError, match="unknown model preset"):
        resolve_model_config("nope")
    with pytest.raises(ValueError, match="VisionTransformer"):
        get_clip_config("ViT-B-16-SigLIP")
    with pytest.raises(ValueError, match="token_depths"):
        resolve_model_config("fvlm", token_depths=[7])
    with pytest.raises(ValueError, match="text_pool"):
        resolve_model_config("clip", text_pool="max")


def test_optional_parameters_exist_only_when_configured():
    clip = build_model("clip")
    assert clip.logit_bias is None and clip.image_proj is None and clip.concept_logit_scale is None
    names = {n for n, _ in clip.named_parameters()}
    assert "logit_scale" in names
    assert not any(n.startswith(("image_proj", "text_proj", "concept_")) for n in names)
    sig = build_model("siglip")
    assert float(sig.logit_bias.detach()) == -10.0


# ---- dual encoder -----------------------------------------------------------------------------------

def test_dual_encoder_shapes_and_normalisation(cclip, batch):
    images, ids = batch
    with torch.no_grad():
        out = cclip(images, ids)
    assert out.image.embedding.shape == (B, 128) and _unit(out.image.embedding)
    assert out.image.patch_tokens.shape == (B, (64 // 8) ** 2, 128)
    assert out.text.embedding.shape == (B, 128) and _unit(out.text.embedding)
    assert out.text.token_states.shape == (B, 64, 128)
    lengths = [len(cclip.tokenizer.encode(t)) + 2 for t in
               ["a pulmonary nodule.", "no pleural effusion, but cardiomegaly", "normal chest"]]
    assert out.text.attention_mask.sum(1).tolist() == lengths
    # grayscale images are replicated to 3 channels
    with torch.no_grad():
        gray = cclip.encode_image(images[:, :1])
        rgb = cclip.encode_image(images[:, :1].expand(-1, 3, -1, -1))
    assert torch.equal(gray.embedding, rgb.embedding)


def test_patch_tokens_are_trunk_tokens_after_ln_post(cclip, batch):
    images, _ = batch
    tower = cclip.image.tower
    with torch.no_grad():
        tokens = cclip.encode_image(images).patch_tokens
        last = tower.forward_intermediates(images, indices=1, output_fmt="NLC")["image_intermediates"][-1]
    assert last.shape == (B, 64, 128)  # open_clip's own split: class token removed
    assert torch.allclose(tokens, tower.ln_post(last), atol=1e-6)


def test_text_pool_definitions(cclip, batch):
    _, ids = batch
    tower = cclip.text.tower
    with torch.no_grad():
        out = cclip.encode_text(ids)
        m = out.attention_mask.unsqueeze(-1).float()
        mean = (out.token_states * m).sum(1) / m.sum(1)
        expected = F.normalize(mean @ tower.text_projection, dim=-1)
        eot_model = build_model("clip")
        eot_model.load_state_dict(cclip.state_dict(), strict=False)
        eot = eot_model.encode_text(ids).embedding
        eot_pos = ids.argmax(-1)
        expected_eot = F.normalize(out.token_states[torch.arange(B), eot_pos] @ tower.text_projection, dim=-1)
    assert torch.allclose(out.embedding, expected, atol=1e-6)
    assert torch.allclose(eot, expected_eot, atol=1e-6)
    assert not torch.allclose(eot, out.embedding, atol=1e-3)


def test_patch_concept_embeddings(cclip, batch):
    images, _ = batch
    with torch.no_grad():
        tokens = cclip.encode_image(images).patch_tokens
        v = cclip.patch_concept_embeddings(tokens)
    assert v.shape == (B, 64, 128) and _unit(v)
    assert torch.allclose(v, F.normalize(cclip.image_proj(tokens), dim=-1))


def test_concept_embeddings_equal_loop_reference(cclip):
    torch.manual_seed(2)
    states = torch.randn(4, 64, 128)
    spans = torch.tensor([[1, 3], [5, 6], [2, 40], [10, 12], [1, 64], [7, 9]])
    owner = torch.tensor([0, 0, 1, 3, 2, 3])
    with torch.no_grad():
        c = cclip.concept_embeddings(states, spans, owner)
        ref = torch.stack([F.normalize(cclip.text_proj(states[o, s:e]).mean(0), dim=-1)
                           for (s, e), o in zip(spans.tolist(), owner.tolist())])
    assert c.shape == (6, 128) and _unit(c)
    assert torch.allclose(c, ref, atol=1e-5)
    assert cclip.concept_embeddings(states, spans[:0], owner[:0]).shape == (0, 128)
    # span_mean itself, on integers (exact)
    vals = torch.arange(2 * 5 * 1, dtype=torch.float32).view(2, 5, 1)
    got = span_mean(vals, torch.tensor([[0, 2], [1, 5]]), torch.tensor([1, 0]))
    assert got.squeeze(-1).tolist() == [5.5, 2.5]


def test_concept_embeddings_gradients_flow(cclip, batch):
    _, ids = batch
    model = build_model("conceptclip")
    out = model.encode_text(ids)
    c = model.concept_embeddings(out.token_states, torch.tensor([[1, 3]]), torch.tensor([0]))
    c.sum().backward()
    assert model.text_proj.fc1.weight.grad.abs().sum() > 0
    assert model.text.tower.token_embedding.weight.grad.abs().sum() > 0


def test_logit_scales_clamped(cclip):
    assert math.isclose(float(cclip.logit_scale_exp().detach()), 1 / 0.07, rel_tol=1e-5)
    assert float(cclip.concept_logit_bias.detach()) == -10.0
    model = build_model("conceptclip")
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
        model.concept_logit_scale.fill_(math.log(50.0))
    assert float(model.logit_scale_exp().detach()) == 100.0
    assert math.isclose(float(model.concept_logit_scale_exp().detach()), 50.0, rel_tol=1e-5)
    with pytest.raises(AttributeError, match="concept_heads"):
        build_model("clip").concept_logit_scale_exp()


def test_freeze_text():
    model = build_model("radclip", freeze_text=True)
    assert not any(p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.image.parameters())


# ---- checkpoints ------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["conceptclip", "fvlm", "radclip"])
def test_save_load_round_trip(tmp_path, preset):
    torch.manual_seed(3)
    model = build_model(preset).eval()
    path = tmp_path / "sub" / "model.pt"
    save_model(model, path, extra={"step": 7})
    assert sorted(os.listdir(path.parent)) == ["model.pt"]  # no temporary file left behind
    loaded = load_model(path).eval()
    assert read_model_file(path)["extra"] == {"step": 7}
    assert loaded.config == model.config
    ids = model.tokenize(["lung nodule", "normal"])
    with torch.no_grad():
        assert torch.equal(model.encode_text(ids).embedding, loaded.encode_text(ids).embedding)
        if preset == "conceptclip":
            x = torch.randn(2, 3, 64, 64)
            assert torch.equal(model.encode_image(x).embedding, loaded.encode_image(x).embedding)
        elif preset == "fvlm":
            vol, lab = torch.randn(2, 1, 64, 64, 32), torch.randint(0, 11, (2, 64, 64, 32))
            a, b = model.encode_volume(vol, lab), loaded.encode_volume(vol, lab)
            assert torch.equal(a.embeddings, b.embeddings)
        else:
            sl = torch.randn(2, 4, 1, 64, 64)
            assert torch.equal(model.encode_volume(sl).embedding, loaded.encode_volume(sl).embedding)


def test_load_model_rejects_other_files(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a medvlp model file"):
        load_model(path)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def _open_clip_tiny(tmp_path, init_logit_bias=-10.0):
    torch.manual_seed(4)
    cfg = get_clip_config("medvlp-tiny")
    clip = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"],
                                init_logit_bias=init_logit_bias).eval()
    with torch.no_grad():
        clip.logit_scale.fill_(3.0)
    path = tmp_path / "open_clip.pt"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in clip.state_dict().items()}}, path)
    return clip, path


def test_load_open_clip_weights_dual_encoder(tmp_path):
    clip, path = _open_clip_tiny(tmp_path)
    model = build_model("siglip").eval()
    missing, unexpected = load_open_clip_weights(model, path, strict=True)
    assert missing == [] and unexpected == []
    x = torch.randn(2, 3, 64, 64)
    ids = model.tokenize(["a pulmonary nodule", "pleural effusion"])
    with torch.no_grad():
        img, ref_img = model.encode_image(x).embedding, clip.encode_image(x, normalize=True)
        txt, ref_txt = model.encode_text(ids).embedding, clip.encode_text(ids, normalize=True)
    assert torch.allclose(img, ref_img, atol=1e-6) and torch.allclose(txt, ref_txt, atol=1e-6)
    assert float(model.logit_scale.detach()) == 3.0 and float(model.logit_bias.detach()) == -10.0


def test_load_open_clip_weights_partial_and_mismatch(tmp_path):
    clip, path = _open_clip_tiny(tmp_path, init_logit_bias=None)
    cc = build_model("conceptclip")
    missing, unexpected = load_open_clip_weights(cc, path)
    assert missing == ["logit_bias"] and unexpected == []  # PC-Align heads stay as initialised
    fv = build_model("fvlm").eval()
    missing, unexpected = load_open_clip_weights(fv, path)
    assert missing == [] and unexpected and all(k.startswith("visual.") for k in unexpected)
    ids = fv.tokenize(["liver shows no significant abnormalities."])
    with torch.no_grad():
        assert torch.allclose(fv.encode_text(ids).embedding, clip.encode_text(ids, normalize=True), atol=1e-6)
    with pytest.raises(ValueError, match="unexpected"):
        load_open_clip_weights(build_model("fvlm"), path, strict=True)
    wide = build_model("clip", clip_model={**get_clip_config("medvlp-tiny"), "embed_dim": 64})
    with pytest.raises(ValueError, match="has shape"):
        load_open_clip_weights(wide, path)


# ----------------------------------------------------------------------------- conv tower, init_from

def test_conv_tower_keeps_the_image_tower_contract():
    torch.manual_seed(0)
    model = build_model("conceptclip", clip_model="medvlp-conv-tiny").eval()
    assert model.image.grid_size == (8, 8) and model.image.num_patches == 64 and model.image.image_size == (64, 64)
    images = torch.randn(2, 3, 64, 64)
    out = model.encode_image(images)
    assert out.embedding.shape == (2, 128) and out.patch_tokens.shape == (2, 64, model.image.width)
    torch.testing.assert_close(out.embedding.norm(dim=-1), torch.ones(2))
    # the global embedding is the max over the cells of the patch tokens, projected (what heatmaps rely on)
    pooled = out.patch_tokens.amax(dim=1) @ model.image.tower.proj
    torch.testing.assert_close(out.embedding, F.normalize(pooled, dim=-1))
    # a finding in one corner changes the tokens of that corner's cells most
    bumped = images.clone()
    bumped[1, :, :8, :8] += 3.0
    delta = (model.encode_image(bumped).patch_tokens[1] - out.patch_tokens[1]).norm(dim=-1).view(8, 8)
    assert delta.argmax().item() in (0, 1, 8, 9)
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model("clip", clip_model={**get_clip_config("medvlp-conv-tiny"),
                                        "vision_cfg": {"medvlp_conv": True, "image_size": 60}})
    with pytest.raises(ValueError, match="unknown keys"):
        build_model("clip", clip_model={**get_clip_config("medvlp-conv-tiny"),
                                        "vision_cfg": {"medvlp_conv": True, "image_size": 64, "widht": 3}})


def test_load_medvlp_weights_copies_the_named_parts(tmp_path):
    from medvlp.models import load_medvlp_weights

    torch.manual_seed(0)
    clip = build_model("clip", clip_model="medvlp-conv-tiny")
    save_model(clip, tmp_path / "clip.pt")
    torch.manual_seed(1)
    radclip = build_model("radclip", clip_model="medvlp-conv-tiny")
    before = {k: v.clone() for k, v in radclip.state_dict().items()}
    copied = load_medvlp_weights(radclip, tmp_path / "clip.pt", ("image",))
    state = radclip.state_dict()
    assert copied and all(k.startswith("image.") for k in copied)
    assert all(torch.equal(state[k], clip.state_dict()[k]) for k in copied)
    assert all(torch.equal(state[k], before[k]) for k in state if not k.startswith("image."))
    fvlm = build_model("fvlm", clip_model="medvlp-conv-tiny")
    with pytest.raises(ValueError, match="no tensor of parts"):
        load_medvlp_weights(fvlm, tmp_path / "clip.pt", ("image",))
    assert all(k.startswith("text.") for k in load_medvlp_weights(fvlm, tmp_path / "clip.pt", ("text",)))
