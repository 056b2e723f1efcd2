"""AdamW with the usual CLIP parameter groups, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

#: Parameter-name fragments that never get weight decay (besides every parameter with < 2 dims:
#: biases, norm weights, logit scales and biases): embeddings, learnable queries and positions.
NO_DECAY_NAME_PARTS = ("embedding", "pos_embed", "cls_token", "queries", "query", "logit_scale", "logit_bias")
_NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters exempt from weight decay: < 2 dims, inside a norm / embedding module,
    or named like an embedding, a learnable query/position or a logit scale/bias."""
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            named_exempt = any(k in full for k in NO_DECAY_NAME_PARTS)
            if p.ndim < 2 or isinstance(module, _NO_DECAY_MODULES) or named_exempt:
                names.add(full)
    return names


def parameter_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                     lr_scales: dict[str, float] | None = None) -> list[dict]:
    """AdamW groups over the trainable parameters: ``decay`` and ``no_decay`` (weight decay 0), each split
    further by learning-rate scale when ``lr_scales`` maps a top-level module name (e.g. ``text``) to a factor
    of ``lr`` other than 1 (groups ``decay@text`` etc., with ``lr = lr * factor``).

    Groups keep the parameters in ``model.named_parameters()`` order, so the optimiser state of a
    checkpoint maps back onto the same parameters.
    """
    exempt = no_weight_decay_names(model)
    scales = {k: float(v) for k, v in (lr_scales or {}).items() if float(v) != 1.0}
    groups: dict[tuple[str, str], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            part = name.split(".", 1)[0]
            groups.setdefault(("no_decay" if name in exempt else "decay", part if part in scales else ""), []).append(p)
    out = []
    for decay in ("decay", "no_decay"):
        for part in ["", *sorted(scales)]:
            params = groups.get((decay, part), [])
            if not params and part:
                continue
            group = {"params": params, "weight_decay": weight_decay if decay == "decay" else 0.0,
                     "name": f"{decay}@{part}" if part else decay}
            if part and lr is not None:
                group["lr"] = lr * scales[part]
            out.append(group)
    return out


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1,
                    betas: Iterable[float] = (0.9, 0.98), eps: float = 1e-6,
                    fused: bool | None = None, lr_scales: dict[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` (see :func:`parameter_groups`).

    ``lr_scales``: learning-rate factors of top-level modules (e.g. ``{"text": 0.1}``: a pretrained text tower
    fine-tuned ten times slower). ``fused=None`` uses PyTorch's fused kernel when every parameter is a
    floating-point tensor on one device type that has it (CPU or CUDA): one multi-tensor update instead of a
    loop over parameters, about 15x faster on CPU for the tiny CLIP's 6.3M-entry token embedding.
    """
    groups = parameter_groups(model, weight_decay, lr, lr_scales)
    if not any(g["params"] for g in groups):
        raise ValueError("build_optimizer: the model has no trainable parameter (is every tower frozen?)")
    if fused is None:
        params = [p for g in groups for p in g["params"]]
        fused = len({p.device.type for p in params}) == 1 and params[0].device.type in ("cpu", "cuda") \
            and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based): linear warm-up from
    ``1 / warmup_steps`` to 1 over ``warmup_steps`` steps, then cosine decay to ``min_lr_ratio`` at
    ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :func:`warmup_cosine`; call ``step()`` once after every optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio))


@torch.no_grad()
def clamp_logit_scales(model: nn.Module, max_log_scale: float = math.log(100.0)) -> None:
    """Clamp every ``*logit_scale`` parameter (stored as log t) to ``[0, log 100]`` in place, as
    open_clip does after each step (the models also clamp ``exp`` at 100 when they use it)."""
    for name, p in model.named_parameters():
        if name.endswith("logit_scale"):
            p.clamp_(0.0, max_log_scale)
