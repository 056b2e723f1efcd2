"""3D models: fVLM anatomy pooling, the CT global baseline, RadCLIP slice encoding and pooling."""

import pytest
import torch
import torch.nn.functional as F

from medvlp.models import (
    AnatomyAttentionPool,
    ConvEncoder3D,
    SlicePooling,
    ViT3DEncoder,
    anatomy_token_masks,
    build_model,
    build_volume_tower,
    encode_slices,
    has_volume_tower,
    input_volume_size,
    sinusoidal_positions,
    volume_size,
)
from medvlp.models.configs import resolve_model_config


def _unit(x):
    return torch.allclose(x.norm(dim=-1), torch.ones(x.shape[:-1]), atol=1e-5)


# ---- anatomy masks ----------------------------------------------------------------------------------

def _label_map():
    lab = torch.zeros(2, 16, 16, 8, dtype=torch.long)
    lab[0, 4:6, 4:6, 0:2] = 1  # touches the z = 0 face
    lab[0, 5:9, 8:10, 3:5] = 2  # interior
    lab[1, 8:12, 0:4, 2:6] = 2  # touches y = 0
    lab[1, 1:3, 1:3, 1:3] = 1  # interior
    return lab


def test_anatomy_token_masks_known_layout():
    masks = anatomy_token_masks(_label_map(), (4, 4, 4), labels=[1, 2, 3])
    assert masks.token_mask.shape == (2, 3, 4 * 4 * 2)
    grid = (4, 4, 2)

    def tokens(ix, iy, iz):
        return {(x * grid[1] + y) * grid[2] + z for x in ix for y in iy for z in iz}

    assert set(masks.token_mask[0, 1].nonzero().flatten().tolist()) == tokens([1, 2], [2], [0, 1])
    assert set(masks.token_mask[0, 0].nonzero().flatten().tolist()) == tokens([1], [1], [0])
    assert set(masks.token_mask[1, 0].nonzero().flatten().tolist()) == tokens([0], [0], [0])
    assert not masks.token_mask[:, 2].any()
    assert masks.valid.tolist() == [[False, True, False], [True, False, False]]


def test_token_order_matches_monai_patch_embedding():
    torch.manual_seed(0)
    model = build_model("fvlm").eval()
    lab = torch.zeros(1, 64, 64, 32, dtype=torch.long)
    lab[0, 10:20, 30:34, 12:20] = 4
    masks = anatomy_token_masks(lab, model.volume.patch_size, model.anatomy_labels)
    vol = torch.zeros(1, 1, 64, 64, 32)
    with torch.no_grad():
        base = model.volume.vit.patch_embedding(vol)
        moved = model.volume.vit.patch_embedding(vol + (lab == 4).float().unsqueeze(1))
    changed = (moved - base).abs().sum(-1)[0] > 0
    assert torch.equal(changed, masks.token_mask[0, 3]) and changed.sum() == 2 * 2 * 2


# ---- anatomy attention pooling ----------------------------------------------------------------------

def test_anatomy_pool_ignores_tokens_outside_the_mask():
    torch.manual_seed(1)
    pool = AnatomyAttentionPool(num_anatomies=3, width=16, embed_dim=8, heads=4).eval()
    tokens = torch.randn(2, 12, 16)
    mask = torch.zeros(2, 3, 12, dtype=torch.bool)
    mask[:, 0, 2:5] = True
    mask[:, 1, 4:10] = True
    mask[0, 2, 11] = True  # anatomy 2 absent in sample 1
    with torch.no_grad():
        out = pool(tokens, mask)
        perturbed = tokens.clone()
        perturbed[~mask[:, 0]] += 5 * torch.randn_like(perturbed[~mask[:, 0]])
        out2 = pool(perturbed, mask)
    assert out.shape == (2, 3, 8)
    assert torch.allclose(out[:, 0], out2[:, 0], atol=1e-6)
    assert not torch.allclose(out[:, 1], out2[:, 1], atol=1e-3)  # anatomy 1 shares no tokens 5..9 with 0
    assert _unit(out[0]) and _unit(out[1, :2])
    assert torch.equal(out[1, 2], torch.zeros(8))


def test_anatomy_pool_empty_anatomy_has_no_nan_gradient():
    torch.manual_seed(2)
    pool = AnatomyAttentionPool(num_anatomies=2, width=16, embed_dim=8, heads=2)
    tokens = torch.randn(1, 6, 16, requires_grad=True)
    mask = torch.tensor([[[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]], dtype=torch.bool)
    out = pool(tokens, mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.equal(out[0, 1], torch.zeros(8))
    assert torch.isfinite(tokens.grad).all() and torch.equal(tokens.grad[0, 2:], torch.zeros(4, 16))
    assert all(torch.isfinite(p.grad).all() for p in pool.parameters() if p.grad is not None)


# ---- fVLM and CT global -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def volumes():
    torch.manual_seed(3)
    vol = torch.randn(2, 1, 64, 64, 32)
    lab = torch.zeros(2, 64, 64, 32, dtype=torch.long)
    lab[:, 8:24, 8:24, 8:16] = 1  # lung, interior
    lab[:, 30:40, 30:40, 0:8] = 2  # heart, on the z = 0 border
    lab[0, 40:50, 10:20, 10:20] = 5  # liver in sample 0 only
    return vol, lab


def test_fvlm_outputs(volumes):
    torch.manual_seed(4)
    model = build_model("fvlm").eval()
    vol, lab = volumes
    ids = model.tokenize(["Lung shows no significant abnormalities.", "Cardiomegaly.", "Liver cyst."])
    with torch.no_grad():
        out, text = model(vol, lab, ids)
    assert out.embeddings.shape == (2, 10, 128) and out.token_mask.shape == (2, 10, 8 * 8 * 4)
    expected_valid = torch.zeros(2, 10, dtype=torch.bool)
    expected_valid[:, 0] = True
    expected_valid[0, 4] = True
    assert torch.equal(out.valid, expected_valid)
    present = out.token_mask.any(-1)
    assert _unit(out.embeddings[present])
    assert not out.embeddings[~present].any()
    assert text.embedding.shape == (3, 128) and _unit(text.embedding)


def test_fvlm_uses_every_configured_depth(volumes):
    vol, lab = volumes
    torch.manual_seed(5)
    one = build_model("fvlm", token_depths=[-1])
    two = build_model("fvlm", token_depths=[1, -1])
    assert two.volume(vol).shape == (2, 2, 256, 128)
    two.load_state_dict(one.state_dict())
    with torch.no_grad():
        a = one.encode_volume(vol, lab).embeddings
        b = two.encode_volume(vol, lab).embeddings
        last = one.volume.vit.norm(one.volume.vit(vol)[1][-1])
    assert torch.equal(one.volume(vol)[:, 0], last)
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-4)


def test_ct_global_is_mean_pooled(volumes):
    vol, _ = volumes
    torch.manual_seed(6)
    model = build_model("ct_global").eval()
    with torch.no_grad():
        out = model.encode_volume(vol)
        expected = F.normalize(model.volume_proj(out.parts.mean(1)), dim=-1)
    assert out.embedding.shape == (2, 128) and out.parts.shape == (2, 256, 128)
    assert torch.allclose(out.embedding, expected, atol=1e-6) and _unit(out.embedding)


# ---- the 3D conv volume tower ---------------------------------------------------------------------------

SMALL_CONV3D = {"img_size": [32, 32, 16], "channels": [4, 8], "blocks": 2, "strides": [2, [2, 2, 1]]}


def test_conv3d_grid_and_token_order():
    torch.manual_seed(7)
    tower = ConvEncoder3D(SMALL_CONV3D, token_depths=[0, -1]).eval()
    assert tower.patch_size == (4, 4, 2) and tower.grid_size == (8, 8, 8) and tower.num_tokens == 512
    assert tower.width == 8 and tower.token_depths == [0, 1]
    vol = torch.randn(2, 1, 32, 32, 16)
    maps = []
    hooks = [block.register_forward_hook(lambda m, i, o: maps.append(o.clone())) for block in tower.last]
    with torch.no_grad():
        tokens = tower(vol)
    for h in hooks:
        h.remove()
    assert tokens.shape == (2, 2, 512, 8)
    gx, gy, gz = tower.grid_size
    for depth in (0, 1):
        for ix, iy, iz in [(0, 0, 1), (1, 0, 0), (3, 5, 7), (7, 7, 7)]:
            n = (ix * gy + iy) * gz + iz  # MONAI's patch order, what anatomy_token_masks assumes
            cell = tower.norm(maps[depth][:, :, ix, iy, iz])
            assert torch.allclose(tokens[:, depth, n], cell, atol=1e-6)


@pytest.mark.parametrize("cfg, token_depths, match", [
    ({"chanels": [4]}, [-1], "unknown keys.*chanels"),
    ({"img_size": [30, 32, 16], "channels": [4, 8]}, [-1], "divisible"),
    ({"channels": [4, 8], "strides": [2]}, [-1], "one stride per stage"),
    ({"channels": [4, 8], "blocks": 2}, [2], "token_depths"),
    ({"channels": [4], "norm": "layer"}, [-1], "norm must be"),
])
def test_conv3d_bad_config_names_the_problem(cfg, token_depths, match):
    with pytest.raises(ValueError, match=match):
        ConvEncoder3D(cfg, token_depths)


def test_conv3d_rejects_wrong_volume_size():
    tower = ConvEncoder3D(SMALL_CONV3D)
    with pytest.raises(ValueError, match=r"expected \[B, C, 32, 32, 16\]"):
        tower(torch.zeros(1, 1, 64, 64, 32))


@pytest.mark.parametrize("kind", ["fvlm", "ct_global"])
def test_models_on_the_conv3d_tower_train(kind):
    torch.manual_seed(8)
    model = build_model(kind, volume_tower="conv3d", conv3d=SMALL_CONV3D)
    assert isinstance(model.volume, ConvEncoder3D) and volume_size(model.config) == (32, 32, 16)
    vol = torch.randn(2, 1, 32, 32, 16)
    lab = torch.zeros(2, 32, 32, 16, dtype=torch.long)
    lab[:, 4:12, 4:12, 4:8] = 1
    if kind == "fvlm":
        out = model.encode_volume(vol, lab)
        assert out.valid[:, 0].all() and _unit(out.embeddings[:, 0])
        out.embeddings[:, 0].sum().backward()
    else:
        out = model.encode_volume(vol)
        assert out.parts.shape == (2, 512, 8) and _unit(out.embedding)  # width of the last stage
        out.embedding[:, 0].sum().backward()
    assert model.volume.stem[0][0].weight.grad.abs().sum() > 0


def test_volume_tower_selection_and_old_configs():
    fv = resolve_model_config("fvlm", volume_tower="conv3d", conv3d={"channels": [8, 16, 32]})
    assert fv["conv3d"]["channels"] == [8, 16, 32] and fv["conv3d"]["img_size"] == [64, 64, 32]
    assert volume_size(fv) == (64, 64, 32)
    old = {k: v for k, v in resolve_model_config("fvlm").items() if k not in ("volume_tower", "conv3d")}
    assert isinstance(build_volume_tower(old, [-1]), ViT3DEncoder)  # checkpoints from before the switch
    with pytest.raises(ValueError, match="volume_tower must be"):
        resolve_model_config("fvlm", volume_tower="resnet3d")


def test_input_volume_size_of_every_kind():
    assert input_volume_size(resolve_model_config("fvlm", conv3d={"img_size": [32, 32, 16]},
                                                  volume_tower="conv3d")) == (32, 32, 16)
    assert input_volume_size(resolve_model_config("ct_global")) == (64, 64, 32)
    radclip = resolve_model_config("radclip")  # encodes slices: any size, the default 3D ViT's if unset
    assert not has_volume_tower(radclip) and input_volume_size(radclip) == (64, 64, 32)
    with pytest.raises(ValueError, match="has no 'vit3d' volume tower"):
        volume_size(radclip)


# ---- RadCLIP ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pos", ["learnable", "sinusoidal"])
def test_attention_slice_pooling_ignores_padding(pos):
    torch.manual_seed(7)
    pool = SlicePooling(32, heads=4, layers=2, max_slices=16, pos=pos).eval()
    real = torch.randn(1, 5, 32)
    padded = torch.cat([real, 100 * torch.randn(1, 3, 32)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    with torch.no_grad():
        a = pool(real)
        b = pool(padded, mask)
        c = pool(real.flip(1))
    assert a.shape == (1, 32)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-3)  # slice order matters through the positional encoding


def test_mean_slice_pooling_is_masked_mean():
    x = torch.randn(2, 4, 8)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = SlicePooling(8, pooling="mean")(x, mask)
    assert torch.allclose(out[0], x[0, :2].mean(0)) and torch.allclose(out[1], x[1].mean(0))
    assert list(SlicePooling(8, pooling="mean").parameters()) == []


def test_sinusoidal_positions():
    pe = sinusoidal_positions(4, 6)
    assert pe.shape == (4, 6) and torch.equal(pe[0], torch.tensor([0.0, 1, 0, 1, 0, 1]))
    assert torch.isclose(pe[2, 0], torch.sin(torch.tensor(2.0)))


def test_encode_slices_chunking_and_padding():
    torch.manual_seed(8)
    lin = torch.nn.Linear(3 * 4 * 4, 5)
    calls = []

    def encoder(x):
        calls.append(x.shape[0])
        return lin(x.flatten(1))

    slices = torch.randn(2, 4, 3, 4, 4)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    whole = encode_slices(encoder, slices, mask, chunk=100)
    assert calls == [5]
    calls.clear()
    chunked = encode_slices(encoder, slices, mask, chunk=2)
    assert calls == [2, 2, 1]
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert torch.equal(whole[0, 3], torch.zeros(5)) and torch.equal(whole[1, 2:], torch.zeros(2, 5))
    assert torch.allclose(whole[1, 1], lin(slices[1, 1].flatten()), atol=1e-6)


@pytest.mark.parametrize("preset", ["radclip", "radclip_meanpool"])
def test_radclip_volume_embedding(preset):
    torch.manual_seed(9)
    model = build_model(preset, slice_chunk=3).eval()
    slices = torch.randn(2, 6, 1, 64, 64)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    with torch.no_grad():
        out = model.encode_volume(slices, mask)
        alone = model.encode_volume(slices[1:, :4])
        unchunked = build_model(preset, slice_chunk=64).eval()
        unchunked.load_state_dict(model.state_dict())
        ref = unchunked.encode_volume(slices, mask)
    assert out.embedding.shape == (2, 128) and out.parts.shape == (2, 6, 128) and _unit(out.embedding)
    assert torch.allclose(out.embedding[1], alone.embedding[0], atol=1e-5)
    assert torch.allclose(out.embedding, ref.embedding, atol=1e-5)
    if preset == "radclip_meanpool":
        pooled = out.parts[1, :4].mean(0)
        expected = F.normalize(model.volume_proj(pooled), dim=-1)
        assert torch.allclose(out.embedding[1], expected, atol=1e-6)


def test_radclip_frozen_image_tower_encodes_without_graph():
    model = build_model("radclip", freeze_image=True)
    out = model.encode_volume(torch.randn(1, 3, 1, 64, 64))
    assert not out.parts.requires_grad and out.embedding.requires_grad
    out.embedding.sum().backward()
    assert model.slice_pool.query.grad is not None
