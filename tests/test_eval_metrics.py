"""The metrics of medvlp.eval against scikit-learn and plain reference loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from medvlp.eval import metrics
from medvlp.eval.metrics import (
    auroc,
    auroc_table,
    bootstrap_auroc,
    bootstrap_ci,
    bootstrap_retrieval,
    macro_mean,
    operating_point,
    retrieval_metrics,
    retrieval_ranks,
)


def scored(n: int, seed: int, prevalence: float = 0.3, decimals: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """Labels [n] with both classes and informative scores, rounded to ``decimals`` to make ties."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prevalence
    y[:2] = [True, False]
    s = rng.normal(size=n) + y
    return y, (np.round(s, decimals) if decimals is not None else s)


# ----------------------------------------------------------------------------------------- AUROC
def test_auroc_known_values():
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # a tied positive/negative pair counts one half: (0.5 + 1 + 1 + 1) / 4
    assert auroc([False, True, False, True], [0.5, 0.5, 0.2, 0.9]) == 0.875
    assert auroc([1, 1, 0], [0.2, 0.2, 0.2]) == 0.5


@pytest.mark.parametrize("n, seed, decimals", [(7, 0, 0), (50, 1, 1), (400, 2, 1), (3000, 3, 2), (1000, 4, None)])
def test_auroc_equals_sklearn(n, seed, decimals):
    y, s = scored(n, seed, decimals=decimals)
    assert abs(auroc(y, s) - roc_auc_score(y, s)) < 1e-12
    assert abs(auroc(y.astype(int), s) - roc_auc_score(y, s)) < 1e-12


def test_auroc_one_class_is_nan():
    assert math.isnan(auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    result = bootstrap_auroc(np.zeros(10, bool), np.arange(10.0), n_boot=50)
    assert math.isnan(result["auc"]) and math.isnan(result["ci_low"]) and math.isnan(result["ci_high"])
    assert (result["n_pos"], result["n_neg"], result["n_boot_valid"]) == (0, 10, 0)


# ------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_matches_reference_loop():
    y, s = scored(50, 5)
    n_boot, alpha = 200, 0.1                       # one block of indices: a single draw of [200, 50]
    idx = np.random.default_rng(7).integers(0, 50, size=(n_boot, 50))
    reps = np.array([roc_auc_score(y[i], s[i]) if y[i].any() and not y[i].all() else np.nan for i in idx])
    reps = reps[~np.isnan(reps)]
    low, high = np.percentile(reps, [5.0, 95.0])
    got = bootstrap_ci(auroc, y, s, n_boot=n_boot, alpha=alpha, seed=7)
    assert got["estimate"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got["ci_low"] == pytest.approx(low, abs=1e-12) and got["ci_high"] == pytest.approx(high, abs=1e-12)
    assert got["n_boot_valid"] == reps.size


@pytest.mark.parametrize("n, decimals", [(300, 1), (1200, None)])
def test_bootstrap_auroc_equals_generic_bootstrap(n, decimals, monkeypatch):
    y, s = scored(n, 6, decimals=decimals)
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 5 * n + 3)            # several blocks, the last one short
    fast = bootstrap_auroc(y, s, n_boot=23, alpha=0.2, seed=3)
    slow = bootstrap_ci(auroc, y, s, n_boot=23, alpha=0.2, seed=3)
    assert fast["auc"] == pytest.approx(slow["estimate"], abs=1e-12)
    assert fast["ci_low"] == pytest.approx(slow["ci_low"], abs=1e-12)
    assert fast["ci_high"] == pytest.approx(slow["ci_high"], abs=1e-12)
    assert (fast["n_pos"], fast["n_neg"], fast["n_boot_valid"]) == (int(y.sum()), int((~y).sum()), 23)


def test_bootstrap_auroc_contains_estimate_is_seeded_and_shrinks_with_n():
    small, large = scored(200, 8, decimals=None), scored(5000, 8, decimals=None)
    a = bootstrap_auroc(*small, n_boot=300, seed=1)
    assert a == bootstrap_auroc(*small, n_boot=300, seed=1)
    assert a != bootstrap_auroc(*small, n_boot=300, seed=2)
    assert a["ci_low"] < a["auc"] < a["ci_high"]
    b = bootstrap_auroc(*large, n_boot=300, seed=1)
    assert b["ci_low"] < b["auc"] < b["ci_high"]
    # the width scales as 1/sqrt(N): 25 times the samples, about a fifth of the width
    assert (b["ci_high"] - b["ci_low"]) < 0.4 * (a["ci_high"] - a["ci_low"])
    assert 0.6 < a["auc"] < 0.9 and 0.6 < b["auc"] < 0.9


def test_bootstrap_auroc_drops_one_class_resamples():
    y = np.zeros(20, bool)
    y[3] = True                                   # a resample misses the positive with p = 0.95**20 = 0.36
    s = np.linspace(0.0, 1.0, 20)
    got = bootstrap_auroc(y, s, n_boot=1000, seed=0)
    assert got["n_boot_valid"] == bootstrap_ci(auroc, y, s, n_boot=1000, seed=0)["n_boot_valid"]
    assert 580 < got["n_boot_valid"] < 700
    assert got["auc"] == pytest.approx(roc_auc_score(y, s))


# ----------------------------------------------------------------------------------------- table
def table_inputs(n: int = 400, seed: int = 9) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random((n, 4)) < [0.1, 0.3, 0.5, 0.02]
    y[:, 3] = False                                   # no positive: skipped
    y[:2, 0] = [True, False]
    s = np.round(rng.normal(size=(n, 4)) + y * [0.5, 1.0, 2.0, 0.0], 1)
    return y, s


def test_auroc_table_per_class_macro_and_skipped():
    y, s = table_inputs()
    names = ["a", "b", "c", "d"]
    table = auroc_table(y, s, names, n_boot=200, seed=4)
    assert set(table) == {"a", "b", "c", "macro", "skipped"}
    assert table["skipped"] == ["d"]
    for c, name in enumerate(names[:3]):
        assert table[name] == bootstrap_auroc(y[:, c], s[:, c], n_boot=200, seed=4)   # shared resamples
        assert abs(table[name]["auc"] - roc_auc_score(y[:, c], s[:, c])) < 1e-12
    macro = table["macro"]
    assert macro["auc"] == pytest.approx(np.mean([roc_auc_score(y[:, c], s[:, c]) for c in range(3)]), abs=1e-12)
    assert macro["n_classes"] == 3 and macro["n_boot_valid"] == 200
    assert macro["ci_low"] < macro["auc"] < macro["ci_high"]
    # a macro CI is narrower than its per-class ones: its errors average over classes
    assert macro["ci_high"] - macro["ci_low"] < max(table[x]["ci_high"] - table[x]["ci_low"] for x in "abc")


def test_auroc_table_macro_resamples_images_jointly():
    y, s = table_inputs(n=60)                           # class "0" has few positives: some resamples lose it
    valid = [0, 1, 2]
    ref = bootstrap_ci(lambda yy, ss: macro_mean([auroc(yy[:, c], ss[:, c]) for c in range(3)]),
                       y[:, valid], s[:, valid], n_boot=300, seed=2)
    macro = auroc_table(y, s, n_boot=300, seed=2)["macro"]
    assert macro["ci_low"] == pytest.approx(ref["ci_low"], abs=1e-12)
    assert macro["ci_high"] == pytest.approx(ref["ci_high"], abs=1e-12)
    assert macro["n_boot_valid"] == 300 and auroc_table(y, s, n_boot=300, seed=2)["0"]["n_boot_valid"] < 300


def test_auroc_table_valid_mask_scores_each_class_on_its_own_images():
    y, s = table_inputs(n=120)
    rng = np.random.default_rng(7)
    valid = rng.random(y.shape) < 0.6
    valid[:, 3] = False                                  # a class with no scored image is skipped
    scores = np.where(valid, s, np.nan)                  # invalid pairs may be NaN
    table = auroc_table(y, scores, ["a", "b", "c", "d"], n_boot=300, seed=1, valid=valid)
    assert table["skipped"] == ["d"]
    for c, name in enumerate("abc"):
        m = valid[:, c]
        assert table[name]["auc"] == pytest.approx(roc_auc_score(y[m, c], s[m, c]), abs=1e-12)
        assert table[name]["n_pos"] + table[name]["n_neg"] == m.sum()
    # the same joint resampling as a reference loop that subsets each class to its valid images
    ref = bootstrap_ci(lambda yy, ss, vv: macro_mean([auroc(yy[vv[:, c], c], ss[vv[:, c], c]) for c in range(3)]),
                       y[:, :3], s[:, :3], valid[:, :3], n_boot=300, seed=1)
    assert table["macro"]["ci_low"] == pytest.approx(ref["ci_low"], abs=1e-12)
    assert table["macro"]["ci_high"] == pytest.approx(ref["ci_high"], abs=1e-12)


def test_auroc_table_all_classes_skipped():
    table = auroc_table(np.ones((5, 2), bool), np.zeros((5, 2)), ["x", "y"], n_boot=10)
    assert table["skipped"] == ["x", "y"] and table["macro"]["n_classes"] == 0
    assert math.isnan(table["macro"]["auc"]) and math.isnan(table["macro"]["ci_low"])
    assert table["macro"]["n_boot_valid"] == 0


def test_macro_mean_ignores_nan():
    assert macro_mean([0.5, float("nan"), 0.7]) == pytest.approx(0.6)
    assert macro_mean({"a": 1.0, "b": float("nan")}) == 1.0
    assert math.isnan(macro_mean([float("nan")])) and math.isnan(macro_mean([]))


# ------------------------------------------------------------------------------- operating point
def reference_operating_point(y: np.ndarray, s: np.ndarray) -> dict:
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]           # drop roc_curve's inf threshold
    best = int(np.argmin(np.hypot(fpr, 1.0 - tpr)))
    pred = s >= thresholds[best]
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[False, True]).ravel()
    return {"threshold": thresholds[best], "fpr": fpr[best], "tpr": tpr[best], "accuracy": accuracy_score(y, pred),
            "f1": f1_score(y, pred), "precision": precision_score(y, pred), "sensitivity": recall_score(y, pred),
            "specificity": tn / (tn + fp), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def test_operating_point_known_values():
    # ROC points at 0.8 and 0.35 are both 0.5 from (0, 1): the higher threshold wins
    got = operating_point([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert got == {"threshold": 0.8, "fpr": 0.0, "tpr": 0.5, "distance": 0.5, "accuracy": 0.75, "f1": 2 / 3,
                   "precision": 1.0, "sensitivity": 0.5, "specificity": 1.0, "tp": 1, "fp": 0, "tn": 2, "fn": 1}


@pytest.mark.parametrize("n, seed, decimals", [(30, 0, 1), (500, 1, 1), (2000, 2, None), (300, 3, 0)])
def test_operating_point_equals_sklearn(n, seed, decimals):
    y, s = scored(n, seed, decimals=decimals)
    got, ref = operating_point(y, s), reference_operating_point(y, s)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["distance"] == pytest.approx(math.hypot(ref["fpr"], 1 - ref["tpr"]), abs=1e-12)


def test_operating_point_one_class():
    got = operating_point([1, 1], [0.2, 0.3])
    assert math.isnan(got["threshold"]) and math.isnan(got["f1"]) and got["tp"] == -1


# ------------------------------------------------------------------------------------- retrieval
def reference_ranks(sim: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Pessimistic 1-based rank of the best correct candidate, by plain loops."""
    ranks = []
    for q in range(sim.shape[0]):
        best = max(sim[q, j] for j in range(sim.shape[1]) if correct[q, j])
        ranks.append(1 + sum(1 for j in range(sim.shape[1]) if not correct[q, j] and sim[q, j] >= best))
    return np.array(ranks)


def reference_metrics(ranks: np.ndarray, ks: tuple[int, ...]) -> dict:
    out = {f"recall@{k}": sum(1 for r in ranks if r <= k) / len(ranks) for k in ks}
    return {**out, "median_rank": float(np.median(ranks)), "mean_rank": float(np.mean(ranks)),
            "n_queries": len(ranks)}


def test_retrieval_known_values_and_pessimistic_ties():
    sim = np.array([[0.9, 0.1, 0.9],          # the correct candidate 0 ties with candidate 2: rank 2
                    [0.2, 0.8, 0.1],          # rank 1
                    [0.5, 0.5, 0.5]])         # constant similarities: the worst rank, 3
    assert retrieval_ranks(sim, np.array([0, 1, 2])).tolist() == [2, 1, 3]
    got = retrieval_metrics(sim, np.array([0, 1, 2]), ks=(1, 2, 5))
    assert got == {"recall@1": 1 / 3, "recall@2": 2 / 3, "recall@5": 1.0, "median_rank": 2.0, "mean_rank": 2.0,
                   "n_queries": 3}
    # several correct candidates: the best one counts, and correct ones never push each other down
    correct = np.array([[True, False, True], [False, False, True], [True, True, True]])
    assert retrieval_ranks(sim, correct).tolist() == [1, 3, 1]


@pytest.mark.parametrize("n_q, n_c, seed", [(40, 40, 0), (64, 300, 1), (200, 17, 2)])
def test_retrieval_equals_reference_loop(n_q, n_c, seed, monkeypatch):
    rng = np.random.default_rng(seed)
    sim = np.round(rng.normal(size=(n_q, n_c)), 1)
    targets = rng.integers(0, n_c, size=n_q)
    sim[np.arange(n_q), targets] += 1.0
    onehot = np.arange(n_c) == targets[:, None]
    ks = (1, 5, 10)
    ref = reference_ranks(sim, onehot)
    assert retrieval_metrics(sim, targets, ks) == pytest.approx(reference_metrics(ref, ks), abs=1e-12)
    assert retrieval_metrics(sim, onehot, ks) == pytest.approx(reference_metrics(ref, ks), abs=1e-12)
    multi = onehot | (rng.random((n_q, n_c)) < 0.05)
    assert retrieval_ranks(sim, multi).tolist() == reference_ranks(sim, multi).tolist()
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 3 * n_c)           # row blocks of 3 queries
    assert retrieval_ranks(sim, targets).tolist() == ref.tolist()


def test_bootstrap_retrieval():
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(150, 150)) + 2.0 * np.eye(150)
    targets = np.arange(150)
    got = bootstrap_retrieval(sim, targets, ks=(1, 5), n_boot=300, seed=5)
    point = retrieval_metrics(sim, targets, ks=(1, 5))
    assert set(got) == {"recall@1", "recall@5", "median_rank", "mean_rank", "n_queries", "n_boot"}
    assert (got["n_queries"], got["n_boot"]) == (150, 300)
    ranks = retrieval_ranks(sim, targets)
    for k in (1, 5):
        entry = got[f"recall@{k}"]
        assert entry["estimate"] == point[f"recall@{k}"]
        assert entry["ci_low"] < entry["estimate"] < entry["ci_high"]
        ref = bootstrap_ci(lambda r, k=k: float(np.mean(r <= k)), ranks, n_boot=300, seed=5)
        assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((ref["ci_low"], ref["ci_high"]), abs=1e-12)
    assert got["median_rank"]["ci_low"] <= got["median_rank"]["estimate"] <= got["median_rank"]["ci_high"]
    assert got == bootstrap_retrieval(sim, targets, ks=(1, 5), n_boot=300, seed=5)
    assert got != bootstrap_retrieval(sim, targets, ks=(1, 5), n_boot=300, seed=6)


# ------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("call, message", [
    (lambda: auroc([0, 1, 1], [0.1, 0.2]), r"scores must have shape \[N\] = \(3,\) like labels, got \(2,\)"),
    (lambda: auroc(np.zeros((3, 2)), np.zeros((3, 2))), r"labels must have shape \[N\], got \(3, 2\)"),
    (lambda: auroc([0, 2], [0.1, 0.2]), "labels must be binary"),
    (lambda: auroc([0, 1], [0.1, np.nan]), "scores must be finite"),
    (lambda: bootstrap_auroc([0, 1], [0.1, 0.2], n_boot=0), "n_boot must be a positive int"),
    (lambda: bootstrap_auroc([0, 1], [0.1, 0.2], alpha=1.5), r"alpha must be in \(0, 1\)"),
    (lambda: auroc_table(np.zeros(4, bool), np.zeros(4)), r"labels must have shape \[N, C\], got \(4,\)"),
    (lambda: auroc_table(np.zeros((4, 2), bool), np.zeros((4, 3))),
     r"scores must have shape \[N, C\] = \(4, 2\) like labels, got \(4, 3\)"),
    (lambda: auroc_table(np.zeros((4, 2), bool), np.zeros((4, 2)), ["a"]), "names must be 2 distinct names"),
    (lambda: auroc_table(np.zeros((4, 1), bool), np.zeros((4, 1)), ["macro"]), "reserved"),
    (lambda: bootstrap_ci(np.mean, np.zeros(4), np.zeros(3)), r"arrays\[1\] must have shape \[N, ...\] with N = 4"),
    (lambda: operating_point([0, 1], [[0.1, 0.2]]), r"scores must have shape \[N\] = \(2,\)"),
    (lambda: retrieval_metrics(np.zeros(4), np.zeros(4, int)), r"similarity must have shape \[Nq, Nc\]"),
    (lambda: retrieval_metrics(np.zeros((4, 3)), np.zeros(5, int)), r"targets must have shape \[Nq\] = \(4,\)"),
    (lambda: retrieval_metrics(np.zeros((4, 3)), np.zeros((4, 2), bool)), r"\[Nq, Nc\] = \(4, 3\) \(bool\)"),
    (lambda: retrieval_metrics(np.zeros((2, 3)), np.array([0, 3])), r"targets must be candidate indices in \[0, 3\)"),
    (lambda: retrieval_metrics(np.zeros((2, 3)), np.zeros((2, 3), bool)), "at least one correct candidate"),
    (lambda: retrieval_metrics(np.zeros((2, 3)), np.array([0, 1]), ks=(0,)), "ks must be positive ints"),
    (lambda: macro_mean(np.zeros((2, 2))), r"values must have shape \[K\]"),
])
def test_bad_inputs_raise_with_the_argument_and_shape(call, message):
    with pytest.raises(ValueError, match=message):
        call()
