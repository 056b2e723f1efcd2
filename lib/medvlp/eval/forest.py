"""Forest plot of paired differences ``method - baseline``: one row per claim, with its CI.

Built on ``matplotlib.figure.Figure`` (no pyplot state, safe under the Agg backend), like
:mod:`medvlp.eval.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from medvlp.eval.plots import _save

#: Colour of a row's point and CI by its verdict (see :func:`medvlp.eval.compare.verdict`).
VERDICT_COLORS = {"reproduced": "tab:green", "contradicted": "tab:red", "inconclusive": "tab:gray"}


def _check_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    if isinstance(rows, Mapping | str) or len(rows) == 0:
        raise ValueError("rows must be a non-empty list of dicts with keys claim, difference, ci")
    for i, row in enumerate(rows):
        missing = [k for k in ("claim", "difference", "ci") if k not in row]
        if missing:
            raise ValueError(f"rows[{i}] lacks the keys {missing}")
        if len(row["ci"]) != 2:
            raise ValueError(f"rows[{i}]['ci'] must be [low, high], got {row['ci']!r}")
        if row.get("verdict") is not None and row["verdict"] not in VERDICT_COLORS:
            raise ValueError(f"rows[{i}]['verdict'] must be one of {sorted(VERDICT_COLORS)}, got {row['verdict']!r}")


def _value(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    return float("nan") if value is None else float(value)


def plot_forest(rows: Sequence[Mapping[str, Any]], path: str | Path, *, xlabel: str = "AUROC difference "
                "(method - baseline)", title: str = "") -> Path:
    """One row per claim: the paired difference with its CI, a vertical line at 0, and optional markers.

    Args:
        rows: dicts with ``claim`` (label), ``difference`` (float), ``ci`` (``[low, high]``) and the
            optional ``paper_effect`` (the effect the paper claims, drawn as a diamond), ``mde`` (the
            minimum detectable effect, drawn as a ``|`` tick at ``+mde``) and ``verdict``
            (``"reproduced"`` / ``"contradicted"`` / ``"inconclusive"``: colours the row and is written
            at its right). NaN values are not drawn. Rows are drawn top to bottom in order.
        path: where to write the PNG (parent folders are created).

    Returns:
        The path of the PNG written.

    Raises:
        ValueError: ``rows`` empty, a row without ``claim`` / ``difference`` / ``ci``, a ``ci`` that is
            not two numbers, or an unknown ``verdict``.
    """
    _check_rows(rows)
    fig = Figure(figsize=(7.0, 0.42 * len(rows) + 1.3))
    ax = fig.add_subplot(1, 1, 1)
    ys = np.arange(len(rows))[::-1]
    seen: set[str] = set()
    for y, row in zip(ys, rows):
        diff = _value(row, "difference")
        low, high = (float("nan") if v is None else float(v) for v in row["ci"])
        color = VERDICT_COLORS.get(row.get("verdict") or "inconclusive", "black")
        if not math.isnan(low) and not math.isnan(high):
            ax.plot([low, high], [y, y], color=color, lw=1.6, solid_capstyle="butt")
        if not math.isnan(diff):
            ax.plot(diff, y, "o", color=color, ms=6)
        if not math.isnan(paper := _value(row, "paper_effect")):
            ax.plot(paper, y, "D", mfc="none", mec="black", ms=6)
            seen.add("paper")
        if not math.isnan(mde := _value(row, "mde")):
            ax.plot(mde, y, "|", color="tab:blue", ms=12, mew=2)
            seen.add("mde")
        if row.get("verdict"):
            ax.annotate(row["verdict"], (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=7,
                        color=color)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(ys, [str(r["claim"]) for r in rows], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(xlabel, fontsize=8)
    handles = [Line2D([], [], marker="o", color="black", lw=1.6, label="difference, CI")]
    if "paper" in seen:
        handles.append(Line2D([], [], marker="D", mfc="none", mec="black", ls="", label="paper's effect"))
    if "mde" in seen:
        handles.append(Line2D([], [], marker="|", color="tab:blue", mew=2, ms=10, ls="", label="MDE"))
    ax.legend(handles=handles, fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)
