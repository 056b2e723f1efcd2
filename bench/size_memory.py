"""Memory of one training step of the paper-sized models (``medvlp size paper``), per sample.

    .venv/bin/python bench/size_memory.py [--device cpu|cuda] [--batch 2] [--models conceptclip fvlm radclip]

For each model, the paper size's architecture is built and one optimiser step of its first stage
runs on ``--batch`` random samples (with its gradient checkpointing). Printed: parameters,
the fixed memory of fp32 weights (4 bytes per parameter) + gradients + AdamW state (12 bytes per
trainable parameter), and
the measured peak memory of the step above the fixed part, per sample (activations). On CUDA the
step runs in bf16 autocast and the peak is ``torch.cuda.max_memory_allocated``; on CPU it runs in
fp32 and the peak is the resident-set high-water mark (``VmHWM``, reset before the step), an upper
bound for bf16 activations (each model in a fresh process; at batch 2 the CPU figure varies by about
+-25% between runs with the allocator's state).

Estimated GPU memory for a per-GPU batch b: fixed + b x per-sample (the README table).

The paper size's pretrained text towers (PubMedBERT, BERT-base) need not be on the machine: their folders are
replaced by a BERT of BERT-base size built here from random weights (:func:`offline_text_towers`), which
takes the same memory.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from losses import _reset_hwm, _rss_bytes  # noqa: E402  (the loss benchmark's RSS probes)

from medvlp.models import count_parameters  # noqa: E402
from medvlp.params import apply_size, load_params, stage_params  # noqa: E402
from medvlp.train.config import TrainConfig  # noqa: E402
from medvlp.train.ema import EMATextTower  # noqa: E402
from medvlp.train.loop import enable_grad_checkpointing, freeze_for_stage  # noqa: E402
from medvlp.train.optim import build_optimizer  # noqa: E402
from medvlp.train.steps import LossModule  # noqa: E402

GIB = 2**30


def offline_text_towers(params: dict, folder: Path) -> dict:
    """``params`` with every Hugging Face text tower replaced by a random BERT-base-sized one saved in ``folder``
    (same width, depth and vocabulary size as BERT-base; a WordPiece tokenizer learnt on a few words)."""
    from transformers import BertConfig, BertModel

    from medvlp.train.text_encoder import train_wordpiece

    train_wordpiece(["pleural effusion", "lung nodule", "no acute abnormality"], 100, folder)
    config = BertConfig(max_position_embeddings=512)  # BERT-base: 768 wide, 12 layers, 30522 entries
    BertModel(config, add_pooling_layer=False).save_pretrained(str(folder))

    def swap(node):
        if isinstance(node, dict):
            if "hf_model_name" in node:
                node = {**node, "hf_model_name": str(folder), "hf_model_pretrained": False}
            return {k: swap(v) for k, v in node.items()}
        return node

    return swap(params)


def random_batch(cfg: TrainConfig, model, batch: int, device) -> dict:
    """A batch of random inputs shaped like the model's first stage."""
    stage = cfg.stages[0]
    text_cfg = model.config["clip_model"]["text_cfg"]
    vocab = int(model.text.tower.vocab_size)
    ids = torch.randint(5, vocab - 1, (batch, int(text_cfg["context_length"])))
    ids[:, -1] = vocab - 1  # open_clip: end of text (the largest id)
    if stage.task == "image_text":
        size = model.image.image_size[0]
        out = {"image": torch.randn(batch, 3, size, size), "ids": ids}
        if stage.pc_align_weight > 0:
            out.update(concept_spans=torch.tensor([[1, 3], [4, 6]] * batch),
                       concept_owner=torch.arange(batch).repeat_interleave(2))
        return {k: v.to(device) for k, v in out.items()}
    size = cfg.volume["spatial_size"]
    out = {"volume": torch.rand(batch, 1, *size), "label_map": torch.randint(0, 11, (batch, *size)).short()}
    if stage.task == "volume_text":
        out["report_ids"] = ids
    else:
        a = model.num_anatomies
        out.update(anatomy_ids=ids[:, None].expand(-1, a, -1).contiguous(), is_normal=torch.rand(batch, a) < 0.5,
                   text_group=torch.randint(0, 1000, (batch, a)))
    return {k: v.to(device) for k, v in out.items()}


def measure(name: str, params: dict, batch: int, device: torch.device) -> dict:
    cfg = TrainConfig.from_params(stage_params(params, "pretrain", name))
    from medvlp.models import build_model

    model = build_model(cfg.preset, **cfg.architecture).to(device)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    freeze_for_stage(model, cfg.stages[0])
    teacher = None
    if cfg.stages[0].calibration == "both":
        teacher = EMATextTower(model.text, cfg.abnormal_calibration["ema_momentum"]).to(device)
    module = LossModule(model, pc_align=cfg.pc_align, teacher=teacher, abnormal_calibration=cfg.abnormal_calibration)
    module.set_stage(cfg.stages[0])
    opt = build_optimizer(model, lr=1e-4)
    trainable = count_parameters(model, trainable_only=True)
    data = random_batch(cfg, model, batch, device)
    gc.collect()
    amp = device.type == "cuda"
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_bytes("VmRSS")
        _reset_hwm()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        loss = module(data)["loss"]
    loss.backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_bytes("VmHWM") - base
    # the weights were resident before the step; gradients and the two AdamW moments appear during it
    during = 12 * trainable
    return {"model": name, "parameters": count_parameters(model), "trainable": trainable,
            "fixed_gib": (4 * count_parameters(model) + during) / GIB,
            "per_sample_gib": max(peak - during, 0) / batch / GIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["conceptclip", "fvlm", "radclip"])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = offline_text_towers(apply_size("paper", load_params(args.params)), Path(tempfile.mkdtemp()))
    device = torch.device(args.device)
    print(f"paper size, first stage of each model, batch {args.batch}, {device.type}")
    print(f"{'model':14s} {'parameters':>12s} {'trainable':>12s} {'fixed GiB':>10s} {'GiB/sample':>11s}")
    for name in args.models:
        if device.type == "cpu" and len(args.models) > 1:
            # RSS high-water marks need a fresh process per model (freed memory of one hides the next's)
            cmd = [sys.executable, __file__, "--device", "cpu", "--batch", str(args.batch), "--params", args.params,
                   "--models", name]
            print(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1], flush=True)
            continue
        r = measure(name, params, args.batch, device)
        print(f"{r['model']:14s} {r['parameters']:12,d} {r['trainable']:12,d} {r['fixed_gib']:10.2f} "
              f"{r['per_sample_gib']:11.3f}", flush=True)


if __name__ == "__main__":
    main()
