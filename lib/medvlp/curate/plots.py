"""Figures of the curation report (PNG at ``DPI``; matplotlib ``Figure`` objects rendered by Agg,
without pyplot, so the backend of a calling notebook is left alone).

- :func:`plot_modalities`: kept figures per modality (bar chart);
- :func:`plot_concept_frequencies`: positive concept mentions per concept (names, most frequent first);
- :func:`plot_split_sizes`: records per split for both collections;
- :func:`plot_examples`: one example figure per modality with its caption below, positive concept
  mentions on coloured boxes and negated mentions struck through in red.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

__all__ = ["DPI", "CaptionExample", "plot_concept_frequencies", "plot_examples", "plot_modalities",
           "plot_split_sizes"]

DPI = 120
POSITIVE_COLOUR = "#9be59b"
NEGATED_COLOUR = "#d62728"
NEGATED_BOX = "#e6e6e6"
_SPLIT_COLOURS = {"train": "#4c72b0", "val": "#dd8452", "test": "#55a868"}


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return path


def _label_bars(ax: Axes, bars, horizontal: bool = False) -> None:
    for bar in bars:
        if horizontal:
            w = bar.get_width()
            ax.text(w, bar.get_y() + bar.get_height() / 2, f" {int(w)}", va="center", fontsize=8)
        else:
            h = bar.get_height()
            ax.text(bar.get_x() + bar.get_width() / 2, h, f"{int(h)}", ha="center", va="bottom", fontsize=8)


def plot_modalities(counts: Mapping[str, int], path: str | Path,
                    title: str = "Kept figures per modality") -> Path:
    """Bar chart of ``{modality: count}`` (in the given order)."""
    fig = Figure(figsize=(7, 3.8))
    ax = fig.subplots()
    names = list(counts)
    bars = ax.bar(range(len(names)), [counts[n] for n in names], color="#4c72b0")
    _label_bars(ax, bars)
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=20, ha="right")
    ax.set_ylabel("figures")
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    ax.margins(y=0.12)
    return _save(fig, path)


def plot_concept_frequencies(counts: Mapping[str, int], path: str | Path,
                             title: str = "Positive concept mentions in kept captions") -> Path:
    """Horizontal bars of ``{concept name: positive mentions}``, most frequent at the top."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    fig = Figure(figsize=(7.5, max(2.5, 0.26 * len(items) + 1.0)))
    ax = fig.subplots()
    bars = ax.barh(range(len(items)), [v for _, v in items], color="#55a868")
    _label_bars(ax, bars, horizontal=True)
    ax.set_yticks(range(len(items)), [k for k, _ in items], fontsize=8.5)
    ax.invert_yaxis()
    ax.set_xlabel("mentions")
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    ax.margins(x=0.1)
    return _save(fig, path)


def plot_split_sizes(sizes: Mapping[str, Mapping[str, int]], path: str | Path,
                     title: str = "Records per split") -> Path:
    """Grouped bars: ``{collection: {split: records}}``, one group per collection."""
    collections = list(sizes)
    splits = [s for s in ("train", "val", "test") if any(s in sizes[c] for c in collections)]
    fig = Figure(figsize=(6, 3.8))
    ax = fig.subplots()
    width = 0.8 / max(1, len(splits))
    for k, split in enumerate(splits):
        xs = np.arange(len(collections)) + (k - (len(splits) - 1) / 2) * width
        bars = ax.bar(xs, [sizes[c].get(split, 0) for c in collections], width, label=split,
                      color=_SPLIT_COLOURS.get(split))
        _label_bars(ax, bars)
    ax.set_xticks(range(len(collections)), collections)
    ax.set_ylabel("records")
    ax.set_title(title)
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    ax.margins(y=0.12)
    return _save(fig, path)


@dataclass(frozen=True)
class CaptionExample:
    """One panel of :func:`plot_examples`.

    ``spans`` are ``(start, end, negated)`` character offsets into ``caption``.
    """

    title: str
    image: np.ndarray
    caption: str
    spans: Sequence[tuple[int, int, bool]]


def wrap_offsets(text: str, width: int) -> list[tuple[int, int]]:
    """Greedy word wrap: ``(start, end)`` offsets of each line of at most ``width`` characters
    (a word longer than ``width`` is cut); leading spaces of a line are skipped."""
    lines, i, n = [], 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        j = min(i + width, n)
        if j < n and not text[j].isspace():
            k = max(text.rfind(" ", i, j), text.rfind("\n", i, j))
            if k > i:
                j = k
        lines.append((i, j))
        i = j
    return lines


def _draw_caption(ax: Axes, caption: str, spans: Sequence[tuple[int, int, bool]], char_w: float,
                  line_h: float, fontsize: float, max_lines: int) -> None:
    """Monospace caption in axes-fraction coordinates with highlighted spans."""
    text = "".join(" " if c.isspace() else c for c in caption)
    width = max(10, int(0.97 / char_w))
    lines = wrap_offsets(text, width)
    truncated = len(lines) > max_lines
    lines = lines[:max_lines]
    for row, (a, b) in enumerate(lines):
        y = 1.0 - (row + 1) * line_h
        shown = text[a:b] + (" …" if truncated and row == len(lines) - 1 else "")
        for start, end, negated in spans:
            lo, hi = max(start, a), min(end, b)
            if lo >= hi:
                continue
            x0, x1 = 0.01 + (lo - a) * char_w, 0.01 + (hi - a) * char_w
            ax.add_patch(Rectangle((x0, y - 0.15 * line_h), x1 - x0, 0.95 * line_h, transform=ax.transAxes,
                                   facecolor=NEGATED_BOX if negated else POSITIVE_COLOUR,
                                   edgecolor="none", zorder=1))
            if negated:
                ax.plot([x0, x1], [y + 0.3 * line_h] * 2, transform=ax.transAxes, color=NEGATED_COLOUR,
                        linewidth=1.3, zorder=3, solid_capstyle="butt")
        ax.text(0.01, y, shown, transform=ax.transAxes, fontsize=fontsize, family="monospace",
                va="baseline", ha="left", zorder=2)


def _char_cell(fig: Figure, ax: Axes, fontsize: float) -> tuple[float, float]:
    """Width of one monospace character and the line height, as fractions of ``ax``'s width / height."""
    renderer = fig.canvas.get_renderer()
    probe = ax.text(0, 0, "M" * 40 + "\n" + "M" * 40, fontsize=fontsize, family="monospace",
                    linespacing=1.0)
    box = probe.get_window_extent(renderer)
    probe.remove()
    axes_box = ax.get_window_extent(renderer)
    return box.width / 40 / axes_box.width, 1.25 * (box.height / 2) / axes_box.height


def plot_examples(examples: Sequence[CaptionExample], path: str | Path, columns: int = 3,
                  fontsize: float = 8.5, max_lines: int = 9) -> Path:
    """Grid of example images, each with its caption below, concept mentions highlighted.

    Positive mentions sit on green boxes; negated mentions are on grey boxes struck through in red.
    Captions longer than ``max_lines`` wrapped lines are cut with an ellipsis.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    n = max(1, len(examples))
    rows = -(-n // columns)
    col_w, img_h = 5.0, 3.0
    # Caption rows just tall enough for the longest caption (estimated wrap; drawing measures exactly).
    per_line = int(0.9 * col_w * 72 / (0.6 * fontsize))
    lines = max([len(wrap_offsets(ex.caption, per_line)) for ex in examples] + [2])
    cap_h = min(lines, max_lines) * 1.25 * fontsize / 72 + 0.25
    fig = Figure(figsize=(columns * col_w, rows * (img_h + cap_h) + 0.9), dpi=DPI)
    FigureCanvasAgg(fig)
    height = rows * (img_h + cap_h) + 0.9
    grid = fig.add_gridspec(rows, columns, hspace=0.1, wspace=0.06, top=1.0 - 0.75 / height, bottom=0.01,
                            left=0.01, right=0.99)
    for k, ex in enumerate(examples):
        r, c = divmod(k, columns)
        cell = grid[r, c].subgridspec(2, 1, height_ratios=[img_h, cap_h], hspace=0.04)
        ax_img = fig.add_subplot(cell[0])
        ax_img.imshow(ex.image, cmap="gray" if ex.image.ndim == 2 else None, vmin=0, vmax=255,
                      interpolation="nearest")
        ax_img.set_title(ex.title, fontsize=10)
        ax_img.axis("off")
        ax_cap = fig.add_subplot(cell[1])
        ax_cap.axis("off")
        char_w, line_h = _char_cell(fig, ax_cap, fontsize)
        _draw_caption(ax_cap, ex.caption, ex.spans, char_w, line_h, fontsize,
                      min(max_lines, int(0.98 / line_h)))
    handles = [Patch(facecolor=POSITIVE_COLOUR, label="concept mention (positive)"),
               Patch(facecolor=NEGATED_BOX, edgecolor=NEGATED_COLOUR,
                     label="negated mention (struck through)")]
    top = 1.0 - 0.25 / height
    fig.legend(handles=handles, loc="center", ncol=2, frameon=False, fontsize=10, bbox_to_anchor=(0.5, top))
    fig.suptitle("Curated examples: extracted concepts in captions", y=1.0, va="bottom", fontsize=12)
    return _save(fig, path)
