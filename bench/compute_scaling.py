"""What does more training buy? Zero-shot scores at the CPU default budget and at k times it.

    PYTHONPATH=lib python bench/compute_scaling.py [--models conceptclip fvlm] [--runs 1x1 10x1 10x4]
        [--split val] [--workers 6] [--json out.json]

Each run trains one model with its ``params.yaml`` recipe, changing only the budget: ``SxB`` multiplies
every stage's steps by S and the global batch by B (learning rate and warm-up unchanged; the cosine
schedule stretches over the longer run). The checkpoint with the best validation loss is then
evaluated zero-shot on ``--split`` (default the validation split, never tuned toward the test split)
exactly as the ``zero_shot`` stage scores it: 2D models by the findings macro AUROC (ConceptCLIP's
global + local score), the same AUROC from the captions (the text-side ceiling) and image-to-text
Recall@10; CT models by the mean AUROC over the diseases (``zero_shot.ct_negative_prompt``). The
baseline is the ``1x1`` run of the same model in the same invocation (the pipeline's default budget);
the last column is each run's AUROC above chance relative to it. Sized for a GPU (``device: auto``);
on the 2-core CPU a ``4x1`` conceptclip run took 15 minutes (bench/RESULTS.md), so ``10x1`` takes over half an hour.

Needs the curate stage's output (``dvc repro curate``) and data/*/..._truth.jsonl.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import torch

from medvlp.eval.data import load_ct, load_figures
from medvlp.eval.evaluate import evaluate_ct
from medvlp.eval.stage import evaluate_figure_model
from medvlp.lexicon import load_anatomy_lexicon, load_concept_lexicon
from medvlp.models import load_model
from medvlp.models.volume_tower import has_volume_tower, volume_size
from medvlp.params import load_params, stage_params
from medvlp.train import train

FIGURE_MODELS = ("clip", "siglip", "conceptclip", "conceptclip_concept_positives", "conceptclip_scratch_text")


def parse_run(text: str) -> tuple[float, int]:
    """``"10x4"`` -> (10.0 steps multiplier, 4 batch multiplier)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)x(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"run {text!r}: expected STEPSxBATCH, e.g. 10x1")
    return float(m.group(1)), int(m.group(2))


def scaled(params: dict, steps: float, batch: int, workers: int, curated: str) -> dict:
    """The recipe with every stage's steps x ``steps`` and every batch size x ``batch``."""
    out = {**params, "curated_dir": curated, "num_workers": workers, "resume": False}
    out["global_batch_size"] = int(params["global_batch_size"]) * batch
    out["stages"] = []
    for stage in params["stages"]:
        stage = {**stage, "steps": max(1, round(int(stage["steps"]) * steps))}
        if "global_batch_size" in stage:
            stage["global_batch_size"] = int(stage["global_batch_size"]) * batch
        out["stages"].append(stage)
    total = sum(s["steps"] for s in out["stages"])
    out["val_every"] = max(int(params["val_every"]), total // 8)
    out["checkpoint_every"] = out["val_every"]
    return out


def evaluate(model_name: str, model: torch.nn.Module, zs: dict, data: dict, split: str) -> dict:
    if model_name in FIGURE_MODELS:
        res = evaluate_figure_model(model, data["figures"], None, data["concepts"], n_boot=zs["n_boot"],
                                    seed=zs["seed"], local_weight=zs["local_weight"],
                                    local_top_fraction=zs["local_top_fraction"], ks=zs["retrieval_ks"],
                                    fractions=zs["probe_fractions"]).metrics
        macro = res["findings"]["macro"]
        return {"auc": macro["auc"], "ci": [macro["ci_low"], macro["ci_high"]],
                "caption_auc": res["findings"]["caption_macro"]["auc"],
                "i2t_r10": res["retrieval"]["image_to_text"]["recall@10"]["estimate"]}
    if not has_volume_tower(model.config):
        raise SystemExit(f"{model_name}: only 2D models and models with a volume tower (fvlm, ct_clip_global, ...)")
    size = volume_size(model.config)
    if size not in data["ct"]:
        data["ct"][size] = load_ct(data["curated"], split, data["anatomies"], size, data["ct_truth"],
                                   intact_min_fraction=zs["intact_min_fraction"])
    res = evaluate_ct(model, data["ct"][size], data["anatomies"], negative=zs["ct_negative_prompt"],
                      n_boot=zs["n_boot"], seed=zs["seed"]).metrics
    return {"auc": res["mean"]["auc"], "ci": res["mean"]["ci"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["conceptclip", "fvlm"])
    parser.add_argument("--runs", nargs="+", type=parse_run, default=[(1.0, 1), (10.0, 1)],
                        help="STEPSxBATCH budgets; 1x1 (the baseline) is added when missing")
    parser.add_argument("--split", default="val")
    parser.add_argument("--workers", type=int, default=4, help="data-loader processes")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--curated", default="reports/curated")
    parser.add_argument("--data", default="data")
    parser.add_argument("--n-boot", type=int, default=None, help="default: zero_shot.n_boot")
    parser.add_argument("--json", default=None, help="write the results here after every run")
    args = parser.parse_args()

    all_params = load_params(args.params)
    zs = stage_params(all_params, "zero_shot")
    if args.n_boot is not None:
        zs["n_boot"] = args.n_boot
    runs = ([(1.0, 1)] if (1.0, 1) not in args.runs else []) + list(args.runs)
    concepts = load_concept_lexicon(zs.get("concept_lexicon"))
    anatomies = load_anatomy_lexicon(zs.get("anatomy_lexicon"))
    data = {"curated": args.curated, "concepts": concepts, "anatomies": anatomies, "ct": {},
            "ct_truth": Path(args.data) / "ct" / "ct_truth.jsonl"}
    if any(m in FIGURE_MODELS for m in args.models):
        truth = Path(args.data) / "figures" / "figures_truth.jsonl"
        data["figures"] = load_figures(args.curated, args.split, concepts, truth)

    results = []
    for name in args.models:
        base = stage_params(all_params, "pretrain", name)
        for steps, batch in runs:
            params = scaled(base, steps, batch, args.workers, args.curated)
            with tempfile.TemporaryDirectory() as out:
                started = time.perf_counter()
                result = train(params, out_dir=out, progress=False)
                train_s = time.perf_counter() - started
                model = load_model(result.best_checkpoint)
                if torch.cuda.is_available():
                    model = model.cuda()
                scores = evaluate(name, model, zs, data, args.split)
            row = {"model": name, "run": f"{steps:g}x{batch}", "steps": result.steps,
                   "global_batch": params["global_batch_size"], "train_s": round(train_s, 1),
                   "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", **scores}
            results.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"split": args.split, "runs": results}, indent=2) + "\n")

    print(f"\nzero-shot on the {args.split} split; baseline: the 1x1 run (the pipeline's default budget)")
    print("| model | run | steps | batch | train (s) | AUROC [95% CI] | captions AUROC | i2t R@10 "
          "| above chance vs 1x1 |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|")
    for row in results:
        base_row = next(r for r in results if r["model"] == row["model"] and r["run"] == "1x1")
        gain = (row["auc"] - 0.5) / (base_row["auc"] - 0.5) if base_row["auc"] != 0.5 else float("nan")
        cap = f"{row['caption_auc']:.3f}" if "caption_auc" in row else "-"
        r10 = f"{row['i2t_r10']:.3f}" if "i2t_r10" in row else "-"
        print(f"| {row['model']} | {row['run']} | {row['steps']} | {row['global_batch']} | {row['train_s']:.0f} | "
              f"{row['auc']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}] | {cap} | {r10} | {gain:.2f}x |")


if __name__ == "__main__":
    main()
