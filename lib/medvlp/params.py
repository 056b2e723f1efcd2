"""Reading stage parameters from ``params.yaml`` (one section per DVC stage)."""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``3e-4`` is a float, not the string ``"3e-4"``."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text as params files are read everywhere in medvlp (safe; ``1e-3`` is a float)."""
    return yaml.load(text, Loader=_Loader)


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"parameter file {str(p)!r} not found; run from the repository root or pass --params")
    return load_yaml(p.read_text("utf-8")) or {}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


#: A training run's name: ``<model>-s<seed>`` (the DVC stage ``pretrain@<model>-s<seed>``).
RUN_NAME = re.compile(r"^(?P<model>.+)-s(?P<seed>\d+)$")


def run_name(model: str, seed: int) -> str:
    """``<model>-s<seed>``, the name of one training run (its DVC stage key and output folder)."""
    return f"{model}-s{int(seed)}"


def model_runs(params: dict[str, Any]) -> list[str]:
    """Every training run of params.yaml's ``seeds`` section, in its order: ``["clip-s0", ...]``.

    Raises:
        KeyError: a model of ``seeds`` has no ``pretrain.models`` entry.
    """
    models = params.get("pretrain", {}).get("models", {})
    unknown = sorted(set(params.get("seeds", {})) - set(models))
    if unknown:
        raise KeyError(f"params.yaml seeds: {unknown} have no entry under pretrain.models")
    return [run_name(m, s) for m, seeds in params.get("seeds", {}).items() for s in seeds]


def stage_params(params: dict[str, Any], section: str, item: str | None = None) -> dict[str, Any]:
    """The parameters of one stage: ``params[section]``, or for a ``foreach`` stage the section's
    ``common`` block merged with ``params[section]['models'][<model>]``.

    ``item`` is a model name, or a run name ``<model>-s<seed>``: then ``seed`` is set to that seed, which
    must be listed for the model in the top-level ``seeds`` section.

    Raises:
        KeyError: no such section, model, or seed of that model.
    """
    if section not in params:
        raise KeyError(f"params.yaml has no section {section!r}; sections: {sorted(params)}")
    block = params[section]
    if item is None:
        return copy.deepcopy(block)
    models = block.get("models", {})
    model, seed = item, None
    match = RUN_NAME.match(item)
    if item not in models and match:
        model, seed = match["model"], int(match["seed"])
    if model not in models:
        raise KeyError(f"params.yaml section {section!r} has no entry {model!r} under 'models'; "
                       f"known: {sorted(models)}")
    merged = deep_merge(block.get("common", {}), {**models[model], "model": model})
    if seed is not None:
        listed = params.get("seeds", {}).get(model, [])
        if seed not in listed:
            raise KeyError(f"run {item!r}: seed {seed} is not in params.yaml seeds.{model} = {listed}")
        merged["seed"] = seed
    return merged


def select_params(fn: Callable[..., Any], namespace: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``namespace`` (a notebook's globals after Papermill injected a stage's params)
    that ``fn`` takes as keyword arguments."""
    accepted = inspect.signature(fn).parameters
    return {k: namespace[k] for k in accepted if k in namespace}


def apply_size(name: str, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a params.yaml) with the parameter-set size ``medvlp/sizes/<name>.yaml`` merged over it (e.g.
    ``paper``: every model sized like its paper, for GPUs)."""
    from importlib import resources

    folder = resources.files("medvlp.sizes")
    known = sorted(e.name[:-5] for e in folder.iterdir() if e.name.endswith(".yaml"))
    if name not in known:
        raise ValueError(f"unknown size {name!r}; known: {known}")
    overlay = load_yaml(folder.joinpath(f"{name}.yaml").read_text("utf-8")) or {}
    # top-level ``x-*`` keys only hold YAML anchors that the size's sections reuse
    return deep_merge(base, {k: v for k, v in overlay.items() if not k.startswith("x-")})
