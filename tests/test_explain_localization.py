"""medvlp.explain.localization: pointing game, pixel AUROC, per-concept aggregation, and the bar plot."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medvlp.explain.localization import (
    argmax_points,
    bootstrap_mean_ci,
    gather_concept_maps,
    heatmap_auroc,
    label_masks,
    per_concept_localization,
    pointing_accuracy,
    pointing_game,
    pooled_heatmap_auroc,
)
from medvlp.explain.plots import plot_localization_bars


def _peaks(points, size=8):
    maps = np.zeros((len(points), size, size))
    for i, (r, c) in enumerate(points):
        maps[i, r, c] = 1.0
    return maps


def _square_masks(n, rows, cols, size=8):
    masks = np.zeros((n, size, size), dtype=bool)
    masks[:, rows, cols] = True
    return masks


def test_pointing_game_inside_outside_and_tolerance():
    masks = _square_masks(4, slice(2, 4), slice(2, 4))
    maps = _peaks([(3, 2), (6, 6), (0, 0), (2, 6)])
    assert pointing_game(maps, masks).tolist() == [True, False, False, False]
    # (0, 0) is sqrt(8) ~ 2.83 px from (2, 2); (2, 6) is 3 px from (2, 3); (6, 6) is sqrt(18) from (3, 3)
    assert pointing_game(maps, masks, tolerance_px=2).tolist() == [True, False, False, False]
    assert pointing_game(maps, masks, tolerance_px=3).tolist() == [True, False, True, True]
    assert pointing_game(maps, masks, tolerance_px=4.3).tolist() == [True, True, True, True]
    assert pointing_game(torch.from_numpy(maps), torch.from_numpy(masks)).tolist() == [True, False, False, False]


def test_argmax_ties_take_the_first_pixel_and_ignore_nan():
    maps = np.zeros((2, 3, 3))
    maps[0, 1, 1] = maps[0, 2, 2] = 5.0
    maps[1] = np.nan
    maps[1, 2, 0] = -1.0
    assert argmax_points(maps).tolist() == [[1, 1], [2, 0]]


def test_pointing_accuracy_skips_empty_masks():
    masks = _square_masks(3, slice(2, 4), slice(2, 4))
    masks[2] = False
    maps = _peaks([(2, 2), (7, 7), (2, 2)])
    assert pointing_game(maps, masks).tolist() == [True, False, False]
    assert pointing_accuracy(maps, masks) == 0.5
    assert math.isnan(pointing_accuracy(maps[2:], masks[2:]))


def test_heatmap_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 4, size=(5, 10, 12)).astype(np.float32)  # many ties
    masks = rng.random((5, 10, 12)) < 0.3
    maps[masks] += rng.random(int(masks.sum())) > 0.5
    expected = [roc_auc_score(masks[i].ravel(), maps[i].ravel()) for i in range(5)]
    assert np.allclose(heatmap_auroc(maps, masks), expected, atol=1e-12)
    assert np.allclose(heatmap_auroc(maps, masks, chunk=2), expected, atol=1e-12)
    assert np.allclose(heatmap_auroc(torch.from_numpy(maps), torch.from_numpy(masks)), expected, atol=1e-12)


def test_heatmap_auroc_nan_for_empty_or_full_masks():
    maps = np.random.default_rng(1).random((3, 4, 4))
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[1] = True
    masks[2, 0, 0] = True
    auc = heatmap_auroc(maps, masks)
    assert math.isnan(auc[0]) and math.isnan(auc[1]) and not math.isnan(auc[2])


def test_pooled_auroc_with_and_without_normalisation():
    rng = np.random.default_rng(2)
    maps = rng.random((3, 6, 6)) * np.array([1.0, 10.0, 100.0])[:, None, None]
    masks = rng.random((3, 6, 6)) < 0.4
    assert math.isclose(pooled_heatmap_auroc(maps, masks, normalize=False),
                        roc_auc_score(masks.ravel(), maps.ravel()))
    lo, hi = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    scaled = (maps - lo) / (hi - lo)
    assert math.isclose(pooled_heatmap_auroc(maps, masks), roc_auc_score(masks.ravel(), scaled.ravel()))


def test_shape_mismatch_names_the_fix():
    with pytest.raises(ValueError, match="upsample_heatmaps"):
        pointing_game(np.zeros((2, 4, 4)), np.zeros((2, 8, 8), dtype=bool))
    with pytest.raises(ValueError, match="label_masks"):
        heatmap_auroc(np.zeros((1, 4, 4)), np.full((1, 4, 4), 3))


def test_gather_pairs_and_label_masks():
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    pairs = gather_concept_maps(maps, [1, 0, 1], [2, 0, 0])
    assert isinstance(pairs, np.ndarray) and pairs.shape == (3, 2, 2)
    assert np.array_equal(pairs[0], maps[1, 2].numpy()) and np.array_equal(pairs[2], maps[1, 0].numpy())
    labels = np.array([[[0, 1], [2, 2]], [[1, 1], [0, 0]]])
    m = label_masks(labels, np.array([0, 1, 0]), np.array([2, 1, 1]))
    assert m.dtype == bool and m.tolist() == [[[False, False], [True, True]], [[True, True], [False, False]],
                                              [[False, True], [False, False]]]


def test_per_concept_localization_groups_and_intervals():
    rng = np.random.default_rng(3)
    n = 12
    masks = _square_masks(n, slice(2, 5), slice(2, 5))
    masks[11] = False  # no finding drawn: left out
    points = [(3, 3) if i % 3 else (7, 0) for i in range(n)]
    maps = _peaks(points) + 0.1 * rng.random((n, 8, 8))
    ids = np.array(["MC001" if i < 6 else "MC002" for i in range(n)])
    out = per_concept_localization(maps, masks, ids, n_boot=200, seed=0)
    assert list(out) == ["MC001", "MC002"]
    hits, aucs = pointing_game(maps, masks), heatmap_auroc(maps, masks)
    for concept, rows in (("MC001", slice(0, 6)), ("MC002", slice(6, 11))):
        res = out[concept]
        assert res["n"] == rows.stop - rows.start
        assert math.isclose(res["pointing"], hits[rows].mean())
        assert math.isclose(res["heatmap_auc"], aucs[rows].mean())
        lo, hi = res["pointing_ci"]
        assert 0 <= lo <= res["pointing"] <= hi <= 1
        lo, hi = res["heatmap_auc_ci"]
        assert lo <= res["heatmap_auc"] <= hi
    assert per_concept_localization(maps, masks, ids, n_boot=200, seed=0) == out
    assert all(math.isnan(v) for v in per_concept_localization(maps, masks, ids, n_boot=0)["MC001"]["pointing_ci"])


def test_bootstrap_interval_is_deterministic_and_covers_the_mean():
    values = np.r_[np.ones(30), np.zeros(10), np.nan]
    lo, hi = bootstrap_mean_ci(values, n_boot=500, seed=1)
    assert (lo, hi) == bootstrap_mean_ci(values, n_boot=500, seed=1)
    assert lo < 0.75 < hi
    assert all(math.isnan(v) for v in bootstrap_mean_ci([1.0]))


def test_plot_localization_bars_writes_png(tmp_path):
    per_model = {"clip": {"MC001": 0.5, "MC002": 0.25}, "conceptclip": {"MC001": 0.75, "MC003": float("nan")}}
    intervals = {"clip": {"MC001": (0.4, 0.6), "MC002": (0.1, 0.4)}}
    path = plot_localization_bars(per_model, "pointing accuracy", tmp_path / "bars.png", intervals=intervals)
    assert path.stat().st_size > 100 and path.read_bytes()[:4] == b"\x89PNG"
