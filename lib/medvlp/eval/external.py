"""Released third-party models behind :class:`~medvlp.eval.model_under_test.ModelUnderTest`.

Two adapters, both ``torch.nn.Module``s scored by the same evaluation code as our own models:

- :class:`OpenCLIPModel`: an open_clip model, spec ``{"open_clip": "<arch>", "pretrained": "<source>"}``
  with ``<source>`` a local weights file, an open_clip pretrained tag of ``<arch>`` (``laion2b_s34b_b79k``)
  or ``hf-hub:org/name`` (BiomedCLIP: ``{"open_clip": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
  "pretrained": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"}``). The architecture is
  built with ``open_clip.create_model(..., pretrained=None)`` and the weights are loaded here
  (``torch.load(weights_only=True)`` or safetensors), with errors that name the file, the key and the shapes.
- :class:`HFModel`: a Hugging Face model with ``get_image_features`` / ``get_text_features`` (ConceptCLIP's
  released model, CLIP, SigLIP), spec ``{"hf_model": "<local folder or org/name>", "revision": "<commit or
  null>", "trust_remote_code": bool}``.

Nothing is downloaded unless the caller passes ``allow_download=True``: a hub model, tag or text tower not
in the local cache (Hugging Face: ``$HF_HUB_CACHE`` or ``$HF_HOME/hub``; open_clip URL tags:
``~/.cache/clip``; both overridable with the spec key ``"cache_dir"``) fails at once with a
:class:`FileNotFoundError` naming the model, the folder searched and the one command that fetches it.

Evaluation tensors are normalised with open_clip's ``OPENAI_DATASET_MEAN`` / ``OPENAI_DATASET_STD``
(:class:`~medvlp.train.transforms.ImageTransform`); an adapter whose model was trained with other statistics
re-normalises them, and reports its own ``image_size`` (:func:`~medvlp.eval.model_under_test.input_image_size`).
Adapters have no PC-Align heads: ``patch_tokens`` and ``token_states`` are None and ConceptCLIP's local
score is left out (global scoring).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from medvlp.models.checkpoint import load_model
from medvlp.models.outputs import ImageOutput, TextOutput

#: Spec keys naming the kind of external model (one of them must be present).
SPEC_KINDS = ("open_clip", "hf_model", "medvlp_model")
#: Every key a spec may hold.
SPEC_KEYS = {"open_clip": ("open_clip", "pretrained", "cache_dir"),
             "hf_model": ("hf_model", "revision", "trust_remote_code", "context_length", "cache_dir"),
             "medvlp_model": ("medvlp_model",)}
#: open_clip's weight file names in a hub repository, preferred first.
OPEN_CLIP_HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_HUB_PREFIX = "hf-hub:"
#: Temperature of a Hugging Face model without ``logit_scale``.
DEFAULT_LOGIT_SCALE = 100.0


# ---------------------------------------------------------------- caches and checksums


def hf_cache_dir(cache_dir: str | Path | None = None) -> str:
    """The Hugging Face hub cache searched: ``cache_dir``, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    huggingface_hub's default (read at call time, so a changed environment is honoured)."""
    if cache_dir:
        return str(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def open_clip_cache_dir(cache_dir: str | Path | None = None) -> str:
    """Where open_clip keeps weights of URL tags: ``cache_dir``, else ``~/.cache/clip``."""
    return str(cache_dir) if cache_dir else os.path.expanduser("~/.cache/clip")


def _not_cached(what: str, name: str, searched: str, command: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} {name!r} is not on this machine (searched {searched!r}); medvlp downloads nothing unless "
        f"allow_download=True. Fetch it once with: {command}")


def _hub_fetch_command(repo: str, revision: str | None = None) -> str:
    return f"hf download {repo}" + (f" --revision {revision}" if revision else "")


def _open_clip_fetch_command(arch: str, pretrained: str) -> str:
    return (f"python -c \"import open_clip; open_clip.create_model_and_transforms('{arch}', "
            f"pretrained='{pretrained}')\"")


def weights_checksum(path: str | Path) -> str:
    """sha256 of a local weights file, or of a local folder: every file under it (links followed, files in
    hidden folders such as ``.cache`` left out) in sorted relative-path order, each as its path then content.

    Raises:
        FileNotFoundError: ``path`` is neither a file nor a folder.
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        _hash_file(digest, path)
        return digest.hexdigest()
    if not path.is_dir():
        raise FileNotFoundError(f"weights {str(path)!r}: no such file or folder")
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode("utf-8") + b"\0")
        _hash_file(digest, file)
    return digest.hexdigest()


def _hash_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


# ---------------------------------------------------------------- weights files


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a local weights file: a ``torch.save`` state dict or ``{"state_dict": ...}``
    (keys possibly prefixed ``module.``), or a ``.safetensors`` file. Nothing is unpickled but tensors.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a torch checkpoint / safetensors file, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, TorchScript or not a checkpoint at all
        kind = "safetensors" if path.suffix == ".safetensors" else "torch"
        raise ValueError(f"weights file {str(path)!r} is not a {kind} checkpoint ({type(err).__name__}: "
                         f"{str(err)[:160]}); check the path, or fetch the file again (an OpenAI TorchScript "
                         "archive is not supported: use the tag's hf-hub weights)") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {str(path)!r} holds no state dict of tensors (a torch checkpoint of "
                         "something else); give an open_clip state dict or {'state_dict': ...}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path, arch: str) -> None:
    """Load the weights file ``path`` onto ``model`` (built for ``arch``), every key and shape checked.

    Raises:
        ValueError: a shape differs (naming the key and both shapes), or keys are missing / unexpected: the
            file was trained with another architecture.
    """
    state = read_weights(path)
    own = model.state_dict()
    advice = f"use the open_clip architecture the weights were trained with (not {arch!r})"
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(f"weights file {str(path)!r}: {key} has shape {list(value.shape)} but architecture "
                             f"{arch!r} expects {list(own[key].shape)}; {advice}")
    benign = ("position_ids",)  # buffers some transformers versions save and others do not
    missing = sorted(k for k in own if k not in state and not k.endswith(benign))
    unexpected = sorted(k for k in state if k not in own and not k.endswith(benign))
    if missing or unexpected:
        raise ValueError(f"weights file {str(path)!r} does not fit architecture {arch!r}: missing {missing[:6]}"
                         f"{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
                         f"{' ...' if len(unexpected) > 6 else ''}; {advice}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


# ---------------------------------------------------------------- shared adapter pieces


class _Renormalise(nn.Module):
    """OPENAI-normalised images -> images normalised with the model's own ``mean`` / ``std`` (identity,
    bit for bit, when they are the same)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        src_mean, src_std = torch.tensor(OPENAI_DATASET_MEAN), torch.tensor(OPENAI_DATASET_STD)
        mean, std = torch.tensor([float(m) for m in mean]), torch.tensor([float(s) for s in std])
        self.active = not (torch.allclose(mean, src_mean, atol=1e-7) and torch.allclose(std, src_std, atol=1e-7))
        self.register_buffer("gain", (src_std / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((src_mean - mean) / std).view(1, 3, 1, 1), persistent=False)
        self.mean, self.std = tuple(mean.tolist()), tuple(std.tolist())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[B, 3 or 1, S, S]`` -> ``[B, 3, S, S]``."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return images * self.gain.to(images.dtype) + self.shift.to(images.dtype) if self.active else images


def _side(size: Any) -> int:
    """An image size given as an int, a (h, w) pair or a processor dict -> its side."""
    if isinstance(size, tuple | list):
        return int(size[0])
    if isinstance(size, int | float):
        return int(size)
    for key in ("height", "shortest_edge", "width"):  # a dict, or transformers' SizeDict
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value:
            return int(value)
    raise ValueError(f"image size {size!r}: no height / shortest_edge")


def _check_size(images: torch.Tensor, side: int) -> None:
    if images.ndim != 4 or tuple(images.shape[-2:]) != (side, side):
        raise ValueError(f"images: expected [B, C, {side}, {side}] (the model's image_size), got "
                         f"{list(images.shape)}; build them with figure_tensors(images, input_image_size(model))")


def _pooled(out: Any) -> torch.Tensor:
    """The ``[B, E]`` features of ``get_*_features``: a tensor, or (transformers >= 5) an output whose
    ``pooler_output`` holds them."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    if isinstance(out, tuple | list) and isinstance(out[0], torch.Tensor) and out[0].ndim == 2:
        return out[0]
    raise TypeError(f"get_*_features returned {type(out).__name__}; expected [B, E] features or pooler_output")


# ---------------------------------------------------------------- open_clip


class OpenCLIPModel(nn.Module):
    """An open_clip CLIP / CustomTextCLIP model as a :class:`ModelUnderTest`.

    Args:
        model: the open_clip model (``encode_image`` / ``encode_text`` with ``normalize``).
        tokenizer: its open_clip tokenizer (``tokenizer(texts) -> ids [N, L]``).
        mean, std: the image statistics the model was trained with (its ``preprocess_cfg``).
        image_size: the model's input side S.
        source: where the weights came from (a local file or folder), for :func:`describe`.
        revision: the hub revision the weights came from, when known.
    """

    kind = "open_clip"

    def __init__(self, model: nn.Module, tokenizer: Any, mean: Sequence[float], std: Sequence[float],
                 image_size: int, source: str | None = None, revision: str | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.renormalise = _Renormalise(mean, std)
        self.image_size = int(image_size)
        self.embed_dim = int(_open_clip_embed_dim(model))
        self.source, self.revision = source, revision
        self.pad_id = _pad_id(tokenizer)
        self.image_proj = None  # no PC-Align heads: global scoring only
        bias = getattr(model, "logit_bias", None)
        self.logit_bias = bias if isinstance(bias, torch.Tensor) else None

    @classmethod
    def from_spec(cls, name: str, spec: dict, *, allow_download: bool = False) -> OpenCLIPModel:
        """Build from ``{"open_clip": arch, "pretrained": source, "cache_dir": optional}`` (module docstring).

        Raises:
            FileNotFoundError: weights, hub config or hub tokenizer not cached and ``allow_download`` False.
            ValueError: unknown architecture or tag, corrupt weights file, weights of another architecture.
        """
        arch, pretrained = str(spec["open_clip"]), spec.get("pretrained")
        if not pretrained:
            raise ValueError(f"external model {name!r}: spec needs 'pretrained' (a local weights file, a tag of "
                             f"{arch!r} or hf-hub:org/name); random weights are not a released model")
        source = _resolve_open_clip(arch, str(pretrained), allow_download, spec.get("cache_dir"))
        model_cfg = _local_text_names(source["model_cfg"], allow_download, spec.get("cache_dir"))
        model = _build_open_clip(arch, model_cfg, source["quick_gelu"])
        load_weights(model, source["weights"], arch)
        tokenizer = _open_clip_tokenizer(arch, model_cfg)
        mean = source["preprocess"].get("mean", OPENAI_DATASET_MEAN)
        std = source["preprocess"].get("std", OPENAI_DATASET_STD)
        size = _side(getattr(model.visual, "image_size", None) or model_cfg["vision_cfg"]["image_size"])
        return cls(model, tokenizer, mean, std, size, source=str(source["weights"]), revision=source["revision"])

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """texts -> ids ``[N, L]``."""
        return self.tokenizer(texts)

    def encode_image(self, images: torch.Tensor) -> ImageOutput:
        """images ``[B, 3, S, S]`` (OPENAI-normalised) -> ImageOutput(embedding ``[B, E]``, None)."""
        _check_size(images, self.image_size)
        return ImageOutput(self.model.encode_image(self.renormalise(images), normalize=True), None)

    def encode_text(self, ids: torch.Tensor) -> TextOutput:
        """ids ``[B, L]`` -> TextOutput(embedding ``[B, E]``, None, attention_mask ``[B, L]``)."""
        return TextOutput(self.model.encode_text(ids, normalize=True), None, _attention_mask(ids, self.pad_id, None))

    def logit_scale_exp(self) -> torch.Tensor:
        """The model's own temperature ``exp(logit_scale)`` (0-d tensor)."""
        return self.model.logit_scale.exp().reshape(())


def _open_clip_embed_dim(model: nn.Module) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return proj.shape[1]
    if isinstance(proj, nn.Linear):
        return proj.out_features
    return model.encode_image(torch.zeros(1, 3, *_pair(model.visual.image_size))).shape[1]


def _pair(size: Any) -> tuple[int, int]:
    return (int(size[0]), int(size[1])) if isinstance(size, tuple | list) else (int(size), int(size))


def _pad_id(tokenizer: Any) -> int:
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers tokenizer
    pad = getattr(inner, "pad_token_id", None) if inner is not None else None
    return int(pad) if pad is not None else 0


def _attention_mask(ids: torch.Tensor, pad_id: int, eos_id: int | None) -> torch.Tensor:
    """``[B, L]`` bool, True for real tokens; where padding reuses the end-of-text id (CLIP), the first
    end-of-text of each row counts as real."""
    mask = ids != pad_id
    if eos_id is not None and eos_id == pad_id:
        is_eos = ids == eos_id
        first = is_eos.int().argmax(dim=1)
        rows = torch.arange(ids.shape[0], device=ids.device)[is_eos.any(dim=1)]
        mask[rows, first[rows]] = True
    return mask


def _resolve_open_clip(arch: str, pretrained: str, allow_download: bool, cache_dir: str | None) -> dict:
    """Find (or, with ``allow_download``, fetch) the config and weights of an open_clip spec.

    Returns:
        ``{"model_cfg", "weights", "preprocess", "quick_gelu", "revision"}``.
    """
    import open_clip

    hub = pretrained[len(HF_HUB_PREFIX):] if pretrained.startswith(HF_HUB_PREFIX) else None
    if arch.startswith(HF_HUB_PREFIX):
        if hub is not None and hub != arch[len(HF_HUB_PREFIX):]:
            raise ValueError(f"open_clip {arch!r} with pretrained {pretrained!r}: an hf-hub architecture takes "
                             "its own weights; give the same hf-hub name (or a local weights file)")
        hub = hub or (None if Path(pretrained).is_file() else arch[len(HF_HUB_PREFIX):])
        config = _hub_open_clip_config(arch[len(HF_HUB_PREFIX):], allow_download, cache_dir)
        model_cfg, preprocess = config["model_cfg"], config.get("preprocess_cfg", {})
    else:
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise ValueError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models() or give "
                             "hf-hub:org/name")
        preprocess = {}
        if hub is not None:
            preprocess = _hub_open_clip_config(hub, allow_download, cache_dir, required=False).get("preprocess_cfg",
                                                                                                    {})
    out = {"model_cfg": model_cfg, "preprocess": dict(preprocess), "quick_gelu": False, "revision": None}
    if hub is not None:
        out["weights"] = _hub_weights(hub, OPEN_CLIP_HUB_WEIGHTS, allow_download, cache_dir,
                                      _hub_fetch_command(hub))
        out["revision"] = _snapshot_revision(out["weights"])
        return out
    if Path(pretrained).is_file():
        out["weights"] = Path(pretrained)
        return out
    tag = open_clip.get_pretrained_cfg(arch, pretrained)
    if not tag:
        if arch.startswith(HF_HUB_PREFIX) or os.sep in pretrained or Path(pretrained).suffix:
            raise FileNotFoundError(f"open_clip weights file {pretrained!r} not found (a local file, a tag of "
                                    f"{arch!r} or hf-hub:org/name)")
        raise ValueError(f"{pretrained!r} is neither a weights file nor a pretrained tag of {arch!r}; tags: "
                         f"{open_clip.list_pretrained_tags_by_model(arch)}")
    out["weights"] = _tag_weights(arch, pretrained, tag, allow_download, cache_dir)
    out["preprocess"] = {k: tag[k] for k in ("mean", "std") if k in tag}
    out["quick_gelu"] = bool(tag.get("quick_gelu", False))
    return out


def _hub_open_clip_config(repo: str, allow_download: bool, cache_dir: str | None, required: bool = True) -> dict:
    """``open_clip_config.json`` of hub repository ``repo`` ({} when absent and not ``required``)."""
    try:
        path = _hub_weights(repo, ("open_clip_config.json",), allow_download, cache_dir, _hub_fetch_command(repo))
    except FileNotFoundError:
        if required:
            raise
        return {}
    config = json.loads(Path(path).read_text(encoding="utf-8"))
    if "model_cfg" not in config:
        raise ValueError(f"{path}: an open_clip_config.json without 'model_cfg' (not an open_clip hub model)")
    return config


def _hub_weights(repo: str, filenames: Sequence[str], allow_download: bool, cache_dir: str | None,
                 command: str, revision: str | None = None) -> Path:
    """The first of ``filenames`` of hub repository ``repo`` in the local cache, else (``allow_download``)
    downloaded; fails at once naming the cache and ``command`` otherwise."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = hf_cache_dir(cache_dir)
    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    if not allow_download:
        raise _not_cached("hub model", f"{HF_HUB_PREFIX}{repo}", cache, command)
    errors = []
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=cache, revision=revision))
        except Exception as err:  # this file name is not in the repository: try the next
            errors.append(f"{filename}: {type(err).__name__}")
    raise FileNotFoundError(f"hub model {repo!r}: none of {list(filenames)} could be downloaded ({errors})")


def _snapshot_revision(path: Path) -> str | None:
    """The commit of a file in the Hugging Face cache (``.../snapshots/<commit>/<file>``), else None."""
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def _tag_weights(arch: str, tag_name: str, tag: dict, allow_download: bool, cache_dir: str | None) -> Path:
    """The weights of open_clip pretrained tag ``tag_name`` of ``arch`` (its ``hf_hub`` file in the HF cache, or
    its ``url`` file in open_clip's cache)."""
    command = _open_clip_fetch_command(arch, tag_name)
    if tag.get("hf_hub"):
        repo, filename = os.path.split(tag["hf_hub"])  # "org/name/" (default files) or "org/name/file.bin"
        if not filename:
            filenames = OPEN_CLIP_HUB_WEIGHTS
        elif filename.endswith(".safetensors"):
            filenames = (filename,)
        else:  # open_clip prefers a safetensors twin when the repository has one
            filenames = (f"{os.path.splitext(filename)[0]}.safetensors", filename)
        return _hub_weights(repo, filenames, allow_download, cache_dir, command)
    url = tag.get("url", "")
    if not url:
        raise ValueError(f"open_clip tag {tag_name!r} of {arch!r} names no file to load")
    folder = open_clip_cache_dir(cache_dir)
    target = Path(folder) / os.path.basename(url)
    if target.is_file():
        return target
    if not allow_download:
        raise _not_cached("open_clip weights", f"{arch} / {tag_name}", folder, command)
    from open_clip.pretrained import download_pretrained_from_url

    return Path(download_pretrained_from_url(url, cache_dir=folder))


def _local_text_names(model_cfg: dict, allow_download: bool, cache_dir: str | None) -> dict:
    """``model_cfg`` with its Hugging Face text tower / tokenizer names replaced by local folders (cached
    snapshots), so that building it reads nothing from the network."""
    text = dict(model_cfg.get("text_cfg", {}))
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text.get(key):
            text[key] = _local_hf_folder(text[key], allow_download, cache_dir, what="text tower")
    return {**model_cfg, "text_cfg": text}


def _local_hf_folder(name: str, allow_download: bool, cache_dir: str | None, *, what: str,
                     revision: str | None = None) -> str:
    """A local folder, or hub repository ``name`` as its cached snapshot folder (fetched only with
    ``allow_download``; otherwise a missing one fails at once with the fetch command)."""
    if Path(name).is_dir():
        return str(Path(name))
    from huggingface_hub import snapshot_download

    cache = hf_cache_dir(cache_dir)
    try:
        return snapshot_download(name, revision=revision, cache_dir=cache, local_files_only=not allow_download)
    except Exception as err:  # not cached, invalid name, or (with downloads) unreachable
        if allow_download:
            raise FileNotFoundError(f"{what} {name!r} could not be downloaded into {cache!r} "
                                    f"({type(err).__name__}: {err})") from err
        raise _not_cached(what, name, cache, _hub_fetch_command(name, revision)) from err


def _build_open_clip(arch: str, model_cfg: dict, quick_gelu: bool) -> nn.Module:
    """``open_clip.create_model(..., pretrained=None)`` of a built-in name, or of ``model_cfg`` (a hub
    config, its text tower names made local) through a temporary ``local-dir:`` folder holding only it."""
    import open_clip

    kwargs = {"pretrained": None, "pretrained_text": False, "force_quick_gelu": quick_gelu}
    if not arch.startswith(HF_HUB_PREFIX) and model_cfg == open_clip.get_model_config(arch):
        return open_clip.create_model(arch, **kwargs)
    with tempfile.TemporaryDirectory(prefix="medvlp-open-clip-") as folder:
        Path(folder, "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}), encoding="utf-8")
        return open_clip.create_model(f"local-dir:{folder}", **kwargs)


def _open_clip_tokenizer(arch: str, model_cfg: dict) -> Any:
    """open_clip's tokenizer of ``arch``; a Hugging Face tokenizer from its (already local) folder."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    text = model_cfg.get("text_cfg", {})
    if text.get("hf_tokenizer_name"):
        return HFTokenizer(text["hf_tokenizer_name"], context_length=text.get("context_length", 77),
                           tokenizer_mode=text.get("tokenizer_mode"), **text.get("tokenizer_kwargs", {}))
    try:
        return open_clip.get_tokenizer(arch if not arch.startswith(HF_HUB_PREFIX) else "",
                                       context_length=text.get("context_length"))
    except Exception as err:  # e.g. a SigLIP vocabulary that open_clip fetches from the hub
        raise FileNotFoundError(f"the tokenizer of open_clip {arch!r} could not be built offline "
                                f"({type(err).__name__}: {err}); fetch it once with: "
                                f"{_open_clip_fetch_command(arch, 'any tag')}") from err


# ---------------------------------------------------------------- Hugging Face


class HFModel(nn.Module):
    """A Hugging Face dual encoder (``get_image_features`` / ``get_text_features``) as a :class:`ModelUnderTest`.

    Args:
        model: the loaded model.
        tokenizer: its transformers tokenizer.
        image_size: input side S; mean, std: the image statistics it was trained with.
        context_length: L, tokens per text (texts are padded to it).
        source, revision: where it came from, for :func:`describe`.
    """

    kind = "hf_model"

    def __init__(self, model: nn.Module, tokenizer: Any, image_size: int, mean: Sequence[float],
                 std: Sequence[float], context_length: int, source: str | None = None, revision: str | None = None):
        super().__init__()
        for method in ("get_image_features", "get_text_features"):
            if not callable(getattr(model, method, None)):
                raise TypeError(f"{type(model).__name__} has no {method}; HFModel takes a Hugging Face dual "
                                "encoder (CLIP, SigLIP, ConceptCLIP)")
        self.model, self.tokenizer = model, tokenizer
        self.image_size, self.context_length = int(image_size), int(context_length)
        self.renormalise = _Renormalise(mean, std)
        self.source, self.revision = source, revision
        self.image_proj = None  # no PC-Align heads: global scoring only
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_id = tokenizer.eos_token_id
        self.use_mask = "attention_mask" in getattr(tokenizer, "model_input_names", ("attention_mask",))
        bias = getattr(model, "logit_bias", None)
        self.logit_bias = bias if isinstance(bias, torch.Tensor) else None
        with torch.inference_mode():
            self.embed_dim = int(self._text_features(self.tokenize(["a"])).shape[1])

    @classmethod
    def from_spec(cls, name: str, spec: dict, *, allow_download: bool = False) -> HFModel:
        """Load ``{"hf_model": folder or org/name, "revision", "trust_remote_code", "context_length",
        "cache_dir"}`` (model, tokenizer and, when present, image processor), offline unless ``allow_download``.

        Raises:
            FileNotFoundError: not cached and ``allow_download`` False (naming the cache and the fetch command).
            TypeError: the model has no ``get_image_features`` / ``get_text_features``.
        """
        from transformers import AutoModel, AutoTokenizer

        source, revision = str(spec["hf_model"]), spec.get("revision")
        folder = _local_hf_folder(source, allow_download, spec.get("cache_dir"), what="Hugging Face model",
                                  revision=revision)
        kwargs = {"trust_remote_code": bool(spec.get("trust_remote_code", False)), "local_files_only": True}
        model = AutoModel.from_pretrained(folder, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        size, mean, std = _hf_image_config(folder, model, kwargs)
        length = int(spec.get("context_length") or _hf_context_length(model, tokenizer))
        return cls(model, tokenizer, size, mean, std, length, source=folder,
                   revision=revision or _snapshot_revision(Path(folder) / "config.json"))

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """texts -> ids ``[N, L]`` padded to the context length L."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                              return_tensors="pt")["input_ids"]

    def _text_features(self, ids: torch.Tensor) -> torch.Tensor:
        if self.use_mask:
            mask = _attention_mask(ids, self.pad_id, self.eos_id).long()
            return _pooled(self.model.get_text_features(input_ids=ids, attention_mask=mask))
        return _pooled(self.model.get_text_features(input_ids=ids))

    def encode_image(self, images: torch.Tensor) -> ImageOutput:
        """images ``[B, 3, S, S]`` (OPENAI-normalised) -> ImageOutput(L2-normalised ``[B, E]``, None)."""
        _check_size(images, self.image_size)
        feats = _pooled(self.model.get_image_features(pixel_values=self.renormalise(images)))
        return ImageOutput(F.normalize(feats, dim=-1), None)

    def encode_text(self, ids: torch.Tensor) -> TextOutput:
        """ids ``[B, L]`` -> TextOutput(L2-normalised ``[B, E]``, None, attention_mask ``[B, L]``)."""
        mask = _attention_mask(ids, self.pad_id, self.eos_id)
        return TextOutput(F.normalize(self._text_features(ids), dim=-1), None, mask)

    def logit_scale_exp(self) -> torch.Tensor:
        """``exp(model.logit_scale)`` (stored as a log, as CLIP and SigLIP do), else 100 (0-d tensor)."""
        scale = getattr(self.model, "logit_scale", None)
        if isinstance(scale, torch.Tensor):
            return scale.exp().reshape(())
        return torch.tensor(DEFAULT_LOGIT_SCALE)


def _hf_image_config(folder: str, model: nn.Module, kwargs: dict) -> tuple[int, tuple, tuple]:
    """(side, mean, std) from the folder's image processor config when present, else the vision config's
    ``image_size`` and the OPENAI statistics."""
    mean, std, size = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, None
    processor = None
    if Path(folder, "preprocessor_config.json").is_file():
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(folder, **kwargs)
    if processor is not None:
        mean = tuple(getattr(processor, "image_mean", None) or mean)
        std = tuple(getattr(processor, "image_std", None) or std)
        crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        size = _side(crop) if crop else _side(processor.size) if getattr(processor, "size", None) else None
    if size is None:
        vision = getattr(model.config, "vision_config", None)
        size = int(getattr(vision, "image_size", 0) or getattr(model.config, "image_size", 0) or 224)
    return size, mean, std


def _hf_context_length(model: nn.Module, tokenizer: Any) -> int:
    """The shorter of the tokenizer's ``model_max_length`` and the text tower's position embeddings."""
    text = getattr(model.config, "text_config", model.config)
    limits = [int(n) for n in (getattr(text, "max_position_embeddings", None), tokenizer.model_max_length)
              if n is not None and int(n) < 100_000]
    if not limits:
        raise ValueError("the model's context length is unknown; give the spec key 'context_length'")
    return min(limits)


# ---------------------------------------------------------------- dispatch and provenance


def load_external_model(name: str, spec: dict, *, allow_download: bool = False) -> nn.Module:
    """The adapter of an external model spec: ``{"open_clip": ...}`` -> :class:`OpenCLIPModel`,
    ``{"hf_model": ...}`` -> :class:`HFModel` (module docstring); ``{"medvlp_model": path}`` -> the medvlp model
    file at ``path`` (e.g. fVLM's released checkpoint after ``medvlp convert-fvlm``), as :func:`load_model` builds it.

    Raises:
        ValueError: the spec is not a dict with exactly one of :data:`SPEC_KINDS`, or has unknown keys.
        FileNotFoundError: not cached and ``allow_download`` False.
    """
    kinds = [k for k in SPEC_KINDS if isinstance(spec, dict) and k in spec]
    if len(kinds) != 1:
        raise ValueError(f"external model {name!r}: spec {spec!r} must hold exactly one of {list(SPEC_KINDS)} "
                         f"(accepted keys: {SPEC_KEYS})")
    unknown = sorted(set(spec) - set(SPEC_KEYS[kinds[0]]))
    if unknown:
        raise ValueError(f"external model {name!r}: unknown keys {unknown}; accepted keys for {kinds[0]!r}: "
                         f"{list(SPEC_KEYS[kinds[0]])}")
    if kinds[0] == "medvlp_model":
        return load_model(spec["medvlp_model"])
    adapter = OpenCLIPModel if kinds[0] == "open_clip" else HFModel
    return adapter.from_spec(name, spec, allow_download=allow_download)


def describe(name: str, spec: dict, model: nn.Module) -> dict:
    """A JSON-ready provenance record of an external model for a report:
    ``{name, kind, source, revision, sha256, image_size}`` (``sha256``: :func:`weights_checksum` of the
    local weights file or folder the adapter loaded, None when it has none)."""
    kind = next((k for k in SPEC_KINDS if k in spec), None)
    source = spec["medvlp_model"] if kind == "medvlp_model" else getattr(model, "source", None)
    size = getattr(model, "image_size", None)
    if size is None and getattr(model, "image", None) is not None:
        size = model.image.image_size[0]
    return {"name": name, "kind": kind, "source": str(spec.get(kind)) if kind else None,
            "pretrained": spec.get("pretrained"), "revision": getattr(model, "revision", None) or spec.get("revision"),
            "weights": source, "sha256": weights_checksum(source) if source and Path(source).exists() else None,
            "image_size": None if size is None else int(size)}
