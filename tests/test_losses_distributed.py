"""Two gloo ranks under DDP give the loss and the gradients of one process on the concatenated batch.

Each loss is computed by a tiny model (linear image and text towers, learnable logit scale and
bias) wrapped in DistributedDataParallel: rank r holds its share of one global batch, the loss
gathers features with gradient and returns the rank's local loss, DDP averages the parameter
gradients. The mean of the local losses and the averaged gradients must equal a single process on
the whole batch. Shares are uneven where the loss allows it (concepts per rank, intact anatomies).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from medvlp.losses import concept_alignment_loss, contrastive_loss, fvlm_loss, sigmoid_loss

WORLD = 2
D_IN, D = 12, 8
B_PER_RANK, P, A = 6, 5, 3
CHUNKS = (None, 4)


class Towers(torch.nn.Module):
    """Linear image/text towers + logit scale and bias; ``forward`` returns the named loss."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.image = torch.nn.Parameter(torch.randn(D_IN, D, generator=g, dtype=torch.float64))
        self.text = torch.nn.Parameter(torch.randn(D_IN, D, generator=g, dtype=torch.float64))
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(10.0), dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.tensor(-2.0, dtype=torch.float64))

    def embed(self, images, texts):
        return F.normalize(images @ self.image, dim=-1), F.normalize(texts @ self.text, dim=-1)

    def forward(self, b, name, chunk):
        scale = self.log_scale.exp()
        if name in ("contrastive", "sigmoid"):
            x, z = self.embed(b["images"], b["texts"])
            if name == "contrastive":
                return contrastive_loss(x, z, scale, chunk_size=chunk)
            return sigmoid_loss(x, z, scale, self.bias, chunk_size=chunk)
        if name in ("pc_align", "pc_align_ids"):
            v, c = self.embed(b["patches"], b["concept_features"])
            ids = b["concept_ids"] if name == "pc_align_ids" else None
            return concept_alignment_loss(v, c, b["concept_owner"], scale, self.bias, concept_ids=ids,
                                          chunk_size=chunk)
        ai, at = self.embed(b["anatomy_images"], b["anatomy_texts"])
        return fvlm_loss(ai, at, b["valid"], b["normal"], b["group"], scale, calibrate=name == "fvlm",
                         chunk_size=chunk)


LOSSES = ("contrastive", "sigmoid", "pc_align", "pc_align_ids", "fvlm", "fvlm_nocal")


def global_batch():
    """Inputs of the whole batch and, for each rank, the slices it holds."""
    g = torch.Generator().manual_seed(1)
    n = WORLD * B_PER_RANK
    batch = {
        "images": torch.randn(n, D_IN, generator=g, dtype=torch.float64),
        "texts": torch.randn(n, D_IN, generator=g, dtype=torch.float64),
        "patches": torch.randn(n, P, D_IN, generator=g, dtype=torch.float64),
        "anatomy_images": torch.randn(n, A, D_IN, generator=g, dtype=torch.float64),
        "anatomy_texts": torch.randn(n, A, D_IN, generator=g, dtype=torch.float64),
        "valid": torch.rand(n, A, generator=g) < 0.7,
        "normal": torch.rand(n, A, generator=g) < 0.5,
        "group": torch.randint(0, 5, (n, A), generator=g),
    }
    batch["normal"][:, 1] = True  # anatomy 1 has no abnormal sample
    batch["valid"][:B_PER_RANK, 2] = False  # rank 0 holds no intact anatomy 2
    # concepts: rank 0 holds 7 (owned by its images 0..5), rank 1 holds 3
    batch["concept_features"] = torch.randn(10, D_IN, generator=g, dtype=torch.float64)
    batch["concept_owner"] = torch.tensor([0, 0, 2, 3, 3, 5, 1, 1, 4, 4])  # local indices
    batch["concept_rank"] = torch.tensor([0] * 7 + [1] * 3)
    batch["concept_ids"] = torch.tensor([3, 8, 3, 1, 8, 2, 8, 3, 1, 5])  # the same concepts on both ranks
    return batch


def local_slice(batch, rank):
    rows = slice(rank * B_PER_RANK, (rank + 1) * B_PER_RANK)
    local = {k: v[rows] for k, v in batch.items() if not k.startswith("concept")}
    mine = batch["concept_rank"] == rank
    local["concept_features"] = batch["concept_features"][mine]
    local["concept_owner"] = batch["concept_owner"][mine]
    local["concept_ids"] = batch["concept_ids"][mine]
    return local


def with_global_owner(batch):
    out = dict(batch)
    out["concept_owner"] = batch["concept_owner"] + batch["concept_rank"] * B_PER_RANK
    return out


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        b = local_slice(global_batch(), rank)
        results = {}
        for chunk in CHUNKS:
            for name in LOSSES:
                model = DistributedDataParallel(Towers(), find_unused_parameters=True)
                loss = model(b, name, chunk)
                loss.backward()  # DDP averages the parameter gradients over the ranks
                grads = {n: p.grad.clone() for n, p in model.module.named_parameters() if p.grad is not None}
                results[(chunk, name)] = (loss.detach(), grads)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_equal_one_process_on_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    batch = with_global_owner(global_batch())
    for chunk in CHUNKS:
        for name in LOSSES:
            model = Towers()
            loss = model(batch, name, chunk)
            loss.backward()
            want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            mean_loss = sum(r[(chunk, name)][0] for r in ranks) / WORLD
            torch.testing.assert_close(mean_loss, loss.detach(), rtol=1e-6, atol=0, msg=f"{name} {chunk}")
            for r, result in enumerate(ranks):
                for param, g in want.items():
                    torch.testing.assert_close(result[(chunk, name)][1][param], g, rtol=1e-6, atol=1e-12,
                                               msg=f"rank {r}: {name}, chunk {chunk}, gradient of {param}")
