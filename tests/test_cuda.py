"""The CUDA paths: losses, training and evaluation on a GPU agree with the CPU.

Skipped where torch sees no CUDA device (CI has none); run on a lent GPU with
``bash bench/gpu_checks.sh`` (bench/RESULTS.md). Every check compares the GPU result against the
CPU in float64 of the same function (the CPU paths are checked against references in
test_losses.py), so a wrong kernel, a dtype slip or a device mix-up on CUDA fails here.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_train_fixtures import TWO_STAGES, tiny_params, write_curated

from medvlp.eval.encode import encode_images
from medvlp.losses import concept_alignment_loss, contrastive_loss, fvlm_loss, sigmoid_loss
from medvlp.models import load_model
from medvlp.train import KNOWN_MODELS, train
from medvlp.train.runlog import read_csv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

B, P, K, D = 96, 49, 40, 64


def unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def value_and_grads(fn, tensors, device, dtype):
    inputs = [t.to(device, dtype).requires_grad_() if t.is_floating_point() else t.to(device) for t in tensors]
    leaves = [t for t in inputs if t.requires_grad]
    loss = fn(*inputs)
    return loss.detach().double().cpu(), [g.double().cpu() for g in torch.autograd.grad(loss, leaves)]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    owner = torch.randint(0, B, (K,), generator=g)
    valid = torch.rand(B, 3, generator=g) < 0.8
    normal = torch.rand(B, 3, generator=g) < 0.5
    group = torch.randint(0, 30, (B, 3), generator=g)
    return {
        "x": unit(B, D, seed=seed + 1), "z": unit(B, D, seed=seed + 2), "v": unit(B, P, D, seed=seed + 3),
        "c": unit(K, D, seed=seed + 4), "a": unit(B, 3, D, seed=seed + 5), "b": unit(B, 3, D, seed=seed + 6),
        "t": torch.tensor(20.0, dtype=torch.float64), "bias": torch.tensor(-5.0, dtype=torch.float64),
        "owner": owner, "valid": valid, "normal": normal, "group": group,
    }


LOSSES = {
    "contrastive": (("x", "z", "t"), lambda chunk: lambda x, z, t: contrastive_loss(x, z, t, chunk_size=chunk)),
    "sigmoid": (("x", "z", "t", "bias"), lambda chunk: lambda x, z, t, b: sigmoid_loss(x, z, t, b, chunk_size=chunk)),
    "pc_align": (("v", "c", "owner", "t", "bias"),
                 lambda chunk: lambda v, c, o, t, b: concept_alignment_loss(v, c, o, t, b, chunk_size=chunk)),
    "fvlm": (("a", "b", "valid", "normal", "group", "t"),
             lambda chunk: lambda a, b, m, n, g, t: fvlm_loss(a, b, m, n, g, t, chunk_size=chunk)),
}


@pytest.mark.parametrize("chunk", [None, 16])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_and_gradients_on_cuda_match_the_cpu(name, chunk):
    keys, make = LOSSES[name]
    data = batch()
    tensors = [data[k] for k in keys]
    fn = make(chunk)
    want_loss, want_grads = value_and_grads(fn, tensors, "cpu", torch.float64)
    got_loss, got_grads = value_and_grads(fn, tensors, "cuda", torch.float32)
    assert math.isfinite(want_loss.item()) and want_loss.item() > 0
    assert relative_error(got_loss, want_loss) < 1e-5
    for got, want in zip(got_grads, want_grads):
        assert relative_error(got, want) < 1e-4


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bf16_autocast_on_cuda_stays_close_to_fp32(name):
    keys, make = LOSSES[name]
    data = batch(seed=7)
    tensors = [data[k] for k in keys]
    fn = make("auto")
    want_loss, _ = value_and_grads(fn, tensors, "cpu", torch.float64)

    def autocast(*args):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return fn(*args)

    got_loss, got_grads = value_and_grads(autocast, tensors, "cuda", torch.float32)
    assert all(torch.isfinite(g).all() for g in got_grads)
    assert relative_error(got_loss, want_loss) < 2e-2


def _peak_bytes(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def test_chunked_contrastive_on_cuda_never_holds_the_logits():
    """B = 8192: the [B, B] fp32 logits are 256 MiB; the dense loss holds them (and more), the chunked
    loss with its backward stays under half of them."""
    n, d = 8192, 256
    x = F.normalize(torch.randn(n, d, device="cuda"), dim=-1)
    z = F.normalize(torch.randn(n, d, device="cuda"), dim=-1)
    logits_bytes = n * n * 4

    def step(chunk):
        xi, zi = x.clone().requires_grad_(), z.clone().requires_grad_()
        loss = contrastive_loss(xi, zi, 50.0, chunk_size=chunk)
        loss.backward()
        assert math.isfinite(loss.item())

    dense, chunked = _peak_bytes(lambda: step(None)), _peak_bytes(lambda: step(512))
    assert dense > logits_bytes, f"dense peak {dense / 2**20:.1f} MiB"
    assert chunked < logits_bytes / 2, f"chunked peak {chunked / 2**20:.1f} MiB"


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    return write_curated(tmp_path_factory.mktemp("curated"))


@pytest.mark.parametrize("model", sorted(KNOWN_MODELS))
def test_tiny_run_on_cuda_in_bf16_and_its_checkpoint_loads_on_the_cpu(curated, tmp_path, model):
    params = tiny_params(model, curated, steps=2, device="cuda", precision="auto", deterministic=False)
    result = train(params, out_dir=tmp_path, progress=False)
    n_steps = 4 if model in TWO_STAGES else 2
    assert result.steps == n_steps
    rows = read_csv(result.train_log)
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    info = json.loads(result.run_info.read_text())
    assert info["device"]["type"] == "cuda" and info["precision"] == "bf16"
    assert "name" in info["device"] and "capability" in info["device"]

    model_cpu = load_model(result.last_checkpoint)
    assert all(p.device.type == "cpu" for p in model_cpu.parameters())
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(v, state[k]) for k, v in model_cpu.state_dict().items())

    if model in ("clip", "siglip", "conceptclip"):  # evaluation encodes the same on both devices
        size = model_cpu.image.image_size[0]
        images = torch.randn(10, 3, size, size, generator=torch.Generator().manual_seed(1))
        on_cpu = encode_images(model_cpu, images, with_patches=True)
        on_gpu = encode_images(load_model(result.last_checkpoint).cuda(), images, with_patches=True)
        assert relative_error(on_gpu.embedding, on_cpu.embedding) < 1e-3
        if model == "conceptclip":
            assert on_cpu.patches is not None and relative_error(on_gpu.patches, on_cpu.patches) < 1e-3
