"""Converting the official fVLM checkpoint (LAVIS ``BlipPretrain``) into medvlp's FVLM.

``OfficialFVLM`` below re-states the official module tree -- names, shapes and the embedding forward of
``blip_pretrain.py`` / ``vit.py`` / ``med.py`` -- at a tiny size, written from scratch for this test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_train_fixtures import write_text_encoder
from torch import nn
from transformers import BertModel

from medvlp.cli import main
from medvlp.models import build_model, load_model
from medvlp.models.fvlm_convert import (
    convert_fvlm_state_dict,
    fvlm_to_official_state_dict,
    load_fvlm_checkpoint,
)

IMG, PATCH, WIDTH, LAYERS, HEADS = (32, 32, 16), (8, 8, 8), 32, 4, 4
LEVELS = (1, 2)  # raw block outputs (official: 3, 6, 9), then the last block after the final norm
ORGANS, EMBED, CONTEXT = 3, 16, 24


class _Attn(nn.Module):
    """Official ``SABlock``: fused qkv laid out (qkv heads dim), out_proj."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=True)
        self.out_proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) * (WIDTH // HEADS) ** -0.5).softmax(-1)
        return self.out_proj((att @ v).transpose(1, 2).reshape(b, n, WIDTH))


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(WIDTH, 2 * WIDTH), nn.Linear(2 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp, self.norm1, self.attn, self.norm2 = _Mlp(), nn.LayerNorm(WIDTH), _Attn(), nn.LayerNorm(WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embeddings = nn.Conv3d(1, WIDTH, PATCH, PATCH)
        n = math.prod(s // p for s, p in zip(IMG, PATCH))
        self.position_embeddings = nn.Parameter(torch.randn(1, n, WIDTH) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embeddings(x).flatten(2).transpose(1, 2) + self.position_embeddings


class _ViT(nn.Module):
    """Official ``vit.ViT``: returns (normed last output, [raw outputs of LEVELS..., normed last output])."""

    def __init__(self):
        super().__init__()
        self.patch_embedding = _PatchEmbedding()
        self.blocks = nn.ModuleList(_Block() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(WIDTH)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, outs = self.patch_embedding(x), []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in LEVELS:
                outs.append(x)
        x = self.norm(x)
        return x, [*outs, x]


class OfficialFVLM(nn.Module):
    """``BlipPretrain``'s embedding parts under its names; ``text_encoder`` a BERT whose token-type
    embedding is never added (``forward_text`` passes ``token_type_ids=None``), plus the MLM head ``cls``."""

    def __init__(self, bert: BertModel):
        super().__init__()
        self.visual_encoder = _ViT()
        self.text_encoder = bert
        self.text_encoder.cls = nn.ModuleDict({"predictions": nn.Linear(bert.config.hidden_size, 7)})
        self.text_proj = nn.Linear(bert.config.hidden_size, EMBED)
        self.temp = nn.Parameter(torch.tensor(0.05))
        self.attention = nn.MultiheadAttention(WIDTH, 4, dropout=0.1, batch_first=True)
        self.vision_projs = nn.ModuleList(nn.Linear(WIDTH, EMBED) for _ in range(ORGANS))
        self.query_tokens = nn.Parameter(torch.randn(ORGANS, WIDTH))

    def organ_features(self, image: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """[B, A, E], zeros for organs absent from seg (``get_roi_features`` per patient and organ)."""
        _, levels = self.visual_encoder(image)
        out = torch.zeros(image.shape[0], ORGANS, EMBED)
        for i in range(image.shape[0]):
            for a in range(ORGANS):
                mask = F.max_pool3d((seg[i] == a + 1).float()[None, None], PATCH, PATCH).flatten() > 0
                if not mask.any():
                    continue
                kv = torch.cat([level[i][mask] for level in levels]).unsqueeze(0)
                pooled, _ = self.attention(self.query_tokens[a][None, None], kv, kv)
                out[i, a] = F.normalize(self.vision_projs[a](pooled[0, 0]), dim=-1)
        return out

    def text_features(self, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
        types = self.text_encoder.embeddings.token_type_embeddings
        saved = types.weight.detach().clone()
        with torch.no_grad():
            types.weight.zero_()  # = adding no token-type embedding
        try:
            states = self.text_encoder(input_ids=ids, attention_mask=(ids != pad_id).long()).last_hidden_state
        finally:
            with torch.no_grad():
                types.weight.copy_(saved)
        return F.normalize(self.text_proj(states[:, 0]), dim=-1)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return write_text_encoder(tmp_path_factory.mktemp("fvlm_text"))


def _config(encoder_dir, **over) -> dict:
    config = {"kind": "fvlm", "text_pool": "cls", "volume_tower": "vit3d", "anatomy_labels": [1, 2, 3],
              "token_depths": [*LEVELS, LAYERS - 1], "pool_heads": 4,
              "vit3d": {"in_channels": 1, "img_size": list(IMG), "patch_size": list(PATCH), "hidden_size": WIDTH,
                        "mlp_dim": 2 * WIDTH, "num_layers": LAYERS, "num_heads": HEADS, "qkv_bias": True,
                        "dropout_rate": 0.0, "final_norm": "last_block"},
              "clip_model": {"base": "fvlm-official", "embed_dim": EMBED,
                             "text_cfg": {"hf_model_name": str(encoder_dir), "hf_proj_type": "linear",
                                          "hf_proj_bias": True, "context_length": CONTEXT}}}
    config.update(over)
    return config


@pytest.fixture(scope="module")
def official(encoder_dir) -> OfficialFVLM:
    torch.manual_seed(1)
    model = OfficialFVLM(BertModel.from_pretrained(str(encoder_dir), add_pooling_layer=False))
    with torch.no_grad():  # non-trivial values everywhere (LayerNorms, biases, the unused token types)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.temp.fill_(0.05)
    return model.eval()


def _official_state(official: OfficialFVLM) -> dict[str, torch.Tensor]:
    state = dict(official.state_dict())
    state["text_encoder.embeddings.position_ids"] = torch.arange(64)[None]  # med.py's persistent buffer
    return state


def _inputs(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    volume = torch.randn(2, 1, *IMG, generator=g)
    seg = torch.zeros(2, *IMG, dtype=torch.long)
    seg[0, 2:14, 3:20, 1:9] = 1
    seg[0, 18:30, 10:28, 6:15] = 2
    seg[1, 5:25, 5:12, 2:12] = 3
    seg[1, 20:31, 20:31, 9:14] = 1
    ids = model.tokenize(["mild pleural effusion in the lung.", "no lesion in the heart."])
    return volume, seg, ids


def test_converted_model_reproduces_the_official_embeddings(official, encoder_dir):
    model = build_model(_config(encoder_dir))
    dropped: list[str] = []
    model.load_state_dict(convert_fvlm_state_dict(_official_state(official), model, dropped), strict=True)
    model.eval()
    assert "text_encoder.embeddings.position_ids" in dropped
    assert "text_encoder.embeddings.token_type_embeddings.weight" in dropped
    assert any(k.startswith("text_encoder.cls.") for k in dropped)
    volume, seg, ids = _inputs(model)
    with torch.no_grad():
        ours = model.encode_volume(volume, seg).embeddings
        theirs = official.organ_features(volume, seg)
        ours_text = model.encode_text(ids).embedding
        theirs_text = official.text_features(ids, model.tokenizer.pad_id)
    assert (theirs.norm(dim=-1) > 0).sum() == 4  # four (sample, organ) pairs present, two absent
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_text, theirs_text, atol=1e-5, rtol=0)
    assert model.logit_scale_exp().item() == pytest.approx(1 / 0.05, rel=1e-5)


def test_inverse_mapping_round_trips(official, encoder_dir):
    model = build_model(_config(encoder_dir))
    model.load_state_dict(convert_fvlm_state_dict(_official_state(official), model), strict=True)
    back = fvlm_to_official_state_dict(model)
    expected = {k: v for k, v in _official_state(official).items()
                if not k.startswith("text_encoder.cls.") and "position_ids" not in k and "token_type" not in k}
    assert sorted(back) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(back[key], value, msg=key)


def test_medvlp_default_norm_is_refused(official, encoder_dir):
    cfg = _config(encoder_dir)
    cfg["vit3d"] = {**cfg["vit3d"], "final_norm": "every_depth"}
    with pytest.raises(ValueError, match="final_norm must be 'last_block'"):
        convert_fvlm_state_dict(_official_state(official), build_model(cfg))


def test_missing_and_extra_keys_are_all_named(official, encoder_dir):
    state = _official_state(official)
    del state["query_tokens"]
    del state["visual_encoder.blocks.2.attn.qkv.weight"]
    state["visual_encoder.blocks.9.norm1.weight"] = torch.ones(WIDTH)
    state["momentum_queue"] = torch.zeros(3)
    with pytest.raises(ValueError) as err:
        convert_fvlm_state_dict(state, build_model(_config(encoder_dir)))
    msg = str(err.value)
    assert "unmatched official keys (2" in msg
    assert "visual_encoder.blocks.9.norm1.weight" in msg and "momentum_queue" in msg
    assert "medvlp keys left unfilled (2" in msg
    assert "pool.queries (from official query_tokens)" in msg
    assert "volume.vit.blocks.2.attn.qkv.weight (from official visual_encoder.blocks.2.attn.qkv.weight)" in msg


def test_shape_mismatch_names_both_keys_shapes_and_the_config_field(official, encoder_dir):
    state = _official_state(official)
    state["query_tokens"] = torch.zeros(ORGANS + 2, WIDTH)
    with pytest.raises(ValueError) as err:
        convert_fvlm_state_dict(state, build_model(_config(encoder_dir)))
    msg = str(err.value)
    assert f"official query_tokens [{ORGANS + 2}, {WIDTH}] -> medvlp pool.queries [{ORGANS}, {WIDTH}]" in msg
    assert "change anatomy_labels" in msg


def test_temperature_beyond_the_clamp_is_refused(official, encoder_dir):
    state = _official_state(official)
    state["temp"] = torch.tensor(0.002)
    with pytest.raises(ValueError, match="temp = 0.002 .* above medvlp's clamp"):
        convert_fvlm_state_dict(state, build_model(_config(encoder_dir)))


def test_corrupt_file_is_named(tmp_path, encoder_dir):
    bad = tmp_path / "fvlm_release.pth"
    bad.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(ValueError, match="fvlm_release.pth.*cannot be read"):
        load_fvlm_checkpoint(bad, _config(encoder_dir))


def test_cli_writes_a_medvlp_model_file_from_a_wrapped_checkpoint(official, encoder_dir, tmp_path):
    import json

    src, dst, cfg = tmp_path / "official.pth", tmp_path / "fvlm.pt", tmp_path / "config.json"
    state = {f"module.{k}": v for k, v in _official_state(official).items()}
    torch.save({"model": state, "epoch": 3}, src)
    cfg.write_text(json.dumps(_config(encoder_dir)))
    assert main(["convert-fvlm", str(src), str(dst), "--config", str(cfg)]) == 0
    model = load_model(dst).eval()
    volume, seg, ids = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_volume(volume, seg).embeddings, official.organ_features(volume, seg),
                                   atol=1e-5, rtol=0)
    assert main(["convert-fvlm", str(tmp_path / "missing.pth"), str(dst), "--config", str(cfg)]) == 1


def test_official_preset_reads_the_official_organs_in_medvlps_label_maps():
    # the official queries and projections are ordered lung, heart, esophagus, aorta; medvlp's label maps number
    # anatomies by its lexicon, where aorta and esophagus come in the other order
    from medvlp.lexicon import load_anatomy_lexicon
    from medvlp.models.configs import PRESETS

    by_label = {a.label: a.id for a in load_anatomy_lexicon().anatomies}
    assert [by_label[v] for v in PRESETS["fvlm_official"]["anatomy_labels"]] == ["lung", "heart", "esophagus", "aorta"]
