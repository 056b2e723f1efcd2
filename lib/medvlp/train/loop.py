"""The trainer: one loop for every model and stage.

Per optimiser step: ``grad_accum_steps`` micro-batches per rank (DDP synchronises the gradients on
the last one only), autocast (bf16 on CUDA, fp32 on CPU; fp16 with a gradient scaler on request),
gradient clipping, AdamW, the warm-up + cosine schedule, logit scales clamped as in open_clip.
Rank 0 writes a CSV row per step (every loss term averaged over ranks, lr, samples/s), evaluates the
validation split every ``val_every`` steps and at the end of each stage, keeps ``best.pt`` (lowest
validation loss of the current stage), and writes ``last.pt`` every ``checkpoint_every`` steps and
at the end of each stage. ``train`` resumes from ``last.pt`` exactly: same weights, optimiser,
schedule, random-number generators and data position as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from medvlp.models import build_model, count_parameters, load_medvlp_weights, load_open_clip_weights
from medvlp.models.checkpoint import save_model, unwrap_model
from medvlp.train.checkpoint import BEST, LAST, load_checkpoint, optimizer_state_to_cpu, save_checkpoint
from medvlp.train.config import FREEZABLE, RECIPES, StageConfig, TrainConfig
from medvlp.train.determinism import capture_rng_state, restore_rng_state, seed_everything, set_determinism
from medvlp.train.distributed import (
    DistContext,
    all_reduce_mean,
    gather_objects,
    init_distributed,
    micro_batch_size,
    shutdown_distributed,
)
from medvlp.train.ema import EMATextTower
from medvlp.train.optim import build_optimizer, build_scheduler, clamp_logit_scales
from medvlp.train.run_batches import RunBatches
from medvlp.train.runlog import (
    RUN_INFO,
    TRAIN_LOG,
    VAL_LOG,
    RunRecords,
    describe_device,
    git_revision,
    package_versions,
)
from medvlp.train.steps import TERM_NAMES, LossModule

#: Validation batches are kept in memory when they take less than this (else streamed each time).
VAL_CACHE_BYTES = 256 * 2**20
#: Settings that may change between a run and its resume without changing the result.
RESUME_NEUTRAL_KEYS = ("num_workers", "out_dir", "resume", "val_every", "checkpoint_every", "device",
                       "val_max_samples")


class StopTraining(Exception):
    """Raise from a ``callback`` to stop a run at once (as if it were killed)."""


@dataclass(frozen=True)
class TrainResult:
    """What a run leaves behind (paths under ``out_dir``) and its final numbers.

    final_losses: the last step's loss terms (averaged over ranks). final_val: the last validation
    terms (None without a validation split).
    """

    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    train_log: Path
    val_log: Path
    run_info: Path
    final_losses: dict[str, float]
    final_val: dict[str, float] | None
    steps: int
    elapsed_s: float


def train(params: dict | TrainConfig, *, out_dir: str | Path | None = None, progress: bool = True,
          callback: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Pre-train one model as ``params`` say, in this process (one rank of a torchrun job, or alone).

    Args:
        params: the flat ``pretrain`` params of one model (``medvlp.params.stage_params(params,
            "pretrain", name)``) or a parsed :class:`TrainConfig`.
        out_dir: where checkpoints and logs go (default: ``params["out_dir"]``).
        progress: show a tqdm progress bar (rank 0).
        callback: called on every rank after every optimiser step with the logged row (a dict with
            ``step``, ``stage``, ``loss``, ...); raise :class:`StopTraining` to stop.

    Returns:
        :class:`TrainResult`.
    """
    cfg = params if isinstance(params, TrainConfig) else TrainConfig.from_params(params)
    trainer = Trainer(cfg, out_dir=out_dir, progress=progress, callback=callback)
    try:
        return trainer.run()
    finally:
        trainer.close()


# ------------------------------------------------------------------------------------- model set-up

def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recompute transformer blocks in the backward pass: open_clip towers via their own switch,
    MONAI ViT blocks by checkpointing each block's forward (module names unchanged)."""
    from monai.networks.nets import ViT

    for module in model.modules():
        if module is not model and hasattr(module, "set_grad_checkpointing"):
            module.set_grad_checkpointing(True)
        if isinstance(module, ViT):
            for block in module.blocks:
                forward = block.forward
                block.forward = functools.partial(torch.utils.checkpoint.checkpoint, forward,
                                                  use_reentrant=False)


def compile_towers(model: nn.Module) -> None:
    """``torch.compile`` the towers in place (``nn.Module.compile``: parameter names unchanged)."""
    for name in ("image", "text", "volume"):
        tower = getattr(model, name, None)
        if isinstance(tower, nn.Module):
            tower.compile()


def freeze_for_stage(model: nn.Module, stage: StageConfig) -> list[str]:
    """Set ``requires_grad`` for a stage: everything trains except the parts in ``stage.freeze`` and
    the parts the stage does not use (concept heads without PC-Align, slice pooling in 2D stages).
    Returns the frozen attribute names."""
    parts = set(stage.freeze)
    if stage.task == "image_text":
        if stage.pc_align_weight == 0:
            parts.add("concept_heads")
        parts.add("slice_pool")
    frozen = []
    for p in model.parameters():
        p.requires_grad_(True)
    for part in sorted(parts):
        for attr in FREEZABLE[part]:
            target = getattr(model, attr, None)
            if isinstance(target, nn.Module | nn.Parameter):
                target.requires_grad_(False)
            else:
                continue
            frozen.append(attr)
    return frozen


def _precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def optimizer_step(wrapped: nn.Module, micro_batches: Iterator[dict[str, torch.Tensor]],
                   optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                   scaler: torch.amp.GradScaler, trainable: list[nn.Parameter], *, grad_accum_steps: int = 1,
                   grad_clip_norm: float | None = None, amp_dtype: torch.dtype | None = None,
                   distributed: bool = False) -> tuple[dict[str, torch.Tensor], float, torch.Tensor | None]:
    """One optimiser step of the trainer (what ``bench/train_throughput.py`` times).

    For each of ``grad_accum_steps`` micro-batches: ``wrapped(batch)`` (a :class:`LossModule`, maybe
    inside DDP) under autocast, backward of ``loss / grad_accum_steps`` (DDP synchronises on the last
    micro-batch only). Then unscale (fp16), clip the gradient norm, step the optimiser and the
    schedule, clear the gradients and clamp the logit scales.

    Returns:
        (loss terms averaged over the micro-batches (detached 0-dim tensors, this rank), the learning
        rate this step used, the gradient norm before clipping or None).
    """
    wrapped.train()
    sums: dict[str, torch.Tensor] = {}
    device_type = trainable[0].device.type
    for micro in range(grad_accum_steps):
        batch = next(micro_batches)
        last = micro == grad_accum_steps - 1
        no_sync = wrapped.no_sync() if distributed and not last else contextlib.nullcontext()
        with no_sync:
            with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                terms = wrapped(batch)
            scaler.scale(terms["loss"] / grad_accum_steps).backward()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() / grad_accum_steps
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip_norm) if grad_clip_norm else None
    lr = optimizer.param_groups[0]["lr"]
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    clamp_logit_scales(unwrap_model(wrapped))
    return sums, lr, grad_norm


# ----------------------------------------------------------------------------------------- trainer

class Trainer:
    """Holds one run's state; :func:`train` is the entry point.

    Everything the run needs is built here, in this order: the data index (fails on missing data first),
    determinism and seeds, the model (+ initial weights, EMA teacher, checkpointing, compile), the loss
    module, precision, run records. The optimiser, schedule and DDP wrapper are per stage
    (:meth:`_configure_stage`); they are None between stages.
    """

    def __init__(self, cfg: TrainConfig, *, out_dir: str | Path | None = None, progress: bool = True,
                 callback: Callable[[dict[str, Any]], None] | None = None):
        self.cfg, self.callback = cfg, callback
        self.out_dir = Path(out_dir if out_dir is not None else cfg.out_dir)
        self.ctx: DistContext = init_distributed(cfg.device)
        self.progress = progress and self.ctx.is_main
        self._pbar: tqdm | None = None
        # per stage (_configure_stage / _run_stage)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.trainable: list[nn.Parameter] = []
        self.wrapped: nn.Module | None = None
        self.epoch_size = 0
        # progress of the run
        self.step = 0
        self.elapsed = 0.0
        self.best_val: float | None = None
        self.last_val: dict[str, float] | None = None
        self.resumed_from: list[int] = []
        try:
            for stage in cfg.stages:  # fail early on an indivisible batch of any stage
                micro_batch_size(stage.global_batch_size or cfg.global_batch_size, self.ctx.world_size,
                                 cfg.grad_accum_steps)
            self.device = self.ctx.device
            self.data = RunBatches(cfg, rank=self.ctx.rank, world_size=self.ctx.world_size,
                                   pin_memory=self.device.type == "cuda", val_cache_bytes=VAL_CACHE_BYTES,
                                   log=self._log)
            set_determinism(cfg.deterministic)
            seed_everything(cfg.seed)
            self.model = self._build_model()
            # fVLM's EMA text teacher, copied before any compile wrapper
            self.teacher = EMATextTower(self.model.text, cfg.abnormal_calibration["ema_momentum"]).to(self.device) \
                if any(s.calibration == "both" for s in cfg.stages) else None
            if cfg.grad_checkpointing:
                enable_grad_checkpointing(self.model)
            if cfg.compile:
                compile_towers(self.model)
            self.loss_module = LossModule(self.model, cfg.loss_chunk_size, int(cfg.volume["slice_stride"]),
                                          pc_align=cfg.pc_align, teacher=self.teacher,
                                          abnormal_calibration=cfg.abnormal_calibration)
            self.precision = _precision(cfg, self.device)
            self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
            self.records = RunRecords(self.out_dir, self._term_names())
        except BaseException:
            shutdown_distributed(self.ctx)
            raise

    def _build_model(self) -> nn.Module:
        cfg = self.cfg
        model = build_model(cfg.preset, **cfg.architecture)
        if cfg.init_open_clip:
            load_open_clip_weights(model, cfg.init_open_clip)
        if cfg.init_from:
            copied = load_medvlp_weights(model, cfg.init_from["path"], cfg.init_from.get("parts") or ("image", "text"))
            self._log(f"initialised {len(copied)} tensors from {cfg.init_from['path']}")
        return model.to(self.device)

    def batch_size(self, stage: StageConfig) -> int:
        """Global batch of a stage: its own ``global_batch_size`` or the run's."""
        return self.data.batch_size(stage)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # ------------------------------------------------------------------ bookkeeping
    def _term_names(self) -> list[str]:
        names: list[str] = []
        for stage in self.cfg.stages:
            for t in TERM_NAMES[stage.task]:
                if t == "pc_align" and stage.pc_align_weight == 0:
                    continue
                if t not in names:
                    names.append(t)
        return names

    def _log(self, msg: str) -> None:
        if not self.ctx.is_main:
            return
        if self._pbar is not None:
            self._pbar.write(msg)
        elif self.progress:
            print(msg, flush=True)

    def _train_state(self, s_idx: int, stage_step: int) -> dict[str, Any]:
        rng_states = gather_objects(capture_rng_state(), self.ctx)
        return {
            "step": self.step, "stage": s_idx, "stage_step": stage_step,
            "data_position": self._data_position(s_idx, stage_step),
            "optimizer": optimizer_state_to_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "scaler": optimizer_state_to_cpu(self.scaler.state_dict()),
            "rng": rng_states, "world_size": self.ctx.world_size,
            "best_val": self.best_val, "elapsed_s": self.elapsed, "config": self.cfg.to_dict(),
            "resumed_from": list(self.resumed_from),
            "teacher": None if self.teacher is None else {k: v.detach().cpu()
                                                          for k, v in self.teacher.state_dict().items()},
        }

    def _data_position(self, s_idx: int, stage_step: int) -> dict[str, int]:
        """Samples of the stage's stream consumed after ``stage_step`` steps, as (epoch, offset)."""
        samples = stage_step * self.batch_size(self.cfg.stages[s_idx])
        epoch, offset = divmod(samples, self.epoch_size)
        return {"stage": s_idx, "samples": samples, "epoch": epoch, "offset": offset,
                "epoch_size": self.epoch_size}

    def _save_last(self, s_idx: int, stage_step: int) -> None:
        state = self._train_state(s_idx, stage_step)  # collective: every rank
        if self.ctx.is_main:
            save_checkpoint(self.out_dir / LAST, self.model, state,
                            extra={"step": self.step, "stage": s_idx, "model": self.cfg.model,
                                   "train_loss": self.records.last_row.get("loss")})

    def _write_run_info(self, status: str) -> None:
        if not self.ctx.is_main:
            return
        cfg = self.cfg
        self.records.write_info({
            "status": status, "model": cfg.model, "recipe": cfg.recipe,
            "description": RECIPES[cfg.recipe].description, "params": cfg.to_dict(),
            "model_config": self.model.config,
            "parameters": {"total": count_parameters(self.model)},
            "git": git_revision(Path(__file__).resolve().parent), "versions": package_versions(),
            "device": describe_device(self.device, self.ctx.world_size), "precision": self.precision,
            "global_batch_size_per_stage": [self.batch_size(s) for s in cfg.stages],
            "steps_done": self.step, "total_steps": cfg.total_steps, "elapsed_s": round(self.elapsed, 3),
            "resumed_from_steps": self.resumed_from, "final_losses": self.records.final_losses(),
            "final_val": self.last_val, "best_val_loss": self.best_val,
            "files": {"last": LAST, "best": BEST},
        })

    # ------------------------------------------------------------------ resume
    def _load_resume(self) -> dict[str, Any] | None:
        path = self.out_dir / LAST
        if self.cfg.resume is False or (self.cfg.resume == "auto" and not path.is_file()):
            return None
        if not path.is_file():
            raise FileNotFoundError(f"resume: true but {str(path)!r} does not exist; "
                                    "set resume: auto or false")
        payload = load_checkpoint(path)
        self.model.load_state_dict(payload["state_dict"], strict=True)
        state = payload["train_state"]
        old, new = state.get("config", {}), self.cfg.to_dict()
        changed = sorted(k for k in set(old) | set(new)
                         if old.get(k) != new.get(k) and k not in RESUME_NEUTRAL_KEYS)
        if changed:
            self._log(f"warning: resuming {path} with changed settings {changed}; the result will differ "
                      "from an uninterrupted run")
        if state["world_size"] != self.ctx.world_size:
            self._log(f"warning: {path} was written by {state['world_size']} processes, resuming with "
                      f"{self.ctx.world_size}: random-number streams differ")
        if self.teacher is not None:
            if state.get("teacher") is None:
                raise ValueError(f"{path} holds no EMA text teacher but this run's calibration needs one; "
                                 "resume: false starts over")
            self.teacher.load_state_dict(state["teacher"])
        self.step, self.elapsed, self.best_val = state["step"], state["elapsed_s"], state["best_val"]
        self.resumed_from = [*state.get("resumed_from", []), self.step]
        return state

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = self._load_resume()
        if self.ctx.is_main:
            self.records.start(None if state is None else state["step"])
        self._write_run_info("running")
        if state is not None:
            self._log(f"resuming {cfg.model} from step {self.step} ({self.out_dir / LAST})")
        self._pbar = tqdm(total=cfg.total_steps, initial=self.step, desc=f"pretrain {cfg.model}", unit="step",
                          disable=not self.progress, dynamic_ncols=True)
        for s_idx, stage in enumerate(cfg.stages):
            start = 0
            if state is not None:
                if s_idx < state["stage"]:
                    continue
                if s_idx == state["stage"]:
                    start = state["stage_step"]
            if start >= stage.steps:
                continue
            resume_here = state is not None and s_idx == state["stage"]
            self._run_stage(s_idx, stage, start, state if resume_here else None)
            state = None
        self._pbar.close()
        self._pbar = None
        self._finish()
        self._write_run_info("finished")
        out = self.out_dir
        return TrainResult(
            out_dir=out, last_checkpoint=out / LAST,
            best_checkpoint=out / BEST if (out / BEST).is_file() else None,
            train_log=out / TRAIN_LOG, val_log=out / VAL_LOG, run_info=out / RUN_INFO,
            final_losses=self.records.final_losses(), final_val=self.last_val, steps=self.step,
            elapsed_s=self.elapsed)

    def _finish(self) -> None:
        if self.ctx.is_main and not (self.out_dir / BEST).is_file():
            save_model(self.model, self.out_dir / BEST,
                       extra={"step": self.step, "val_loss": None, "note": "no validation split: final weights"})

    def _configure_stage(self, s_idx: int, stage: StageConfig, resume_state: dict | None) -> None:
        opt = self.cfg.optimizer
        frozen = freeze_for_stage(self.model, stage)
        self.loss_module.set_stage(stage)
        self.optimizer = build_optimizer(self.model, lr=stage.lr or opt["lr"],
                                         weight_decay=opt["weight_decay"], betas=opt["betas"], eps=opt["eps"],
                                         lr_scales={"text": opt["text_lr_scale"]})
        warmup = min(opt["warmup_steps"] if stage.warmup_steps is None else stage.warmup_steps, stage.steps)
        self.scheduler = build_scheduler(self.optimizer, warmup, stage.steps, opt["min_lr_ratio"])
        if resume_state is not None:
            self.optimizer.load_state_dict(resume_state["optimizer"])
            self.scheduler.load_state_dict(resume_state["scheduler"])
            self.scaler.load_state_dict(resume_state["scaler"])
        else:
            self.best_val = None
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.wrapped = self.loss_module
        if self.ctx.distributed:
            gc.collect()
            self.wrapped = DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        n_train = sum(p.numel() for p in self.trainable)
        self._log(f"stage {s_idx} ({stage.name or stage.task}): {stage.steps} steps, {n_train:,} trainable "
                  f"parameters" + (f", frozen: {frozen}" if frozen else ""))

    def _run_stage(self, s_idx: int, stage: StageConfig, start: int, resume_state: dict | None) -> None:
        cfg = self.cfg
        self._configure_stage(s_idx, stage, resume_state)
        stream = self.data.train_stream(s_idx, stage, self.model, start)
        self.epoch_size = stream.epoch_size
        batches = self.data.train_batches(stream)
        if resume_state is not None:
            rng = resume_state["rng"]
            restore_rng_state(rng[self.ctx.rank] if self.ctx.rank < len(rng) else rng[0])
        batch = self.batch_size(stage)
        t_last = time.perf_counter()
        for stage_step in range(start + 1, stage.steps + 1):
            values, lr, grad_norm = self._optimizer_step(batches)
            self.step += 1
            now = time.perf_counter()
            dt = now - t_last
            self.elapsed += dt
            row = {"step": self.step, "stage": s_idx,
                   "epoch": stage_step * batch / self.epoch_size,
                   "samples": stage_step * batch, "lr": lr, **values,
                   "logit_scale": float(self.model.logit_scale.detach().exp()), "grad_norm": grad_norm,
                   "samples_per_s": batch / dt, "elapsed_s": self.elapsed}
            self.records.log_step(row, write=self.ctx.is_main)
            if self.ctx.is_main:
                self._pbar.update(1)
                self._pbar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}",
                                       sps=f"{row['samples_per_s']:.1f}", refresh=False)
            end_of_stage = stage_step == stage.steps
            if self.step % cfg.val_every == 0 or end_of_stage:
                self._validate(s_idx, stage)
            if self.step % cfg.checkpoint_every == 0 or end_of_stage:
                self._save_last(s_idx, stage_step)
            if self.callback is not None:
                self.callback(dict(row))
            t_last = time.perf_counter()
            self.elapsed += t_last - now  # validation and checkpoints count in elapsed_s, not in samples/s
        del batches

    def _optimizer_step(self, batches: Iterator[dict]) -> tuple[dict[str, float], float, float | str]:
        """One optimiser step; returns the rank-mean loss terms, the step's learning rate and the
        gradient norm before clipping ("" without clipping)."""
        micro_batches = (self._to_device(next(batches)) for _ in range(self.cfg.grad_accum_steps))
        terms, lr, grad_norm = optimizer_step(
            self.wrapped, micro_batches, self.optimizer, self.scheduler, self.scaler, self.trainable,
            grad_accum_steps=self.cfg.grad_accum_steps, grad_clip_norm=self.cfg.grad_clip_norm,
            amp_dtype=self.amp_dtype, distributed=self.ctx.distributed)
        if self.teacher is not None:
            self.teacher.update(self.model.text)
        values = {k: float(v) for k, v in terms.items()}
        if not all(math.isfinite(v) for v in values.values()):
            raise FloatingPointError(f"step {self.step + 1}: non-finite loss {values}; lower the learning "
                                     "rate or use precision: fp32")
        return all_reduce_mean(values, self.ctx), lr, "" if grad_norm is None else float(grad_norm)

    @torch.no_grad()
    def _validate(self, s_idx: int, stage: StageConfig) -> None:
        batches = self.data.val_batches(s_idx, stage, self.model)
        if batches is None:
            return
        self.loss_module.eval()
        sums: dict[str, float] = {}
        n_batches = n = 0
        for batch in batches:
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                terms = self.loss_module(self._to_device(batch))
            for k, v in all_reduce_mean({k: float(v) for k, v in terms.items()}, self.ctx).items():
                sums[k] = sums.get(k, 0.0) + v
            n_batches += 1
            n += len(next(iter(batch.values()))) * self.ctx.world_size
        self.loss_module.train()
        sums = {k: v / n_batches for k, v in sums.items()}
        self.last_val = sums
        if self.ctx.is_main:
            self.records.log_validation(self.step, s_idx, sums, n)
        if self.best_val is None or sums["loss"] < self.best_val:
            self.best_val = sums["loss"]
            if self.ctx.is_main:
                save_model(self.model, self.out_dir / BEST,
                           extra={"step": self.step, "stage": s_idx, "val_loss": sums["loss"]})

    def close(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
        shutdown_distributed(self.ctx)
