"""Helpers of the medvlp.train tests (no tests here): tiny curated shards and tiny model configs.

The shards follow ``medvlp.curate.shards`` exactly (written with its own ``write_shards``): figures
``{id}.png`` + ``{id}.json``; CT ``{id}.nii.gz`` + ``{id}.seg.nii.gz`` + ``{id}.json``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from medvlp.curate.shards import encode_png, json_bytes, shard_dir, write_shards
from medvlp.data.io import nifti_gz_bytes
from medvlp.lexicon import load_anatomy_lexicon
from medvlp.params import deep_merge, load_params, stage_params

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_VIT3D = {"img_size": [32, 32, 16], "patch_size": [8, 8, 8], "hidden_size": 32, "mlp_dim": 64,
              "num_layers": 2, "num_heads": 2}
TINY_CONV3D = {"img_size": [32, 32, 16], "channels": [4, 8, 16]}  # 8 voxels per token, as TINY_VIT3D
# fvlm trains on the 3D ViT (the paper's tower); the other two on the conv3d tower (the CPU default).
ARCH = {
    "clip": {"clip_model": TINY_CLIP},
    "siglip": {"clip_model": TINY_CLIP},
    "conceptclip": {"clip_model": TINY_CLIP},
    "ct_clip_global": {"clip_model": TINY_CLIP, "volume_tower": "conv3d", "conv3d": TINY_CONV3D},
    "fvlm": {"clip_model": TINY_CLIP, "volume_tower": "vit3d", "vit3d": TINY_VIT3D, "pool_heads": 2},
    "fvlm_nocal": {"clip_model": TINY_CLIP, "volume_tower": "conv3d", "conv3d": TINY_CONV3D, "pool_heads": 2},
    "fvlm_normalcal": {"clip_model": TINY_CLIP, "volume_tower": "conv3d", "conv3d": TINY_CONV3D, "pool_heads": 2},
    "radclip": {"clip_model": TINY_CLIP, "max_slices": 16, "slice_heads": 2},
    "radclip_meanpool": {"clip_model": TINY_CLIP, "max_slices": 16},
}
TWO_STAGES = {"conceptclip", "radclip", "radclip_meanpool"}

_FINDINGS = [("pleural effusion", "C1"), ("lung nodule", "C2"), ("cardiomegaly", "C3"), ("fracture", "C4")]
_MODALITIES = ["chest_xray", "ct_slice", "brain_mri", "fundus"]


def _figure(i: int, rng: np.random.Generator, split: str) -> dict:
    name, cid = _FINDINGS[i % len(_FINDINGS)]
    modality = _MODALITIES[i % len(_MODALITIES)]
    lead = f"Figure {i}: {modality.replace('_', ' ')} showing a "
    caption = f"{lead}{name} near the centre."
    image = (rng.random((40, 40, 3)) * 60).astype(np.uint8)
    y, x = 8 + 4 * (i % 5), 6 + 3 * (i % 7)
    image[y:y + 10, x:x + 10, i % 3] = 200 + i % 50
    meta = {"id": f"F{split}{i:04d}", "caption": caption, "modality": modality, "article_id": f"A{i}",
            "split": split,
            "concepts": [{"concept_id": cid, "start_char": len(lead), "end_char": len(lead) + len(name),
                          "source": "extracted"}], "negated_concepts": [], "subcaptions": []}
    return {"__key__": meta["id"], "png": encode_png(image), "json": json_bytes(meta)}


def _study(i: int, rng: np.random.Generator, split: str) -> dict:
    lexicon = load_anatomy_lexicon()
    shape = (36, 36, 20)
    labels = np.zeros(shape, dtype=np.uint8)
    volume = rng.normal(-900, 30, size=shape).astype(np.float32)
    for a_idx, anatomy in enumerate(lexicon.anatomies):
        x0, y0 = 4 + 7 * (a_idx % 4), 4 + 9 * (a_idx // 4)
        z0 = 3 + (i + a_idx) % 6
        labels[x0:x0 + 5, y0:y0 + 6, z0:z0 + 7] = anatomy.label
        volume[x0:x0 + 5, y0:y0 + 6, z0:z0 + 7] = 40 + 10 * a_idx
    abnormal = {lexicon.anatomies[(i + k) % len(lexicon.anatomies)].id for k in range(1 + i % 2)}
    texts = [{"anatomy": a.id, "text": (f"{a.name} lesion number {i % 3}." if a.id in abnormal
                                          else lexicon.normal_text(a.id))} for a in lexicon.anatomies]
    normal = [{"anatomy": a.id, "normal": a.id not in abnormal} for a in lexicon.anatomies]
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    meta = {"id": f"S{split}{i:04d}", "patient_id": f"P{i}", "split": split,
            "findings": " ".join(t["text"] for t in texts[:3]),
            "impression": " ".join(f"{a} lesion." for a in sorted(abnormal)),
            "anatomy_text": texts, "is_normal": normal}
    return {"__key__": meta["id"], "nii.gz": nifti_gz_bytes(volume.round(), affine),
            "seg.nii.gz": nifti_gz_bytes(labels, affine), "json": json_bytes(meta)}


def write_curated(root: Path, n_figures=(24, 8), n_studies=(12, 4), shard_size: int = 7) -> Path:
    """Tiny curated output at ``root`` (figures and CT, train and val splits); returns ``root``."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), n_figures):
        write_shards((_figure(i, rng, split) for i in range(n)), shard_dir(root, "figures"), split,
                     shard_size)
    for split, n in zip(("train", "val"), n_studies):
        write_shards((_study(i, rng, split) for i in range(n)), shard_dir(root, "ct"), split, shard_size)
    return root


REPO = Path(__file__).resolve().parents[1]

#: What the tiny runs change in the repository's ``pretrain.common`` (params.yaml): a few seconds on a CPU, in
#: this process, bit-identical reruns. The towers are trained from scratch here, so the text tower learns at
#: the full rate (``text_lr_scale`` 1; params.yaml slows a pretrained BERT down).
TINY_COMMON = {
    "global_batch_size": 4, "seed": 3, "deterministic": True, "num_workers": 0, "val_every": 2,
    "val_max_samples": 8, "checkpoint_every": 2, "shuffle_buffer": 5,
    "optimizer": {"lr": 1e-3, "warmup_steps": 1, "weight_decay": 0.1, "text_lr_scale": 1.0},
    "volume": {"spatial_size": [32, 32, 16]},
    "abnormal_calibration": {"ema_momentum": 0.9},
}


def repo_params() -> dict:
    """The repository's params.yaml."""
    return load_params(REPO / "params.yaml")


def tiny_params(model: str, curated: Path, steps: int = 2, **overrides) -> dict:
    """Flat pretrain params of ``model`` with the tiny architecture, sized for a few seconds: the repository's
    ``pretrain.common`` (so that every key it sets is here, with its value unless shrunk) with
    :data:`TINY_COMMON` merged over it, the tiny architecture of ``ARCH`` in place of the pipeline's, and
    ``overrides`` (flat keys; a block given there replaces the block)."""
    stages = [{"steps": steps}, {"steps": steps}] if model in TWO_STAGES else [{"steps": steps}]
    if model.startswith("radclip"):
        stages[0]["freeze"] = []
    common = stage_params(repo_params(), "pretrain")["common"]
    params = deep_merge(common, TINY_COMMON)
    params.update({"model": model, "architecture": copy.deepcopy(ARCH[model]), "curated_dir": str(curated),
                   "stages": stages})
    params.update(overrides)
    return params


TEXT_ENCODER_TEXTS = [f"{a} {b} in the {c}." for a in ("small", "large", "no", "mild")
                      for b in ("pleural effusion", "lung nodule", "cardiomegaly", "fracture", "lesion")
                      for c in ("liver", "lung", "heart", "kidney", "spleen")]


def write_text_encoder(path: Path, *, hidden: int = 32, layers: int = 1, context: int = 64) -> Path:
    """A tiny BERT text encoder directory (WordPiece tokenizer + random ``BertModel`` without dropout) at ``path``,
    as the ``pretrain_text`` stage writes one; returns ``path``."""
    import torch
    from transformers import BertConfig, BertModel

    from medvlp.train.text_encoder import train_wordpiece

    tokenizer = train_wordpiece(TEXT_ENCODER_TEXTS, 200, path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=context,
                        pad_token_id=tokenizer.pad_token_id, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # no dropout: runs compare exactly
    BertModel(config, add_pooling_layer=False).save_pretrained(str(path))
    return path
