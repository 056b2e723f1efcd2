"""Model files: save/load our own (config + weights, atomic), load open_clip CLIP weights."""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvlp.models.factory import build_model

MODEL_FILE_FORMAT = "medvlp-model"
MODEL_FILE_VERSION = 1

# open_clip CLIP (flat text tower) parameter names -> our module paths.
_OPEN_CLIP_TEXT_KEYS = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.",
                        "text_projection", "cls_emb")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, then ``os.replace`` (never a torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP (``.module``), ``torch.compile`` (``._orig_mod``) and loss wrappers such as
    :class:`~medvlp.train.steps.LossModule` (``.model``), however deeply nested."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "model", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def model_file_payload(model: nn.Module, extra: dict | None = None) -> dict[str, Any]:
    """``{"format", "version", "config", "state_dict", "extra"}`` of a model (unwrapped; tensors copied
    to the CPU), what :func:`save_model` writes.

    Raises:
        ValueError: the model carries no ``config`` dict (it was not built by ``build_model``).
    """
    model = unwrap_model(model)
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise ValueError(f"{type(model).__name__} has no config dict; build it with medvlp.models.build_model")
    return {"format": MODEL_FILE_FORMAT, "version": MODEL_FILE_VERSION, "config": config,
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "extra": extra or {}}


def save_model(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write :func:`model_file_payload` to ``path`` atomically; returns ``path``.

    ``model`` must come from ``build_model`` (it carries ``model.config``); wrappers are unwrapped.
    ``extra`` (plain Python values / tensors) is stored as is, e.g. step and metrics.
    """
    atomic_torch_save(model_file_payload(model, extra), path)
    return Path(path)


def read_model_file(path: str | Path) -> dict:
    """The raw content of a ``save_model`` file (tensors on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} not found")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FILE_FORMAT:
        raise ValueError(f"{str(path)!r} is not a medvlp model file (written by save_model); for open_clip "
                         "weights use load_open_clip_weights")
    return payload


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from the stored config and load its weights (strict)."""
    payload = read_model_file(path)
    model = build_model(without_pretrained_text(payload["config"]))
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.to(map_location)


def without_pretrained_text(config: dict) -> dict:
    """``config`` with a Hugging Face text tower built from its config only (``hf_model_pretrained``
    false): weights about to be loaded from a model file need not be read from the tower's folder too."""
    text_cfg = config.get("clip_model", {}).get("text_cfg", {})
    if not text_cfg.get("hf_model_name"):
        return config
    out = copy.deepcopy(config)
    out["clip_model"]["text_cfg"]["hf_model_pretrained"] = False
    return out


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def open_clip_key_to_medvlp(key: str) -> str:
    """Map an open_clip CLIP / CustomTextCLIP parameter name to medvlp's module path."""
    if key.startswith("visual."):
        return "image.tower." + key[len("visual."):]
    if key.startswith("text."):  # CustomTextCLIP keeps the text tower as a submodule
        return "text.tower." + key[len("text."):]
    if key.startswith(_OPEN_CLIP_TEXT_KEYS):
        return "text.tower." + key
    return key  # logit_scale, logit_bias


def load_open_clip_weights(model: nn.Module, path: str | Path,
                           strict: bool = False) -> tuple[list[str], list[str]]:
    """Load an open_clip CLIP checkpoint from a local file onto the model's open_clip towers.

    Accepts a state dict or ``{"state_dict": ...}`` (open_clip's training checkpoints), keys possibly
    prefixed ``module.``. ``visual.*`` goes to ``image.tower.*``, the text tower's keys to
    ``text.tower.*``, ``logit_scale`` / ``logit_bias`` to the model's. 3D models (fvlm, ct_global)
    take the text tower only. Nothing is downloaded.

    Returns:
        (missing, unexpected): tower / logit keys of the model absent from the file, and file keys with
        no place in the model (in open_clip names). ``strict=True`` raises if either is non-empty.
        A shape mismatch always raises (wrong config for these weights).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"open_clip weights {str(path)!r} not found (give a local file; "
                                "medvlp downloads nothing)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = _strip_prefix(_strip_prefix(state, "module."), "_orig_mod.")
    target = unwrap_model(model)
    own = target.state_dict()
    mapped, unexpected = {}, []
    for key, value in state.items():
        ours = open_clip_key_to_medvlp(key)
        if ours not in own:
            unexpected.append(key)
            continue
        if own[ours].shape != value.shape:
            raise ValueError(f"open_clip weights {str(path)!r}: {key} has shape {list(value.shape)} but the "
                             f"model's {ours} has {list(own[ours].shape)}; build the model with the config "
                             "these weights were trained with")
        mapped[ours] = value
    loaded_scope = ("image.tower.", "text.tower.", "logit_scale", "logit_bias")
    missing = sorted(k for k in own if k.startswith(loaded_scope) and k not in mapped)
    if strict and (missing or unexpected):
        raise ValueError(f"open_clip weights {str(path)!r}: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]} (strict=True)")
    target.load_state_dict(mapped, strict=False)
    return missing, sorted(unexpected)


def load_medvlp_weights(model: nn.Module, path: str | Path, parts: Sequence[str] = ("image", "text"),
                        ) -> list[str]:
    """Initialise parts of ``model`` from another medvlp model file (e.g. a trained ``clip``).

    Copies every tensor whose name starts with one of ``parts`` (module names such as ``image``,
    ``text``, ``logit_scale``) and exists with the same shape in both models: RadCLIP starts from a
    trained 2D CLIP this way, a 3D model can take a trained text tower.

    Returns:
        The names of the copied tensors.

    Raises:
        ValueError: when no tensor matches (wrong parts or unrelated model), or a shape differs.
    """
    payload = read_model_file(path)
    target = unwrap_model(model)
    own = target.state_dict()
    prefixes = tuple(parts)
    chosen = {k: v for k, v in payload["state_dict"].items()
              if (k.split(".", 1)[0] in prefixes) and k in own}
    for key, value in chosen.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{str(path)!r}: {key} has shape {list(value.shape)} but the model's has "
                             f"{list(own[key].shape)}; both models need the same tower config")
    if not chosen:
        raise ValueError(f"{str(path)!r}: no tensor of parts {list(prefixes)} fits this "
                         f"{type(target).__name__}; check init_from.parts")
    fixed = sorted(k for k in chosen if k.endswith("logit_scale") and k not in dict(target.named_parameters()))
    if fixed:
        raise ValueError(f"{str(path)!r}: {fixed} of this {type(target).__name__} is a fixed temperature "
                         "(learnable_logit_scale: false); leave logit_scale out of init_from.parts")
    target.load_state_dict(chosen, strict=False)
    return sorted(chosen)
