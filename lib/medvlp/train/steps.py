"""The loss terms of one micro-batch, one function per training task.

Each function takes the (unwrapped) model and a collated batch on the model's device and returns
``{"loss": total, <term>: value, ...}`` (0-dim tensors; ``loss`` carries the gradient). Under
torch.distributed the losses gather embeddings from every rank (``medvlp.losses``), so the mean of
``loss`` over ranks is the loss of the global micro-batch.

:class:`LossModule` wraps the model and the stage's task into one ``nn.Module`` whose ``forward``
computes the terms: DistributedDataParallel must wrap a module whose ``forward`` runs the whole
computation, or it would not synchronise the gradients.
"""

from __future__ import annotations

import torch
from torch import nn

from medvlp.losses import concept_alignment_loss, contrastive_loss, fvlm_loss, sigmoid_loss
from medvlp.models import FVLM, RadCLIP
from medvlp.train.config import StageConfig
from medvlp.train.ema import EMATextTower
from medvlp.train.transforms import volume_to_slices

#: The loss terms each task logs besides ``loss``.
TERM_NAMES: dict[str, tuple[str, ...]] = {
    "image_text": ("it_align", "pc_align"),
    "volume_text": ("vt_align",),
    "anatomy_text": ("anatomy_align",),
}


def _pair_loss(loss: str, model: nn.Module, a: torch.Tensor, b: torch.Tensor, chunk_size) -> torch.Tensor:
    """Global image-text loss ``loss``: ``contrastive`` (InfoNCE) or ``sigmoid`` (needs ``model.logit_bias``)."""
    if loss == "contrastive":
        return contrastive_loss(a, b, model.logit_scale_exp(), chunk_size=chunk_size)
    if getattr(model, "logit_bias", None) is None:
        raise ValueError("the sigmoid loss needs a logit bias; build the model with init_logit_bias "
                         "(e.g. -10)")
    return sigmoid_loss(a, b, model.logit_scale_exp(), model.logit_bias, chunk_size=chunk_size)


def image_text_terms(model: nn.Module, batch: dict[str, torch.Tensor], *, loss: str,
                     pc_align_weight: float, positives: str = "paper", chunk_size="auto") -> dict[str, torch.Tensor]:
    """2D figure-caption pairs: IT-Align (+ ``pc_align_weight`` x PC-Align).

    Batch: ``image`` [B, 3, S, S], ``ids`` [B, L]; for PC-Align also ``concept_spans`` [K, 2] (token
    positions), ``concept_owner`` [K] (caption index) and ``concept_ids`` [K] (concept identities).
    ``positives``: ``paper`` (ConceptCLIP's official code: a mention is a positive for its own caption's
    image only) or ``concept`` (medvlp's variant: for every image whose caption names the same concept).
    """
    image = model.encode_image(batch["image"])
    text = model.encode_text(batch["ids"])
    it_align = _pair_loss(loss, model, image.embedding, text.embedding, chunk_size)
    terms = {"it_align": it_align}
    total = it_align
    if pc_align_weight > 0:
        patches = model.patch_concept_embeddings(image.patch_tokens)  # [B, P, E]
        concepts = model.concept_embeddings(text.token_states, batch["concept_spans"], batch["concept_owner"])
        pc_align = concept_alignment_loss(patches, concepts.to(patches.dtype), batch["concept_owner"],
                                          model.concept_logit_scale_exp(), model.concept_logit_bias,
                                          concept_ids=batch["concept_ids"] if positives == "concept" else None,
                                          chunk_size=chunk_size)
        terms["pc_align"] = pc_align
        total = total + pc_align_weight * pc_align
    terms["loss"] = total
    return terms


def volume_text_terms(model: nn.Module, batch: dict[str, torch.Tensor], *, loss: str,
                      slice_stride: int = 1, chunk_size="auto") -> dict[str, torch.Tensor]:
    """One embedding per CT volume vs its report (ct_global; RadCLIP's slice-pooling stage).

    Batch: ``volume`` [B, 1, X, Y, Z] in [0, 1], ``report_ids`` [B, L]. RadCLIP encodes the axial
    slices (every ``slice_stride``-th) with its 2D tower (:func:`volume_to_slices`).
    """
    if isinstance(model, RadCLIP):
        slices = volume_to_slices(batch["volume"], model.image.image_size[0], slice_stride)
        volume = model.encode_volume(slices)
    else:
        volume = model.encode_volume(batch["volume"])
    text = model.encode_text(batch["report_ids"])
    vt_align = _pair_loss(loss, model, volume.embedding, text.embedding, chunk_size)
    return {"vt_align": vt_align, "loss": vt_align}


def anatomy_text_terms(model: FVLM, batch: dict[str, torch.Tensor], *, calibration: str,
                       teacher: EMATextTower | None = None, abnormal_calibration: dict | None = None,
                       chunk_size="auto") -> dict[str, torch.Tensor]:
    """fVLM: per-anatomy volume embeddings vs per-anatomy texts, summed over anatomies.

    Batch: ``volume`` [B, 1, X, Y, Z], ``label_map`` [B, X, Y, Z], ``anatomy_ids`` [B, A, L],
    ``is_normal`` [B, A] bool, ``text_group`` [B, A] long. Only the texts of anatomies intact in the
    crop (``valid``) are encoded; the others never enter the loss.

    ``calibration``: ``none`` (plain InfoNCE per anatomy), ``normal`` (normal pairs and identical texts
    are positives) or ``both`` (also soft positives between abnormal samples: the ``teacher``'s
    text-text similarities, ``abnormal_calibration`` = ``{weight, threshold, temperature, ...}``).
    """
    out = model.encode_volume(batch["volume"], batch["label_map"])
    b, a, length = batch["anatomy_ids"].shape
    valid = out.valid
    flat_ids = batch["anatomy_ids"].reshape(b * a, length)
    index = valid.reshape(-1).nonzero().squeeze(1)
    # a batch with no intact anatomy still runs the text tower once (every rank joins the same graph)
    encoded = model.encode_text(flat_ids[index if index.numel() else index.new_zeros(1)]).embedding
    text = encoded.new_zeros(b * a, encoded.shape[-1])
    if index.numel():
        text = text.index_copy(0, index, encoded)
    else:
        text = text + 0.0 * encoded.sum()
    fn_emb, fn = None, {}
    if calibration == "both":
        if teacher is None or abnormal_calibration is None:
            raise ValueError("calibration 'both' needs the EMA text teacher and abnormal_calibration settings")
        taught = teacher(flat_ids[index]) if index.numel() else encoded.new_zeros(0, encoded.shape[-1])
        fn_emb = taught.new_zeros(b * a, taught.shape[-1]).index_copy(0, index, taught).reshape(b, a, -1)
        fn = {"false_negative_scale": 1.0 / float(abnormal_calibration["temperature"]),
              "false_negative_weight": float(abnormal_calibration["weight"]),
              "false_negative_threshold": abnormal_calibration["threshold"]}
    anatomy_align = fvlm_loss(out.embeddings, text.reshape(b, a, -1).to(out.embeddings.dtype), valid,
                              batch["is_normal"], batch["text_group"], model.logit_scale_exp(),
                              calibrate=calibration != "none", false_negative_text_emb=fn_emb,
                              chunk_size=chunk_size, **fn)
    return {"anatomy_align": anatomy_align, "loss": anatomy_align}


class LossModule(nn.Module):
    """``forward(batch) -> {"loss", <terms>}`` for the current stage (what DDP wraps).

    Args:
        model: a ``medvlp.models`` model.
        chunk_size: passed to the losses (``"auto"``, an int or None).
        slice_stride: RadCLIP slice subsampling.
        pc_align: ``{positives, negated_mentions}`` (stages with PC-Align).
        teacher: fVLM's EMA text teacher (stages with ``calibration: both``), frozen; the trainer
            updates it after every optimiser step.
        abnormal_calibration: its settings (``weight``, ``threshold``, ``temperature``).
    """

    def __init__(self, model: nn.Module, chunk_size="auto", slice_stride: int = 1, *, pc_align: dict | None = None,
                 teacher: EMATextTower | None = None, abnormal_calibration: dict | None = None):
        super().__init__()
        self.model = model
        self.chunk_size, self.slice_stride = chunk_size, slice_stride
        self.pc_align, self.teacher, self.abnormal_calibration = pc_align, teacher, abnormal_calibration
        self.stage: StageConfig | None = None

    def set_stage(self, stage: StageConfig) -> None:
        self.stage = stage

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        stage = self.stage
        if stage is None:
            raise RuntimeError("LossModule: call set_stage() first")
        if stage.task == "image_text":
            positives = (self.pc_align or {}).get("positives", "paper")
            return image_text_terms(self.model, batch, loss=stage.loss, pc_align_weight=stage.pc_align_weight,
                                    positives=positives, chunk_size=self.chunk_size)
        if stage.task == "volume_text":
            return volume_text_terms(self.model, batch, loss=stage.loss, slice_stride=self.slice_stride,
                                     chunk_size=self.chunk_size)
        return anatomy_text_terms(self.model, batch, calibration=stage.calibration, teacher=self.teacher,
                                  abnormal_calibration=self.abnormal_calibration, chunk_size=self.chunk_size)
