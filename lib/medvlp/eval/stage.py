"""The ``zero_shot`` stage: every trained model and seed on the held-out split, paired claims, metrics JSON.

``run_zero_shot(**params)`` is what notebooks/03_zero_shot.ipynb runs (params: the ``zero_shot`` section of
params.yaml, plus the top-level ``seeds`` section). For every model and every training seed it loads
``pretrain_dir/<model>-s<seed>/<checkpoint>`` and evaluates 2D models (``figure_models``) on the figures and
volume models (``ct_models``) on the CT studies. It writes:

- ``metrics_path``::

    {"split", "n_boot", "seed", "seeds": {model: [seeds]},
     "figures": {model: {"findings", "retrieval", "linear_probe", "seed_results"}},
     "ct": {model: {...evaluate_ct..., "probe", "retrieval", "seed_results"}},
     "ablations": {name: [{model, metric, value, ci}]}, "claims": [...], "n_inconclusive"}

  where each model's metrics are those of its first seed and ``seed_results`` gives every seed's headline;
  released models (``external_models``) sit beside ours in ``figures`` / ``ct``, scored once on the same
  items, with their provenance under ``"external"`` and empty ``seed_results``;
- ``scores_dir/<model>.parquet``: every per-item score of every seed (columns ``seed``, ``task``, ``item``,
  ``class``, ``label``, ``score``; :func:`~medvlp.eval.evaluate.score_frame`), from which each claim is
  recomputed by :func:`claim_rows` without running any model.

A claim compares a method with its baseline on the same test items (:data:`CLAIMS`): the difference of
their seed-averaged headline metric with a two-level bootstrap CI (training seeds, then items;
:mod:`medvlp.eval.compare`), DeLong's test on the seed-averaged scores, and the verdict *reproduced* (CI
above 0), *contradicted* (below 0) or *inconclusive*, with the minimum detectable effect at 80% power.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from medvlp.eval.compare import (
    hierarchical_bootstrap_difference,
    hierarchical_mean_difference,
    minimum_detectable_effect,
    paired_auroc_difference,
)
from medvlp.eval.data import load_ct, load_figures
from medvlp.eval.encode import encode_texts, encode_volumes
from medvlp.eval.evaluate import (
    Evaluation,
    evaluate_ct,
    evaluate_ct_probe,
    evaluate_ct_retrieval,
    evaluate_findings,
    evaluate_linear_probe,
    evaluate_retrieval,
    image_features,
)
from medvlp.eval.external import describe, load_external_model
from medvlp.lexicon import load_anatomy_lexicon, load_concept_lexicon
from medvlp.metrics_json import write_metrics
from medvlp.models import load_model
from medvlp.models.volume_tower import has_volume_tower, input_volume_size, volume_size
from medvlp.params import run_name
from medvlp.stage_args import stage_function

#: The ablations shown side by side (headline number per model): (name, collection, models in order).
ABLATIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("it_align", "figures", ("clip", "siglip", "conceptclip")),
    ("text_tower", "figures", ("conceptclip_scratch_text", "conceptclip")),
    ("pc_align_positives", "figures", ("conceptclip", "conceptclip_concept_positives")),
    ("anatomy_alignment", "ct", ("ct_clip_global", "fvlm_nocal", "fvlm_normalcal", "fvlm")),
    ("text_tower_ct", "ct", ("fvlm_scratch_text", "fvlm")),
    ("slice_pooling", "ct", ("radclip_meanpool", "radclip")),
)


@dataclass(frozen=True)
class Claim:
    """One claim: ``method`` beats ``baseline`` on ``task`` (a per-item score task of the scores tables).

    metric: ``auroc`` (macro AUROC over the task's classes) or ``recall@K`` (from per-query ranks).
    paper_effect: the improvement the paper reports (AUROC points as a fraction), None when it gives none.
    """

    text: str
    baseline: str
    method: str
    task: str
    metric: str = "auroc"
    paper_effect: float | None = None
    beyond_paper: bool = False


CLAIMS: tuple[Claim, ...] = (
    Claim("ConceptCLIP: sigmoid IT-Align (SigLIP) as the image-text objective", "clip", "siglip", "findings"),
    Claim("ConceptCLIP: PC-Align on top of IT-Align improves zero-shot findings", "siglip", "conceptclip", "findings"),
    Claim("ConceptCLIP: a pretrained text tower (vs the same tower from scratch)", "conceptclip_scratch_text",
          "conceptclip", "findings"),
    Claim("Beyond the paper: PC-Align positives by concept, negated mentions dropped", "conceptclip",
          "conceptclip_concept_positives", "findings", beyond_paper=True),
    Claim("fVLM: anatomy-level alignment beats global (+4-5 AUC)", "ct_clip_global", "fvlm_nocal", "ct_diagnosis",
          paper_effect=0.04),
    Claim("fVLM: normal false-negative calibration (+2-4 AUC)", "fvlm_nocal", "fvlm_normalcal", "ct_diagnosis",
          paper_effect=0.02),
    Claim("fVLM: abnormal false-negative calibration (EMA text teacher)", "fvlm_normalcal", "fvlm", "ct_diagnosis"),
    Claim("fVLM: a pretrained text tower (vs the same tower from scratch)", "fvlm_scratch_text", "fvlm",
          "ct_diagnosis"),
    Claim("RadCLIP: attention slice pooling beats mean pooling (zero-shot)", "radclip_meanpool", "radclip",
          "ct_diagnosis"),
    Claim("RadCLIP: attention slice pooling beats mean pooling (linear probe, 100% labels)", "radclip_meanpool",
          "radclip", "ct_probe@1.0"),
    Claim("RadCLIP: attention slice pooling beats mean pooling (volume->report R@10)", "radclip_meanpool", "radclip",
          "ct_retrieval:volume_to_report", metric="recall@10"),
)


def checkpoint_path(pretrain_dir: str | Path, run: str, checkpoint: str) -> Path:
    """``pretrain_dir/<run>/<checkpoint>``; raises FileNotFoundError naming the stage to run."""
    path = Path(pretrain_dir) / run / checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train the model first (dvc repro pretrain@{run})")
    return path


def evaluate_figure_model(model: torch.nn.Module, test, train, lexicon, *, n_boot: int, seed: int,
                          local_weight: float, local_top_fraction: float, ks: Sequence[int],
                          fractions: Sequence[float]) -> Evaluation:
    """Findings (zero-shot), retrieval and, with ``train`` (a FigureSet), the linear probe of one 2D model.

    ``train=None`` leaves the probe out (``linear_probe`` is then absent from the result)."""
    test_feats = image_features(model, test)
    captions = encode_texts(model, test.captions)
    findings = evaluate_findings(model, test, lexicon, test_feats, local_weight=local_weight,
                                 local_top_fraction=local_top_fraction, n_boot=n_boot, seed=seed, captions=captions)
    retrieval = evaluate_retrieval(model, test, test_feats, ks=ks, n_boot=n_boot, seed=seed, captions=captions)
    metrics = {"findings": findings.metrics, "retrieval": retrieval.metrics}
    frames = [findings.scores, retrieval.scores]
    if train is not None:
        train_feats = image_features(model, train, with_patches=False)
        probe = evaluate_linear_probe(train_feats, train, test_feats, test, lexicon, fractions=fractions,
                                      n_boot=n_boot, seed=seed)
        metrics["linear_probe"] = probe.metrics
        frames.append(probe.scores)
    return Evaluation(metrics, pd.concat(frames, ignore_index=True))


def evaluate_volume_model(model: torch.nn.Module, test, train, lexicon, *, negative: str, n_boot: int, seed: int,
                          ks: Sequence[int], fractions: Sequence[float]) -> Evaluation:
    """fVLM's zero-shot diagnosis and RadCLIP's two protocols (linear probe on ``train``, a CTSet, and
    volume<->report retrieval) of one CT model."""
    labels = [a.label for a in lexicon.anatomies]
    test_feats = encode_volumes(model, test.volumes, test.label_maps, anatomy_labels=labels)
    diagnosis = evaluate_ct(model, test, lexicon, negative=negative, n_boot=n_boot, seed=seed, feats=test_feats)
    retrieval = evaluate_ct_retrieval(model, test, test_feats, ks=ks, n_boot=n_boot, seed=seed)
    train_feats = encode_volumes(model, train.volumes, train.label_maps, anatomy_labels=labels)
    probe = evaluate_ct_probe(model, train_feats, train, test_feats, test, fractions=fractions, n_boot=n_boot,
                              seed=seed)
    metrics = {**diagnosis.metrics, "probe": probe.metrics, "retrieval": retrieval.metrics}
    return Evaluation(metrics, pd.concat([diagnosis.scores, retrieval.scores, probe.scores], ignore_index=True))


def headline(collection: str, metrics: Mapping[str, Any]) -> tuple[float, list[float]]:
    """A model's headline number and its CI: 2D macro AUROC of the findings, CT mean AUROC of the diseases."""
    if collection == "figures":
        macro = metrics["findings"]["macro"]
        return macro["auc"], [macro["ci_low"], macro["ci_high"]]
    return metrics["mean"]["auc"], metrics["mean"]["ci"]


def ablation_rows(report: Mapping[str, Any]) -> dict[str, list[dict]]:
    """The headline number of each model in each ablation (its first seed), with its CI (models that were
    evaluated)."""
    out: dict[str, list[dict]] = {}
    metric = {"figures": "macro AUROC (findings)", "ct": "mean AUROC (CT diseases)"}
    for name, collection, models in ABLATIONS:
        rows = []
        for m in models:
            res = report.get(collection, {}).get(m)
            if res is not None:
                value, ci = headline(collection, res)
                rows.append({"model": m, "metric": metric[collection], "value": value, "ci": ci})
        if len(rows) > 1:
            out[name] = rows
    return out


def _task_arrays(scores: Mapping[str, pd.DataFrame], models: Sequence[str], task: str
                 ) -> tuple[np.ndarray, list[np.ndarray], list[str], list[str]]:
    """``(labels [N, C], valid [N, C], [scores [S_m, N, C] per model], item ids, class ids)`` of one task: the
    items and classes that any seed of the models scored, in sorted order; ``valid`` marks the (item, class)
    pairs that every seed of every model scored (the others are NaN in some seed)."""
    frames = {m: scores[m][scores[m]["task"] == task] for m in models}
    items = sorted(set().union(*(f["item"] for f in frames.values())))
    classes = sorted(set().union(*(f["class"] for f in frames.values())))
    row = {v: i for i, v in enumerate(items)}
    col = {v: j for j, v in enumerate(classes)}
    labels = np.zeros((len(items), len(classes)), dtype=bool)
    valid = np.ones_like(labels)
    per_model = []
    for m in models:
        frame = frames[m]
        seeds = sorted(frame["seed"].unique())
        out = np.full((max(len(seeds), 1), len(items), len(classes)), np.nan)
        s_idx = frame["seed"].map({s: k for k, s in enumerate(seeds)}).to_numpy(dtype=np.int64)
        r_idx = frame["item"].map(row).to_numpy(dtype=np.int64)
        c_idx = frame["class"].map(col).to_numpy(dtype=np.int64)
        out[s_idx, r_idx, c_idx] = frame["score"].to_numpy(dtype=np.float64)
        labels[r_idx, c_idx] = frame["label"].to_numpy(dtype=bool)
        valid &= ~np.isnan(out).any(axis=0)
        per_model.append(out)
    return labels, valid, per_model, items, classes


def claim_row(claim: Claim, scores: Mapping[str, pd.DataFrame], *, n_boot: int, seed: int) -> dict:
    """One claim judged on the per-item scores of its two models (:data:`CLAIMS`).

    Returns:
        ``claim``, ``baseline``, ``method``, ``task``, ``metric``, ``baseline_value`` and ``method_value``
        (seed-averaged), ``difference`` with ``ci`` (two-level bootstrap: seeds, then items), ``se``,
        ``p_delong`` (AUROC claims: DeLong's macro z-test on the seed-averaged scores), ``mde`` (minimum
        detectable effect at 80% power from ``se``), ``paper_effect``, ``detectable`` (the paper's effect
        is at least the MDE; None without a paper effect), ``seeds`` (per model), ``n_items``, ``verdict``.
    """
    labels, valid, (method, baseline), items, classes = _task_arrays(scores, (claim.method, claim.baseline),
                                                                     claim.task)
    out = {"claim": claim.text, "baseline": claim.baseline, "method": claim.method, "task": claim.task,
           "metric": claim.metric, "paper_effect": claim.paper_effect, "beyond_paper": claim.beyond_paper,
           "seeds": {claim.baseline: baseline.shape[0], claim.method: method.shape[0]},
           "n_items": int(valid.any(axis=1).sum())}
    if not valid.any():
        nan = float("nan")
        return {**out, "baseline_value": nan, "method_value": nan, "p_delong": None, "difference": nan,
                "ci": [nan, nan], "se": nan, "mde": nan, "verdict": "inconclusive", "detectable": None,
                "reason": f"no {claim.task!r} item scored by every seed of both models"}
    if claim.metric == "auroc":
        result = hierarchical_bootstrap_difference(labels, np.nan_to_num(method), np.nan_to_num(baseline),
                                                   valid=valid, names=classes, n_boot=n_boot, seed=seed)
        delong = paired_auroc_difference(labels, np.nan_to_num(method).mean(0), np.nan_to_num(baseline).mean(0),
                                         valid=valid, names=classes, n_boot=1, seed=seed)["macro"]
        out.update(baseline_value=result["auc_baseline"], method_value=result["auc_method"],
                   p_delong=delong["p_value"], n_classes=result["n_classes"])
    else:
        k = int(claim.metric.split("@")[1])
        hits = lambda ranks: (ranks[..., 0] <= k).astype(np.float64)  # noqa: E731
        rows = valid[:, 0]
        result = hierarchical_mean_difference(hits(method[:, rows]), hits(baseline[:, rows]), n_boot=n_boot, seed=seed)
        out.update(baseline_value=result["value_baseline"], method_value=result["value_method"], p_delong=None)
    se = result["se_bootstrap"]
    mde = minimum_detectable_effect(se)
    out.update(difference=result["difference"], ci=[result["ci_low"], result["ci_high"]], se=se, mde=mde,
               verdict=result["verdict"],
               detectable=None if claim.paper_effect is None else bool(claim.paper_effect >= mde))
    return out


def claim_rows(scores: Mapping[str, pd.DataFrame], *, n_boot: int, seed: int,
               claims: Sequence[Claim] = CLAIMS) -> list[dict]:
    """Every claim whose two models have scores (:func:`claim_row`); others are left out."""
    return [claim_row(c, scores, n_boot=n_boot, seed=seed) for c in claims
            if c.baseline in scores and c.method in scores]


def read_scores(scores_dir: str | Path, models: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The per-item score tables ``scores_dir/<model>.parquet`` of ``models`` that exist."""
    out = {}
    for m in models:
        path = Path(scores_dir) / f"{m}.parquet"
        if path.is_file():
            out[m] = pd.read_parquet(path)
    return out


def _write_scores(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


def is_volume_model(model: torch.nn.Module) -> bool:
    """Whether a model is scored on CT studies (fvlm, ct_global, radclip) rather than on 2D figures."""
    config = getattr(model, "config", None)
    return isinstance(config, dict) and config.get("kind") in ("fvlm", "ct_global", "radclip")


@stage_function("zero_shot", seeds="seeds")
def run_zero_shot(*, curated_dir: str, data_dir: str, pretrain_dir: str, checkpoint: str,
                  figure_models: Sequence[str], ct_models: Sequence[str], seeds: Mapping[str, Sequence[int]],
                  external_models: Mapping[str, dict], allow_download: bool,
                  split: str, n_boot: int, seed: int, local_weight: float, local_top_fraction: float,
                  ct_negative_prompt: str, intact_min_fraction: float, retrieval_ks: Sequence[int],
                  probe_fractions: Sequence[float], concept_lexicon: str | None, anatomy_lexicon: str | None,
                  metrics_path: str, scores_dir: str, progress: bool = True) -> dict:
    """Evaluate every seed of every model, then every external model, write ``scores_dir`` and
    ``metrics_path``; returns the report (see the module docstring). Every argument is a key of params.yaml's
    ``zero_shot`` section, except ``seeds`` (the top-level ``seeds`` section: the training seeds of each model).

    ``external_models`` (name -> spec of :func:`~medvlp.eval.external.load_external_model`): released models
    scored by the same code on the same items, once (their ``seed_results`` are empty, and no claim uses them);
    their entries carry ``"external"``, the provenance record of :func:`~medvlp.eval.external.describe`
    (source, revision, sha256 of local weights). ``allow_download``: let an adapter fetch a model that is not
    in the local cache (off by default: a missing model fails at once with the command that fetches it).

    Raises:
        KeyError: a model without seeds.
        ValueError: an external model named like one of ours, or a bad spec.
        FileNotFoundError: a checkpoint is missing (naming the stage that makes it), or an external model is not
            cached.
    """
    started = time.perf_counter()
    data = Path(data_dir)
    concepts = load_concept_lexicon(concept_lexicon)
    anatomies = load_anatomy_lexicon(anatomy_lexicon)
    missing = [m for m in (*figure_models, *ct_models) if not seeds.get(m)]
    if missing:
        raise KeyError(f"zero_shot: no training seeds for {missing}; list them in params.yaml `seeds`")
    clash = sorted(set(external_models) & {*figure_models, *ct_models})
    if clash:
        raise ValueError(f"zero_shot.external_models {clash} are named like trained models; rename them")
    report: dict[str, Any] = {"split": split, "n_boot": n_boot, "seed": seed, "checkpoint": checkpoint,
                              "seeds": {m: list(seeds[m]) for m in (*figure_models, *ct_models)},
                              "figures": {}, "ct": {}}
    scores: dict[str, pd.DataFrame] = {}
    runs = [(m, s) for m in figure_models for s in seeds[m]] + [(m, s) for m in ct_models for s in seeds[m]]
    runs += [(m, None) for m in external_models]
    bar = tqdm(runs, desc="zero-shot", unit="run", disable=not progress)
    figure_sets: tuple | None = None
    ct_sets: dict[tuple, tuple] = {}
    per_model: dict[str, list[pd.DataFrame]] = {}
    for name, s in bar:
        external = s is None
        bar.set_postfix_str(name if external else run_name(name, s))
        if external:
            model = load_external_model(name, external_models[name], allow_download=allow_download)
        else:
            model = load_model(checkpoint_path(pretrain_dir, run_name(name, s), checkpoint))
        if not (name in ct_models or (external and is_volume_model(model))):
            if figure_sets is None:
                truth = data / "figures" / "figures_truth.jsonl"
                figure_sets = (load_figures(curated_dir, split, concepts, truth),
                               load_figures(curated_dir, "train", concepts, truth))
                report["n_figures"] = int(figure_sets[0].has_truth.sum())
            result = evaluate_figure_model(model, *figure_sets, concepts, n_boot=n_boot, seed=seed,
                                           local_weight=local_weight, local_top_fraction=local_top_fraction,
                                           ks=retrieval_ks, fractions=probe_fractions)
            collection = "figures"
        else:
            if has_volume_tower(model.config):
                size = volume_size(model.config)
            elif external:
                size = input_volume_size(model.config)
            else:
                size = _radclip_volume_size(pretrain_dir, run_name(name, s), model.config)
            if size not in ct_sets:
                truth = data / "ct" / "ct_truth.jsonl"
                ct_sets[size] = tuple(load_ct(curated_dir, part, anatomies, size, truth,
                                              intact_min_fraction=intact_min_fraction) for part in (split, "train"))
                report["n_studies"] = int(ct_sets[size][0].has_truth.sum())
            result = evaluate_volume_model(model, *ct_sets[size], anatomies, negative=ct_negative_prompt,
                                           n_boot=n_boot, seed=seed, ks=retrieval_ks, fractions=probe_fractions)
            collection = "ct"
        per_model.setdefault(name, []).append(result.scores.assign(seed=0 if external else s))
        entry = report[collection].setdefault(name, {**result.metrics, "seed_results": {}})
        if external:
            entry["external"] = describe(name, external_models[name], model)
        else:
            entry["seed_results"][str(s)] = headline(collection, result.metrics)[0]
    for name, frames in per_model.items():
        scores[name] = pd.concat(frames, ignore_index=True)[["seed", "task", "item", "class", "label", "score"]]
        _write_scores(scores[name], Path(scores_dir) / f"{name}.parquet")
    report["ablations"] = ablation_rows(report)
    report["claims"] = claim_rows(scores, n_boot=n_boot, seed=seed)
    report["n_inconclusive"] = sum(r["verdict"] == "inconclusive" for r in report["claims"])
    report["elapsed_s"] = time.perf_counter() - started
    write_metrics(metrics_path, report, sort_keys=True)
    return report


def _radclip_volume_size(pretrain_dir: str | Path, run: str, config: dict) -> tuple[int, int, int]:
    """The CT input size a RadCLIP model was trained with (its run's ``volume.spatial_size``)."""
    info = json.loads((Path(pretrain_dir) / run / "run_info.json").read_text("utf-8"))
    size = info["params"]["volume"].get("spatial_size")
    return tuple(int(s) for s in size) if size else input_volume_size(config)
