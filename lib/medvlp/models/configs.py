"""Model configurations: open_clip-schema tower configs and the medvlp model presets.

Two layers of configuration:

- A *CLIP config* in open_clip's model-config schema (``{"embed_dim", "vision_cfg", "text_cfg",
  optional "quick_gelu"}``) sizes the 2D image tower and the text tower. It is given by name: one of
  medvlp's own (``medvlp-tiny``, ``medvlp-small``, shipped in ``model_configs/``) or one that ships
  with open_clip (``ViT-B-16``, ...; only the config is read, no weights are downloaded), or as a dict.
- A *model config* (a flat dict with a ``kind``) says which medvlp model to build around the towers.
  ``PRESETS`` holds one per pre-training stage of the pipeline; ``resolve_model_config`` merges user
  overrides into the preset of the config's kind and inlines the CLIP config, so a resolved config
  rebuilds the same model anywhere (it is what checkpoints store).
"""

from __future__ import annotations

import copy
import json
import math
from importlib import resources
from typing import Any

import open_clip

from medvlp.models.conv_volume_tower import DEFAULT_CONV3D
from medvlp.params import deep_merge

#: The volume towers of the 3D kinds (``volume_tower``): fVLM's MONAI 3D ViT, medvlp's 3D conv net.
VOLUME_TOWERS = ("vit3d", "conv3d")

LOG_INIT_LOGIT_SCALE = math.log(1 / 0.07)
INIT_LOGIT_BIAS = -10.0

MODEL_KINDS = ("dual_encoder", "fvlm", "ct_global", "radclip")

# 3D ViT (monai.networks.nets.ViT keyword arguments), CPU-sized: 64x64x32 voxels, 8x8x4 = 256 tokens.
DEFAULT_VIT3D: dict[str, Any] = {
    "in_channels": 1,
    "img_size": [64, 64, 32],
    "patch_size": [8, 8, 8],
    "hidden_size": 128,
    "mlp_dim": 256,
    "num_layers": 4,
    "num_heads": 4,
    "dropout_rate": 0.0,
    "qkv_bias": False,
    "pos_embed_type": "learnable",
}

_COMMON: dict[str, Any] = {
    "clip_model": "medvlp-tiny",
    "text_pool": "eot",
    "init_logit_scale": LOG_INIT_LOGIT_SCALE,
    "learnable_logit_scale": True,
    "init_logit_bias": None,
}

# Defaults of every key of each kind. Keys are documented in medvlp/models/__init__.py.
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "dual_encoder": {
        **_COMMON,
        "concept_heads": False,
        "head_hidden": None,
    },
    "fvlm": {
        **_COMMON,
        "volume_tower": "vit3d",
        "vit3d": DEFAULT_VIT3D,
        "conv3d": DEFAULT_CONV3D,
        "token_depths": [-2, -1],
        "anatomy_labels": None,
        "pool_heads": 4,
    },
    "ct_global": {
        **_COMMON,
        "volume_tower": "vit3d",
        "vit3d": DEFAULT_VIT3D,
        "conv3d": DEFAULT_CONV3D,
    },
    "radclip": {
        **_COMMON,
        "slice_pooling": "attention",
        "slice_heads": 4,
        "slice_layers": 1,
        "slice_pos": "learnable",
        "max_slices": 64,
        "slice_chunk": 64,
        "freeze_text": False,
        "freeze_image": False,
    },
}

# The official fVLM release (Shui et al., ICLR 2025; lavis/models/blip_models/blip_pretrain.py and vit.py):
# a 112x256x352 MONAI-style ViT-B (patch 16x16x32, qkv bias), tokens of blocks 4, 7, 10 (raw) and 12 (after
# the final LayerNorm), 4 anatomies in the order lung, heart, esophagus, aorta (its own segmentation labels 1..4;
# in medvlp's label maps, anatomy.json: lung 1, heart 2, esophagus 4, aorta 3), one shared 4-head attention,
# per-anatomy Linear(768, 256), CXR-BERT [CLS] -> Linear(768, 256) with bias. See fvlm_convert.py.
FVLM_OFFICIAL_VIT3D: dict[str, Any] = {
    "in_channels": 1,
    "img_size": [112, 256, 352],
    "patch_size": [16, 16, 32],
    "hidden_size": 768,
    "mlp_dim": 3072,
    "num_layers": 12,
    "num_heads": 12,
    "dropout_rate": 0.1,
    "qkv_bias": True,
    "pos_embed_type": "learnable",
    "final_norm": "last_block",
}

# One preset per pre-training stage of the pipeline (params.yaml names them).
PRESETS: dict[str, dict[str, Any]] = {
    "clip": {"kind": "dual_encoder"},
    "siglip": {"kind": "dual_encoder", "init_logit_bias": INIT_LOGIT_BIAS},
    "conceptclip": {"kind": "dual_encoder", "text_pool": "mean", "concept_heads": True,
                    "init_logit_bias": INIT_LOGIT_BIAS},
    "fvlm": {"kind": "fvlm"},
    # the official fVLM checkpoint's shape (medvlp convert-fvlm); not a pipeline stage
    "fvlm_official": {"kind": "fvlm", "clip_model": "fvlm-official", "text_pool": "cls", "volume_tower": "vit3d",
                      "vit3d": FVLM_OFFICIAL_VIT3D, "token_depths": [3, 6, 9, 11], "anatomy_labels": [1, 2, 4, 3],
                      "pool_heads": 4},
    "ct_global": {"kind": "ct_global"},
    "ct_clip_global": {"kind": "ct_global"},
    # RadCLIP trains with InfoNCE at a fixed tau = 0.07 in both stages
    "radclip": {"kind": "radclip", "learnable_logit_scale": False},
    "radclip_meanpool": {"kind": "radclip", "slice_pooling": "mean", "learnable_logit_scale": False},
    "dual_encoder": {"kind": "dual_encoder"},
}


def _medvlp_clip_configs() -> dict[str, dict]:
    folder = resources.files("medvlp.models").joinpath("model_configs")
    out = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            out[entry.name[: -len(".json")]] = json.loads(entry.read_text("utf-8"))
    return out


def list_clip_configs() -> list[str]:
    """Names accepted by ``get_clip_config``: medvlp's own, then those shipped with open_clip."""
    return sorted(_medvlp_clip_configs()) + open_clip.list_models()


def _check_clip_config(cfg: dict, where: str) -> dict:
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise ValueError(f"CLIP config {where}: missing key {key!r} (open_clip model-config schema)")
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if vision.get("medvlp_conv"):
        pass  # medvlp's conv tower: its keys are checked when it is built
    elif vision.get("timm_model_name") or isinstance(vision.get("layers"), list | tuple):
        raise ValueError(f"CLIP config {where}: only open_clip's VisionTransformer image tower is supported "
                         "(no timm_model_name, no ResNet layer tuple); pick a ViT config")
    if vision.get("attentional_pool") or vision.get("pool_type", "tok") == "none":
        raise ValueError(f"CLIP config {where}: attentional_pool / pool_type 'none' hide the patch tokens; "
                         "use pool_type 'tok' or 'avg'")
    if text.get("hf_tokenizer_name") and not text.get("hf_model_name"):
        raise ValueError(f"CLIP config {where}: hf_tokenizer_name needs an hf_model_name (a Hugging Face text "
                         "tower); open_clip's TextTransformer uses its own byte-pair tokenizer")
    if text.get("hf_model_name") and not text.get("context_length"):
        raise ValueError(f"CLIP config {where}: a Hugging Face text tower needs text_cfg.context_length "
                         "(tokens per text, at most the model's max_position_embeddings)")
    if text.get("hf_proj_bias") and (not text.get("hf_model_name") or text.get("hf_proj_type") != "linear"):
        raise ValueError(f"CLIP config {where}: text_cfg.hf_proj_bias needs a Hugging Face text tower with "
                         "hf_proj_type 'linear'")
    if text.get("embed_cls"):
        raise ValueError(f"CLIP config {where}: text_cfg.embed_cls (CoCa) is not supported")
    return cfg


def get_clip_config(name_or_cfg: str | dict) -> dict:
    """Return a CLIP config (open_clip schema) as a fresh dict.

    Args:
        name_or_cfg: a medvlp config name (``medvlp-tiny``), an open_clip model name whose config
            ships with open_clip (``ViT-B-16``), a dict in that schema, or a dict
            ``{"base": <name>, <key>: <override>, ...}``: the named config with the given keys merged
            in (dicts key by key), except that a ``text_cfg`` naming ``hf_model_name`` replaces the
            base's text tower whole (another kind of tower), e.g.
            ``{"base": "medvlp-conv-tiny", "text_cfg": {"hf_model_name": "reports/text_encoder",
            "context_length": 64}}``.
    """
    if isinstance(name_or_cfg, dict) and "base" in name_or_cfg:
        overrides = {k: v for k, v in name_or_cfg.items() if k != "base"}
        base = get_clip_config(name_or_cfg["base"])
        if (overrides.get("text_cfg") or {}).get("hf_model_name"):
            base.pop("text_cfg")
        return _check_clip_config(deep_merge(base, overrides), f"(base {name_or_cfg['base']!r})")
    if isinstance(name_or_cfg, dict):
        return _check_clip_config(copy.deepcopy(name_or_cfg), "(dict)")
    own = _medvlp_clip_configs()
    if name_or_cfg in own:
        return _check_clip_config(own[name_or_cfg], repr(name_or_cfg))
    if name_or_cfg.startswith("hf-hub:"):
        raise ValueError(f"CLIP config {name_or_cfg!r}: hub configs would be downloaded; "
                         "pass a local name or a dict")
    cfg = open_clip.get_model_config(name_or_cfg)
    if cfg is None:
        raise ValueError(f"unknown CLIP config {name_or_cfg!r}; known: {list_clip_configs()[:12]} ... "
                         "(see medvlp.models.list_clip_configs()) or pass a dict in open_clip's schema")
    return _check_clip_config(cfg, repr(name_or_cfg))


def resolve_model_config(name_or_config: str | dict, **overrides: Any) -> dict:
    """Merge a preset name or a partial config dict and overrides into a complete model config.

    Nested dicts (``vit3d``, an inline ``clip_model``) merge key by key; the CLIP config is inlined
    as a dict (its name is kept under ``clip_model_name``). Unknown keys raise.
    """
    if isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise ValueError(f"unknown model preset {name_or_config!r}; known: {sorted(PRESETS)} "
                             "(or pass a config dict with a 'kind')")
        partial = PRESETS[name_or_config]
    else:
        partial = name_or_config
    partial = deep_merge(partial, overrides)
    kind = partial.get("kind")
    if kind not in KIND_DEFAULTS:
        raise ValueError(f"model config: kind {kind!r} is not one of {MODEL_KINDS}")
    allowed = set(KIND_DEFAULTS[kind]) | {"kind", "clip_model_name"}
    unknown = sorted(set(partial) - allowed)
    if unknown:
        raise ValueError(f"model config of kind {kind!r}: unknown keys {unknown}; allowed: {sorted(allowed)}")

    clip_model = partial.get("clip_model", KIND_DEFAULTS[kind]["clip_model"])
    config = deep_merge(KIND_DEFAULTS[kind], {k: v for k, v in partial.items() if k != "clip_model"})
    if isinstance(clip_model, str):
        config["clip_model_name"] = clip_model
    elif "clip_model" in overrides:
        config.pop("clip_model_name", None)
    config["clip_model"] = get_clip_config(clip_model)

    pools = ("cls", "mean") if config["clip_model"]["text_cfg"].get("hf_model_name") else ("eot", "mean")
    if config["text_pool"] not in pools:
        raise ValueError(f"model config: text_pool must be one of {pools} for this text tower "
                         f"('cls' and 'mean' for Hugging Face towers), got {config['text_pool']!r}")
    if kind == "radclip":
        if config["slice_pooling"] not in ("attention", "mean"):
            raise ValueError(f"model config: slice_pooling must be 'attention' or 'mean', "
                             f"got {config['slice_pooling']!r}")
        if config["slice_pos"] not in ("learnable", "sinusoidal"):
            raise ValueError(f"model config: slice_pos must be 'learnable' or 'sinusoidal', "
                             f"got {config['slice_pos']!r}")
    if kind in ("fvlm", "ct_global"):
        tower = config["volume_tower"]
        if tower not in VOLUME_TOWERS:
            raise ValueError(f"model config: volume_tower must be one of {VOLUME_TOWERS}, got {tower!r}")
    if kind == "fvlm":
        if config["volume_tower"] == "vit3d":
            layers, what = config["vit3d"]["num_layers"], "ViT blocks"
        else:
            layers, what = int(config["conv3d"]["blocks"]), "blocks of the conv3d tower's last stage"
        bad = [d for d in config["token_depths"] if not -layers <= d < layers]
        if bad or not config["token_depths"]:
            raise ValueError(f"model config: token_depths {config['token_depths']} must be non-empty indices "
                             f"into the {layers} {what} (python-style, -1 = last)")
    return config
