"""Figures of the explainability notebook. Each function writes one PNG (dpi 120) and returns its path.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot, so they
work headless, do not depend on the active backend and leave no open figure behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medvlp.explain.localization import argmax_points

DPI = 120
MASK_COLOUR = "lime"


def _new_figure(rows: int, cols: int, cell: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(cell[0] * cols, cell[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    fig.clear()
    return path


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x
        return x.numpy()
    return np.asarray(x)


def _contour(ax, mask: np.ndarray, colour: str = MASK_COLOUR) -> None:
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=colour, linewidths=1.0)


def plot_heatmap_grid(images, masks, heatmaps: Mapping[str, object], titles: Sequence[str] | None,
                      path: str | Path, *, alpha: float = 0.5, cmap: str = "jet") -> Path:
    """Examples x (image, one heatmap per model) grid.

    Args:
        images: [N, H, W, 3] uint8 (or [N, H, W] grey) images.
        masks: [N, H, W] bool truth masks (drawn as a contour on every panel).
        heatmaps: model name -> [N, H, W] maps at the image size (``upsample_heatmaps``). The models of one
            row share a colour scale (min..max over that row's maps).
        titles: N row titles (or None).
        path: PNG to write.
        alpha: heatmap opacity over the image.
        cmap: matplotlib colormap of the heatmaps.

    The arg-max of each heatmap (the pointing-game point) is marked: a white circle when it hits the mask,
    a red cross when it misses.
    """
    imgs, m = _numpy(images), _numpy(masks).astype(bool)
    if imgs.ndim not in (3, 4) or m.shape != imgs.shape[:3]:
        raise ValueError(f"images {list(imgs.shape)} must be [N, H, W(, 3)] and masks {list(m.shape)} [N, H, W] "
                         "of the same N, H, W")
    maps = {name: _numpy(h).astype(np.float64) for name, h in heatmaps.items()}
    for name, h in maps.items():
        if h.shape != m.shape:
            raise ValueError(f"heatmaps[{name!r}] {list(h.shape)} must be [N, H, W] = {list(m.shape)}; upsample "
                             "with upsample_heatmaps to the image size")
    n = m.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles: {len(titles)} titles for {n} examples")
    fig, axes = _new_figure(n, 1 + len(maps), (2.4, 2.4))
    grey = dict(cmap="gray") if imgs.ndim == 3 else {}
    points = {name: argmax_points(h) for name, h in maps.items()}  # [N, 2] (row, col)
    for i in range(n):
        row_maps = [h[i] for h in maps.values()]
        vmin = min(float(np.nanmin(h)) for h in row_maps) if row_maps else 0.0
        vmax = max(float(np.nanmax(h)) for h in row_maps) if row_maps else 1.0
        axes[i, 0].imshow(imgs[i], **grey)
        _contour(axes[i, 0], m[i])
        axes[i, 0].set_title(titles[i] if titles is not None else "image", fontsize=8)
        shown = None
        for j, name in enumerate(maps, start=1):
            ax = axes[i, j]
            ax.imshow(imgs[i], **grey)
            shown = ax.imshow(maps[name][i], cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
            _contour(ax, m[i])
            r, c = points[name][i]
            hit = bool(m[i, r, c])
            ax.plot(c, r, marker="o" if hit else "x", color="white" if hit else "red", markersize=7,
                    markeredgewidth=2, fillstyle="none")
            ax.set_title(name, fontsize=8)
        if shown is not None:
            fig.colorbar(shown, ax=axes[i, -1], fraction=0.046, pad=0.02)
    for ax in axes.ravel():
        ax.set_axis_off()
    return _save(fig, path)


def plot_anatomy_attention(volume, label_map, attention, anatomy_names: Sequence[str], slices: Sequence[int],
                           path: str | Path, *, anatomy_labels: Sequence[int] | None = None,
                           show: Sequence[int] | None = None, max_anatomies: int = 4, alpha: float = 0.55,
                           cmap: str = "inferno") -> Path:
    """Axial slices of one CT with anatomy attention overlaid (rows = anatomies, columns = slices).

    Args:
        volume: [X, Y, Z] intensities.
        label_map: [X, Y, Z] integer anatomy labels.
        attention: [A, X, Y, Z] one study's ``anatomy_attention_maps``.
        anatomy_names: A names (row titles).
        slices: z indices of the axial slices.
        path: PNG to write.
        anatomy_labels: A label values for the contours (default 1..A, medvlp's anatomy lexicon; pass
            ``model.anatomy_labels``).
        show: anatomy indices to draw (default the first ``max_anatomies`` with non-zero attention).
        alpha, cmap: overlay opacity and colormap; one colour scale per anatomy (row).

    Slices are drawn with x horizontal and y vertical (``origin="lower"``).
    """
    vol, lab, att = _numpy(volume).astype(np.float64), _numpy(label_map), _numpy(attention).astype(np.float64)
    if vol.ndim != 3 or lab.shape != vol.shape or att.ndim != 4 or att.shape[1:] != vol.shape:
        raise ValueError(f"volume {list(vol.shape)} and label_map {list(lab.shape)} must be [X, Y, Z] and "
                         f"attention {list(att.shape)} [A, X, Y, Z] of the same size")
    a = att.shape[0]
    if len(anatomy_names) != a:
        raise ValueError(f"anatomy_names: {len(anatomy_names)} names for {a} attention maps")
    labels = list(range(1, a + 1)) if anatomy_labels is None else [int(v) for v in anatomy_labels]
    if len(labels) != a:
        raise ValueError(f"anatomy_labels: {len(labels)} labels for {a} attention maps")
    z_size = vol.shape[2]
    bad = [z for z in slices if not -z_size <= int(z) < z_size]
    if not slices or bad:
        raise ValueError(f"slices: need z indices in [0, {z_size}), got {list(slices)}")
    if show is None:
        show = [i for i in range(a) if att[i].max() > 0][:max_anatomies]
    if not show:
        raise ValueError("plot_anatomy_attention: no anatomy has attention (absent from the label map?); pass show")
    lo, hi = np.percentile(vol, [1, 99])
    fig, axes = _new_figure(len(show), len(slices), (2.2, 2.2))
    for r, idx in enumerate(show):
        vmax = float(att[idx].max()) or 1.0
        for c, z in enumerate(slices):
            ax = axes[r, c]
            ax.imshow(vol[:, :, z].T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            shown = ax.imshow(att[idx][:, :, z].T, cmap=cmap, alpha=alpha, vmin=0.0, vmax=vmax, origin="lower")
            _contour(ax, (lab[:, :, z] == labels[idx]).T)
            ax.set_title(f"{anatomy_names[idx]}, z={int(z)}", fontsize=8)
            ax.set_axis_off()
        fig.colorbar(shown, ax=axes[r, -1], fraction=0.046, pad=0.02)
    return _save(fig, path)


def plot_bottleneck_explanations(examples: Sequence[Mapping], path: str | Path) -> Path:
    """One row per example: the image and a horizontal bar chart of its concept contributions.

    Args:
        examples: dicts with ``image`` ([H, W, 3] uint8 or [H, W]), ``title`` (str) and ``contributions``
            ([(concept_name, value)], e.g. ``ConceptBottleneck.explain``; drawn top to bottom in order).
        path: PNG to write.
    """
    if not examples:
        raise ValueError("plot_bottleneck_explanations: examples is empty")
    for i, ex in enumerate(examples):
        missing = {"image", "title", "contributions"} - set(ex)
        if missing:
            raise ValueError(f"examples[{i}] lacks keys {sorted(missing)}")
    fig, axes = _new_figure(len(examples), 2, (3.2, 2.4))
    for r, ex in enumerate(examples):
        image = _numpy(ex["image"])
        axes[r, 0].imshow(image, **(dict(cmap="gray") if image.ndim == 2 else {}))
        axes[r, 0].set_title(str(ex["title"]), fontsize=8)
        axes[r, 0].set_axis_off()
        names = [str(n) for n, _ in ex["contributions"]]
        values = np.array([float(v) for _, v in ex["contributions"]])
        ax = axes[r, 1]
        y = np.arange(len(names))[::-1]
        ax.barh(y, values, color=np.where(values >= 0, "tab:green", "tab:red"))
        ax.set_yticks(y, names, fontsize=7)
        ax.axvline(0.0, color="black", linewidth=0.6)
        ax.set_xlabel("contribution  w_ck * z_k", fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    return _save(fig, path)


def plot_localization_bars(per_model: Mapping[str, Mapping[str, float]], metric_name: str, path: str | Path, *,
                           intervals: Mapping[str, Mapping[str, tuple[float, float]]] | None = None) -> Path:
    """Grouped bars of one localization metric: concepts on the x axis, one bar per model.

    Args:
        per_model: model name -> {concept: value} (NaN or missing concepts leave a gap).
        metric_name: y-axis label.
        path: PNG to write.
        intervals: optional model -> {concept: (lo, hi)} error bars (e.g. bootstrap intervals).
    """
    if not per_model:
        raise ValueError("plot_localization_bars: per_model is empty")
    concepts = sorted({c for values in per_model.values() for c in values})
    models = list(per_model)
    width = 0.8 / len(models)
    x = np.arange(len(concepts))
    fig, axes = _new_figure(1, 1, (max(4.0, 0.6 * len(concepts) * max(1, len(models) ** 0.5)), 3.2))
    ax = axes[0, 0]
    for j, model in enumerate(models):
        values = np.array([float(per_model[model].get(c, np.nan)) for c in concepts])
        err = None
        if intervals is not None and model in intervals:
            bounds = np.array([intervals[model].get(c, (np.nan, np.nan)) for c in concepts], dtype=np.float64)
            err = np.abs(np.stack([values - bounds[:, 0], bounds[:, 1] - values]))
            err = np.nan_to_num(err, nan=0.0)
        ax.bar(x - 0.4 + width * (j + 0.5), values, width, yerr=err, capsize=2, label=model)
    ax.set_xticks(x, concepts, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(metric_name)
    ax.legend(fontsize=7)
    return _save(fig, path)
