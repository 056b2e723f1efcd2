"""Tables of the zero-shot report (``reports/metrics/zero_shot.json``) as pandas DataFrames.

Every value is read from the report and written by :mod:`medvlp.eval.formatting`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from medvlp.eval.formatting import fmt_boot, fmt_ci, fmt_p


def ablation_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (ablation, model): the headline AUROC with its 95% CI."""
    rows = [{"ablation": name, "model": r["model"], "metric": r["metric"],
             "AUROC [95% CI]": fmt_ci(r["value"], r["ci"])}
            for name, rs in report["ablations"].items() for r in rs]
    return pd.DataFrame(rows).set_index(["ablation", "model"]) if rows else pd.DataFrame()


def findings_table(report: Mapping[str, Any], names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Per-finding zero-shot AUROC (rows: findings, columns: 2D models), then the macro mean and, where
    the report has it, the macro mean scored from the figures' captions instead of their images."""
    figures = report["figures"]
    out: dict[str, dict[str, str]] = {}
    for model, res in figures.items():
        col = {}
        for cid, v in res["findings"]["per_finding"].items():
            col[(names or {}).get(cid, cid)] = fmt_boot(v, 2)
        m = res["findings"]["macro"]
        col["macro mean"] = fmt_boot(m)
        if "caption_macro" in res["findings"]:
            c = res["findings"]["caption_macro"]
            col["macro mean from the captions"] = fmt_boot(c)
        out[model] = col
    return pd.DataFrame(out)


def prompt_similarity_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """Per 2D model and modality: the mean cosine between the findings' prompt embeddings (global text
    space, and the PC-Align concept space where the model has one); 1.0 = the findings are one text."""
    rows = []
    for model, res in report["figures"].items():
        findings = res["findings"]
        for space, key in (("global", "prompt_similarity"), ("concept", "concept_prompt_similarity")):
            if key in findings:
                rows.append({"model": model, "text space": space, **{m: round(v, 3) for m, v in findings[key].items()}})
    return pd.DataFrame(rows).set_index(["model", "text space"]) if rows else pd.DataFrame()


def retrieval_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """Recall@K and median rank of both directions for every 2D model."""
    rows = []
    for model, res in report["figures"].items():
        for direction, r in res["retrieval"].items():
            row = {"model": model, "direction": direction.replace("_", " ")}
            for key, v in r.items():
                if isinstance(v, Mapping):
                    row[key] = fmt_boot(v, 3 if key.startswith("recall") else 1, key="estimate")
            rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "direction"]) if rows else pd.DataFrame()


def probe_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """Linear-probe macro AUROC per label fraction, next to the zero-shot macro AUROC."""
    rows = []
    for model, res in report["figures"].items():
        row = {"model": model, "zero-shot": fmt_boot(res["findings"]["macro"])}
        for fraction, r in res["linear_probe"].items():
            row[f"probe {float(fraction):.0%} ({r['n_train']} images)"] = fmt_boot(r["macro"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


def ct_table(report: Mapping[str, Any], metric: str = "auc") -> pd.DataFrame:
    """Per-disease CT metric (rows: abnormalities, columns: volume models), mean last.

    ``metric``: ``auc`` (with CI), or ``accuracy`` / ``f1`` / ``sensitivity`` / ``specificity`` /
    ``precision`` at the ROC point closest to (0, 1).
    """
    out: dict[str, dict[str, str]] = {}
    for model, res in report["ct"].items():
        col = {}
        for abn, v in res["per_disease"].items():
            col[f"{abn} ({v['anatomy']})"] = fmt_boot(v, 2) if metric == "auc" \
                else f"{v[metric]:.2f}"
        mean = res["mean"]
        col["mean"] = fmt_ci(mean["auc"], mean["ci"]) if metric == "auc" else f"{mean[metric]:.3f}"
        out[model] = col
    return pd.DataFrame(out)


def claims_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """One row per claim: baseline and method (seed-averaged headline), the paired difference with its
    two-level CI, DeLong's p, the seeds, the minimum detectable effect, the paper's effect and the verdict."""
    rows = []
    for r in report.get("claims", []):
        seeds = " / ".join(str(r["seeds"][m]) for m in (r["baseline"], r["method"]))
        rows.append({
            "claim": r["claim"], "metric": r["metric"], "baseline": r["baseline"],
            "baseline value": f"{r['baseline_value']:.3f}", "method": r["method"],
            "method value": f"{r['method_value']:.3f}",
            "difference [95% CI]": fmt_ci(r["difference"], r["ci"]), "DeLong p": fmt_p(r.get("p_delong")),
            "seeds (baseline / method)": seeds, "MDE (80% power)": f"{r['mde']:.3f}",
            "paper's effect": "-" if r.get("paper_effect") is None else f"+{r['paper_effect']:.2f}",
            "verdict": r["verdict"]})
    return pd.DataFrame(rows).set_index("claim") if rows else pd.DataFrame()


def ct_protocols_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """RadCLIP's protocols on every CT model: linear-probe macro AUROC per label fraction and volume->report /
    report->volume Recall@K, next to the zero-shot mean AUROC."""
    rows = []
    for model, res in report.get("ct", {}).items():
        row = {"model": model, "zero-shot": fmt_ci(res["mean"]["auc"], res["mean"]["ci"])}
        for fraction, r in (res.get("probe") or {}).items():
            row[f"probe {float(fraction):.0%} ({r['n_train']} studies)"] = fmt_boot(r["macro"])
        for direction, r in (res.get("retrieval") or {}).items():
            for key, v in r.items():
                if key.startswith("recall@"):
                    row[f"{direction.replace('_', ' ')} {key}"] = fmt_boot(v, key="estimate")
        rows.append(row)
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()
