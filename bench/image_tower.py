"""Which 2D image tower learns the synthetic findings on a CPU budget? ViT vs medvlp's conv tower.

    .venv/bin/python bench/image_tower.py [--steps 600] [--batch 64] [--eval-every 200] [--conv-sizes 96 128]

Both towers (``medvlp-tiny``: open_clip ViT, 64 px, patch 8, 4 x 128; ``medvlp-conv-tiny``: 3 stages
of 3x3 convolutions, 64 px) are trained the same way, *supervised*, on the curated training figures
(binary cross-entropy on the 26 findings from the truth file, a linear head on the global
embedding, AdamW 1e-3, the training augmentation), interleaving the two so that machine load hits
both. Every ``--eval-every`` steps the within-modality macro AUROC on the validation split is printed
(a finding scored on the images of its modalities, as the zero-shot evaluation does), with the wall
time. Supervised training bounds what contrastive pre-training of the same tower can reach in the
same number of steps; the ratio line compares the conv tower against the ViT (the named baseline).
``--conv-sizes`` adds the same conv tower at larger input sizes (its stages unchanged, so the grid of
cells grows with the image): how much of the bound is the 64 px input, and at what cost per step.

Needs the curate stage's output (``dvc repro curate``).
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from medvlp.eval.data import figure_tensors, load_figures
from medvlp.eval.evaluate import finding_pairs
from medvlp.eval.metrics import auroc_table
from medvlp.lexicon import load_concept_lexicon
from medvlp.models import build_model
from medvlp.models.configs import get_clip_config
from medvlp.train.transforms import ImageTransform

TOWERS = {"vit (medvlp-tiny)": "medvlp-tiny", "conv (medvlp-conv-tiny)": "medvlp-conv-tiny"}
BASELINE = "vit (medvlp-tiny)"


def conv_at(image_size: int) -> dict:
    """``medvlp-conv-tiny`` with input size ``image_size`` (same stages: a finer grid of cells)."""
    cfg = copy.deepcopy(get_clip_config("medvlp-conv-tiny"))
    cfg["vision_cfg"]["image_size"] = image_size
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--conv-sizes", type=int, nargs="*", default=[],
                        help="also train the conv tower at these input sizes (px, multiples of 8)")
    parser.add_argument("--curated", default="reports/curated")
    parser.add_argument("--truth", default="data/figures/figures_truth.jsonl")
    args = parser.parse_args()

    torch.manual_seed(0)
    lexicon = load_concept_lexicon()
    train = load_figures(args.curated, "train", lexicon, args.truth)
    val = load_figures(args.curated, "val", lexicon, args.truth)
    keep = np.flatnonzero(train.has_truth)
    labels = torch.tensor(train.labels, dtype=torch.float32)
    valid = finding_pairs(val, lexicon)
    towers = {**TOWERS, **{f"conv {size} px": conv_at(size) for size in args.conv_sizes}}
    runs = {}
    for name, config in towers.items():
        model = build_model("clip", clip_model=config)
        head = torch.nn.Linear(model.embed_dim, labels.shape[1])
        params = [*model.image.parameters(), *head.parameters()]
        runs[name] = {"tower": model.image, "head": head, "opt": torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05),
                      "aug": ImageTransform(model.image.image_size[0], scale=(0.8, 1.0)),
                      "val": figure_tensors(val.images, model.image.image_size[0]), "time": 0.0,
                      "rng": np.random.default_rng(0)}
    print(f"{len(keep)} training figures, {len(val)} validation figures, batch {args.batch}")
    for step in range(1, args.steps + 1):
        for run in runs.values():
            idx = run["rng"].choice(keep, args.batch, replace=False)
            start = time.perf_counter()
            x = torch.stack([run["aug"](train.images[i], run["rng"]) for i in idx])
            pooled, _ = run["tower"].features(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(run["head"](pooled), labels[idx])
            run["opt"].zero_grad(set_to_none=True)
            loss.backward()
            run["opt"].step()
            run["time"] += time.perf_counter() - start
        if step % args.eval_every == 0 or step == args.steps:
            aucs = {}
            for name, run in runs.items():
                run["tower"].eval()
                with torch.no_grad():
                    scores = run["head"](run["tower"].features(run["val"])[0]).numpy()
                run["tower"].train()
                aucs[name] = auroc_table(val.labels, scores, n_boot=200, valid=valid)["macro"]
                m = aucs[name]
                print(f"step {step:5d}  {name:24s} val within-modality macro AUROC {m['auc']:.3f} "
                      f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]  train time {run['time']:.0f} s")
            for name in towers:
                if name == BASELINE:
                    continue
                lift = (aucs[name]["auc"] - 0.5) / max(aucs[BASELINE]["auc"] - 0.5, 1e-6)
                print(f"           ratio {name} / vit: AUROC above chance {lift:.2f}x, "
                      f"time per step {runs[name]['time'] / runs[BASELINE]['time']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
