"""Linear probes on synthetic frozen features: subsets, C selection, metrics, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medvlp.eval.linear_probe import C_GRID, DEFAULT_C, MIN_CV_SAMPLES, linear_probe, probe_subset

N_BOOT = 200


def multilabel(n: int, seed: int, n_classes: int = 5, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Features [n, dim] with linearly separable labels [n, n_classes] (same planes for every seed)."""
    planes = np.random.default_rng(100).normal(size=(dim, n_classes))
    x = np.random.default_rng(seed).normal(size=(n, dim))
    return x, x @ planes > 0.5


def multiclass(n: int, seed: int, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated Gaussian blobs with labels 3, 5, 7."""
    centres = np.random.default_rng(200).normal(size=(3, dim)) * 3.0
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 3, size=n)
    return centres[codes] + rng.normal(size=(n, dim)), np.array([3, 5, 7])[codes]


@pytest.fixture(scope="module")
def probe() -> dict:
    (x, y), (xt, yt) = multilabel(1000, 1), multilabel(500, 2)
    return linear_probe(x, y, xt, yt, fractions=(0.01, 0.1, 1.0), seed=0, n_boot=N_BOOT)


# ---------------------------------------------------------------------------------------- subset
def test_probe_subset_rule():
    _, y = multilabel(1000, 1)
    coverage = probe_subset(y, 1e-9, seed=3)                  # round(f * N) = 0: the coverage set alone
    assert 2 <= coverage.size <= 2 * y.shape[1]
    subsets = {f: probe_subset(y, f, seed=3) for f in (0.005, 0.01, 0.1, 0.5, 1.0)}
    for f, idx in subsets.items():
        assert idx.size == max(round(f * 1000), coverage.size)
        assert np.array_equal(idx, np.unique(idx))
        assert y[idx].any(axis=0).all() and (~y[idx]).any(axis=0).all()       # a positive and a negative each
        assert np.isin(coverage, idx).all()
    assert np.isin(subsets[0.1], subsets[0.5]).all() and subsets[1.0].tolist() == list(range(1000))
    assert np.array_equal(probe_subset(y, 0.1, seed=3), subsets[0.1])
    assert not np.array_equal(probe_subset(y, 0.1, seed=4), subsets[0.1])


def test_probe_subset_covers_what_exists():
    y = np.zeros((50, 3), bool)
    y[7, 0] = True                                             # class 1 has no positive, class 2 no negative
    y[:, 2] = True
    idx = probe_subset(y, 0.02, seed=0)
    assert 7 in idx and idx.size == 2                          # sample 7, plus one negative of class 0
    codes = np.array([4] * 40 + [9] * 2)                       # multi-class: every class present
    assert set(codes[probe_subset(codes, 0.03, seed=1)]) == {4, 9}


# -------------------------------------------------------------------------------------- multi-label
def test_multilabel_probe_separable(probe):
    assert list(probe) == [0.01, 0.1, 1.0]
    full, tiny = probe[1.0], probe[0.01]
    assert full["macro"]["auc"] > 0.95 and full["macro"]["auc"] > tiny["macro"]["auc"] + 0.05
    assert full["macro"]["ci_low"] < full["macro"]["auc"] < full["macro"]["ci_high"]
    assert set(full["per_class"]) == {"0", "1", "2", "3", "4"} and full["skipped"] == [] and full["constant"] == []
    assert all(r["auc"] > 0.95 and r["n_boot_valid"] == N_BOOT for r in full["per_class"].values())
    assert full["macro"]["auc"] == pytest.approx(np.mean([r["auc"] for r in full["per_class"].values()]))


def test_multilabel_probe_n_train_and_c_selection(probe):
    _, y = multilabel(1000, 1)
    coverage = probe_subset(y, 1e-9, seed=0).size
    assert [probe[f]["n_train"] for f in (0.01, 0.1, 1.0)] == [max(10, coverage), 100, 1000]
    assert probe[0.01]["n_train"] < MIN_CV_SAMPLES
    assert (probe[0.01]["C"], probe[0.01]["c_source"], probe[0.01]["cv_scores"]) == (DEFAULT_C, "default", {})
    for f in (0.1, 1.0):
        assert probe[f]["c_source"] == "cv" and list(probe[f]["cv_scores"]) == list(C_GRID)
        assert probe[f]["C"] == max(C_GRID, key=lambda c: (probe[f]["cv_scores"][c], -c))
        assert all(0.5 < v <= 1.0 for v in probe[f]["cv_scores"].values())


def _same_result(a: dict, b: dict) -> bool:
    """Two linear_probe results are equal (their score arrays element by element, the rest as values)."""
    return a.keys() == b.keys() and all(np.array_equal(a[f]["scores"], b[f]["scores"]) and
                                        {k: v for k, v in a[f].items() if k != "scores"} ==
                                        {k: v for k, v in b[f].items() if k != "scores"} for f in a)


def test_multilabel_probe_is_deterministic(probe):
    (x, y), (xt, yt) = multilabel(1000, 1), multilabel(500, 2)
    assert _same_result(linear_probe(x, y, xt, yt, fractions=(0.01, 0.1, 1.0), seed=0, n_boot=N_BOOT), probe)
    for result in probe.values():  # the per-item scores behind the AUROCs
        assert result["scores"].shape == yt.shape
        assert result["per_class"]["0"]["auc"] == pytest.approx(roc_auc_score(yt[:, 0], result["scores"][:, 0]))
    other = linear_probe(x, y, xt, yt, fractions=(0.1,), seed=1, n_boot=N_BOOT)
    assert other[0.1]["macro"]["auc"] != probe[0.1]["macro"]["auc"]


def test_probe_given_c_and_constant_class():
    (x, y), (xt, yt) = multilabel(300, 3, n_classes=2), multilabel(200, 4, n_classes=2)
    y[:, 1] = False                                            # nothing to learn for class 1
    got = linear_probe(x, y, xt, yt, fractions=(1.0,), C=0.5, names=["pos", "empty"], n_boot=N_BOOT)[1.0]
    assert (got["C"], got["c_source"], got["cv_scores"]) == (0.5, "given", {})
    assert got["constant"] == ["empty"]
    assert got["per_class"]["empty"]["auc"] == pytest.approx(roc_auc_score(yt[:, 1], np.zeros(200)))
    assert got["per_class"]["pos"]["auc"] > 0.95


# -------------------------------------------------------------------------------------- multi-class
def test_multiclass_probe():
    (x, y), (xt, yt) = multiclass(600, 5), multiclass(300, 6)
    got = linear_probe(x, y, xt, yt, fractions=(0.05, 1.0), seed=2, n_boot=N_BOOT)
    full = got[1.0]
    assert full["n_train"] == 600 and got[0.05]["n_train"] == 30 and got[0.05]["c_source"] == "default"
    assert set(full["per_class"]) == {"3", "5", "7"} and full["constant"] == []
    assert full["accuracy"]["estimate"] > 0.9 and full["macro"]["auc"] > 0.95
    assert full["accuracy"]["ci_low"] < full["accuracy"]["estimate"] <= full["accuracy"]["ci_high"]
    assert full["accuracy"]["n_boot_valid"] == N_BOOT
    assert _same_result(got, linear_probe(x, y, xt, yt, fractions=(0.05, 1.0), seed=2, n_boot=N_BOOT))


# -------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("change, message", [
    ({"test_x": np.zeros((20, 15))}, r"test_x must have shape \[N, D\] = \(N, 16\)"),
    ({"train_y": np.zeros((39, 5), bool)}, r"train_y must have shape \[N, C\] .* N = 40"),
    ({"train_y": np.zeros(40, bool)}, r"train_y must have shape \[N, C\] \(bool, multi-label\) or \[N\] \(int"),
    ({"test_y": np.zeros((20, 4), bool)}, r"test_y must have shape \[M, C\] = \(20, 5\)"),
    ({"fractions": (0.0, 1.0)}, r"fractions must be distinct values in \(0, 1\]"),
    ({"names": ["a"]}, "names must have 5 entries"),
])
def test_probe_bad_inputs(change, message):
    (x, y), (xt, yt) = multilabel(40, 7), multilabel(20, 8)
    args = {"train_x": x, "train_y": y, "test_x": xt, "test_y": yt, **change}
    with pytest.raises(ValueError, match=message):
        linear_probe(**args, n_boot=10)


def test_probe_unknown_test_class():
    (x, y), (xt, yt) = multiclass(60, 1), multiclass(20, 2)
    with pytest.raises(ValueError, match=r"test_y must have shape \[M\] = \(20,\) int like train_y, got \(20, 3\)"):
        linear_probe(x, y, xt, yt[:, None] == np.array([3, 5, 7]), n_boot=10)
    with pytest.raises(ValueError, match="test_y has classes absent from train_y: \\[8\\]"):
        linear_probe(x, y, xt, np.where(yt == 3, 8, yt), n_boot=10)
