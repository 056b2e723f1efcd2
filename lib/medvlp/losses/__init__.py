"""Losses of the three methods, as pure functions of tensors.

Every loss takes L2-normalised embeddings and a logit scale that is already exponentiated, and
has a ``chunk_size`` argument: ``None`` computes the plain formula with the full logit matrices;
an int (or ``"auto"``, the default) walks the logits in row blocks whose memory grows linearly with
the batch, with the same value and gradients. With ``gather=True`` under torch.distributed each
rank gathers the features of every rank with gradient and returns its local loss, scaled so that
DDP's gradient averaging reproduces the single-process loss on the global batch.

- :func:`contrastive_loss`         symmetric InfoNCE (CLIP; the IT-Align softmax baseline, RadCLIP)
- :func:`sigmoid_loss`             SigLIP (ConceptCLIP IT-Align)
- :func:`concept_alignment_loss`   patch-concept alignment (ConceptCLIP PC-Align)
- :func:`anatomy_contrastive_loss` / :func:`fvlm_loss`  fVLM anatomy-level soft-target InfoNCE
"""

from .anatomy_contrastive import anatomy_contrastive_loss, fvlm_loss
from .concept_alignment import concept_alignment_loss, concept_targets, patch_concept_max_logits
from .contrastive import contrastive_loss
from .distributed import gather_no_grad, gather_with_grad, rank_and_world
from .sigmoid import sigmoid_loss

__all__ = [
    "anatomy_contrastive_loss",
    "concept_alignment_loss",
    "concept_targets",
    "contrastive_loss",
    "fvlm_loss",
    "gather_no_grad",
    "gather_with_grad",
    "patch_concept_max_logits",
    "rank_and_world",
    "sigmoid_loss",
]
