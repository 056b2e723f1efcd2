"""Render the README's results section from the metrics files under ``reports/metrics/``.

The numbers in README.md are never typed in: ``medvlp update-readme`` rewrites the block between
``<!-- results:start -->`` and ``<!-- results:end -->`` from the JSON metrics the stages wrote, and a
test fails when the committed README disagrees with the committed metrics.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from medvlp.eval.formatting import fmt_boot, fmt_ci, fmt_p

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
    return fmt_boot(macro) if macro else "-"


def claims_markdown(report: dict) -> list[str]:
    """The claims table: paired difference, its two-level CI, DeLong's p, seeds, MDE and verdict."""
    claims = report.get("claims", [])
    lines = ["| claim | baseline | method | difference [95% CI] | DeLong p | seeds | MDE | paper | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in claims:
        seeds = f"{c['seeds'][c['baseline']]} / {c['seeds'][c['method']]}"
        paper = "-" if c.get("paper_effect") is None else f"+{c['paper_effect']:.2f}"
        lines.append(f"| {c['claim']} | {c['baseline']} {c['baseline_value']:.3f} | {c['method']} "
                     f"{c['method_value']:.3f} | {fmt_ci(c['difference'], c['ci'])} | {fmt_p(c.get('p_delong'))} | "
                     f"{seeds} | {c['mde']:.3f} | {paper} | **{c['verdict']}** |")
    inconclusive = [c for c in claims if c["verdict"] == "inconclusive"]
    lines += ["", f"{len(inconclusive)} of {len(claims)} claims are inconclusive."]
    for c in inconclusive:
        if c.get("paper_effect") is not None:
            seen = "could have been detected" if c["mde"] <= c["paper_effect"] else "is below what this test set " \
                "and these seeds can detect"
            lines.append(f"- {c['claim']}: the paper's +{c['paper_effect']:.2f} {seen} (MDE {c['mde']:.3f}).")
    return lines


def model_label(name: str, external: dict | None) -> str:
    """A model's name in a results table; a released model is marked and its weights' checksum shown."""
    if not external:
        return name
    digest = f", sha256 {external['sha256'][:12]}" if external.get("sha256") else ""
    return f"{name} (released: {external['source']}{digest})"


def zero_shot_markdown(report: dict) -> str:
    """The claims and the per-model headline numbers from ``zero_shot.json``."""
    seeds = sorted({len(v) for v in report.get("seeds", {}).values()})
    lines = ["### Do the papers' claims reproduce here? (`reports/metrics/zero_shot.json`)", "",
             f"Held-out {report['split']} split: {report.get('n_figures', 0)} figures, {report.get('n_studies', 0)} "
             f"CT studies; {' or '.join(map(str, seeds))} training seed(s) per model. Each claim compares a method "
             "with its baseline on the same test items: the difference of their seed-averaged headline metric "
             "(2D: macro AUROC of the findings; CT: mean AUROC of the abnormalities; or the protocol named), a "
             f"{report['n_boot']}-replicate two-level bootstrap 95% CI (training seeds, then items), DeLong's test "
             "on the seed-averaged scores, and the minimum detectable effect (MDE) at 80% power. Verdicts are "
             "computed: *reproduced* when the CI lies above 0, *contradicted* when below 0, *inconclusive* "
             "otherwise. \"paper\" is the effect the paper reports where it gives a number.", ""]
    lines += claims_markdown(report)
    lines += ["", "![claims](reports/figures/zero_shot/claims_forest.png)"]
    figures, ct = report.get("figures", {}), report.get("ct", {})
    if figures:
        lines += ["", "| 2D model (seed 0) | findings macro AUROC | findings above / below chance | "
                  "prompt cosine within a modality (mean) | findings macro AUROC from the captions (text side) | "
                  "image->text R@1 / R@10 | text->image R@1 / R@10 | linear probe AUROC (1% / 10% / 100% labels) |",
                  "|---|---|---|---|---|---|---|---|"]
        for m, r in figures.items():
            macro = r["findings"]["macro"]
            i2t, t2i = r["retrieval"]["image_to_text"], r["retrieval"]["text_to_image"]
            probe = " / ".join(f"{v['macro']['auc']:.3f}" for _, v in sorted(r["linear_probe"].items(),
                                                                              key=lambda kv: float(kv[0])))
            lines.append(f"| {model_label(m, r.get('external'))} | {fmt_boot(macro)} | "
                         f"{chance_counts(r['findings']['per_finding'])} | {_mean_similarity(r['findings'])} | "
                         f"{_caption_macro(r['findings'])} | "
                         f"{i2t['recall@1']['estimate']:.3f} / {i2t['recall@10']['estimate']:.3f} | "
                         f"{t2i['recall@1']['estimate']:.3f} / {t2i['recall@10']['estimate']:.3f} | {probe} |")
    if ct:
        lines += ["", "| CT model (seed 0) | mean AUROC over diseases | diseases above / below chance | F1 | "
                  "sensitivity | specificity | linear probe AUROC (1% / 10% / 100%) | volume->report R@1 / R@10 | "
                  "pairs scored / left out (anatomy not intact) |", "|---|---|---|---|---|---|---|---|---|"]
        for m, r in ct.items():
            mean = r["mean"]
            probe = " / ".join(f"{v['macro']['auc']:.3f}" for _, v in sorted((r.get("probe") or {}).items(),
                                                                              key=lambda kv: float(kv[0]))) or "-"
            v2r = (r.get("retrieval") or {}).get("volume_to_report")
            recall = f"{v2r['recall@1']['estimate']:.3f} / {v2r['recall@10']['estimate']:.3f}" if v2r else "-"
            lines.append(f"| {model_label(m, r.get('external'))} | {fmt_ci(mean['auc'], mean['ci'])} | "
                         f"{chance_counts(r['per_disease'])} | "
                         f"{mean['f1']:.3f} | {mean['sensitivity']:.3f} | {mean['specificity']:.3f} | {probe} | "
                         f"{recall} | {r.get('n_pairs', '-')} / {r.get('n_pairs_excluded', '-')} |")
    per_seed = {m: r["seed_results"] for part in (figures, ct) for m, r in part.items() if len(r["seed_results"]) > 1}
    if per_seed:
        lines += ["", "Headline per training seed: " + "; ".join(
            f"{m} " + " / ".join(f"{v:.3f}" for _, v in sorted(r.items())) for m, r in per_seed.items()) + "."]
    lines += ["", "![ablations](reports/figures/zero_shot/ablations.png)"]
    return "\n".join(lines)


def explain_markdown(report: dict) -> str:
    """Localisation, concept annotation and concept bottleneck from ``explain.json``."""
    lines = ["### Explanations against the true lesion masks (`reports/metrics/explain.json`)", "",
             "| model | pointing game | heatmap AUROC | concept annotation AUROC | concept bottleneck AUROC | "
             "linear probe AUROC |", "|---|---|---|---|---|---|"]
    external = report.get("external", {})
    for m, ann in report.get("concept_annotation", {}).items():
        loc, cbm = report.get("localization", {}).get(m), report["bottleneck"][m]
        cells = [fmt_ci(loc["pointing"], loc["pointing_ci"]) if loc else "- (no patch tokens)",
                 fmt_ci(loc["heatmap_auc"], loc["heatmap_auc_ci"]) if loc else "-",
                 fmt_boot(ann), fmt_boot(cbm["macro"]), fmt_boot(cbm["probe_macro"])]
        lines.append(f"| {model_label(m, external.get(m))} | " + " | ".join(cells) + " |")
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


def pretrain_markdown(pretrain_dir: Path, text_encoder: dict | None = None) -> str:
    """Steps, measured time, throughput and the loss trend of every pre-training run (and of the text
    encoder's masked-LM pre-training, ``text_encoder``: ``reports/metrics/text_encoder.json``)."""
    lines = ["### Pre-training (`reports/pretrain/<model>-s<seed>/run_info.json`)", ""]
    if text_encoder:
        mlm = (text_encoder.get("val_after_phase") or {}).get("mlm", {})
        concept = (text_encoder.get("val_after_phase") or {}).get("concept", {})
        lines += [f"Text encoder (`pretrain_text`, `reports/metrics/text_encoder.json`): a "
                  f"{text_encoder['parameters']:,}-parameter BERT with a {text_encoder['vocab_size']}-entry WordPiece "
                  f"vocabulary, trained on {text_encoder['n_train_texts']} training texts in "
                  f"{text_encoder['elapsed_s']:.0f} s: {text_encoder['steps']} masked-LM steps (held-out masked-token "
                  f"accuracy {mlm.get('val_accuracy', float('nan')):.3f}), then {text_encoder['concept_steps']} steps "
                  f"learning the {text_encoder['n_concepts']} concepts of the training captions (held-out loss "
                  f"{concept.get('val_concept_loss', float('nan')):.3f}).", ""]
    lines += ["| run | steps | parameters | time (s) | samples/s | training loss per stage, first -> last 10% "
              "of steps | device |",
              "|---|---|---|---|---|---|---|"]
    total, flat = 0.0, []
    for info_path in sorted(pretrain_dir.glob("*/run_info.json")):
        info = json.loads(info_path.read_text("utf-8"))
        windows = stage_loss_windows(info_path.parent / "train_log.csv")
        total += info["elapsed_s"]
        trend = "; ".join(f"{a:.3f} -> {b:.3f}" for a, b in windows)
        if windows and windows[-1][1] > (1 - FLAT_LOSS_DROP) * windows[-1][0]:
            flat.append(info_path.parent.name)
        lines.append(f"| {info_path.parent.name} | {info['steps_done']} | {info['parameters']['total']:,} | "
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
        text = metrics_dir / "text_encoder.json"
        parts += [pretrain_markdown(pretrain_dir, json.loads(text.read_text("utf-8")) if text.is_file() else None),
                  ""]
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
