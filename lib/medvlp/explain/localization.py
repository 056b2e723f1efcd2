"""Localization scores of explanation maps against truth masks, vectorised over images.

All functions take numpy arrays or torch tensors (moved to CPU) of one map per (image, finding) pair:
``heatmaps [N, H, W]`` at the mask's resolution (``heatmaps.upsample_heatmaps`` first) and
``masks [N, H, W]`` bool. Build the pairs from model maps and label-map masks with
``gather_concept_maps`` and ``label_masks``.

- pointing game (Zhang et al., 2018): a hit when the arg-max pixel lies in the mask, or within
  ``tolerance_px`` (Euclidean) of it; images with an empty mask are not counted in accuracies.
- heatmap AUROC: per image, the AUROC of the pixel scores inside vs outside the mask (average ranks for
  ties, as ``sklearn.metrics.roc_auc_score``); NaN when the mask is empty or covers the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import rankdata

ArrayLike = np.ndarray | torch.Tensor


def _numpy(x: ArrayLike | Sequence, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
        return x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}") from err


def _maps_and_masks(heatmaps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """-> (heatmaps [N, H, W] float64, masks [N, H, W] bool) after shape checks."""
    h, m = _numpy(heatmaps, "heatmaps"), _numpy(masks, "masks")
    if h.ndim != 3:
        raise ValueError(f"heatmaps: expected [N, H, W], got shape {list(h.shape)}")
    if m.shape != h.shape:
        raise ValueError(f"masks {list(m.shape)} must match heatmaps {list(h.shape)}; upsample the maps to the "
                         "mask size with medvlp.explain.heatmaps.upsample_heatmaps")
    if m.dtype != np.bool_:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("masks: expected a bool (or 0/1) array; for a label map use label_masks first")
        m = m.astype(bool)
    return h.astype(np.float64, copy=False), m


def gather_concept_maps(maps: ArrayLike, image_index: ArrayLike, concept_index: ArrayLike) -> np.ndarray:
    """maps [B, K, H, W], image_index [N], concept_index [N] -> [N, H, W] float maps of the N pairs."""
    if maps.ndim != 4:
        raise ValueError(f"maps: expected [B, K, H, W], got shape {list(maps.shape)}")
    i, k = _numpy(image_index, "image_index").astype(np.int64), _numpy(concept_index, "concept_index").astype(np.int64)
    if i.shape != k.shape or i.ndim != 1:
        raise ValueError(f"image_index {list(i.shape)} and concept_index {list(k.shape)} must be equal [N] arrays")
    if isinstance(maps, torch.Tensor):  # index on the maps' device, move only the N selected maps
        return _numpy(maps[torch.as_tensor(i, device=maps.device), torch.as_tensor(k, device=maps.device)], "maps")
    return np.asarray(maps)[i, k]


def label_masks(label_maps: ArrayLike, image_index: ArrayLike, label_values: ArrayLike) -> np.ndarray:
    """label_maps [B, H, W] int, image_index [N], label_values [N] -> masks [N, H, W] bool (label == value)."""
    lab = _numpy(label_maps, "label_maps")
    if lab.ndim != 3:
        raise ValueError(f"label_maps: expected [B, H, W], got shape {list(lab.shape)}")
    i, v = _numpy(image_index, "image_index").astype(np.int64), _numpy(label_values, "label_values")
    if i.shape != v.shape or i.ndim != 1:
        raise ValueError(f"image_index {list(i.shape)} and label_values {list(v.shape)} must be equal [N] arrays")
    return lab[i] == v[:, None, None]


def argmax_points(heatmaps: ArrayLike) -> np.ndarray:
    """heatmaps [N, H, W] -> [N, 2] int (row, col) of the maximum (first in row-major order; NaN ignored)."""
    h = _numpy(heatmaps, "heatmaps").astype(np.float64, copy=False)
    if h.ndim != 3:
        raise ValueError(f"heatmaps: expected [N, H, W], got shape {list(h.shape)}")
    flat = np.where(np.isnan(h), -np.inf, h).reshape(h.shape[0], -1).argmax(axis=1)
    return np.stack(np.unravel_index(flat, h.shape[1:]), axis=1)


def _pointing(h: np.ndarray, m: np.ndarray, tolerance_px: float) -> np.ndarray:
    """h [N, H, W] float, m [N, H, W] bool -> [N] bool hits."""
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    n, height, width = h.shape
    r, c = argmax_points(h).T
    if tolerance_px == 0:
        return m[np.arange(n), r, c]
    rows = np.arange(height)[None, :, None] - r[:, None, None]  # [N, H, 1]
    cols = np.arange(width)[None, None, :] - c[:, None, None]  # [N, 1, W]
    near = rows**2 + cols**2 <= float(tolerance_px) ** 2  # [N, H, W]
    return (near & m).any(axis=(1, 2))


def pointing_game(heatmaps: ArrayLike, masks: ArrayLike, tolerance_px: float = 0) -> np.ndarray:
    """Pointing-game hits.

    Args:
        heatmaps: [N, H, W] scores.
        masks: [N, H, W] bool truth masks.
        tolerance_px: a hit also when a mask pixel lies within this Euclidean distance (pixels) of the
            arg-max, i.e. the mask dilated by a disk of this radius (0: the arg-max pixel itself).

    Returns:
        [N] bool hits (False for an empty mask; ``pointing_accuracy`` leaves those out).
    """
    return _pointing(*_maps_and_masks(heatmaps, masks), tolerance_px)


def pointing_accuracy(heatmaps: ArrayLike, masks: ArrayLike, tolerance_px: float = 0) -> float:
    """Fraction of pointing-game hits over the images with a non-empty mask (NaN if there is none)."""
    h, m = _maps_and_masks(heatmaps, masks)
    hits, present = _pointing(h, m, tolerance_px), m.any(axis=(1, 2))
    return float(hits[present].mean()) if present.any() else float("nan")


def _rank_auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """scores [N, M], positive [N, M] bool -> [N] Mann-Whitney AUROC with average ranks (NaN if one class)."""
    ranks = rankdata(scores, axis=1)  # average ranks for ties; NaN scores propagate to NaN
    n_pos = positive.sum(axis=1).astype(np.float64)
    n_neg = positive.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def _auroc_rows(h: np.ndarray, m: np.ndarray, chunk: int) -> np.ndarray:
    n = h.shape[0]
    flat_h, flat_m = h.reshape(n, -1), m.reshape(n, -1)
    chunk = max(int(chunk), 1)
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        out[start:start + chunk] = _rank_auroc(flat_h[start:start + chunk], flat_m[start:start + chunk])
    return out


def heatmap_auroc(heatmaps: ArrayLike, masks: ArrayLike, *, chunk: int = 256) -> np.ndarray:
    """Per-image pixel AUROC of ``heatmaps`` [N, H, W] for ``masks`` [N, H, W] -> [N] float64.

    Equals ``sklearn.metrics.roc_auc_score(masks[i].ravel(), heatmaps[i].ravel())`` per image; NaN for an
    empty or full mask (or a map with NaN). ``chunk`` images are ranked at a time (memory ~ chunk*H*W*8 B).
    """
    return _auroc_rows(*_maps_and_masks(heatmaps, masks), chunk)


def pooled_heatmap_auroc(heatmaps: ArrayLike, masks: ArrayLike, *, normalize: bool = True) -> float:
    """One AUROC over the pixels of all images together (NaN when all pixels are of one class).

    ``normalize`` min-max scales each map to [0, 1] first (a constant map becomes 0), so that maps of
    different images compete on their within-image ranking rather than on their overall level.
    """
    h, m = _maps_and_masks(heatmaps, masks)
    if normalize:
        lo = h.min(axis=(1, 2), keepdims=True)
        span = h.max(axis=(1, 2), keepdims=True) - lo
        h = np.divide(h - lo, span, out=np.zeros_like(h), where=span > 0)
    return float(_rank_auroc(h.reshape(1, -1), m.reshape(1, -1))[0])


def bootstrap_mean_ci(values: ArrayLike, *, n_boot: int = 1000, level: float = 0.95,
                      seed: int | np.random.Generator = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` [n] (NaN entries dropped).

    Returns (nan, nan) for fewer than 2 values.
    """
    v = _numpy(values, "values").astype(np.float64).ravel()
    v = v[~np.isnan(v)]
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if v.size < 2 or n_boot < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(int(n_boot), v.size))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def per_concept_localization(heatmaps: ArrayLike, masks: ArrayLike, concept_ids: Sequence | ArrayLike, *,
                             tolerance_px: float = 0, n_boot: int = 1000, level: float = 0.95,
                             seed: int = 0) -> dict[str, dict]:
    """Pointing accuracy and mean heatmap AUROC per concept.

    Args:
        heatmaps: [N, H, W] one map per (image, finding) pair.
        masks: [N, H, W] bool, that finding's truth mask.
        concept_ids: [N] the concept of each pair.
        tolerance_px: pointing-game tolerance.
        n_boot: bootstrap resamples over a concept's images for the intervals (0: no intervals).
        level: interval coverage.
        seed: bootstrap seed (concepts draw from one generator in sorted order; deterministic).

    Returns:
        ``{concept: {"pointing": float, "pointing_ci": (lo, hi), "heatmap_auc": float,
        "heatmap_auc_ci": (lo, hi), "n": int}}``, concepts sorted, over pairs with a non-empty mask
        (``n`` of them); intervals are (nan, nan) below 2 pairs or with ``n_boot=0``.
    """
    h, m = _maps_and_masks(heatmaps, masks)
    ids = np.asarray([str(c) for c in _numpy(concept_ids, "concept_ids").ravel()])
    if ids.shape[0] != h.shape[0]:
        raise ValueError(f"concept_ids: {ids.shape[0]} ids for {h.shape[0]} heatmaps; pass one per pair")
    hits, aucs, present = _pointing(h, m, tolerance_px), _auroc_rows(h, m, 256), m.any(axis=(1, 2))
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    for concept in sorted(set(ids[present].tolist())):
        rows = present & (ids == concept)
        concept_hits, concept_aucs = hits[rows].astype(np.float64), aucs[rows]
        out[concept] = {
            "pointing": float(concept_hits.mean()),
            "pointing_ci": bootstrap_mean_ci(concept_hits, n_boot=n_boot, level=level, seed=rng),
            "heatmap_auc": float(np.nanmean(concept_aucs)) if (~np.isnan(concept_aucs)).any() else float("nan"),
            "heatmap_auc_ci": bootstrap_mean_ci(concept_aucs, n_boot=n_boot, level=level, seed=rng),
            "n": int(rows.sum()),
        }
    return out
