"""medvlp.explain.heatmaps: patch-text similarity maps, fVLM anatomy attention, and their plots."""

import pytest
import torch
import torch.nn.functional as F
from test_train_fixtures import TINY_CLIP, TINY_VIT3D

from medvlp.eval.prompts import concept_prompt
from medvlp.explain.heatmaps import (
    anatomy_attention_maps,
    concept_heatmaps,
    concept_scores,
    prompt_text_embeddings,
    upsample_heatmaps,
)
from medvlp.explain.plots import plot_anatomy_attention, plot_heatmap_grid
from medvlp.losses.concept_alignment import patch_concept_max_logits
from medvlp.models import AnatomyAttentionPool, anatomy_token_masks, build_model, tokenize_with_concepts

CONCEPTS = ["pleural effusion", "cardiomegaly", "lung nodule"]
MODALITIES = ["chest X-ray", "CT scan", "chest X-ray", None]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return build_model("clip", clip_model=TINY_CLIP)


@pytest.fixture(scope="module")
def conceptclip():
    torch.manual_seed(1)
    return build_model("conceptclip", clip_model=TINY_CLIP)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(2)
    return torch.randn(4, 3, 32, 32)


def _png(path):
    return path.is_file() and path.stat().st_size > 100 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- prompts ----------------------------------------------------------------------------------------

def test_concept_prompt_text_and_span():
    text, (s, e) = concept_prompt("pleural effusion", "chest X-ray")
    assert text == "This is chest X-ray of pleural effusion." and text[s:e] == "pleural effusion"
    text, (s, e) = concept_prompt("cardiomegaly", None)
    assert text == "This is cardiomegaly." and text[s:e] == "cardiomegaly"
    with pytest.raises(ValueError, match="concept_name"):
        concept_prompt(" ", "CT scan")


# ---- 2D maps ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["clip", "conceptclip"])
def test_map_shapes_and_helpers(name, request, images):
    model = request.getfixturevalue(name)
    maps = concept_heatmaps(model, images, CONCEPTS, MODALITIES, batch_size=3)
    assert maps.shape == (4, 3, 4, 4) and maps.dtype == torch.float32 and not maps.requires_grad
    assert maps.abs().max() <= 1 + 1e-5  # cosine similarities
    assert upsample_heatmaps(maps, (128, 96)).shape == (4, 3, 128, 96)
    assert torch.equal(concept_scores(maps), maps.flatten(2).max(-1).values)
    assert torch.allclose(concept_heatmaps(model, images, CONCEPTS, MODALITIES, batch_size=1), maps, atol=1e-6)


def test_upsample_is_bilinear_without_corner_alignment():
    maps = torch.tensor([[[[0.0, 1.0]]]])
    up = upsample_heatmaps(maps, (1, 4))
    assert torch.allclose(up[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))


def test_clip_map_is_projected_patch_tokens_against_the_prompt_embedding(clip, images):
    maps = concept_heatmaps(clip, images, CONCEPTS, MODALITIES)
    with torch.no_grad():
        tokens = clip.encode_image(images[1:2]).patch_tokens[0]  # [P, Wv]
        patches = F.normalize(tokens @ clip.image.tower.proj, dim=-1)
        text = clip.encode_text(clip.tokenize(["This is CT scan of cardiomegaly."])).embedding[0]
    expected = patches @ text  # [P]
    assert torch.allclose(maps[1, 1].flatten(), expected, atol=1e-5)
    assert torch.allclose(concept_scores(maps)[1, 1], expected.max(), atol=1e-5)


def _independent_concept_embeddings(model, modality):
    prompts = [f"This is {modality} of {c}." if modality else f"This is {c}." for c in CONCEPTS]
    spans = [[(p.index(c), p.index(c) + len(c))] for p, c in zip(prompts, CONCEPTS)]
    tok = tokenize_with_concepts(model.tokenizer, prompts, spans, model.context_length)
    states = model.encode_text(tok.ids).token_states
    return model.concept_embeddings(states, tok.spans, tok.owner)  # [K, E]


def test_conceptclip_scores_are_pc_align_max_logits(conceptclip, images):
    maps = concept_heatmaps(conceptclip, images, CONCEPTS, MODALITIES)
    scores = concept_scores(maps)
    with torch.no_grad():
        patch_emb = conceptclip.patch_concept_embeddings(conceptclip.encode_image(images).patch_tokens)
        for modality in set(MODALITIES):
            rows = [i for i, m in enumerate(MODALITIES) if m == modality]
            expected = patch_concept_max_logits(patch_emb[rows], _independent_concept_embeddings(conceptclip, modality),
                                                1.0, chunk_size=None)
            assert torch.allclose(scores[rows], expected, atol=1e-5), modality


def test_concept_embeddings_follow_each_images_modality(conceptclip, images):
    text = prompt_text_embeddings(conceptclip, CONCEPTS, ["chest X-ray", "CT scan"])
    assert text.shape == (2, 3, 32)
    assert not torch.allclose(text[0], text[1], atol=1e-3)  # the causal text tower sees the modality first
    same = images[:1].expand(3, -1, -1, -1)
    maps = concept_heatmaps(conceptclip, same, CONCEPTS, ["chest X-ray", "CT scan", "chest X-ray"])
    assert torch.allclose(maps[0], maps[2], atol=1e-6)
    assert not torch.allclose(maps[0], maps[1], atol=1e-4)


def test_model_modes_are_restored(conceptclip, images):
    conceptclip.train()
    conceptclip.text.eval()
    before = [m.training for m in conceptclip.modules()]
    concept_heatmaps(conceptclip, images, CONCEPTS, MODALITIES)
    assert [m.training for m in conceptclip.modules()] == before
    conceptclip.eval()


def test_bad_arguments_are_named(clip, conceptclip, images):
    with pytest.raises(ValueError, match="modality_names"):
        concept_heatmaps(clip, images, CONCEPTS, ["CT scan"])
    with pytest.raises(ValueError, match="use_concept_heads"):
        concept_heatmaps(clip, images, CONCEPTS, use_concept_heads=True)
    with pytest.raises(ValueError, match="context length"):
        concept_heatmaps(conceptclip, images, [" ".join(["effusion"] * 30)])


# ---- fVLM anatomy attention -------------------------------------------------------------------------

def _pool_inputs(heads):
    torch.manual_seed(3)
    pool = AnatomyAttentionPool(num_anatomies=3, width=16, embed_dim=8, heads=heads).eval()
    tokens = torch.randn(2, 12, 16)
    mask = torch.zeros(2, 3, 12, dtype=torch.bool)
    mask[:, 0, 2:5] = True
    mask[:, 1, 4:10] = True
    mask[0, 2, 11] = True  # anatomy 2 absent in sample 1
    return pool, tokens, mask


def test_attention_weights_live_on_each_anatomys_tokens():
    pool, tokens, mask = _pool_inputs(heads=4)
    with torch.no_grad():
        w = pool.attention_weights(tokens, mask)
    present = mask.any(-1)
    assert w.shape == (2, 3, 12)
    assert torch.allclose(w.sum(-1)[present], torch.ones(int(present.sum())), atol=1e-6)
    assert torch.equal(w[~mask], torch.zeros(int((~mask).sum())))
    assert torch.equal(w[1, 2], torch.zeros(12))
    assert (w[mask] > 0).all()


def test_attention_weights_ignore_tokens_outside_the_anatomy():
    pool, tokens, mask = _pool_inputs(heads=4)
    perturbed = tokens.clone()
    perturbed[~mask[:, 0]] += 5 * torch.randn_like(perturbed[~mask[:, 0]])
    with torch.no_grad():
        w, w2 = pool.attention_weights(tokens, mask), pool.attention_weights(perturbed, mask)
    assert torch.allclose(w[:, 0], w2[:, 0], atol=1e-6)
    assert not torch.allclose(w[:, 1], w2[:, 1], atol=1e-3)


def test_attention_weights_are_the_per_head_softmax_of_forward():
    pool, tokens, mask = _pool_inputs(heads=4)
    width, heads = 16, 4
    wq, wk, _ = pool.attn.in_proj_weight.split(width)
    bq, bk, _ = pool.attn.in_proj_bias.split(width)
    with torch.no_grad():
        q = (pool.queries @ wq.T + bq).view(3, heads, 4).transpose(0, 1)  # [H, A, hd]
        k = (tokens @ wk.T + bk).view(2, 12, heads, 4).permute(0, 2, 1, 3)  # [B, H, T, hd]
        logits = torch.einsum("had,bhtd->bhat", q, k) / 2.0
        manual = logits.masked_fill(~mask[:, None], float("-inf")).softmax(-1).mean(1)  # [B, A, T]
        w = pool.attention_weights(tokens, mask)
    present = mask.any(-1)
    assert torch.allclose(w[present], manual[present], atol=1e-6)


def test_single_head_weights_reproduce_the_pooled_embedding():
    pool, tokens, mask = _pool_inputs(heads=1)
    _, _, wv = pool.attn.in_proj_weight.split(16)
    _, _, bv = pool.attn.in_proj_bias.split(16)
    with torch.no_grad():
        w = pool.attention_weights(tokens, mask)
        pooled = pool.attn.out_proj(w @ (tokens @ wv.T + bv))  # [B, A, W]
        emb = torch.einsum("baw,awe->bae", pooled, pool.proj_weight) + pool.proj_bias
        expected = F.normalize(emb, dim=-1) * mask.any(-1, keepdim=True)
        assert torch.allclose(pool(tokens, mask), expected, atol=1e-5)


@pytest.fixture(scope="module")
def fvlm():
    torch.manual_seed(4)
    return build_model("fvlm", clip_model=TINY_CLIP, vit3d=TINY_VIT3D, pool_heads=2)


def _study():
    torch.manual_seed(5)
    volume = torch.randn(2, 1, 32, 32, 16)
    label_map = torch.zeros(2, 32, 32, 16, dtype=torch.long)
    label_map[:, 4:12, 4:20, 2:10] = 1
    label_map[0, 18:30, 10:14, 9:15] = 2
    return volume, label_map


def test_fvlm_anatomy_attention_grid_and_voxel_maps(fvlm):
    volume, label_map = _study()
    with torch.no_grad():
        att = fvlm.anatomy_attention(volume, label_map)
    a = fvlm.num_anatomies
    assert att.shape == (2, a, 2, 4, 4, 2)
    token_mask = anatomy_token_masks(label_map, fvlm.volume.patch_size, fvlm.anatomy_labels).token_mask
    on_grid = token_mask.view(2, a, 1, 4, 4, 2).expand_as(att)
    assert torch.equal(att[~on_grid], torch.zeros(int((~on_grid).sum())))
    sums = att.flatten(2).sum(-1)
    assert torch.allclose(sums[0, :2], torch.ones(2), atol=1e-6) and torch.allclose(sums[1, 0], torch.tensor(1.0))
    assert torch.equal(sums[1, 1:], torch.zeros(a - 1))

    fvlm.train()
    maps = anatomy_attention_maps(fvlm, volume, label_map)
    assert fvlm.training and all(m.training for m in fvlm.modules())
    fvlm.eval()
    assert maps.shape == (2, a, 32, 32, 16)
    coarse = F.interpolate(att.mean(2), size=(32, 32, 16), mode="trilinear", align_corners=False)
    assert torch.allclose(maps, coarse, atol=1e-6)


# ---- plots ------------------------------------------------------------------------------------------

def test_plot_heatmap_grid_writes_png(tmp_path, clip, conceptclip, images):
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 8:20, 10:22] = True
    heat = {name: upsample_heatmaps(concept_heatmaps(m, images[:2], CONCEPTS[:1]), (32, 32))[:, 0]
            for name, m in (("clip", clip), ("conceptclip", conceptclip))}
    rgb = (torch.rand(2, 32, 32, 3) * 255).to(torch.uint8).numpy()
    path = plot_heatmap_grid(rgb, masks.numpy(), heat, ["a", "b"], tmp_path / "grid.png")
    assert _png(path)
    with pytest.raises(ValueError, match="heatmaps"):
        plot_heatmap_grid(rgb, masks.numpy(), {"x": heat["clip"][:, :16]}, None, tmp_path / "bad.png")


def test_plot_anatomy_attention_writes_png(tmp_path, fvlm):
    volume, label_map = _study()
    maps = anatomy_attention_maps(fvlm, volume, label_map)[0]
    names = [f"anatomy {i}" for i in range(fvlm.num_anatomies)]
    path = plot_anatomy_attention(volume[0, 0], label_map[0], maps, names, [4, 10], tmp_path / "att.png",
                                  anatomy_labels=fvlm.anatomy_labels)
    assert _png(path)
