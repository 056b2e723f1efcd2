"""Training configuration: the known model recipes and the parsed ``pretrain`` parameters.

``params.yaml`` has a ``pretrain`` section with a ``common`` block and one entry per model under
``models``; ``medvlp.params.stage_params(params, "pretrain", name)`` merges them into the flat dict
that :meth:`TrainConfig.from_params` reads (``model`` = the entry's name).

A *recipe* says what a model name means: the ``medvlp.models`` preset to build and the default
settings of each training stage (task, loss, freezing). An entry may name another recipe
(``recipe: clip``) to train a variant under its own name. Stage settings given in ``params.yaml``
override the recipe's stage of the same index.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any

from medvlp.stage_args import require_keys

#: How a caller passes every setting (the end of the message of a missing one).
HOW_TO_PASS = ("pass the run's merged params: medvlp.params.stage_params(medvlp.params.load_params(), 'pretrain', "
               "'<model>-s<seed>'), pretrain.common with pretrain.models.<model> over it")

#: 2D modalities of RadCLIP's first stage (radiology only).
RADIOLOGY_MODALITIES = ("chest_xray", "ct_slice", "brain_mri")

#: image_text: 2D figure-caption pairs; volume_text: one embedding per CT volume vs its report;
#: anatomy_text: fVLM's per-anatomy embeddings vs per-anatomy report texts.
TASKS = {"image_text": "figures", "volume_text": "ct", "anatomy_text": "ct"}
#: Tasks each model kind can train.
KIND_TASKS = {"dual_encoder": ("image_text",), "radclip": ("image_text", "volume_text"),
              "ct_global": ("volume_text",), "fvlm": ("anatomy_text",)}
#: fVLM false-negative calibrations (``StageConfig.calibration``).
CALIBRATIONS = ("none", "normal", "both")
#: PC-Align settings (``pc_align``): which images a concept mention is a positive for, and whether
#: negated mentions ("no effusion") are aligned.
PC_ALIGN_CHOICES = {"positives": ("paper", "concept"), "negated_mentions": ("keep", "drop")}
#: Settings of the abnormal false-negative calibration (``abnormal_calibration``).
ABNORMAL_CALIBRATION_KEYS = ("ema_momentum", "weight", "threshold", "temperature")
#: Model parts a stage may freeze (attribute names; absent ones are ignored for that model).
FREEZABLE = {
    "image": ("image",),
    "text": ("text",),
    "volume": ("volume", "volume_proj"),
    "anatomy_pool": ("pool",),
    "slice_pool": ("slice_pool", "volume_proj"),
    "concept_heads": ("image_proj", "text_proj", "concept_logit_scale", "concept_logit_bias"),
    "logit_scale": ("logit_scale", "logit_bias"),
}


@dataclass(frozen=True)
class Recipe:
    """preset: the ``medvlp.models`` preset; stages: default settings of each stage."""

    preset: str
    stages: tuple[dict, ...]
    description: str


_RADCLIP_STAGES = (
    {"name": "2d", "task": "image_text", "loss": "contrastive", "modalities": list(RADIOLOGY_MODALITIES),
     "freeze": ["text"]},
    {"name": "slice_pooling", "task": "volume_text", "loss": "contrastive", "freeze": ["text", "image"]},
)

RECIPES: dict[str, Recipe] = {
    "clip": Recipe("clip", ({"task": "image_text", "loss": "contrastive"},),
                   "2D image-text, softmax InfoNCE (IT-Align baseline)"),
    "siglip": Recipe("siglip", ({"task": "image_text", "loss": "sigmoid"},),
                     "2D image-text, sigmoid loss (ConceptCLIP IT-Align alone)"),
    "conceptclip": Recipe("conceptclip", (
        {"name": "it_align", "task": "image_text", "loss": "sigmoid", "pc_align_weight": 0.0},
        {"name": "it_pc_align", "task": "image_text", "loss": "sigmoid", "pc_align_weight": 0.5},
    ), "ConceptCLIP: IT-Align, then IT-Align + 0.5 PC-Align"),
    "ct_clip_global": Recipe("ct_clip_global", ({"task": "volume_text", "loss": "contrastive"},),
                             "3D global embedding vs the full report (CT-CLIP-style baseline)"),
    "fvlm": Recipe("fvlm", ({"task": "anatomy_text", "calibration": "both"},),
                   "fVLM anatomy-level alignment with both false-negative calibrations (normal pairs, "
                   "abnormal pairs by an EMA text teacher)"),
    "fvlm_normalcal": Recipe("fvlm", ({"task": "anatomy_text", "calibration": "normal"},),
                             "fVLM anatomy-level alignment with the normal-pair calibration only (ablation)"),
    "fvlm_nocal": Recipe("fvlm", ({"task": "anatomy_text", "calibration": "none"},),
                         "fVLM anatomy-level alignment without calibration (ablation)"),
    "radclip": Recipe("radclip", _RADCLIP_STAGES,
                      "RadCLIP: 2D radiology CLIP, then attention slice pooling on CT volume-report pairs"),
    "radclip_meanpool": Recipe("radclip_meanpool", _RADCLIP_STAGES,
                               "RadCLIP with mean slice pooling (ablation)"),
}
KNOWN_MODELS = tuple(RECIPES)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)} "
                         "(or give the entry a 'recipe: <known model>' key)")
    return RECIPES[name]


@dataclass(frozen=True)
class StageConfig:
    """One training stage.

    steps: optimiser steps. task: ``image_text`` | ``volume_text`` | ``anatomy_text``.
    loss: ``contrastive`` (softmax InfoNCE) or ``sigmoid`` (image_text / volume_text).
    pc_align_weight: lambda of PC-Align (0 = off; the concept heads are then frozen).
    calibration: fVLM's false-negative calibration: ``none`` (identity targets, plain InfoNCE),
        ``normal`` (normal-normal pairs and identical texts are positives), ``both`` (also soft positives
        between abnormal samples from an EMA text teacher; settings in ``abnormal_calibration``).
    modalities: keep only figures of these modalities (None = all).
    freeze: model parts frozen in this stage (keys of ``FREEZABLE``).
    lr, warmup_steps: this stage's peak learning rate / warm-up (None = the ``optimizer`` block's).
    global_batch_size: this stage's global batch (None = the run's).
    """

    steps: int
    task: str
    name: str = ""
    loss: str = "contrastive"
    pc_align_weight: float = 0.0
    calibration: str = "none"
    modalities: tuple[str, ...] | None = None
    freeze: tuple[str, ...] = ()
    lr: float | None = None
    warmup_steps: int | None = None
    global_batch_size: int | None = None

    @property
    def collection(self) -> str:
        return TASKS[self.task]

    @classmethod
    def parse(cls, raw: dict, where: str) -> StageConfig:
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")
        if "steps" not in raw:
            raise ValueError(f"{where}: 'steps' is required")
        values = dict(raw)
        if not isinstance(values["steps"], int) or values["steps"] < 1:
            raise ValueError(f"{where}: steps must be a positive integer, got {values['steps']!r}")
        if values.get("task") not in TASKS:
            raise ValueError(f"{where}: task must be one of {sorted(TASKS)}, got {values.get('task')!r}")
        if values.get("loss", "contrastive") not in ("contrastive", "sigmoid"):
            raise ValueError(f"{where}: loss must be 'contrastive' or 'sigmoid', got {values['loss']!r}")
        bad = sorted(set(values.get("freeze") or ()) - set(FREEZABLE))
        if bad:
            raise ValueError(f"{where}: cannot freeze {bad}; freezable parts: {sorted(FREEZABLE)}")
        values["freeze"] = tuple(values.get("freeze") or ())
        if values.get("modalities") is not None:
            values["modalities"] = tuple(values["modalities"])
        if float(values.get("pc_align_weight", 0.0)) < 0:
            raise ValueError(f"{where}: pc_align_weight must be >= 0")
        if values.get("calibration", "none") not in CALIBRATIONS:
            raise ValueError(f"{where}: calibration must be one of {CALIBRATIONS}, got {values['calibration']!r}")
        return cls(**values)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one pre-training run (the flat ``pretrain`` params of one model).

    See ``params.yaml`` (section ``pretrain``) for the meaning of each key. Every key of ``pretrain.common``
    is required, here and inside the ``optimizer``, ``image_augment`` and ``volume`` blocks: params.yaml is
    the one place that sets them (:meth:`from_params` names the missing ones). ``recipe`` is the one
    optional key (default: the model's own name).
    """

    model: str
    stages: tuple[StageConfig, ...]
    recipe: str
    architecture: dict
    curated_dir: str
    out_dir: str
    seed: int
    deterministic: bool
    device: str
    precision: str
    global_batch_size: int
    grad_accum_steps: int
    num_workers: int
    shuffle_buffer: int
    optimizer: dict
    grad_clip_norm: float | None
    val_every: int
    val_max_samples: int
    checkpoint_every: int
    grad_checkpointing: bool
    compile: bool
    resume: Any
    loss_chunk_size: Any
    init_open_clip: str | None
    init_from: dict | None
    image_augment: dict
    volume: dict
    report_sections: tuple[str, ...]
    pc_align: dict | None
    abnormal_calibration: dict | None

    @classmethod
    def from_params(cls, params: dict) -> TrainConfig:
        """Parse the flat params of one model (``stage_params(params, "pretrain", "<model>-s<seed>")``).

        Raises:
            ValueError: unknown model/recipe (listing the known ones), unknown keys, bad values;
                :class:`~medvlp.stage_args.MissingParamsError` (a ValueError) for missing keys, naming them
                and their params.yaml section.
        """
        raw = copy.deepcopy(dict(params))
        if "model" not in raw:
            raise ValueError(f"pretrain params: 'model' is missing; known models: {', '.join(KNOWN_MODELS)}")
        name = raw["model"]
        recipe_name = raw.pop("recipe", None) or name
        recipe = get_recipe(recipe_name)
        allowed = {f.name for f in fields(cls)} - {"recipe"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"pretrain params of {name!r}: unknown keys {unknown}; "
                             f"allowed: {sorted(allowed)}")
        where = f"pretrain params of {name!r}"
        require_keys(raw, COMMON_KEYS, "pretrain.common", where, HOW_TO_PASS)
        user_stages = raw.pop("stages", None)
        if not user_stages:
            raise ValueError(f"pretrain params of {name!r}: 'stages' is required, a list of "
                             f"{len(recipe.stages)} stage(s) each with at least 'steps'")
        if len(user_stages) != len(recipe.stages) and len(recipe.stages) > 1:
            raise ValueError(f"pretrain params of {name!r}: recipe {recipe_name!r} has {len(recipe.stages)} "
                             f"stages ({recipe.description}); params give {len(user_stages)}")
        stages = tuple(
            StageConfig.parse({**recipe.stages[min(i, len(recipe.stages) - 1)], **(s or {})},
                              f"pretrain params of {name!r}, stage {i}")
            for i, s in enumerate(user_stages))
        for key, keys in BLOCK_KEYS.items():
            given = raw[key]
            if not isinstance(given, dict):
                raise ValueError(f"{where}: {key} must be a mapping with the keys {list(keys)}, got {given!r}")
            bad = sorted(set(given) - set(keys))
            if bad:
                raise ValueError(f"{where}: {key}: unknown keys {bad}; allowed: {sorted(keys)}")
            require_keys(given, keys, f"pretrain.common.{key}", where, HOW_TO_PASS)
        raw["report_sections"] = tuple(raw["report_sections"])
        raw["out_dir"] = str(raw["out_dir"]).format(model=name, seed=raw["seed"])
        cfg = cls(stages=stages, recipe=recipe_name, **raw)
        cfg._validate()
        return cfg

    @classmethod
    def from_namespace(cls, namespace: dict[str, Any]) -> TrainConfig:
        """Parse the keys of ``namespace`` that are settings (a notebook's globals after Papermill
        injected the stage's params, ``null`` ones included); every other name is ignored. A missing
        setting raises :class:`~medvlp.stage_args.MissingParamsError` (see :meth:`from_params`)."""
        keys = {f.name for f in fields(cls)}
        return cls.from_params({k: v for k, v in namespace.items() if k in keys})

    def _validate(self) -> None:
        where = f"pretrain params of {self.model!r}"
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"{where}: precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.resume not in ("auto", True, False):
            raise ValueError(f"{where}: resume must be 'auto', true or false, got {self.resume!r}")
        for key in ("global_batch_size", "grad_accum_steps", "val_every", "checkpoint_every"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"{where}: {key} must be a positive integer, got {getattr(self, key)!r}")
        init = self.init_from
        if init is not None and (not isinstance(init, dict) or "path" not in init or set(init) - {"path", "parts"}):
            raise ValueError(f"{where}: init_from must be {{path: <medvlp model file>, parts: [image, text]}}, "
                             f"got {init!r}")
        if self.num_workers < 0:
            raise ValueError(f"{where}: num_workers must be >= 0")
        from medvlp.models.configs import PRESETS

        kind = self.architecture.get("kind") or PRESETS[self.preset]["kind"]
        for i, stage in enumerate(self.stages):
            if stage.task not in KIND_TASKS[kind]:
                raise ValueError(f"{where}, stage {i}: task {stage.task!r} cannot train a {kind!r} model "
                                 f"(it trains {list(KIND_TASKS[kind])})")
            if stage.pc_align_weight > 0 and self.preset != "conceptclip" and \
                    not self.architecture.get("concept_heads"):
                raise ValueError(f"{where}, stage {i}: pc_align_weight needs a model with concept heads "
                                 "(recipe conceptclip or architecture.concept_heads: true)")
        if any(s.pc_align_weight > 0 for s in self.stages):
            _check_choices(self.pc_align, PC_ALIGN_CHOICES, f"{where}: pc_align")
        if any(s.calibration == "both" for s in self.stages):
            cal = self.abnormal_calibration
            if not isinstance(cal, dict) or sorted(cal) != sorted(ABNORMAL_CALIBRATION_KEYS):
                raise ValueError(f"{where}: calibration 'both' needs abnormal_calibration with exactly the keys "
                                 f"{list(ABNORMAL_CALIBRATION_KEYS)}, got {cal!r}")
            if not 0 <= float(cal["ema_momentum"]) < 1 or float(cal["temperature"]) <= 0 or float(cal["weight"]) < 0:
                raise ValueError(f"{where}: abnormal_calibration needs 0 <= ema_momentum < 1, temperature > 0 and "
                                 f"weight >= 0, got {cal}")

    @property
    def preset(self) -> str:
        return RECIPES[self.recipe].preset

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def to_dict(self) -> dict:
        """Plain-Python view (for run_info.json and checkpoints)."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}
        out["stages"] = [{f.name: getattr(s, f.name) for f in fields(s)} for s in self.stages]
        return _plain(out)


#: The keys of the ``optimizer``, ``image_augment`` and ``volume`` blocks (all required; params.yaml's
#: ``pretrain.common`` sets them).
OPTIMIZER_KEYS = ("lr", "weight_decay", "betas", "eps", "warmup_steps", "min_lr_ratio", "text_lr_scale")
IMAGE_AUGMENT_KEYS = ("scale", "ratio", "hflip_prob", "vflip_prob", "brightness", "contrast")
VOLUME_KEYS = ("spatial_size", "hu_window", "pixdim", "flip_prob", "flip_axes", "slice_stride")
BLOCK_KEYS: dict[str, tuple[str, ...]] = {"optimizer": OPTIMIZER_KEYS, "image_augment": IMAGE_AUGMENT_KEYS,
                                          "volume": VOLUME_KEYS}
#: Every key of params.yaml's ``pretrain.common``: the settings :meth:`TrainConfig.from_params` requires
#: besides ``model`` and ``stages`` (``recipe`` is optional).
COMMON_KEYS: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig) if f.name not in ("model", "stages", "recipe"))


def _check_choices(given: Any, choices: dict[str, tuple[str, ...]], where: str) -> None:
    """``given`` must be a dict with exactly the keys of ``choices``, each set to one of its values."""
    if not isinstance(given, dict) or set(given) != set(choices):
        expected = ", ".join(f"{k}: {' | '.join(v)}" for k, v in choices.items())
        raise ValueError(f"{where}: expected {{{expected}}}, got {given!r}")
    for key, allowed in choices.items():
        if given[key] not in allowed:
            raise ValueError(f"{where}.{key}: must be one of {allowed}, got {given[key]!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
