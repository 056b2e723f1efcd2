"""Pre-training engine: one trainer for every model of the pipeline (DESIGN.md stage 2).

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
"""

from medvlp.train.config import KNOWN_MODELS, RECIPES, Recipe, StageConfig, TrainConfig, get_recipe
from medvlp.train.loop import StopTraining, Trainer, TrainResult, train

__all__ = [
    "KNOWN_MODELS", "RECIPES", "Recipe", "StageConfig", "StopTraining", "TrainConfig", "TrainResult",
    "Trainer", "get_recipe", "train",
]
