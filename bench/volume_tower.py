"""Time per training step of the 3D volume towers on this machine: conv3d variants vs the 3D ViT.

    .venv/bin/python bench/volume_tower.py [--batch 16] [--repeats 5]

Each tower (``vit3d``: MONAI ViT, fVLM's tower at the CPU defaults, the named baseline; ``conv3d``:
medvlp's 3D conv net at its default widths 16/32/64 and at 24/48/96) takes the same random volumes
``[batch, 1, 64, 64, 32]`` (the default ``volume.spatial_size``) through forward, a backward of the
mean token and one fused AdamW step. The towers run interleaved, ``--repeats`` times after a warm-up
step, so that machine load hits all of them; the median seconds per step and the ratio against the
ViT are printed. What each tower *learns* in the default budget is measured by the pipeline itself
(README, "Choosing the volume tower").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from medvlp.models import ConvEncoder3D, ViT3DEncoder, count_parameters
from medvlp.models.configs import DEFAULT_VIT3D

TOWERS = {
    "vit3d (default ViT)": lambda: ViT3DEncoder(DEFAULT_VIT3D, [-1]),
    "conv3d 16/32/64 (default)": lambda: ConvEncoder3D({"channels": [16, 32, 64]}),
    "conv3d 24/48/96": lambda: ConvEncoder3D({"channels": [24, 48, 96]}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    volume = torch.randn(args.batch, 1, 64, 64, 32)
    runs = {}
    for name, make in TOWERS.items():
        tower = make()
        runs[name] = {"tower": tower, "opt": torch.optim.AdamW(tower.parameters(), lr=1e-4, fused=True), "times": []}

    def step(run: dict) -> float:
        start = time.perf_counter()
        run["tower"](volume).mean().backward()
        run["opt"].step()
        run["opt"].zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for run in runs.values():
        step(run)  # warm-up
    for _ in range(args.repeats):
        for run in runs.values():
            run["times"].append(step(run))
    base = statistics.median(next(iter(runs.values()))["times"])
    print(f"batch {args.batch} x [1, 64, 64, 32], {torch.get_num_threads()} threads, median of {args.repeats}")
    for name, run in runs.items():
        t = statistics.median(run["times"])
        tokens = run["tower"].num_tokens
        print(f"{name:28s} {count_parameters(run['tower']):>9,} params  {tokens} tokens  "
              f"{t:.3f} s/step  ratio vs vit3d {t / base:.2f}x")


if __name__ == "__main__":
    main()
