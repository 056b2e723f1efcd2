"""Benchmark of the medvlp training step: samples/s against open_clip's own step, PC-Align overhead, MFU.

    .venv/bin/python bench/train_throughput.py [--device cpu|cuda] [--batch N] [--repeats N] [--markdown]

Cases, measured in one run on the same inputs (random images, tokenized synthetic captions):

1. ``clip``: our trainer's step (``medvlp.train.loop.optimizer_step`` over a ``LossModule`` of the
   ``clip`` model: contrastive_loss, AdamW from ``medvlp.train.optim``, warm-up + cosine schedule,
   gradient clipping at 1.0, logit-scale clamp) vs open_clip's step on ``open_clip.model.CLIP``
   built from the same model config: ``open_clip.loss.ClipLoss``, AdamW with open_clip's parameter
   groups and the same hyper-parameters, the same schedule, clipping and clamp (as open_clip's
   ``training/train.py`` does them). Target: ratio >= 0.95.
2. ``conceptclip`` (sigmoid IT-Align + 0.5 PC-Align, 3 concepts per caption) vs ``siglip`` (IT-Align
   only), both ours: PC-Align overhead in % of step time. Target: <= 15%.

Each step is forward + backward + optimiser step; after ``--warmup`` steps, ``--repeats`` timings of
``--iters`` steps each alternate between the two sides of a case (so drifting machine load hits
both), and the median gives samples/s. CPU: float32. CUDA: bf16 autocast, and the model FLOPs of
one step (forward + backward, counted by ``torch.utils.flop_counter.FlopCounterMode``) give the MFU
against ``--peak-tflops`` (H100 SXM dense bf16: 989).

Defaults: CPU ``medvlp-tiny`` at batch 64; CUDA ``ViT-B-16`` (224 px) at batch 128.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from medvlp.models import build_model, get_clip_config, tokenize_with_concepts
from medvlp.train.config import StageConfig
from medvlp.train.loop import optimizer_step
from medvlp.train.optim import build_optimizer, build_scheduler, clamp_logit_scales
from medvlp.train.steps import LossModule

LR, WEIGHT_DECAY, BETAS, EPS, CLIP_NORM = 5e-4, 0.2, (0.9, 0.98), 1e-6, 1.0
WORDS = ["chest", "x-ray", "shows", "a", "small", "nodule", "in", "the", "right", "upper", "lobe", "with",
         "mild", "effusion", "and", "no", "pneumothorax", "axial", "ct", "slice", "of", "liver", "lesion"]
CONCEPTS = ["pleural effusion", "lung nodule", "cardiomegaly", "consolidation", "fracture"]


def make_batch(cfg: dict, batch: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random images and synthetic captions with 3 concept mentions each (char spans -> token spans)."""
    g = torch.Generator().manual_seed(seed)
    size = cfg["vision_cfg"]["image_size"]
    captions, spans = [], []
    for i in range(batch):
        words = [WORDS[int(j)] for j in torch.randint(len(WORDS), (12,), generator=g)]
        caption, cs = "", []
        for k in range(3):
            concept = CONCEPTS[(i + k) % len(CONCEPTS)]
            caption += " ".join(words[4 * k:4 * k + 4]) + " "
            cs.append((len(caption), len(caption) + len(concept)))
            caption += concept + ". "
        captions.append(caption.strip())
        spans.append(cs)
    from medvlp.models import build_tokenizer

    tok = tokenize_with_concepts(build_tokenizer(cfg["text_cfg"]), captions, spans,
                                 int(cfg["text_cfg"].get("context_length", 77)))
    images = torch.randn(batch, 3, size, size, generator=g)
    out = {"image": images, "ids": tok.ids, "concept_spans": tok.spans, "concept_owner": tok.owner}
    return {k: v.to(device) for k, v in out.items()}


class OursStep:
    """Our trainer's optimiser step for a preset (``clip``, ``siglip``, ``conceptclip``)."""

    def __init__(self, preset: str, clip_model: str, batch: dict, amp_dtype, pc_align_weight: float = 0.0):
        torch.manual_seed(0)
        self.model = build_model(preset, clip_model=clip_model).to(batch["image"].device)
        loss = "contrastive" if preset == "clip" else "sigmoid"
        self.module = LossModule(self.model)
        stage = StageConfig(steps=10**6, task="image_text", loss=loss, pc_align_weight=pc_align_weight)
        self.module.set_stage(stage)
        from medvlp.train.loop import freeze_for_stage

        freeze_for_stage(self.model, stage)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, LR, WEIGHT_DECAY, BETAS, EPS)
        self.scheduler = build_scheduler(self.optimizer, 10, 10**6)
        self.scaler = torch.amp.GradScaler(batch["image"].device.type, enabled=False)
        self.batch, self.amp_dtype = batch, amp_dtype

    def __call__(self) -> None:
        optimizer_step(self.module, iter([self.batch]), self.optimizer, self.scheduler, self.scaler,
                       self.trainable, grad_clip_norm=CLIP_NORM, amp_dtype=self.amp_dtype)

    def forward_backward(self) -> None:
        with torch.autocast(self.batch["image"].device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            loss = self.module(self.batch)["loss"]
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)


class OpenClipStep:
    """open_clip's own training step (``training/train.py``: forward, ClipLoss, backward, clip, step)."""

    def __init__(self, clip_model: str, batch: dict, amp_dtype):
        import open_clip

        torch.manual_seed(0)
        cfg = get_clip_config(clip_model)
        self.model = open_clip.model.CLIP(**cfg, output_dict=True).to(batch["image"].device)
        self.loss = open_clip.loss.ClipLoss()
        exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        named = list(self.model.named_parameters())
        groups = [{"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
                  {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad],
                   "weight_decay": WEIGHT_DECAY}]
        # the fused kernel, as medvlp's build_optimizer picks on CPU and CUDA: the same optimiser step
        self.optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, fused=True)
        self.scheduler = build_scheduler(self.optimizer, 10, 10**6)
        self.batch, self.amp_dtype = batch, amp_dtype

    def __call__(self) -> None:
        self.model.train()
        with torch.autocast(self.batch["image"].device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            out = self.model(self.batch["image"], self.batch["ids"])
            loss = self.loss(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        clamp_logit_scales(self.model)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pair(a, b, batch_size: int, device: torch.device, warmup: int, repeats: int,
              iters: int) -> tuple[float, float]:
    """Median samples/s of two step callables, timed alternately."""
    for _ in range(warmup):
        a()
        b()
    _sync(device)
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(repeats):
        for i, fn in enumerate((a, b)):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            _sync(device)
            times[i].append((time.perf_counter() - t0) / iters)
    return batch_size / statistics.median(times[0]), batch_size / statistics.median(times[1])


def step_flops(step: OursStep) -> int:
    """FLOPs of one forward + backward of our step (FlopCounterMode: matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step.forward_backward()
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--clip-model", default=None, help="default: medvlp-tiny (cpu), ViT-B-16 (cuda)")
    parser.add_argument("--batch", type=int, default=None, help="default: 64 (cpu), 128 (cuda)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=None, help="steps per timing (default 2 cpu, 10 cuda)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak for MFU (H100: 989)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    clip_model = args.clip_model or ("ViT-B-16" if cuda else "medvlp-tiny")
    batch_size = args.batch or (128 if cuda else 64)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    iters = args.iters or (10 if cuda else 2)
    amp_dtype = torch.bfloat16 if cuda else None
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = get_clip_config(clip_model)
    if cfg["vision_cfg"].get("medvlp_conv"):
        parser.error(f"--clip-model {clip_model}: open_clip cannot build medvlp's conv tower, so there is no "
                     "open_clip step to compare with; pick an open_clip ViT config (medvlp-tiny, ViT-B-16, ...)")
    batch = make_batch(cfg, batch_size, device)

    results: dict = {"device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
                     "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                     "clip_model": clip_model, "batch": batch_size, "precision": "bf16" if cuda else "fp32",
                     "repeats": args.repeats, "iters": iters}

    ours = OursStep("clip", clip_model, batch, amp_dtype)
    theirs = OpenClipStep(clip_model, batch, amp_dtype)
    ours_sps, theirs_sps = time_pair(ours, theirs, batch_size, device, warmup, args.repeats, iters)
    results["clip"] = {"medvlp_samples_per_s": ours_sps, "open_clip_samples_per_s": theirs_sps,
                       "ratio": ours_sps / theirs_sps, "target": ">= 0.95"}
    if cuda:
        flops = step_flops(ours)
        results["clip"]["flops_per_step"] = flops
        results["clip"]["tflops_per_s"] = flops * ours_sps / batch_size / 1e12
        results["clip"]["mfu"] = flops * ours_sps / batch_size / (args.peak_tflops * 1e12)
        results["clip"]["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del ours, theirs

    siglip = OursStep("siglip", clip_model, batch, amp_dtype)
    concept = OursStep("conceptclip", clip_model, batch, amp_dtype, pc_align_weight=0.5)
    siglip_sps, concept_sps = time_pair(siglip, concept, batch_size, device, warmup, args.repeats, iters)
    results["pc_align"] = {"siglip_samples_per_s": siglip_sps, "conceptclip_samples_per_s": concept_sps,
                           "overhead_percent": (siglip_sps / concept_sps - 1) * 100, "target": "<= 15%",
                           "concepts_per_batch": int(batch["concept_spans"].shape[0])}
    if cuda:
        flops = step_flops(concept)
        results["pc_align"]["conceptclip_mfu"] = flops * concept_sps / batch_size / (args.peak_tflops * 1e12)

    if args.markdown:
        c, p = results["clip"], results["pc_align"]
        print(f"| case ({results['device']}, {clip_model}, batch {batch_size}, {results['precision']}) "
              "| medvlp samples/s | baseline samples/s | ratio / overhead | target |")
        print("|---|---|---|---|---|")
        mfu = f", MFU {c['mfu'] * 100:.1f}%" if "mfu" in c else ""
        print(f"| clip step vs open_clip step | {c['medvlp_samples_per_s']:.1f} | "
              f"{c['open_clip_samples_per_s']:.1f} | {c['ratio']:.3f}{mfu} | >= 0.95 |")
        print(f"| conceptclip (PC-Align) vs siglip | {p['conceptclip_samples_per_s']:.1f} | "
              f"{p['siglip_samples_per_s']:.1f} | +{p['overhead_percent']:.1f}% | <= 15% |")
    else:
        print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
