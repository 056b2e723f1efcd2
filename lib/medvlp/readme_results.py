"""Render the README's results section from the metrics files under ``reports/metrics/``.

The numbers in README.md are never typed in: ``medvlp update-readme`` rewrites the block between
``<!-- results:start -->`` and ``<!-- results:end -->`` from the JSON metrics the stages wrote, and a
test fails when the committed README disagrees with the committed metrics.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def curation_markdown(report: dict) -> str:
    """Markdown tables summarising ``reports/metrics/curation.json``."""
    fig, ct, ext, ana = report["figures"], report["ct"], report["extraction"], report["anatomy_assignment"]
    lines = [
        "### Curation (`reports/metrics/curation.json`)",
        "",
        "| collection | records read | rejected | duplicates removed | kept | train / val / test |",
        "|---|---|---|---|---|---|",
    ]
    for name, sec in (("figures", fig), ("ct", ct)):
        dups = sum(sec.get("duplicates_removed", {}).values())
        splits = " / ".join(str(sec["splits"][s]["records"]) for s in ("train", "val", "test"))
        lines.append(f"| {name} | {sec['records_read']} | {sec['rejected']} | {dups} | {sec['kept']} | {splits} |")
    rejects = sorted({(name, reason, v["count"]) for name, sec in (("figures", fig), ("ct", ct))
                      for reason, v in sec["rejects"].items()})
    lines += ["", "Rejected records by reason: " + ", ".join(f"{n}/{r} {c}" for n, r, c in rejects) + ".", ""]
    lines += [
        "| scored against the synthetic truth | value |",
        "|---|---|",
        f"| concept extraction precision / recall / F1 | {ext['precision']:.4f} / {ext['recall']:.4f} / "
        f"{ext['f1']:.4f} |",
        f"| F1 on captions without given spans | {ext['extracted_only_f1']:.4f} |",
        f"| negation accuracy | {ext['negation_accuracy']:.4f} |",
        f"| compound caption split accuracy | {ext['compound_split_accuracy']:.4f} |",
        f"| report sentence -> anatomy assignment accuracy | {ana['accuracy']:.4f} |",
        f"| normal-anatomy marking accuracy (fVLM rule) | {ana['normal_accuracy']:.4f} |",
        f"| de-duplication precision / recall | {ext['dedup_precision']:.4f} / {ext['dedup_recall']:.4f} |",
        "",
        "The synthetic captions and reports follow the phrasing conventions the extractors implement "
        "(lexicon surface forms, NegEx-style cues), so these scores check the implementation, not "
        "how well it transfers to real text.",
        "",
        "![modalities](reports/figures/curate/modalities.png) ![concepts](reports/figures/curate/concepts.png)",
        "",
        "![examples](reports/figures/curate/examples.png)",
    ]
    return "\n".join(lines)


def _ci(value: float, ci: list | tuple, digits: int = 3) -> str:
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _boot(d: dict) -> str:
    """``auc [ci_low, ci_high]`` of a bootstrap dict."""
    return _ci(d["auc"], [d["ci_low"], d["ci_high"]])


def chance_counts(per_class: dict) -> str:
    """``"a / b of n"``: classes whose bootstrap CI lies wholly above / below an AUROC of 0.5."""
    above = sum(v["ci_low"] > 0.5 for v in per_class.values())
    below = sum(v["ci_high"] < 0.5 for v in per_class.values())
    return f"{above} / {below} of {len(per_class)}"


def _mean_similarity(findings: dict) -> str:
    """Mean over modalities of the within-modality prompt cosine (``-`` for reports without it)."""
    sims = findings.get("prompt_similarity") or {}
    return f"{sum(sims.values()) / len(sims):.3f}" if sims else "-"


def _caption_macro(findings: dict) -> str:
    """The caption-scored macro AUROC with its CI (``-`` for reports without it)."""
    macro = findings.get("caption_macro")
    return _boot(macro) if macro else "-"


def _target(name: str, value: float, threshold: float) -> str:
    met = "met" if value >= threshold else "**not met**"
    return f"{name} {value:.3f} (issue target >= {threshold:.2f}: {met})"


def zero_shot_markdown(report: dict) -> str:
    """The claims, the per-model headline numbers and the issue targets from ``zero_shot.json``."""
    lines = ["### Do the papers' claims reproduce here? (`reports/metrics/zero_shot.json`)", "",
             f"Held-out {report['split']} split: {report.get('n_figures', 0)} figures, {report.get('n_studies', 0)} "
             f"CT studies; AUROC with {report['n_boot']}-sample bootstrap 95% CIs. A class is *above* / *below* "
             "chance when its whole AUROC CI lies above / below 0.5. Verdicts are computed: *reproduced* when "
             "the method's whole CI lies above the baseline's estimate, *not reproduced* when its estimate is "
             "not above it, *inconclusive* otherwise.", "",
             "| claim | baseline | AUROC | method | AUROC | verdict |", "|---|---|---|---|---|---|"]
    for c in report.get("claims", []):
        lines.append(f"| {c['claim']} | {c['baseline']} | {_ci(c['baseline_auc'], c['baseline_ci'])} | "
                     f"{c['method']} | {_ci(c['method_auc'], c['method_ci'])} | {c['verdict']} |")
    figures, ct = report.get("figures", {}), report.get("ct", {})
    if figures:
        lines += ["", "| 2D model | findings macro AUROC | findings above / below chance | "
                  "prompt cosine within a modality (mean) | findings macro AUROC from the captions (text side) | "
                  "image->text R@1 / R@10 | text->image R@1 / R@10 | linear probe AUROC (1% / 10% / 100% labels) |",
                  "|---|---|---|---|---|---|---|---|"]
        for m, r in figures.items():
            macro = r["findings"]["macro"]
            i2t, t2i = r["retrieval"]["image_to_text"], r["retrieval"]["text_to_image"]
            probe = " / ".join(f"{v['macro']['auc']:.3f}" for _, v in sorted(r["linear_probe"].items(),
                                                                              key=lambda kv: float(kv[0])))
            lines.append(f"| {m} | {_ci(macro['auc'], [macro['ci_low'], macro['ci_high']])} | "
                         f"{chance_counts(r['findings']['per_finding'])} | {_mean_similarity(r['findings'])} | "
                         f"{_caption_macro(r['findings'])} | "
                         f"{i2t['recall@1']['estimate']:.3f} / {i2t['recall@10']['estimate']:.3f} | "
                         f"{t2i['recall@1']['estimate']:.3f} / {t2i['recall@10']['estimate']:.3f} | {probe} |")
    if ct:
        lines += ["", "| CT model | mean AUROC over diseases | diseases above / below chance | F1 | sensitivity | "
                  "specificity |", "|---|---|---|---|---|---|"]
        for m, r in ct.items():
            mean = r["mean"]
            lines.append(f"| {m} | {_ci(mean['auc'], mean['ci'])} | {chance_counts(r['per_disease'])} | "
                         f"{mean['f1']:.3f} | {mean['sensitivity']:.3f} | {mean['specificity']:.3f} |")
    targets = []
    if "conceptclip" in figures:
        targets.append(_target("conceptclip macro AUROC", figures["conceptclip"]["findings"]["macro"]["auc"], 0.85))
    if "fvlm" in ct:
        targets.append(_target("fvlm mean AUROC", ct["fvlm"]["mean"]["auc"], 0.80))
    if targets:
        lines += ["", "Targets: " + "; ".join(targets) + "."]
    lines += ["", "![ablations](reports/figures/zero_shot/ablations.png)"]
    return "\n".join(lines)


def explain_markdown(report: dict) -> str:
    """Localisation, concept annotation and concept bottleneck from ``explain.json``."""
    lines = ["### Explanations against the true lesion masks (`reports/metrics/explain.json`)", "",
             "| model | pointing game | heatmap AUROC | concept annotation AUROC | concept bottleneck AUROC | "
             "linear probe AUROC |", "|---|---|---|---|---|---|"]
    for m, loc in report.get("localization", {}).items():
        ann, cbm = report["concept_annotation"][m], report["bottleneck"][m]
        cells = [_ci(loc["pointing"], loc["pointing_ci"]), _ci(loc["heatmap_auc"], loc["heatmap_auc_ci"]),
                 _boot(ann), _boot(cbm["macro"]), _boot(cbm["probe_macro"])]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    n = next(iter(report.get("localization", {}).values()), {}).get("n_pairs", 0)
    lines += ["", f"Over {n} (test image, finding) pairs; pointing-game tolerance "
              f"{next(iter(report.get('localization', {}).values()), {}).get('tolerance_px', 0)} px.", "",
              "![heatmaps](reports/figures/explain/heatmaps.png)"]
    return "\n".join(lines)


FLAT_LOSS_DROP = 0.02  # a stage whose windowed training loss fell by less than this fraction is called flat


def stage_loss_windows(train_log: Path, window: float = 0.1) -> list[tuple[float, float]]:
    """Per training stage, the mean loss over its first and its last ``window`` fraction of steps
    (at least one step each) from a ``train_log.csv``; single-step losses are too noisy to compare."""
    by_stage: dict[str, list[float]] = {}
    with open(train_log, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            by_stage.setdefault(row.get("stage", "0"), []).append(float(row["loss"]))
    out = []
    for losses in by_stage.values():
        n = max(1, int(len(losses) * window))
        out.append((sum(losses[:n]) / n, sum(losses[-n:]) / n))
    return out


def pretrain_markdown(pretrain_dir: Path) -> str:
    """Steps, measured time, throughput and the loss trend of every pre-training run."""
    lines = ["### Pre-training (`reports/pretrain/<model>/run_info.json`)", "",
             "| model | steps | parameters | time (s) | samples/s | training loss per stage, first -> last 10% "
             "of steps | device |",
             "|---|---|---|---|---|---|---|"]
    total, flat = 0.0, []
    for info_path in sorted(pretrain_dir.glob("*/run_info.json")):
        info = json.loads(info_path.read_text("utf-8"))
        windows = stage_loss_windows(info_path.parent / "train_log.csv")
        total += info["elapsed_s"]
        trend = "; ".join(f"{a:.3f} -> {b:.3f}" for a, b in windows)
        if windows and windows[-1][1] > (1 - FLAT_LOSS_DROP) * windows[-1][0]:
            flat.append(info["model"])
        lines.append(f"| {info['model']} | {info['steps_done']} | {info['parameters']['total']:,} | "
                     f"{info['elapsed_s']:.0f} | {info.get('mean_samples_per_s') or 0:.1f} | {trend} | "
                     f"{info['device']['type']} x{info['device']['world_size']} |")
    lines += ["", f"All pre-training together: {total / 60:.1f} min."]
    if flat:
        lines += ["", f"Flat training loss (last stage fell by less than {FLAT_LOSS_DROP:.0%}): "
                  f"{', '.join(flat)}. At this budget these runs barely move their objective; read their "
                  "evaluation numbers with that in mind."]
    return "\n".join(lines)


def results_markdown(metrics_dir: str | Path = "reports/metrics") -> str:
    metrics_dir = Path(metrics_dir)
    parts = ["## Results", "", "Generated by `medvlp update-readme` from the metrics files of the last "
             "`dvc repro`; do not edit by hand.", ""]
    zero_shot, explain = metrics_dir / "zero_shot.json", metrics_dir / "explain.json"
    if zero_shot.is_file():
        parts += [zero_shot_markdown(json.loads(zero_shot.read_text("utf-8"))), ""]
    if explain.is_file():
        parts += [explain_markdown(json.loads(explain.read_text("utf-8"))), ""]
    pretrain_dir = metrics_dir.parent / "pretrain"
    if any(pretrain_dir.glob("*/run_info.json")):
        parts += [pretrain_markdown(pretrain_dir), ""]
    curation = metrics_dir / "curation.json"
    if curation.is_file():
        parts.append(curation_markdown(json.loads(curation.read_text("utf-8"))))
    else:
        parts.append("No metrics yet: run `make reproduce`.")
    return "\n".join(parts)


def update_readme(readme: str | Path = "README.md", metrics_dir: str | Path = "reports/metrics") -> bool:
    """Rewrite the results block of ``readme``; returns True if the file changed."""
    readme = Path(readme)
    text = readme.read_text("utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{readme}: no '{START}' ... '{END}' block to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{results_markdown(metrics_dir)}\n{END}{tail}"
    if new != text:
        readme.write_text(new, "utf-8")
    return new != text
