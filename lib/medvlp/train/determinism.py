"""Seeds, the determinism switch, and capturing / restoring every random-number generator.

Exact resume needs the state of every generator the training process draws from: Python's
``random``, NumPy's global generator, torch's CPU generator and one generator per CUDA device.
:func:`capture_rng_state` returns them in a form ``torch.load(weights_only=True)`` accepts (tensors,
ints, tuples, dicts), so a checkpoint never needs pickle.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

#: cuBLAS needs a fixed workspace size for deterministic results (CUDA >= 10.2).
CUBLAS_WORKSPACE = ":4096:8"


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_determinism(enabled: bool) -> None:
    """Switch deterministic algorithms on or off.

    On: ``torch.use_deterministic_algorithms(True)`` (an op without a deterministic implementation
    raises), cuDNN deterministic with benchmarking off, and ``CUBLAS_WORKSPACE_CONFIG`` set (it must
    be set before the first cuBLAS call; it is left alone if the user set it). Off: torch defaults
    with cuDNN benchmarking on (fastest kernels, run-to-run differences in the last bits on GPU).
    CPU training is deterministic either way for a fixed thread count.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def capture_rng_state() -> dict[str, Any]:
    """The state of every generator of this process, as tensors / ints / tuples (weights_only-safe)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_as_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants tuples; a round trip through some serialisers gives lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value
