"""The batches of a training run: each stage's shards indexed once, its decoding and transforms for the model
being trained, training streams from a data position, and validation batches kept in memory.

:mod:`medvlp.train.data` streams shards (shared with evaluation); this module applies a run's
:class:`~medvlp.train.config.TrainConfig` to it for :class:`~medvlp.train.loop.Trainer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from medvlp.lexicon import load_anatomy_lexicon
from medvlp.models.fvlm import FVLM
from medvlp.models.volume_tower import input_volume_size
from medvlp.train.config import StageConfig, TrainConfig
from medvlp.train.data import (
    FigureItems,
    SampleRef,
    ShardStream,
    VolumeItems,
    filter_by_modality,
    find_shards,
    index_shards,
    make_loader,
)
from medvlp.train.distributed import micro_batch_size
from medvlp.train.transforms import ImageTransform, VolumeTransform


class RunBatches:
    """The training and validation batches of every stage of one run, on one rank.

    Indexes each (collection, split, modalities) once, builds each stage's decoding + transforms for
    the model being trained, streams training batches from a data position, and keeps validation batches
    in memory after their first pass when they take less than ``val_cache_bytes``.

    Args:
        cfg: the run's :class:`~medvlp.train.config.TrainConfig`.
        rank, world_size: this process among the job's.
        pin_memory: pin loader memory (CUDA).
        val_cache_bytes: keep validation batches smaller than this in memory.
        log: prints a message (rank 0 only, through the progress bar).

    Raises:
        FileNotFoundError / ValueError: at construction, when a stage's training split is missing or
            holds no sample of its modalities (before anything is built).
    """

    def __init__(self, cfg: TrainConfig, *, rank: int, world_size: int, pin_memory: bool, val_cache_bytes: int,
                 log: Callable[[str], None]):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.pin_memory, self.val_cache_bytes, self.log = pin_memory, val_cache_bytes, log
        self._index_cache: dict[tuple, tuple[list[Path], list[SampleRef]] | None] = {}
        self._val_cache: dict[int, Iterable[dict[str, torch.Tensor]] | None] = {}
        for stage in cfg.stages:  # fail on missing data before any model is built
            self.index(stage.collection, "train", stage.modalities)

    def batch_size(self, stage: StageConfig) -> int:
        """Global batch of a stage: its own ``global_batch_size`` or the run's."""
        return stage.global_batch_size or self.cfg.global_batch_size

    def micro_batch(self, stage: StageConfig) -> int:
        """Samples per rank per forward pass (:func:`~medvlp.train.distributed.micro_batch_size`)."""
        return micro_batch_size(self.batch_size(stage), self.world_size, self.cfg.grad_accum_steps)

    def index(self, collection: str, split: str, modalities: Sequence[str] | None
              ) -> tuple[list[Path], list[SampleRef]] | None:
        """``(shard paths, sample refs)`` of a split (figures filtered by modality), or None for a missing or
        empty non-training split.

        Raises:
            FileNotFoundError / ValueError: the training split is missing or empty.
        """
        key = (collection, split, modalities)
        if key not in self._index_cache:
            try:
                paths = find_shards(self.cfg.curated_dir, collection, split)
            except FileNotFoundError:
                if split == "train":
                    raise
                self._index_cache[key] = None
                return None
            refs = index_shards(paths)
            if modalities is not None:
                refs = filter_by_modality(paths, refs, modalities)
                if not refs and split == "train":
                    raise ValueError(f"no {split} figure in {self.cfg.curated_dir} has a modality in "
                                     f"{list(modalities)}; check the stage's 'modalities'")
            self._index_cache[key] = (paths, refs) if refs else None
            if split == "train" and not refs:
                raise ValueError(f"the {collection} {split} shards under {self.cfg.curated_dir} hold no sample")
        return self._index_cache[key]

    def items(self, stage: StageConfig, model: nn.Module) -> FigureItems | VolumeItems:
        """Decoding + transforms of the stage's samples for ``model`` (random augmentation only when the
        stream passes a generator, i.e. in training).

        Raises:
            ValueError: an ``anatomy_text`` stage on a model that is not fVLM.
        """
        cfg = self.cfg
        text_cfg = model.config["clip_model"]["text_cfg"]
        if stage.task == "image_text":
            aug = cfg.image_augment
            transform = ImageTransform(model.image.image_size[0], scale=aug["scale"], ratio=aug["ratio"],
                                       hflip_prob=aug["hflip_prob"], vflip_prob=aug["vflip_prob"],
                                       brightness=aug["brightness"], contrast=aug["contrast"])
            with_concepts = stage.pc_align_weight > 0
            keep_negated = with_concepts and cfg.pc_align["negated_mentions"] == "keep"
            return FigureItems(transform, text_cfg, with_concepts=with_concepts, keep_negated=keep_negated)
        vol = cfg.volume
        size = vol["spatial_size"] or input_volume_size(model.config)
        transform = VolumeTransform(size, hu_window=vol["hu_window"], pixdim=vol["pixdim"],
                                    flip_prob=vol["flip_prob"], flip_axes=vol["flip_axes"])
        anatomies = None
        if stage.task == "anatomy_text":
            if not isinstance(model, FVLM):
                raise ValueError(f"task anatomy_text needs an fvlm model, not {type(model).__name__}")
            by_label = {a.label: a.id for a in load_anatomy_lexicon().anatomies}
            anatomies = [by_label[label] for label in model.anatomy_labels]
        return VolumeItems(transform, text_cfg, with_report=stage.task == "volume_text",
                           report_sections=cfg.report_sections, anatomies=anatomies)

    def train_stream(self, s_idx: int, stage: StageConfig, model: nn.Module, start_step: int) -> ShardStream:
        """Stage ``s_idx``'s endless training stream for this rank, after ``start_step`` optimiser steps."""
        paths, refs = self.index(stage.collection, "train", stage.modalities)
        cfg = self.cfg
        return ShardStream(paths, refs, self.items(stage, model), micro_batch=self.micro_batch(stage),
                           rank=self.rank, world_size=self.world_size, seed=cfg.seed, stage=s_idx, shuffle=True,
                           shuffle_buffer=cfg.shuffle_buffer, start=start_step * self.batch_size(stage))

    def train_batches(self, stream: ShardStream) -> Iterator[dict[str, torch.Tensor]]:
        """The micro-batches of a training stream, through the run's loader workers."""
        return iter(make_loader(stream, self.cfg.num_workers, pin_memory=self.pin_memory))

    def val_batches(self, s_idx: int, stage: StageConfig, model: nn.Module
                    ) -> Iterable[dict[str, torch.Tensor]] | None:
        """The stage's validation batches (fixed order, no augmentation), or None without a val split.

        ``min(val_max_samples, N_val)`` samples in global batches of the stage's size (smaller when the
        split is), split over the ranks like training batches.
        """
        if s_idx in self._val_cache:
            return self._val_cache[s_idx]
        index = self.index(stage.collection, "val", stage.modalities)
        loader = None
        if index is not None:
            paths, refs = index
            world = self.world_size
            n = min(self.cfg.val_max_samples, len(refs))
            per_batch = min(self.batch_size(stage), n // world * world)
            if per_batch >= 2 * world:
                stream = ShardStream(paths, refs, self.items(stage, model), micro_batch=per_batch // world,
                                     rank=self.rank, world_size=world, shuffle=False,
                                     limit=n // per_batch * per_batch, augment=False)
                loader = make_loader(stream, self.cfg.num_workers)
        if loader is None:
            self.log(f"stage {s_idx}: no usable {stage.collection} validation split; best.pt will be the "
                     "final weights")
            self._val_cache[s_idx] = None
            return None
        batches, size = [], 0
        for batch in loader:
            size += sum(t.numel() * t.element_size() for t in batch.values())
            if size > self.val_cache_bytes:
                self._val_cache[s_idx] = loader
                return loader
            batches.append(batch)
        self._val_cache[s_idx] = batches
        return batches
