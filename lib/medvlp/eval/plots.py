"""Figures of the zero-shot report: ablations with CIs, per-class AUROC, retrieval, linear probe.

Each function reads the report dict written by :func:`medvlp.eval.stage.run_zero_shot`, saves one
PNG (dpi 110) and returns its path. Built on ``matplotlib.figure.Figure`` (no pyplot state).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:gray")


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_ablations(report: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per ablation: each model's headline AUROC with its 95% CI (chance = 0.5 dashed)."""
    ablations = report["ablations"]
    fig = Figure(figsize=(4.2 * max(len(ablations), 1), 3.2))
    for i, (name, rows) in enumerate(ablations.items()):
        ax = fig.add_subplot(1, len(ablations), i + 1)
        y = np.arange(len(rows))[::-1]
        values = np.array([r["value"] for r in rows])
        err = np.array([[r["value"] - r["ci"][0], r["ci"][1] - r["value"]] for r in rows]).T
        ax.errorbar(values, y, xerr=err, fmt="o", color="black", ecolor="grey", capsize=4)
        for yy, v in zip(y, values):
            ax.annotate(f"{v:.3f}", (v, yy), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
        ax.set_yticks(y, [r["model"] for r in rows])
        ax.axvline(0.5, ls="--", color="grey", lw=0.8)
        ax.set_xlim(min(0.4, values.min() - 0.05), 1.0)
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.set_xlabel(rows[0]["metric"], fontsize=8)
    return _save(fig, path)


def plot_per_class(per_model: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | Path,
                   labels: Mapping[str, str] | None = None, title: str = "", value: str = "auc") -> Path:
    """Dot plot: one row per class, one marker (with CI) per model.

    Args:
        per_model: ``{model: {class: {"auc", "ci_low", "ci_high"}}}``.
        labels: display names of the classes.
    """
    classes = sorted({c for res in per_model.values() for c in res})
    fig = Figure(figsize=(7.5, 0.28 * len(classes) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    n = max(len(per_model), 1)
    for j, (model, res) in enumerate(per_model.items()):
        offset = (j - (n - 1) / 2) * 0.22
        ys, xs, lo, hi = [], [], [], []
        for i, c in enumerate(classes):
            if c in res:
                ys.append(len(classes) - 1 - i + offset)
                xs.append(res[c][value])
                lo.append(res[c][value] - res[c]["ci_low"])
                hi.append(res[c]["ci_high"] - res[c][value])
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", ms=3.5, lw=0.8, capsize=0, color=_COLORS[j % len(_COLORS)],
                    label=model)
    ax.set_yticks(np.arange(len(classes))[::-1], [(labels or {}).get(c, c) for c in classes], fontsize=7)
    ax.axvline(0.5, ls="--", color="grey", lw=0.8)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("AUROC (95% CI)")
    ax.legend(fontsize=7, loc="lower left")
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_retrieval(report: Mapping[str, Any], path: str | Path, ks: Sequence[int] = (1, 5, 10)) -> Path:
    """Recall@K bars (with CI) of every 2D model, image-to-text and text-to-image."""
    figures = report["figures"]
    fig = Figure(figsize=(9, 3.2))
    for i, direction in enumerate(("image_to_text", "text_to_image")):
        ax = fig.add_subplot(1, 2, i + 1)
        width = 0.8 / max(len(figures), 1)
        for j, (model, res) in enumerate(figures.items()):
            r = res["retrieval"][direction]
            vals = [r[f"recall@{k}"]["estimate"] for k in ks]
            err = [[v - r[f"recall@{k}"]["ci_low"] for v, k in zip(vals, ks)],
                   [r[f"recall@{k}"]["ci_high"] - v for v, k in zip(vals, ks)]]
            ax.bar(np.arange(len(ks)) + j * width, vals, width, yerr=err, capsize=2, label=model,
                   color=_COLORS[j % len(_COLORS)])
        n = report.get("n_figures") or 0
        if n:
            ax.plot(np.arange(len(ks)) + 0.4 - width / 2, [k / n for k in ks], "k_", ms=14, label="chance")
        ax.set_xticks(np.arange(len(ks)) + 0.4 - width / 2, [f"R@{k}" for k in ks])
        ax.set_ylim(0, 1)
        ax.set_title(direction.replace("_", " "), fontsize=10)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_linear_probe(report: Mapping[str, Any], path: str | Path) -> Path:
    """Macro AUROC of the linear probe against the fraction of training labels (log scale), with the
    zero-shot macro AUROC of the same model as a dashed line."""
    fig = Figure(figsize=(5.2, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    for j, (model, res) in enumerate(report["figures"].items()):
        color = _COLORS[j % len(_COLORS)]
        fr = sorted(res["linear_probe"], key=float)
        xs = [float(f) for f in fr]
        ys = [res["linear_probe"][f]["macro"]["auc"] for f in fr]
        lo = [res["linear_probe"][f]["macro"]["ci_low"] for f in fr]
        hi = [res["linear_probe"][f]["macro"]["ci_high"] for f in fr]
        ax.plot(xs, ys, "o-", color=color, label=f"{model} probe")
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15)
        ax.axhline(res["findings"]["macro"]["auc"], ls="--", color=color, lw=0.9, label=f"{model} zero-shot")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of training labels")
    ax.set_ylabel("macro AUROC (findings)")
    ax.axhline(0.5, ls=":", color="grey", lw=0.8)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)
