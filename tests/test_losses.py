"""Reference tests of medvlp.losses: every loss against a float64 formula that materialises everything."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from medvlp.losses import (
    anatomy_contrastive_loss,
    concept_alignment_loss,
    concept_targets,
    contrastive_loss,
    fvlm_loss,
    patch_concept_max_logits,
    sigmoid_loss,
)

B, D, P = 37, 16, 7
CHUNKS = [None, 8, 5, 37, 64, "auto"]


# ----------------------------------------------------------------------------- references (float64)


def ref_clip(x, z, t):
    logits = t * x @ z.T
    labels = torch.arange(x.shape[0])
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def ref_siglip(x, z, t, b):
    logits = t * x @ z.T + b
    y = 2 * torch.eye(x.shape[0], dtype=x.dtype) - 1
    return -F.logsigmoid(y * logits).sum() / x.shape[0]


def ref_pc_align(v, c, owner, t, b, ids=None):
    sims = t * torch.einsum("bpd,kd->bpk", v, c)  # [B, P, K]
    s = sims.max(dim=1).values + b
    y = torch.full(s.shape, -1.0, dtype=v.dtype)
    for i in range(v.shape[0]):
        for k in range(c.shape[0]):
            # with ids, image i holds concept k when one of its own mentions has k's id
            if owner[k] == i or (ids is not None and any(owner[j] == i and ids[j] == ids[k] for j in range(len(ids)))):
                y[i, k] = 1.0
    return -F.logsigmoid(y * s).sum() / c.shape[0]


def ref_anatomy_targets(normal, group, weights=None):
    n = normal.shape[0]
    y = torch.eye(n, dtype=torch.bool) | (normal[:, None] & normal[None, :]) | (group[:, None] == group[None, :])
    y = y.double()
    if weights is not None:
        abnormal = (~normal).double()
        y = torch.where(y > 0, y, abnormal[:, None] * abnormal[None, :] * weights)
    return y / y.sum(dim=1, keepdim=True)


def ref_anatomy(x, z, normal, group, t, weights=None):
    yhat = ref_anatomy_targets(normal, group, weights)
    s = t * x @ z.T
    n = x.shape[0]
    return 0.5 * (
        -(yhat * F.log_softmax(s, dim=1)).sum() / n - (yhat * F.log_softmax(s.T, dim=1)).sum() / n
    )


# ----------------------------------------------------------------------------- helpers


def unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).requires_grad_()


def scalar(value):
    return torch.tensor(value, dtype=torch.float64, requires_grad=True)


def value_and_grads(fn, inputs):
    loss = fn(*inputs)
    grads = torch.autograd.grad(loss, inputs)
    return loss, grads


def assert_same(got, want):
    (loss, grads), (ref_loss, ref_grads) = got, want
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-12)


@pytest.fixture
def pair():
    return unit(B, D, seed=1), unit(B, D, seed=2), scalar(7.5), scalar(-3.0)


# ----------------------------------------------------------------------------- contrastive / sigmoid


@pytest.mark.parametrize("chunk", CHUNKS)
def test_contrastive_matches_reference(pair, chunk):
    x, z, t, _ = pair
    got = value_and_grads(lambda x, z, t: contrastive_loss(x, z, t, chunk_size=chunk), (x, z, t))
    assert_same(got, value_and_grads(ref_clip, (x, z, t)))


@pytest.mark.parametrize("chunk", [None, 8])
def test_contrastive_matches_open_clip(pair, chunk):
    x, z, t, _ = pair
    got = value_and_grads(lambda x, z, t: contrastive_loss(x, z, t, chunk_size=chunk), (x, z, t))
    assert_same(got, value_and_grads(lambda x, z, t: ClipLoss()(x, z, t), (x, z, t)))


@pytest.mark.parametrize("chunk", CHUNKS)
def test_sigmoid_matches_reference(pair, chunk):
    got = value_and_grads(lambda x, z, t, b: sigmoid_loss(x, z, t, b, chunk_size=chunk), pair)
    assert_same(got, value_and_grads(ref_siglip, pair))


@pytest.mark.parametrize("chunk", [None, 8])
def test_sigmoid_matches_open_clip(pair, chunk):
    got = value_and_grads(lambda x, z, t, b: sigmoid_loss(x, z, t, b, chunk_size=chunk), pair)
    assert_same(got, value_and_grads(lambda x, z, t, b: SigLipLoss()(x, z, t, b), pair))


def test_float_scale_and_no_grad_path(pair):
    x, z, _, _ = pair
    want = ref_clip(x, z, 4.0)
    with torch.no_grad():
        got = contrastive_loss(x, z, 4.0, chunk_size=5)
    assert not got.requires_grad
    torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=0)
    got = sigmoid_loss(x, z, 4.0, -2.0, chunk_size=5)
    torch.testing.assert_close(got, ref_siglip(x, z, 4.0, -2.0), rtol=1e-6, atol=0)


def test_chunked_path_never_allocates_the_full_matrix():
    n = 512
    x, z = unit(n, D, seed=3).float(), unit(n, D, seed=4).float()
    t = torch.tensor(10.0, requires_grad=True)
    x, z = x.detach().requires_grad_(), z.detach().requires_grad_()

    def largest_allocation(fn):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            fn().backward()
        return max(e.cpu_memory_usage for e in prof.events())

    full = n * n * 4
    assert largest_allocation(lambda: contrastive_loss(x, z, t, chunk_size=None)) >= full
    assert largest_allocation(lambda: contrastive_loss(x, z, t, chunk_size=64)) < full / 2
    assert largest_allocation(lambda: sigmoid_loss(x, z, t, -5.0, chunk_size=64)) < full / 2


# ----------------------------------------------------------------------------- PC-Align


@pytest.fixture
def concepts():
    """Patches of B images, K = 23 concepts owned by only some images (images 0, 3, 6, ... own none)."""
    g = torch.Generator().manual_seed(5)
    owners = torch.tensor([i for i in range(B) if i % 3 != 0])
    owner = owners[torch.randint(0, len(owners), (23,), generator=g)]
    return unit(B, P, D, seed=6), unit(23, D, seed=7), owner, scalar(9.0), scalar(-4.0)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_concept_alignment_matches_reference(concepts, chunk):
    v, c, owner, t, b = concepts
    got = value_and_grads(
        lambda v, c, t, b: concept_alignment_loss(v, c, owner, t, b, chunk_size=chunk), (v, c, t, b)
    )
    assert_same(got, value_and_grads(lambda v, c, t, b: ref_pc_align(v, c, owner, t, b), (v, c, t, b)))


@pytest.mark.parametrize("concept_chunk", [1, 4, 23])
def test_concept_alignment_concept_chunks(concepts, concept_chunk):
    v, c, owner, t, b = concepts
    got = value_and_grads(
        lambda v, c, t, b: concept_alignment_loss(
            v, c, owner, t, b, chunk_size=6, concept_chunk_size=concept_chunk
        ),
        (v, c, t, b),
    )
    assert_same(got, value_and_grads(lambda v, c, t, b: ref_pc_align(v, c, owner, t, b), (v, c, t, b)))


@pytest.mark.parametrize("chunk", CHUNKS)
def test_concept_alignment_with_concept_ids_matches_reference(concepts, chunk):
    v, c, owner, t, b = concepts
    ids = torch.randint(0, 6, (c.shape[0],), generator=torch.Generator().manual_seed(12))  # concepts repeat
    got = value_and_grads(
        lambda v, c, t, b: concept_alignment_loss(v, c, owner, t, b, concept_ids=ids, chunk_size=chunk), (v, c, t, b)
    )
    assert_same(got, value_and_grads(lambda v, c, t, b: ref_pc_align(v, c, owner, t, b, ids), (v, c, t, b)))
    # repeated concepts make a difference: another image holding the same concept is a positive
    plain = concept_alignment_loss(v, c, owner, t, b, chunk_size=chunk)
    assert not torch.allclose(plain, got[0])


def test_concept_targets_by_identity():
    owner = torch.tensor([0, 0, 2, 1])
    ids = torch.tensor([7, 9, 7, 5])
    targets = concept_targets(owner, 3, ids)
    assert targets.tolist() == [[True, True, True, False], [False, False, False, True], [True, False, True, False]]
    assert concept_targets(owner, 3).tolist() == [[True, True, False, False], [False, False, False, True],
                                                  [False, False, True, False]]


def test_patch_concept_max_logits(concepts):
    v, c, _, _, _ = concepts
    want = (3.0 * torch.einsum("bpd,kd->bpk", v, c)).amax(dim=1)
    for chunk in (None, 4):
        torch.testing.assert_close(patch_concept_max_logits(v, c, 3.0, chunk_size=chunk), want)


def test_concept_alignment_without_concepts_is_a_differentiable_zero(concepts):
    v, c, _, t, b = concepts
    for chunk in (None, 8):
        loss = concept_alignment_loss(v, c[:0], torch.zeros(0, dtype=torch.long), t, b, chunk_size=chunk)
        assert loss.item() == 0.0
        grad_v, grad_t = torch.autograd.grad(loss, (v, t))
        assert torch.count_nonzero(grad_v) == 0 and grad_t.item() == 0.0


def test_concept_alignment_never_allocates_b_p_k():
    v = unit(32, 49, D, seed=8).float().detach().requires_grad_()
    c = unit(256, D, seed=9).float().detach().requires_grad_()
    owner = torch.arange(256) % 32

    def largest_allocation(chunk):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            concept_alignment_loss(v, c, owner, 10.0, -5.0, chunk_size=chunk).backward()
        return max(e.cpu_memory_usage for e in prof.events())

    full = 32 * 49 * 256 * 4
    assert largest_allocation(None) >= full
    assert largest_allocation(4) < full / 4


def test_concept_alignment_rejects_bad_owner(concepts):
    v, c, owner, t, b = concepts
    with pytest.raises(ValueError, match="concept_owner"):
        concept_alignment_loss(v, c, owner[:-1], t, b)


# ----------------------------------------------------------------------------- fVLM anatomy loss


@pytest.fixture
def anatomy_labels():
    g = torch.Generator().manual_seed(11)
    normal = torch.rand(B, generator=g) < 0.4
    group = torch.randint(0, 25, (B,), generator=g)  # repeated ids = identical texts
    weights = torch.softmax(torch.randn(B, B, generator=g, dtype=torch.float64), dim=1)
    return normal, group, weights


def test_anatomy_loss_without_calibration_signal_is_plain_infonce(pair):
    x, z, t, _ = pair
    normal = torch.zeros(B, dtype=torch.bool)
    group = torch.arange(B)
    want = value_and_grads(lambda x, z, t: contrastive_loss(x, z, t, chunk_size=None), (x, z, t))
    for chunk in (None, 8):
        got = value_and_grads(
            lambda x, z, t, chunk=chunk: anatomy_contrastive_loss(x, z, normal, group, t, chunk_size=chunk), (x, z, t)
        )
        assert_same(got, want)


def test_anatomy_targets_are_soft_for_normal_pairs_and_identical_texts(pair, anatomy_labels):
    x, z, t, _ = pair
    normal, group, _ = anatomy_labels
    plain = anatomy_contrastive_loss(x, z, torch.zeros(B, dtype=torch.bool), torch.arange(B), t)
    calibrated = anatomy_contrastive_loss(x, z, normal, group, t)
    assert abs(plain.item() - calibrated.item()) > 1e-3  # the targets matter
    yhat = ref_anatomy_targets(normal, group)
    i, j = torch.nonzero(normal)[:2].flatten().tolist()
    assert yhat[i, j] > 0 and yhat[i].sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_anatomy_loss_matches_reference(pair, anatomy_labels, chunk):
    x, z, t, _ = pair
    normal, group, _ = anatomy_labels
    got = value_and_grads(
        lambda x, z, t: anatomy_contrastive_loss(x, z, normal, group, t, chunk_size=chunk), (x, z, t)
    )
    assert_same(got, value_and_grads(lambda x, z, t: ref_anatomy(x, z, normal, group, t), (x, z, t)))


@pytest.mark.parametrize("chunk", CHUNKS)
def test_anatomy_loss_false_negative_weights(pair, anatomy_labels, chunk):
    x, z, t, _ = pair
    normal, group, weights = anatomy_labels
    got = value_and_grads(
        lambda x, z, t: anatomy_contrastive_loss(x, z, normal, group, t, weights, chunk_size=chunk), (x, z, t)
    )
    assert_same(got, value_and_grads(lambda x, z, t: ref_anatomy(x, z, normal, group, t, weights), (x, z, t)))


@pytest.mark.parametrize("chunk", [None, 5])
def test_anatomy_loss_false_negative_text_embeddings(pair, anatomy_labels, chunk):
    x, z, t, _ = pair
    normal, group, _ = anatomy_labels
    ema = unit(B, D, seed=12).detach()
    weights = torch.softmax(ema @ ema.T / 0.07, dim=1)
    got = value_and_grads(
        lambda x, z, t: anatomy_contrastive_loss(
            x, z, normal, group, t, false_negative_text_emb=ema, false_negative_scale=1 / 0.07, chunk_size=chunk
        ),
        (x, z, t),
    )
    assert_same(got, value_and_grads(lambda x, z, t: ref_anatomy(x, z, normal, group, t, weights), (x, z, t)))


def fvlm_batch(seed=13, b=12, a=4):
    g = torch.Generator().manual_seed(seed)
    image, text = unit(b, a, D, seed=seed + 1), unit(b, a, D, seed=seed + 2)
    valid = torch.rand(b, a, generator=g) < 0.8
    normal = torch.rand(b, a, generator=g) < 0.5
    normal[:, 2] = True  # anatomy 2: no abnormal sample -> left out of the loss
    group = torch.randint(0, 6, (b, a), generator=g)
    return image, text, valid, normal, group


@pytest.mark.parametrize("chunk", [None, 5])
@pytest.mark.parametrize("calibrate", [True, False])
def test_fvlm_loss_sums_anatomies_with_an_abnormal_sample(chunk, calibrate):
    image, text, valid, normal, group = fvlm_batch()
    t = scalar(12.0)

    def ref(image, text, t):
        total = 0.0
        for k in (0, 1, 3):
            rows = valid[:, k]
            labels = (normal[rows, k], group[rows, k]) if calibrate else (
                torch.zeros(int(rows.sum()), dtype=torch.bool), torch.arange(int(rows.sum())))
            total = total + ref_anatomy(image[rows, k], text[rows, k], *labels, t)
        return total

    got = value_and_grads(
        lambda i, x, t: fvlm_loss(i, x, valid, normal, group, t, calibrate=calibrate, chunk_size=chunk),
        (image, text, t),
    )
    assert_same(got, value_and_grads(ref, (image, text, t)))


def test_fvlm_loss_with_no_abnormal_anatomy_is_a_differentiable_zero():
    image, text, valid, _, group = fvlm_batch()
    normal = torch.ones_like(valid)
    loss = fvlm_loss(image, text, valid, normal, group, scalar(10.0))
    assert loss.item() == 0.0
    assert torch.count_nonzero(torch.autograd.grad(loss, image)[0]) == 0


# ----------------------------------------------------------------------------- bf16 autocast

#: Relative L2 error of a bf16-autocast gradient against the fp32 one. bf16 keeps 8 significant bits (relative
#: rounding 2**-9 ~ 2e-3 per input); at logit scale 100 the errors of the logits reach the softmax weights, and
#: measured errors are ~1% for the embeddings, ~0.1% for the scale and bias. PC-Align without chunks takes the
#: max over patches in bf16, where near-tied patches can swap and send a gradient row to another patch
#: (measured ~4% on the patches, ~2% on the concepts).
BF16_GRAD_RTOL = {"embeddings": 2e-2, "pc_align_unchunked": 6e-2, "scalar": 5e-3}


@pytest.mark.parametrize("chunk", [None, 8])
def test_bf16_autocast_at_scale_100_matches_fp32(chunk):
    x32, z32 = unit(B, D, seed=21).float(), unit(B, D, seed=22).float()
    v32, c32 = unit(B, P, D, seed=23).float(), unit(23, D, seed=24).float()
    a32, b32 = unit(B, 3, D, seed=25).float(), unit(B, 3, D, seed=26).float()
    owner = torch.arange(23) % B
    normal = torch.arange(B) % 3 == 0
    group = torch.arange(B) % 20
    valid = torch.ones(B, 3, dtype=torch.bool)
    losses = {
        "contrastive": lambda x, z, v, c, a, b, t, bias: contrastive_loss(x, z, t, chunk_size=chunk),
        "sigmoid": lambda x, z, v, c, a, b, t, bias: sigmoid_loss(x, z, t, bias, chunk_size=chunk),
        "pc_align": lambda x, z, v, c, a, b, t, bias: concept_alignment_loss(v, c, owner, t, bias, chunk_size=chunk),
        "anatomy": lambda x, z, v, c, a, b, t, bias: anatomy_contrastive_loss(x, z, normal, group, t, chunk_size=chunk),
        "fvlm": lambda x, z, v, c, a, b, t, bias: fvlm_loss(
            a, b, valid, normal[:, None].expand(B, 3), group[:, None].expand(B, 3), t, chunk_size=chunk
        ),
    }
    names = ("x", "z", "v", "c", "a", "b", "t", "bias")

    def leaves():
        out = [u.detach().clone().requires_grad_() for u in (x32, z32, v32, c32, a32, b32)]
        return out + [torch.tensor(100.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)]

    for name, fn in losses.items():
        inputs, ref_inputs = leaves(), leaves()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(*inputs)
        loss.backward()
        reference = fn(*ref_inputs)  # fp32, no autocast
        reference.backward()
        assert reference.dtype == torch.float32 and torch.isfinite(loss), name
        assert abs(loss.float().item() - reference.item()) <= 5e-3 * abs(reference.item()), name
        used = 0
        for arg, u, r in zip(names, inputs, ref_inputs):
            assert (u.grad is None) == (r.grad is None), (name, arg)
            if r.grad is None:
                continue
            used += 1
            if r.grad.ndim == 0:
                rtol = BF16_GRAD_RTOL["scalar"]
            elif name == "pc_align" and chunk is None:
                rtol = BF16_GRAD_RTOL["pc_align_unchunked"]
            else:
                rtol = BF16_GRAD_RTOL["embeddings"]
            err = (u.grad.float() - r.grad).norm() / r.grad.norm()
            assert r.grad.norm() > 0 and err <= rtol, (name, arg, float(err))
        assert used >= 3, name  # both embeddings (or patches and concepts) and the scale
