"""Benchmark of the medvlp losses against named baselines: forward+backward time and peak memory.

    .venv/bin/python bench/losses.py [--device cpu|cuda] [--quick] [--repeats N] [--markdown]

Baselines, measured in the same run on the same inputs:

- contrastive_loss        vs open_clip.loss.ClipLoss (materialises both B x B logit matrices)
- sigmoid_loss            vs open_clip.loss.SigLipLoss
- concept_alignment_loss  vs the plain PC-Align formula (chunk_size=None: materialises B x P x K)
- anatomy_contrastive_loss vs a plain soft-target InfoNCE (chunk_size=None: materialises N x N)

Inputs are float32, L2-normalised and require grad; logit scale and bias are learnable 0-dim
tensors. Time: forward+backward, median of ``--repeats`` runs after one warm-up; ours and the
baseline are interleaved in one process on the same inputs, so that other load on the machine
slows both alike. Peak memory: one forward+backward after a tiny warm-up, measured as the increase
over the memory held before the pass; it includes the input gradients that backward allocates
(the same size for both implementations). On CPU (without --quick) every memory case runs in a
fresh subprocess, so that memory of one case cannot hide in the allocator caches of another:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` minus
  ``memory_allocated`` before the pass.
- CPU: the resident-set high-water mark ``VmHWM`` from /proc/self/status, reset just before the
  pass by writing 5 to /proc/self/clear_refs, minus ``VmRSS`` at that moment (where the reset is
  not allowed: ``ru_maxrss`` of the fresh process minus ``VmRSS`` before the pass).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FULL = {
    "contrastive": [1024, 4096, 16384],
    "sigmoid": [1024, 4096, 16384],
    "pc_align": [64, 256],
    "anatomy": [1024, 8192],
}
QUICK = {"contrastive": [512, 2048], "sigmoid": [512, 2048], "pc_align": [16], "anatomy": [512]}
BASELINE = {
    "contrastive": "open_clip ClipLoss",
    "sigmoid": "open_clip SigLipLoss",
    "pc_align": "naive PC-Align (B x P x K)",
    "anatomy": "naive soft-target InfoNCE (N x N)",
}
DIM, PATCHES, CONCEPTS_PER_CAPTION = 512, 196, 8
QUICK_PATCHES = 49


# ----------------------------------------------------------------------------- one case (subprocess)


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _inputs(loss: str, size: int, device, patches: int):
    import torch
    import torch.nn.functional as F

    g = torch.Generator(device="cpu").manual_seed(0)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=g), dim=-1).to(device).requires_grad_()

    scale = torch.tensor(10.0, device=device, requires_grad=True)
    bias = torch.tensor(-10.0, device=device, requires_grad=True)
    if loss in ("contrastive", "sigmoid"):
        return {"x": unit(size, DIM), "z": unit(size, DIM), "t": scale, "b": bias}
    if loss == "pc_align":
        k = size * CONCEPTS_PER_CAPTION
        owner = (torch.arange(k) // CONCEPTS_PER_CAPTION).to(device)
        return {"v": unit(size, patches, DIM), "c": unit(k, DIM), "owner": owner, "t": scale, "b": bias}
    normal = (torch.rand(size, generator=g) < 0.4).to(device)
    group = torch.randint(0, size // 2, (size,), generator=g).to(device)
    return {"x": unit(size, DIM), "z": unit(size, DIM), "normal": normal, "group": group, "t": scale}


def _loss_fn(loss: str, impl: str, inp):
    from open_clip.loss import ClipLoss, SigLipLoss

    from medvlp.losses import anatomy_contrastive_loss, concept_alignment_loss, contrastive_loss, sigmoid_loss

    chunk = "auto" if impl == "ours" else None
    if loss == "contrastive":
        if impl == "baseline":
            return lambda: ClipLoss()(inp["x"], inp["z"], inp["t"])
        return lambda: contrastive_loss(inp["x"], inp["z"], inp["t"], chunk_size=chunk)
    if loss == "sigmoid":
        if impl == "baseline":
            return lambda: SigLipLoss()(inp["x"], inp["z"], inp["t"], inp["b"])
        return lambda: sigmoid_loss(inp["x"], inp["z"], inp["t"], inp["b"], chunk_size=chunk)
    if loss == "pc_align":
        return lambda: concept_alignment_loss(inp["v"], inp["c"], inp["owner"], inp["t"], inp["b"], chunk_size=chunk)
    return lambda: anatomy_contrastive_loss(inp["x"], inp["z"], inp["normal"], inp["group"], inp["t"], chunk_size=chunk)


def _malloc_trim() -> None:
    """Hand freed heap memory back to the OS (glibc), so the next RSS measurement starts clean."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _leaves(inp) -> list:
    import torch

    return [v for v in inp.values() if isinstance(v, torch.Tensor) and v.requires_grad]


def _step(fn, inp) -> None:
    for v in _leaves(inp):
        v.grad = None
    fn().backward()


def measure_memory(case: dict) -> int:
    """Peak bytes of one forward+backward above the memory held before it (see the module doc)."""
    import torch

    device = torch.device(case["device"])
    tiny = _inputs(case["loss"], 16, device, 4)  # warm-up: kernels, thread pools, lazy imports
    _step(_loss_fn(case["loss"], case["impl"], tiny), tiny)
    del tiny
    inp = _inputs(case["loss"], case["size"], device, case["patches"])
    fn = _loss_fn(case["loss"], case["impl"], inp)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        _step(fn, inp)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        _malloc_trim()
        reset = _reset_hwm()
        before = _rss_bytes("VmRSS")
        _step(fn, inp)
        peak = (_rss_bytes("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - before
    for v in _leaves(inp):
        v.grad = None
    return max(peak, 0)


def measure_time(case: dict) -> dict:
    """Median forward+backward seconds of ours and of the baseline, on the same inputs, interleaved.

    Alternating the two implementations (after one warm-up pass each) makes their ratio robust to
    other load on the machine, which slows both alike.
    """
    import torch

    device = torch.device(case["device"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    inp = _inputs(case["loss"], case["size"], device, case["patches"])
    fns = {impl: _loss_fn(case["loss"], impl, inp) for impl in ("ours", "baseline")}
    times = {impl: [] for impl in fns}
    for fn in fns.values():
        _step(fn, inp)  # warm-up
    for _ in range(case["repeats"]):
        for impl, fn in fns.items():
            sync()
            start = time.perf_counter()
            _step(fn, inp)
            sync()
            times[impl].append(time.perf_counter() - start)
    return {impl: statistics.median(t) for impl, t in times.items()}


def run_case(case: dict) -> dict:
    import torch

    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    if case["what"] == "memory":
        return {"peak_bytes": measure_memory(case)}
    return measure_time(case)


# ----------------------------------------------------------------------------- driver


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _spawn(case: dict) -> dict:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--case", json.dumps(case)],
        capture_output=True, text=True, cwd=REPO,
    )
    if out.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(case: dict, fresh_process: bool) -> dict:
    return _spawn(case) if fresh_process else run_case(case)


def _label(loss: str, size: int, patches: int) -> str:
    if loss == "pc_align":
        return f"B={size} P={patches} K={size * CONCEPTS_PER_CAPTION} D={DIM}"
    return f"{'N' if loss == 'anatomy' else 'B'}={size} D={DIM}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="small sizes, < 1 minute (smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per case (median); default 5, quick 3")
    ap.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice). On a machine shared with other jobs, 1 "
                         "avoids parallel regions that stall while a worker thread waits for a busy core")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    patches = QUICK_PATCHES if args.quick else PATCHES
    repeats = args.repeats or (3 if args.quick else 5)
    # CPU memory needs a fresh process per case (RSS high-water mark); --quick trades that for speed.
    fresh = args.device == "cpu" and not args.quick
    print(f"device: {_device_name(args.device)}; torch {torch.__version__}; "
          f"date {datetime.date.today().isoformat()}; load average {os.getloadavg()[0]:.1f} at start")
    print(f"time: forward+backward, median of {repeats} runs after one warm-up, ours and baseline "
          "interleaved in one process on the same inputs")
    if args.device == "cuda":
        print("peak: torch.cuda.max_memory_allocated above the memory held before the pass")
    elif fresh:
        print("peak: resident-set high-water mark (VmHWM, reset via /proc/self/clear_refs) above VmRSS before the "
              "pass, one fresh process per case")
    else:
        print("peak: VmHWM above VmRSS in one shared process (--quick: approximate, allocator caches may hide some)")
    print("peaks include the input gradients that backward allocates (same size for both implementations)")
    rows = []
    print(f"{'loss':<12} {'size':<30} {'ours s':>8} {'base s':>8} {'time x':>7} {'ours MiB':>9} {'base MiB':>9} "
          f"{'mem x':>7}")
    for loss, loss_sizes in sizes.items():
        for size in loss_sizes:
            case = {"loss": loss, "size": size, "device": args.device, "patches": patches, "repeats": repeats,
                    "threads": args.threads}
            mem = {impl: _measure({**case, "what": "memory", "impl": impl}, fresh)["peak_bytes"]
                   for impl in ("ours", "baseline")}
            times = _measure({**case, "what": "time"}, fresh)
            row = {
                "loss": loss, "size": _label(loss, size, patches), "n": size,
                "ours_s": times["ours"], "base_s": times["baseline"],
                "ours_mib": mem["ours"] / 2**20, "base_mib": mem["baseline"] / 2**20,
            }
            row["time_x"] = row["ours_s"] / row["base_s"]
            row["mem_x"] = row["ours_mib"] / max(row["base_mib"], 1e-9)
            rows.append(row)
            print(f"{loss:<12} {row['size']:<30} {row['ours_s']:>8.3f} {row['base_s']:>8.3f} {row['time_x']:>7.2f} "
                  f"{row['ours_mib']:>9.1f} {row['base_mib']:>9.1f} {row['mem_x']:>7.3f}", flush=True)

    print("\nbaselines:", "; ".join(f"{k}: {v}" for k, v in BASELINE.items()))
    print("targets:")
    targets = [
        ("contrastive", 16384, 1 / 8, 1.3), ("sigmoid", 16384, 1 / 8, 1.3), ("pc_align", 256, 1 / 10, 1.0),
    ]
    for loss, size, mem_max, time_max in targets:
        row = next((r for r in rows if r["loss"] == loss and r["n"] == size), None)
        if row is None:
            print(f"  {loss} at size {size}: not run (use the full sizes, without --quick)")
            continue
        ok_mem, ok_time = row["mem_x"] <= mem_max, row["time_x"] <= time_max
        print(f"  {loss} {row['size']}: memory {row['mem_x']:.3f}x <= {mem_max:.3f}x "
              f"{'PASS' if ok_mem else 'FAIL'}; time {row['time_x']:.2f}x <= {time_max:.1f}x "
              f"{'PASS' if ok_time else 'FAIL'}")

    if args.markdown:
        print("\n| loss | size | ours (s) | baseline (s) | time ratio | ours peak (MiB) | baseline peak (MiB) "
              "| memory ratio |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['loss']} | {r['size']} | {r['ours_s']:.3f} | {r['base_s']:.3f} | {r['time_x']:.2f} | "
                  f"{r['ours_mib']:.1f} | {r['base_mib']:.1f} | {r['mem_x']:.3f} |")


if __name__ == "__main__":
    main()
