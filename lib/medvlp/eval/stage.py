"""The ``zero_shot`` stage: every trained model on the held-out split, ablation tables, metrics JSON.

``run_zero_shot(**params)`` is what notebooks/03_zero_shot.ipynb runs (params: the ``zero_shot``
section of params.yaml). It loads each model's checkpoint from ``pretrain_dir/<model>/<checkpoint>``,
evaluates 2D models (``figure_models``) on the figures and volume models (``ct_models``) on the CT
studies, and writes ``metrics_path``:

    {"split", "n_boot", "figures": {model: {"findings", "retrieval", "linear_probe"}},
     "ct": {model: {...evaluate_ct...}}, "ablations": {name: [{model, metric, value, ci}]}}
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medvlp.curate.curation_report import round_floats
from medvlp.eval.data import load_ct, load_figures
from medvlp.eval.encode import encode_texts
from medvlp.eval.evaluate import (
    evaluate_ct,
    evaluate_findings,
    evaluate_linear_probe,
    evaluate_retrieval,
    image_features,
)
from medvlp.lexicon import load_anatomy_lexicon, load_concept_lexicon
from medvlp.models import load_model
from medvlp.models.volume_tower import has_volume_tower, input_volume_size, volume_size

#: The three ablations of the papers' claims: (name, collection, models in order, metric).
ABLATIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("it_align", "figures", ("clip", "siglip", "conceptclip")),
    ("anatomy_alignment", "ct", ("ct_clip_global", "fvlm_nocal", "fvlm")),
    ("slice_pooling", "ct", ("radclip_meanpool", "radclip")),
)


def checkpoint_path(pretrain_dir: str | Path, model: str, checkpoint: str = "best.pt") -> Path:
    """``pretrain_dir/<model>/<checkpoint>``; raises FileNotFoundError naming the stage to run."""
    path = Path(pretrain_dir) / model / checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train the model first (dvc repro pretrain@{model})")
    return path


def evaluate_figure_model(name: str, model: torch.nn.Module, test, train, lexicon, *, n_boot: int, seed: int,
                          local_weight: float, top_k: int, ks: Sequence[int] = (1, 5, 10),
                          fractions: Sequence[float] = (0.01, 0.1, 1.0)) -> dict:
    """Findings (zero-shot), retrieval and, with ``train`` (a FigureSet), the linear probe of one 2D model.

    ``train=None`` leaves the probe out (``linear_probe`` is then absent from the result)."""
    test_feats = image_features(model, test)
    captions = encode_texts(model, test.captions)
    out = {
        "findings": evaluate_findings(model, test, lexicon, test_feats, local_weight=local_weight, top_k=top_k,
                                      n_boot=n_boot, seed=seed, captions=captions),
        "retrieval": evaluate_retrieval(model, test, test_feats, ks=ks, n_boot=n_boot, seed=seed, captions=captions),
    }
    if train is not None:
        train_feats = image_features(model, train, with_patches=False)
        out["linear_probe"] = evaluate_linear_probe(train_feats, train, test_feats, test, lexicon,
                                                    fractions=fractions, n_boot=n_boot, seed=seed)
    return out


def ablation_rows(report: Mapping[str, Any]) -> dict[str, list[dict]]:
    """The headline number of each model in each ablation, with its CI (models that were evaluated)."""
    out: dict[str, list[dict]] = {}
    for name, collection, models in ABLATIONS:
        rows = []
        for m in models:
            res = report.get(collection, {}).get(m)
            if res is None:
                continue
            if collection == "figures":
                macro = res["findings"]["macro"]
                rows.append({"model": m, "metric": "macro AUROC (findings)", "value": macro["auc"],
                             "ci": [macro["ci_low"], macro["ci_high"]]})
            else:
                rows.append({"model": m, "metric": "mean AUROC (CT diseases)", "value": res["mean"]["auc"],
                             "ci": res["mean"]["ci"]})
        if rows:
            out[name] = rows
    return out


def run_zero_shot(*, curated_dir: str = "reports/curated", data_dir: str = "data",
                  pretrain_dir: str = "reports/pretrain", checkpoint: str = "best.pt",
                  figure_models: Sequence[str] = ("clip", "siglip", "conceptclip"),
                  ct_models: Sequence[str] = ("ct_clip_global", "fvlm_nocal", "fvlm", "radclip_meanpool", "radclip"),
                  split: str = "test", n_boot: int = 1000, seed: int = 0, local_weight: float = 0.5,
                  local_top_k: int = 5, ct_negative_prompt: str = "not", retrieval_ks: Sequence[int] = (1, 5, 10),
                  probe_fractions: Sequence[float] = (0.01, 0.1, 1.0), concept_lexicon: str | None = None,
                  anatomy_lexicon: str | None = None, metrics_path: str = "reports/metrics/zero_shot.json",
                  progress: bool = True) -> dict:
    """Evaluate every model and write ``metrics_path``; returns the report (see the module docstring)."""
    started = time.perf_counter()
    data = Path(data_dir)
    concepts = load_concept_lexicon(concept_lexicon)
    anatomies = load_anatomy_lexicon(anatomy_lexicon)
    report: dict[str, Any] = {"split": split, "n_boot": n_boot, "seed": seed, "checkpoint": checkpoint,
                              "figures": {}, "ct": {}}
    if figure_models:
        test = load_figures(curated_dir, split, concepts, data / "figures" / "figures_truth.jsonl")
        train = load_figures(curated_dir, "train", concepts, data / "figures" / "figures_truth.jsonl")
        report["n_figures"] = int(test.has_truth.sum())
        for name in tqdm(figure_models, desc="zero-shot 2D", disable=not progress):
            model = load_model(checkpoint_path(pretrain_dir, name, checkpoint))
            report["figures"][name] = evaluate_figure_model(
                name, model, test, train, concepts, n_boot=n_boot, seed=seed, local_weight=local_weight,
                top_k=local_top_k, ks=retrieval_ks, fractions=probe_fractions)
    studies: dict[tuple, Any] = {}
    for name in tqdm(ct_models, desc="zero-shot CT", disable=not progress):
        model = load_model(checkpoint_path(pretrain_dir, name, checkpoint))
        size = volume_size(model.config) if has_volume_tower(model.config) \
            else _radclip_volume_size(pretrain_dir, name, model.config)
        if size not in studies:
            studies[size] = load_ct(curated_dir, split, anatomies, size, data / "ct" / "ct_truth.jsonl")
        report["ct"][name] = evaluate_ct(model, studies[size], anatomies, negative=ct_negative_prompt,
                                         n_boot=n_boot, seed=seed)
    if studies:
        report["n_studies"] = int(next(iter(studies.values())).has_truth.sum())
    report["ablations"] = ablation_rows(report)
    report["claims"] = claim_rows(report)
    report["elapsed_s"] = time.perf_counter() - started
    path = Path(metrics_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(round_floats(report), indent=2, sort_keys=True) + "\n", "utf-8")
    return report


def _radclip_volume_size(pretrain_dir: str | Path, name: str, config: dict) -> tuple[int, int, int]:
    """The CT input size a RadCLIP model was trained with (its run's ``volume.spatial_size``)."""
    info = json.loads((Path(pretrain_dir) / name / "run_info.json").read_text("utf-8"))
    size = info["params"]["volume"].get("spatial_size")
    return tuple(int(s) for s in size) if size else input_volume_size(config)


#: The claims the ablations test: (ablation, baseline, method, what the paper reports).
CLAIMS: tuple[tuple[str, str, str, str], ...] = (
    ("it_align", "clip", "siglip", "ConceptCLIP: sigmoid IT-Align (SigLIP) as the image-text objective"),
    ("it_align", "siglip", "conceptclip", "ConceptCLIP: PC-Align on top of IT-Align improves zero-shot findings"),
    ("anatomy_alignment", "ct_clip_global", "fvlm_nocal", "fVLM: anatomy-level alignment beats global (+4-5 AUC)"),
    ("anatomy_alignment", "fvlm_nocal", "fvlm", "fVLM: false-negative calibration adds +2-4 AUC"),
    ("slice_pooling", "radclip_meanpool", "radclip", "RadCLIP: attention slice pooling beats mean pooling"),
)


def claim_rows(report: Mapping[str, Any]) -> list[dict]:
    """For each claim: baseline and method headline AUROC with CIs, their difference, and the verdict
    ``reproduced`` (the method's whole CI lies above the baseline's estimate), ``not reproduced`` (the
    method's estimate is not above the baseline's) or ``inconclusive`` (higher, but its CI reaches
    the baseline's estimate)."""
    rows = []
    for ablation, base, method, claim in CLAIMS:
        by_model = {r["model"]: r for r in report.get("ablations", {}).get(ablation, [])}
        if base not in by_model or method not in by_model:
            continue
        b, m = by_model[base], by_model[method]
        if m["ci"][0] > b["value"]:
            verdict = "reproduced"
        elif m["value"] <= b["value"]:
            verdict = "not reproduced"
        else:
            verdict = "inconclusive"
        rows.append({"claim": claim, "baseline": base, "method": method, "baseline_auc": b["value"],
                     "baseline_ci": b["ci"], "method_auc": m["value"], "method_ci": m["ci"],
                     "difference": m["value"] - b["value"], "verdict": verdict})
    return rows
