"""Convert the official fVLM checkpoint (Shui et al., ICLR 2025) into medvlp's :class:`~medvlp.models.fvlm.FVLM`.

The official code is a LAVIS fork. Module names and shapes below are read from (no code taken):

- ``lavis/models/blip_models/blip_pretrain.py``, class ``BlipPretrain`` (registered ``blip_pretrain_vit``):
  ``visual_encoder`` (the ViT below), ``text_encoder`` (``XBertEncoder``), ``text_proj`` =
  ``nn.Linear(768, 256)``, ``temp`` (0-d, logits = sim / temp), ``attention`` =
  ``nn.MultiheadAttention(768, 4, dropout=0.1, batch_first=True)`` shared by all organs, ``vision_projs`` =
  ``ModuleList`` of one ``nn.Linear(768, 256)`` per organ, ``query_tokens`` [A, 768] (A = len(organs); the
  organ with seg label ``a + 1`` is ``organs[a]``). ``get_roi_features`` concatenates the organ's tokens of
  every level of ``hidden_image_embeds`` as keys/values for its query, then ``vision_projs[a]``, L2 norm;
  the report side is ``normalize(text_proj(last_hidden_state[:, 0]))``.
- ``lavis/models/blip_models/vit.py``, class ``ViT`` (a copy of MONAI's with the same parameter names;
  ``patchembedding.py`` ``PatchEmbeddingBlock``, ``transformerblock.py`` ``TransformerBlock``,
  ``selfattention.py`` ``SABlock`` with a fused ``qkv`` laid out ``(qkv heads dim)`` as MONAI's), built with
  ``img_size=(112, 256, 352), patch_size=(16, 16, 32), qkv_bias=True, dropout_rate=0.1`` (768 wide, 12
  blocks, 12 heads, mlp 3072). ``forward`` returns the outputs of blocks 3, 6, 9 (0-based) *without* the final
  LayerNorm plus the last block's output *with* it.
- ``lavis/models/med.py``, class ``XBertEncoder(BertModel)`` (``add_pooling_layer=False``) with an extra
  masked-LM head ``cls`` (``BertOnlyMLMHead``, frozen); ``forward_text`` runs ``mode="text"`` with
  ``token_type_ids=None``, so no token-type embedding is ever added and no cross-attention layer runs.
  Parameter names inside are Hugging Face ``BertModel``'s.

Mapping (official -> medvlp; W = 768 vision width, E = 256, A organs, L blocks):

=============================================  ==============================================  ====================
official                                       medvlp                                          change
=============================================  ==============================================  ====================
``visual_encoder.<rest>``                      ``volume.vit.<rest>``                           none (same MONAI
                                                                                               names; Conv3d patch
                                                                                               kernel [W,C,px,py,pz]
                                                                                               and fused qkv [3W,W]
                                                                                               in the same layout)
``query_tokens`` [A, W]                        ``pool.queries`` [A, W]                         none
``attention.{in_proj_*,out_proj.*}``           ``pool.attn.{in_proj_*,out_proj.*}``            none
``vision_projs.{a}.weight`` [E, W] (A keys)    ``pool.proj_weight`` [A, W, E]                  transpose, stack
``vision_projs.{a}.bias`` [E] (A keys)         ``pool.proj_bias`` [A, E]                       stack
``text_encoder.<rest>``                        ``text.tower.transformer.<rest>``               none
``text_proj.{weight,bias}`` [E, Wt], [E]       ``text.tower.proj.{weight,bias}``               none (needs
                                                                                               ``hf_proj_bias``)
``temp`` (0-d)                                 ``logit_scale`` (0-d)                           ``log(1 / temp)``
(none: never read by the official forward)     ``text.tower.transformer.embeddings.            zeros
                                               token_type_embeddings.weight``
=============================================  ==============================================  ====================

Official tensors dropped because no official embedding forward reads them (:data:`INERT_OFFICIAL`):
``text_encoder.cls.*`` (masked-LM head), ``text_encoder.embeddings.position_ids`` (a buffer, arange),
``text_encoder.embeddings.token_type_embeddings.weight`` (``token_type_ids=None``),
``text_encoder.encoder.layer.*.crossattention.*`` (``mode="text"``), ``text_encoder.pooler.*``.

The medvlp model must be an fvlm with ``volume_tower: vit3d``, ``vit3d.final_norm: last_block``, the last
block among ``token_depths`` (official: ``[3, 6, 9, 11]``), ``text_pool: cls`` and a Hugging Face BERT text
tower with ``hf_proj_type: linear`` and ``hf_proj_bias: true`` -- the ``fvlm_official`` preset. Not
represented (the converter checks what weights can show): the official patch embedding *interpolates* its
position embeddings for inputs other than 112x256x352 (medvlp's ViT takes exactly ``img_size``); the official
evaluation's organ selection (2-voxel margin, organ-size ratio) is data handling, not weights; the attention
dropout (0.1) of ``attention`` is a training-only difference (medvlp's pool has none).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from medvlp.models.factory import build_model
from medvlp.models.fvlm import FVLM
from medvlp.models.logit_scales import MAX_LOGIT_SCALE

#: Official tensors no official embedding forward reads; they are dropped (see the module docstring).
INERT_OFFICIAL = (
    re.compile(r"text_encoder\.cls\..+"),
    re.compile(r"text_encoder\.embeddings\.position_ids"),
    re.compile(r"text_encoder\.embeddings\.token_type_embeddings\.weight"),
    re.compile(r"text_encoder\.encoder\.layer\.\d+\.crossattention\..+"),
    re.compile(r"text_encoder\.pooler\..+"),
)

#: medvlp tensors the official model does not hold, with the value that reproduces its forward.
TOKEN_TYPE_KEY = "text.tower.transformer.embeddings.token_type_embeddings.weight"

_PREFIXES = (("visual_encoder.", "volume.vit."), ("text_encoder.", "text.tower.transformer."),
             ("attention.", "pool.attn."), ("text_proj.", "text.tower.proj."))
_VISION_PROJ = re.compile(r"vision_projs\.(\d+)\.(weight|bias)")

# Which config field sizes the tensors under each medvlp prefix (advice in shape errors).
_ADVICE = (("volume.vit.patch_embedding", "vit3d.img_size / patch_size / in_channels / hidden_size"),
           ("volume.vit.blocks", "vit3d.hidden_size / mlp_dim / qkv_bias"),
           ("volume.vit.", "vit3d.hidden_size"),
           ("pool.queries", "anatomy_labels (one label per official organ) / vit3d.hidden_size"),
           ("pool.proj", "anatomy_labels (one label per official organ) / clip_model.embed_dim"),
           ("pool.", "vit3d.hidden_size"),
           ("text.tower.proj", "clip_model.embed_dim / the text tower's hidden size"),
           ("text.tower.transformer.embeddings.word", "the text tower's vocab_size (its config.json)"),
           ("text.tower.transformer.embeddings.position", "the text tower's max_position_embeddings"),
           ("text.tower.", "the text tower's config.json (hidden_size, intermediate_size)"))


def medvlp_name(official_key: str) -> str | None:
    """The medvlp parameter an official parameter maps to one-to-one, or None (vision_projs, temp, unknown)."""
    for official, ours in _PREFIXES:
        if official_key.startswith(official):
            return ours + official_key[len(official):]
    if official_key == "query_tokens":
        return "pool.queries"
    return None


def official_name(medvlp_key: str) -> str | None:
    """Inverse of :func:`medvlp_name` for one-to-one parameters, or None."""
    for official, ours in _PREFIXES:
        if medvlp_key.startswith(ours):
            return official + medvlp_key[len(ours):]
    if medvlp_key == "pool.queries":
        return "query_tokens"
    return None


def _advice(medvlp_key: str) -> str:
    return next((field for prefix, field in _ADVICE if medvlp_key.startswith(prefix)), "the model config")


def _is_inert(key: str) -> bool:
    return any(p.fullmatch(key) for p in INERT_OFFICIAL)


def check_convertible(model: FVLM) -> None:
    """Refuse medvlp configs whose forward cannot equal the official one whatever the weights.

    Raises:
        ValueError: naming the config field to change (volume_tower, vit3d.final_norm, token_depths,
            text_pool, hf_proj_bias).
    """
    config = model.config
    problems = []
    if config.get("volume_tower", "vit3d") != "vit3d":
        problems.append("volume_tower must be 'vit3d' (the official vision encoder is a 3D ViT)")
    else:
        if getattr(model.volume, "final_norm", "every_depth") != "last_block":
            problems.append("vit3d.final_norm must be 'last_block' (official intermediate levels skip the final "
                            "LayerNorm)")
        last = len(model.volume.vit.blocks) - 1
        if last not in model.volume.token_depths:
            problems.append(f"token_depths must include the last block ({last}); the official levels are "
                            "blocks 3, 6, 9 and 11")
    if config.get("text_pool") != "cls" or not model.text.is_hf:
        problems.append("text_pool must be 'cls' with a Hugging Face BERT text tower (official: [CLS] state)")
    elif getattr(model.text.tower.proj, "bias", None) is None:
        problems.append("clip_model.text_cfg needs hf_proj_type 'linear' and hf_proj_bias true (official text_proj "
                        "has a bias)")
    if problems:
        raise ValueError("this medvlp config cannot reproduce the official fVLM: " + "; ".join(problems)
                         + " (use the fvlm_official preset)")


def _logit_scale(temp: torch.Tensor) -> torch.Tensor:
    """official ``temp`` (logits = sim / temp) -> medvlp ``logit_scale`` = log(1 / temp).

    Raises:
        ValueError: temp is not positive, or 1 / temp exceeds medvlp's clamp MAX_LOGIT_SCALE.
    """
    t = float(temp)
    if not t > 0:
        raise ValueError(f"official temp = {t} is not a positive temperature")
    if 1.0 / t > MAX_LOGIT_SCALE:
        raise ValueError(f"official temp = {t:g} gives a logit scale 1/temp = {1 / t:g} above medvlp's clamp "
                         f"{MAX_LOGIT_SCALE:g}; medvlp cannot represent it, so the converter refuses")
    return torch.tensor(math.log(1.0 / t), dtype=temp.dtype)


def _stack_vision_projs(found: dict[int, dict[str, torch.Tensor]], errors: list[str]
                        ) -> dict[str, torch.Tensor]:
    """{a: {"weight": [E, W], "bias": [E]}} -> pool.proj_weight [A, W, E], pool.proj_bias [A, E]."""
    if not found:
        return {}
    indices = sorted(found)
    if indices != list(range(len(indices))):
        errors.append(f"vision_projs indices {indices} are not 0..{len(indices) - 1}")
        return {}
    out = {}
    for part in ("weight", "bias"):
        missing = [a for a in indices if part not in found[a]]
        if missing:
            errors.append(f"vision_projs.{{{','.join(map(str, missing))}}}.{part} missing")
            continue
        tensors = [found[a][part] for a in indices]
        if len({tuple(t.shape) for t in tensors}) != 1:
            errors.append(f"vision_projs.*.{part} shapes differ: {[list(t.shape) for t in tensors]}")
            continue
        stacked = torch.stack(tensors)
        out["pool.proj_weight" if part == "weight" else "pool.proj_bias"] = (
            stacked.transpose(1, 2) if part == "weight" else stacked)
    return out


def convert_fvlm_state_dict(official_state: dict[str, torch.Tensor], model: FVLM,
                            dropped: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Map an official fVLM state dict (``BlipPretrain``'s names, no ``module.``) onto ``model``'s names.

    Args:
        official_state: official name -> tensor (see the module docstring for names and shapes).
        model: the FVLM to fill (its state dict gives the target names and shapes).
        dropped: if given, receives the inert official keys that were dropped (``INERT_OFFICIAL``).

    Returns:
        medvlp name -> tensor covering every entry of ``model.state_dict()``, shapes equal.

    Raises:
        ValueError: the config cannot reproduce the official forward (:func:`check_convertible`); or one
            message listing every unmatched official key, every medvlp key left unfilled (with the official
            key that should fill it) and every shape mismatch (official key and shape, medvlp key and shape,
            and the config field that sizes it); or ``temp`` not representable.
    """
    check_convertible(model)
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unmatched, errors = [], []
    projs: dict[int, dict[str, torch.Tensor]] = {}
    sources: dict[str, str] = {}
    for key, value in official_state.items():
        ours = medvlp_name(key)
        proj = _VISION_PROJ.fullmatch(key)
        if _is_inert(key):
            if dropped is not None:
                dropped.append(key)
        elif proj:
            projs.setdefault(int(proj.group(1)), {})[proj.group(2)] = value
        elif key == "temp" and "logit_scale" in own:
            out["logit_scale"] = _logit_scale(value)
            sources["logit_scale"] = key
        elif ours is not None and ours in own:
            out[ours] = value
            sources[ours] = key
        else:
            unmatched.append(key)
    stacked = _stack_vision_projs(projs, errors)
    out.update(stacked)
    sources.update({k: _expected_official(k) + " (stacked)" for k in stacked})
    if TOKEN_TYPE_KEY in own:
        out[TOKEN_TYPE_KEY] = torch.zeros_like(own[TOKEN_TYPE_KEY])
    _check_result(out, own, sources, unmatched, errors)
    return out


def _expected_official(medvlp_key: str) -> str:
    if medvlp_key == "logit_scale":
        return "temp"
    if medvlp_key == "logit_bias":
        return "none; the official model has no logit bias: set init_logit_bias null"
    if medvlp_key.startswith("pool.proj_"):
        return "vision_projs.{a}." + ("weight" if medvlp_key.endswith("weight") else "bias")
    return official_name(medvlp_key) or "?"


def _check_result(out: dict[str, torch.Tensor], own: dict[str, torch.Tensor], sources: dict[str, str],
                  unmatched: list[str], errors: list[str]) -> None:
    """Raise one ValueError for every problem of a conversion (see :func:`convert_fvlm_state_dict`)."""
    unfilled = sorted(k for k in own if k not in out)
    for key in sorted(k for k in out if k in own and out[k].shape != own[k].shape):
        errors.append(f"shape mismatch: official {sources.get(key, key)} {list(out[key].shape)} -> medvlp {key} "
                      f"{list(own[key].shape)}; change {_advice(key)}")
    if not (unmatched or unfilled or errors):
        return
    lines = ["official fVLM state dict does not fit this medvlp FVLM:"]
    if unmatched:
        lines.append(f"  unmatched official keys ({len(unmatched)}, no place in medvlp): {sorted(unmatched)}")
    if unfilled:
        named = [f"{k} (from official {_expected_official(k)})" for k in unfilled]
        lines.append(f"  medvlp keys left unfilled ({len(unfilled)}): {named}")
    lines += [f"  {e}" for e in errors]
    lines.append("  build the model from the config these weights were trained with (preset fvlm_official; "
                 "vit3d.num_layers, anatomy_labels, clip_model.text_cfg)")
    raise ValueError("\n".join(lines))


def fvlm_to_official_state_dict(model: FVLM) -> dict[str, torch.Tensor]:
    """Inverse mapping: ``model``'s weights under the official names and layout (no inert tensors).

    Returns:
        official name -> tensor: ``vision_projs.{a}.weight`` [E, W] and ``.bias`` [E] per anatomy,
        ``temp`` = exp(-logit_scale), the rest renamed. medvlp's (zero) token-type embedding is left out.

    Raises:
        ValueError: as :func:`check_convertible`.
    """
    check_convertible(model)
    out = {}
    for key, value in model.state_dict().items():
        if key == TOKEN_TYPE_KEY:
            continue
        if key == "pool.proj_weight":
            out.update({f"vision_projs.{a}.weight": w.t().contiguous() for a, w in enumerate(value)})
        elif key == "pool.proj_bias":
            out.update({f"vision_projs.{a}.bias": b.clone() for a, b in enumerate(value)})
        elif key == "logit_scale":
            out["temp"] = torch.exp(-value)
        else:
            name = official_name(key)
            if name is None:
                raise ValueError(f"medvlp key {key} has no official counterpart")
            out[name] = value.clone()
    return out


def read_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The official state dict in ``path``: a bare state dict or ``{"model" | "state_dict": ...}`` (LAVIS
    saves ``{"model": ..., "optimizer": ..., ...}``), ``module.`` prefixes removed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read by ``torch.load(weights_only=True)`` (corrupt, truncated, or not
            a tensor file), or holds no state dict; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official fVLM checkpoint {str(path)!r} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors of every kind: name the file
        raise ValueError(f"official fVLM checkpoint {str(path)!r} cannot be read ({type(err).__name__}: "
                         f"{str(err)[:200]}); is the file complete and a torch checkpoint?") from err
    for wrapper in ("model", "state_dict"):
        if isinstance(payload, dict) and isinstance(payload.get(wrapper), dict):
            payload = payload[wrapper]
            break
    if not isinstance(payload, dict) or not payload or not all(
            isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"official fVLM checkpoint {str(path)!r} holds no state dict (name -> tensor), "
                         "nor one under 'model' or 'state_dict'")
    return {k.removeprefix("module."): v for k, v in payload.items()}


def load_fvlm_checkpoint(path: str | Path, config: str | dict = "fvlm_official", **overrides) -> FVLM:
    """Build the medvlp FVLM of ``config`` and load the official checkpoint at ``path`` into it (strict).

    Args:
        path: the official checkpoint (``torch.save`` of ``BlipPretrain``'s state, possibly wrapped).
        config: a model preset name (``fvlm_official``) or a config dict of kind fvlm.
        overrides: config keys merged in (e.g. ``clip_model={...}`` to point at a local text tower).
            The Hugging Face text tower is built from its config only (the weights come from ``path``).

    Returns:
        The FVLM in eval mode; ``model.config`` is what ``save_model`` stores.

    Raises:
        FileNotFoundError / ValueError: as :func:`read_official_state` and :func:`convert_fvlm_state_dict`;
            ValueError if the config is not of kind fvlm.
    """
    from medvlp.models.checkpoint import without_pretrained_text
    from medvlp.models.configs import resolve_model_config

    state = read_official_state(path)
    resolved = resolve_model_config(config, **overrides)
    if resolved["kind"] != "fvlm":
        raise ValueError(f"config {config if isinstance(config, str) else '(dict)'} is of kind "
                         f"{resolved['kind']!r}; the official checkpoint needs an fvlm config (fvlm_official)")
    model = build_model(without_pretrained_text(resolved))
    try:
        converted = convert_fvlm_state_dict(state, model)
    except ValueError as err:
        raise ValueError(f"{str(path)!r}: {err}") from err
    model.load_state_dict(converted, strict=True)
    return model.eval()
