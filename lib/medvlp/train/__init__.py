"""Pre-training engine: one trainer for every model of the pipeline (docs/architecture.md).

    from medvlp.train import train
    params = stage_params(load_params("params.yaml"), "pretrain", "conceptclip")
    result = train(params, out_dir="reports/pretrain/conceptclip")

or from a shell, one process or many::

    python -m medvlp.train --params params.yaml --model conceptclip
    torchrun --nproc_per_node=8 -m medvlp.train --params params.yaml --model conceptclip

Modules, one job each: ``config`` (recipes + parsed params), ``data`` (streaming shards),
``transforms`` (2D / 3D / slices), ``steps`` (loss terms per task), ``optim`` (AdamW groups,
warm-up + cosine), ``checkpoint`` (atomic last/best, exact resume), ``distributed`` (torchrun),
``determinism`` (seeds, switch, RNG states), ``runlog`` (CSV, run_info.json), ``loop`` (the trainer).

The names below are imported lazily (PEP 562), as in :mod:`medvlp.curate`: ``import medvlp.train.data`` (the
evaluation's loaders) or ``medvlp.train.text_encoder`` does not import the trainer, so the DVC stages that use
them do not depend on it (tests/test_dvc_deps.py).
"""

from __future__ import annotations

from medvlp.lazy_exports import lazy_exports

_EXPORTS = {
    "config": ("KNOWN_MODELS", "RECIPES", "Recipe", "StageConfig", "TrainConfig", "get_recipe"),
    "loop": ("StopTraining", "Trainer", "TrainResult", "train"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
