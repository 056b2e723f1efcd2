"""Training checkpoints: ``last.pt`` (everything needed to resume exactly) and ``best.pt`` (weights).

Both are ``medvlp.models`` model files (``{"format": "medvlp-model", "config", "state_dict",
"extra"}``), so ``medvlp.models.load_model("last.pt")`` rebuilds the trained model. ``last.pt``
adds ``"train_state"``: step, stage, data position, optimiser, LR scheduler, gradient scaler, the
random-number-generator states of every rank, and the best validation loss so far. Everything is
stored as tensors and plain Python values (``torch.load(weights_only=True)`` reads it) and written
atomically (a temporary file, then ``os.replace``): a run killed while saving leaves the previous
checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvlp.models.checkpoint import MODEL_FILE_FORMAT, atomic_torch_save, model_file_payload

LAST = "last.pt"
BEST = "best.pt"


def save_checkpoint(path: str | Path, model: nn.Module, train_state: dict[str, Any],
                    extra: dict | None = None) -> Path:
    """Write a resumable checkpoint (model file + ``train_state``) atomically; returns ``path``.
    ``best.pt`` is a plain model file: :func:`medvlp.models.checkpoint.save_model`."""
    atomic_torch_save({**model_file_payload(model, extra), "train_state": train_state}, path)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on CPU).

    Raises:
        FileNotFoundError / ValueError: naming the file when it is missing or not a resumable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    resumable = isinstance(payload, dict) and payload.get("format") == MODEL_FILE_FORMAT
    if not resumable or "train_state" not in payload:
        raise ValueError(f"{str(path)!r} is not a resumable medvlp training checkpoint (no train_state); "
                         "delete it or set resume: false")
    return payload


def optimizer_state_to_cpu(state: dict) -> dict:
    """A copy of an optimiser / scaler state dict with every tensor on the CPU."""
    def move(v):
        if isinstance(v, torch.Tensor):
            return v.detach().cpu().clone()
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return type(v)(move(x) for x in v)
        return v
    return move(state)
