"""Paired AUROC comparisons of medvlp.eval.compare against direct formulas, a published example and simulations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from medvlp.eval import metrics
from medvlp.eval.compare import (
    delong_test,
    hierarchical_bootstrap_difference,
    minimum_detectable_effect,
    paired_auroc_difference,
    verdict,
)
from medvlp.eval.forest import plot_forest
from medvlp.eval.metrics import _auroc_replicates, _percentile_ci, auroc_table


# ------------------------------------------------------------------------------------- reference
def delong_reference(y: np.ndarray, sa: np.ndarray, sb: np.ndarray, ddof: int = 1) -> dict:
    """DeLong, DeLong & Clarke-Pearson (1988): structural components from the pairwise kernel, O(m n)."""
    v10, v01, theta = [], [], []
    for s in (sa, sb):
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        theta.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    theta, v10, v01 = np.array(theta), np.array(v10), np.array(v01)
    m, n = v10.shape[1], v01.shape[1]

    def cross(v: np.ndarray, r: int, q: int) -> float:
        return float(np.sum((v[r] - theta[r]) * (v[q] - theta[q])))

    s10 = np.array([[cross(v10, r, q) for q in range(2)] for r in range(2)]) / (m - ddof)
    s01 = np.array([[cross(v01, r, q) for q in range(2)] for r in range(2)]) / (n - ddof)
    cov = s10 / m + s01 / n
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (theta[0] - theta[1]) / math.sqrt(variance)
    return {"auc": theta, "covariance": cov, "variance": variance, "z": z, "p": 2 * norm.sf(abs(z))}


def correlated(n: int, seed: int, n_classes: int = 1, decimals: int | None = 1, rho: float = 0.6,
               effect: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels [n, C] and two models' scores [n, C] sharing item noise (correlation ``rho``), rounded for ties."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, n_classes)) < 0.35
    y[:2] = [[True], [False]]
    common = rng.normal(size=(n, n_classes))
    a = 1.0 * y + math.sqrt(rho) * common + math.sqrt(1 - rho) * rng.normal(size=(n, n_classes))
    b = (1.0 - effect) * y + math.sqrt(rho) * common + math.sqrt(1 - rho) * rng.normal(size=(n, n_classes))
    if decimals is not None:
        a, b = np.round(a, decimals), np.round(b, decimals)
    return y, a, b


# ---------------------------------------------------------------------------------------- DeLong
@pytest.mark.parametrize("n, seed, decimals", [(8, 0, 0), (40, 1, 1), (150, 2, 1), (400, 3, 2), (300, 4, None)])
def test_delong_matches_quadratic_reference(n, seed, decimals):
    y, a, b = correlated(n, seed, decimals=decimals)
    y, a, b = y[:, 0], a[:, 0], b[:, 0]
    got, ref = delong_test(y, a, b), delong_reference(y, a, b)
    assert got["auc_a"] == pytest.approx(ref["auc"][0], abs=1e-12)
    assert got["auc_b"] == pytest.approx(ref["auc"][1], abs=1e-12)
    assert got["auc_a"] == pytest.approx(metrics.auroc(y, a), abs=1e-12)
    assert got["variance"] == pytest.approx(ref["variance"], abs=1e-9)
    np.testing.assert_allclose(got["covariance"], ref["covariance"], atol=1e-9)
    assert got["z"] == pytest.approx(ref["z"], abs=1e-6)
    assert got["p_value"] == pytest.approx(ref["p"], abs=1e-6)
    assert got["se"] == pytest.approx(math.sqrt(ref["variance"]), abs=1e-9)
    assert (got["n_pos"], got["n_neg"], got["reason"]) == (int(y.sum()), int((~y).sum()), None)


# pROC's aSAH data set (113 patients with aneurysmal subarachnoid haemorrhage; Turck et al. 2010, Intensive
# Care Medicine 36:107-115), as shipped in the R package pROC 1.18.0: outcome Poor (1) / Good (0), the WFNS
# grade, and the s100b and ndka biomarkers, in the package's row order.
ASAH_POOR = ("00001101001011001011101000000000100110110000000001100010001010011101101111000110100000010000000000001111"
             "110001000")
ASAH_WFNS = ("11113254125255125225211112121134214541425511241125521251222151125214524414121421232421451154221113125225"
             "552445111")
ASAH_S100B = """0.13 0.14 0.1 0.04 0.13 0.1 0.47 0.16 0.18 0.1 0.12 0.1 0.44 0.71 0.04 0.08 0.49 0.04 0.07 0.33 0.09
0.09 0.07 0.11 0.07 0.17 0.07 0.11 0.13 0.19 0.05 0.16 0.41 0.14 0.34 0.35 0.48 0.09 0.96 0.25 0.5
0.46 0.16 0.07 0.43 0.45 0.11 0.08 0.09 0.86 0.52 0.08 0.06 0.13 2.07 0.1 0.14 0.15 0.07 0.06 0.77
0.05 0.09 0.3 0.03 0.09 0.04 0.23 0.7 0.09 0.27 0.71 0.08 0.26 0.08 0.16 0.09 0.13 0.1 0.08 0.11
0.33 0.11 0.28 0.07 0.1 0.32 0.22 0.07 0.05 0.24 0.38 0.1 0.15 0.08 0.14 0.1 0.07 0.04 0.19 0.56
0.14 0.58 0.32 0.82 0.74 0.15 0.47 0.17 0.44 0.15 0.5 0.48"""
ASAH_NDKA = """3.01 8.54 8.09 10.42 17.4 12.75 6 13.2 15.54 6.01 15.96 17.86 5.18 8.9 13.41 20.75 11.6 16.11 32.37
54.82 32.41 49.94 40.34 9.47 6.29 12.53 6.54 6.3 80.3 12.8 9.8 9.81 9.85 18.21 5.03 14.04 21.93 8.02
7.42 8.38 6.59 9.63 13.12 7.96 14.34 41.43 7.63 7.06 12.59 13.56 3.87 9.44 7.66 12.98 419.19 27.19
22.27 9.95 21.22 11.73 10.4 58.83 6.39 11.09 12.22 13.67 17.21 22.63 12.9 9.7 21.57 8.23 72.57 15.54
10.51 10.6 14.57 5.19 9.63 4.61 21.48 17.3 12.71 9.44 11.07 19.46 10.83 5.37 11.97 7.75 9.83 10.55
28.49 8.53 12.57 12.9 46.83 11.68 12.67 9.01 9.57 34.06 11.72 14.26 47.61 11.67 24.58 10.33 13.87
15.89 22.43 6.79 13.45"""


def asah() -> dict[str, np.ndarray]:
    return {"poor": np.array([c == "1" for c in ASAH_POOR]), "wfns": np.array([float(c) for c in ASAH_WFNS]),
            "s100b": np.array(ASAH_S100B.split(), dtype=float), "ndka": np.array(ASAH_NDKA.split(), dtype=float)}


# Published values: pROC's own tests (tests/testthat/test-roc.test.R of pROC, Robin et al. 2011, BMC
# Bioinformatics 12:77) pin roc.test(roc(outcome, a), roc(outcome, b)) with its default method="delong"
# (paired, two-sided): (Z, p, 95% CI of auc_a - auc_b).
PROC_DELONG = [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, (0.0104061769564846, 0.174214419249478)),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, (0.0634011709339876, 0.3600405634833566)),
]


@pytest.mark.parametrize("a, b, z, p, ci", PROC_DELONG)
def test_delong_reproduces_proc_on_asah(a, b, z, p, ci):
    data = asah()
    assert data["poor"].size == 113 and data["poor"].sum() == 41
    got = delong_test(data["poor"], data[a], data[b])
    # pROC prints AUCs 0.8237 (wfns), 0.7314 (s100b), 0.6120 (ndka)
    assert round(got["auc_a"], 4) == 0.8237
    assert round(got["auc_b"], 4) == {"s100b": 0.7314, "ndka": 0.6120}[b]
    assert got["z"] == pytest.approx(z, abs=1e-9)
    assert got["p_value"] == pytest.approx(p, rel=1e-8)
    half = norm.ppf(0.975) * got["se"]
    assert got["difference"] - half == pytest.approx(ci[0], abs=1e-9)
    assert got["difference"] + half == pytest.approx(ci[1], abs=1e-9)
    # the paired table gives the same per-class test and antisymmetry holds
    table = paired_auroc_difference(data["poor"][:, None], data[a][:, None], data[b][:, None], n_boot=50)
    assert table["0"]["p_value"] == pytest.approx(p, rel=1e-8)
    assert delong_test(data["poor"], data[b], data[a])["z"] == pytest.approx(-z, abs=1e-9)


def test_delong_degenerate_cases():
    one_class = delong_test(np.ones(5, bool), np.arange(5.0), np.arange(5.0))
    assert math.isnan(one_class["auc_a"]) and math.isnan(one_class["p_value"]) and "one class" in one_class["reason"]
    single = delong_test([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4])
    assert single["auc_a"] == 1.0 and single["auc_b"] == 0.0 and math.isnan(single["variance"])
    assert "at least 2 positives" in single["reason"]

    y, a, _ = correlated(60, 7)
    same = delong_test(y[:, 0], a[:, 0], a[:, 0])
    assert (same["difference"], same["variance"], same["z"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    assert "zero variance" in same["reason"]
    perfect = y[:, 0].astype(float)                        # AUROC 1, every component 1 (or 0): no variance
    constant = np.zeros(60)                               # AUROC 1/2, every component 1/2
    got = delong_test(y[:, 0], perfect, constant)
    assert (got["difference"], got["variance"], got["z"], got["p_value"]) == (0.5, 0.0, math.inf, 0.0)
    assert delong_test(y[:, 0], constant, perfect)["z"] == -math.inf


def test_delong_rejects_bad_inputs():
    with pytest.raises(ValueError, match="scores_b must have shape"):
        delong_test([0, 1, 1], [0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="scores_a must be finite"):
        delong_test([0, 1, 1], [0.1, np.nan, 0.3], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="labels must be binary"):
        delong_test([0, 2, 1], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="labels must have shape"):
        delong_test([], [], [])


# ---------------------------------------------------------------------------------- paired table
def test_macro_delong_reduces_to_delong_for_one_class():
    y, a, b = correlated(250, 11)
    table = paired_auroc_difference(y, a, b, n_boot=20)
    one = delong_test(y[:, 0], a[:, 0], b[:, 0])
    assert table["0"]["se_delong"] == pytest.approx(one["se"], abs=1e-12)
    assert table["0"]["p_value"] == pytest.approx(one["p_value"], abs=1e-12)
    assert table["macro"]["difference"] == pytest.approx(one["difference"], abs=1e-12)
    # the macro variance uses the 1/m and 1/n normalisation of the structural components
    biased = delong_reference(y[:, 0], a[:, 0], b[:, 0], ddof=0)["variance"]
    assert table["macro"]["se_delong"] ** 2 == pytest.approx(biased, abs=1e-12)
    assert table["macro"]["se_delong"] < table["0"]["se_delong"]


def test_macro_delong_counts_items_shared_across_classes():
    # two copies of one class: the macro difference is that class's difference, so is its variance
    y, a, b = correlated(200, 12)
    twice = paired_auroc_difference(np.repeat(y, 2, 1), np.repeat(a, 2, 1), np.repeat(b, 2, 1), n_boot=20)
    once = paired_auroc_difference(y, a, b, n_boot=20)
    assert twice["macro"]["se_delong"] == pytest.approx(once["macro"]["se_delong"], abs=1e-12)
    # classes on disjoint items: the variances add, weighted 1/C^2
    valid = np.zeros((200, 2), bool)
    valid[:100, 0] = valid[100:, 1] = True
    valid[:2] = valid[100:102] = True
    y2 = np.repeat(y, 2, 1)
    y2[100:102, 1] = [True, False]
    split = paired_auroc_difference(y2, np.repeat(a, 2, 1), np.repeat(b, 2, 1), valid=valid, n_boot=20)
    expected = (split["0"]["se_delong"] ** 2 + split["1"]["se_delong"] ** 2) / 4
    assert split["macro"]["se_delong"] ** 2 == pytest.approx(expected, rel=0.05)


def test_paired_bootstrap_resamples_like_auroc_table(monkeypatch):
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 7 * 300 + 5)        # several blocks, the last one short
    rng = np.random.default_rng(13)
    y = rng.random((300, 4)) < [0.3, 0.1, 0.5, 0.2]
    y[:, 3] = False                                                   # no positive: skipped
    y[:2, :3] = [[True] * 3, [False] * 3]
    scores = np.round(rng.normal(size=(300, 4)) + y, 1)
    valid = rng.random((300, 4)) < 0.8
    valid[:2] = True
    scores[~valid] = np.nan
    constant = np.full((300, 4), 0.5)                                 # AUROC exactly 1/2 in every replicate
    names = ["a", "b", "c", "d"]
    table = auroc_table(y, scores, names=names, n_boot=47, seed=5, alpha=0.1, valid=valid)
    paired = paired_auroc_difference(y, scores, constant, valid=valid, names=names, n_boot=47, seed=5, alpha=0.1)
    assert paired["skipped"] == table["skipped"] == ["d"]
    for name in ("a", "b", "c", "macro"):
        assert paired[name]["auc_method"] == pytest.approx(table[name]["auc"], abs=1e-12)
        assert paired[name]["auc_baseline"] == 0.5
        assert paired[name]["difference"] == pytest.approx(table[name]["auc"] - 0.5, abs=1e-12)
        assert paired[name]["ci_low"] == pytest.approx(table[name]["ci_low"] - 0.5, abs=1e-12)
        assert paired[name]["ci_high"] == pytest.approx(table[name]["ci_high"] - 0.5, abs=1e-12)
        assert paired[name]["n_boot_valid"] == table[name]["n_boot_valid"]
    assert paired["macro"]["n_classes"] == 3


def test_paired_ci_contains_estimate_and_identical_models_give_zero():
    y, a, b = correlated(300, 14, n_classes=3)
    got = paired_auroc_difference(y, a, b, names=["x", "y", "z"], n_boot=300, seed=2)
    for name in ("x", "y", "z", "macro"):
        row = got[name]
        assert row["ci_low"] < row["difference"] < row["ci_high"]
        assert row["se_bootstrap"] == pytest.approx(row["se_delong"], rel=0.25)
        assert row["minimum_detectable_effect"] == pytest.approx(2.8016 * row["se_delong"], rel=1e-4)
        assert row["verdict"] == verdict(row["ci_low"], row["ci_high"])
    assert got == paired_auroc_difference(y, a, b, names=["x", "y", "z"], n_boot=300, seed=2)

    same = paired_auroc_difference(y, a, a, n_boot=300, seed=2)
    for name in ("0", "1", "2", "macro"):
        row = same[name]
        assert (row["difference"], row["ci_low"], row["ci_high"]) == (0.0, 0.0, 0.0)
        assert (row["se_delong"], row["se_bootstrap"], row["p_value"], row["z"]) == (0.0, 0.0, 1.0, 0.0)
        assert row["verdict"] == "inconclusive"


def test_paired_ci_is_narrower_than_unpaired_for_correlated_models():
    y, a, b = correlated(400, 15, decimals=None, rho=0.9, effect=0.2)
    paired = paired_auroc_difference(y, a, b, n_boot=1000, seed=1)["0"]
    unpaired = _auroc_replicates(y[:, 0], a[:, 0], 1000, 1) - _auroc_replicates(y[:, 0], b[:, 0], 1000, 2)
    low, high, _ = _percentile_ci(unpaired, 0.05)
    assert paired["ci_high"] - paired["ci_low"] < 0.5 * (high - low)
    cov = delong_test(y[:, 0], a[:, 0], b[:, 0])["covariance"]
    assert paired["se_delong"] < 0.5 * math.sqrt(cov[0, 0] + cov[1, 1])


def test_paired_rejects_bad_inputs():
    y, a, b = correlated(30, 16, n_classes=2)
    with pytest.raises(ValueError, match="scores_baseline must have shape"):
        paired_auroc_difference(y, a, b[:, :1])
    with pytest.raises(ValueError, match="scores_method must be finite"):
        paired_auroc_difference(y, np.where(y, np.nan, a), b)
    with pytest.raises(ValueError, match="valid must have shape"):
        paired_auroc_difference(y, a, b, valid=np.ones((30, 3), bool))
    with pytest.raises(ValueError, match="reserved"):
        paired_auroc_difference(y, a, b, names=["macro", "x"])
    with pytest.raises(ValueError, match="power"):
        paired_auroc_difference(y, a, b, power=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        paired_auroc_difference(y, a, b, n_boot=0)


# ---------------------------------------------------------------------------------- hierarchical
def seed_scores(y: np.ndarray, strengths, seed: int, rho: float = 0.7) -> np.ndarray:
    """[S, N, C] scores of S training seeds: shared item noise, seed-specific signal and noise."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0).normal(size=y.shape)
    return np.stack([d * y + math.sqrt(rho) * base + math.sqrt(1 - rho) * rng.normal(size=y.shape)
                     for d in strengths])


def test_hierarchical_with_one_seed_equals_item_bootstrap(monkeypatch):
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 5 * 200 + 3)
    y, a, b = correlated(200, 17, n_classes=3)
    valid = np.random.default_rng(1).random(y.shape) < 0.9
    valid[:2] = True
    for seed in (0, 4):
        paired = paired_auroc_difference(y, a, b, valid=valid, n_boot=61, seed=seed, alpha=0.1)["macro"]
        hier = hierarchical_bootstrap_difference(y, a[None], b[None], valid=valid, n_boot=61, seed=seed, alpha=0.1)
        for key in ("difference", "ci_low", "ci_high", "se_bootstrap", "n_boot_valid", "verdict", "n_classes"):
            assert hier[key] == paired[key], key
        assert (hier["auc_method"], hier["auc_baseline"]) == (paired["auc_method"], paired["auc_baseline"])
        assert (hier["n_seeds_method"], hier["n_seeds_baseline"]) == (1, 1)


def test_hierarchical_seed_level_widens_the_ci():
    y = np.random.default_rng(18).random((300, 3)) < 0.3
    baseline = seed_scores(y, 1.0 + 0.1 * np.linspace(-1, 1, 4), seed=1)
    for spread, factor in ((0.1, 1.0), (0.8, 3.0)):
        method = seed_scores(y, 1.2 + spread * np.linspace(-1, 1, 5), seed=2)
        hier = hierarchical_bootstrap_difference(y, method, baseline, n_boot=400, seed=3)
        items = hierarchical_bootstrap_difference(y, method, baseline, n_boot=400, seed=3, resample_seeds=False)
        assert hier["difference"] == items["difference"]
        seed_means = np.mean(hier["seed_aucs_method"]) - np.mean(hier["seed_aucs_baseline"])
        assert hier["difference"] == pytest.approx(seed_means, abs=1e-12)
        assert hier["ci_low"] < hier["difference"] < hier["ci_high"]
        assert hier["ci_high"] - hier["ci_low"] >= factor * (items["ci_high"] - items["ci_low"])
        assert (hier["n_seeds_method"], hier["n_seeds_baseline"], len(hier["seed_aucs_method"])) == (5, 4, 5)
    assert np.ptp(hier["seed_aucs_method"]) > 0.25                  # the wide case: seeds disagree a lot


def test_hierarchical_rejects_bad_inputs():
    y, a, b = correlated(30, 19, n_classes=2)
    with pytest.raises(ValueError, match=r"scores_method must have shape \[S, N, C\]"):
        hierarchical_bootstrap_difference(y, a, b[None])
    with pytest.raises(ValueError, match="scores_baseline must have shape"):
        hierarchical_bootstrap_difference(y, a[None], b[None, :, :1])
    with pytest.raises(ValueError, match="scores_baseline must have shape"):
        hierarchical_bootstrap_difference(y, a[None], b[None][:0])


# ----------------------------------------------------------------------------------------- power
def binormal_draw(rng: np.random.Generator, n: int, effect: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two classes on the same items (labels 85% shared), baseline AUROC 0.75 and method 0.75 + effect per
    class (binormal, unit variances); noise shared by the two models (rho 0.6) and by the two classes."""
    y0 = rng.random(n) < 0.3
    y = np.stack([y0, y0 ^ (rng.random(n) < 0.15)], 1)
    shift_b, shift_m = math.sqrt(2) * norm.ppf(0.75), math.sqrt(2) * norm.ppf(0.75 + effect)

    def noise() -> np.ndarray:
        return math.sqrt(0.5) * rng.normal(size=(n, 1)) + math.sqrt(0.5) * rng.normal(size=(n, 2))

    common = noise()
    method = shift_m * y + math.sqrt(0.6) * common + math.sqrt(0.4) * noise()
    baseline = shift_b * y + math.sqrt(0.6) * common + math.sqrt(0.4) * noise()
    return y, method, baseline


def repeated_draws(effect: float, draws: int = 200, n: int = 400) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2024)
    rows = []
    for k in range(draws):
        got = paired_auroc_difference(*binormal_draw(rng, n, effect), n_boot=200, seed=k)
        macro = got["macro"]
        naive = math.sqrt(got["0"]["se_delong"] ** 2 + got["1"]["se_delong"] ** 2) / 2
        rows.append((macro["difference"], macro["se_delong"], naive, macro["p_value"], macro["verdict"]))
    diff, se, naive, p, verdicts = zip(*rows)
    return {"difference": np.array(diff), "se": np.array(se), "naive_se": np.array(naive), "p": np.array(p),
            "verdict": np.array(verdicts)}


def test_power_matches_the_mde_formula_and_size_is_nominal():
    alpha, effect = 0.05, 0.05
    planted = repeated_draws(effect)
    sd = planted["difference"].std(ddof=1)                          # SE of the design, from the 200 draws
    predicted = norm.cdf(effect / sd - norm.ppf(1 - alpha / 2))     # about 0.77 here
    assert minimum_detectable_effect(sd, alpha=alpha, power=predicted) == pytest.approx(effect, rel=1e-9)
    assert 0.6 < predicted < 0.9
    # tolerance 0.1: 3.5 binomial SDs of a rate over 200 draws, plus the error of sd from 200 draws
    detected = np.mean(planted["verdict"] == "reproduced")
    assert abs(detected - predicted) <= 0.1
    assert abs(np.mean((planted["p"] < alpha) & (planted["difference"] > 0)) - predicted) <= 0.1
    # the macro DeLong SE tracks the spread of the estimates; ignoring the items shared by the two
    # classes (adding per-class variances as if independent) would underestimate it
    assert planted["se"].mean() == pytest.approx(sd, rel=0.12)
    assert planted["naive_se"].mean() < 0.93 * planted["se"].mean()
    assert planted["difference"].mean() == pytest.approx(effect, abs=0.01)

    null = repeated_draws(0.0)
    # tolerance 0.05 on top of alpha: more than 3 binomial SDs of a rate near 0.05 over 200 draws
    assert np.mean(null["verdict"] != "inconclusive") <= alpha + 0.05
    assert np.mean(null["p"] < alpha) <= alpha + 0.05


def test_minimum_detectable_effect():
    assert minimum_detectable_effect(0.01) == pytest.approx((1.959963984540054 + 0.8416212335729143) * 0.01)
    assert minimum_detectable_effect(0.02, alpha=0.01, power=0.9) == pytest.approx(
        (norm.ppf(0.995) + norm.ppf(0.9)) * 0.02)
    assert minimum_detectable_effect(0.0) == 0.0
    assert math.isnan(minimum_detectable_effect(float("nan")))
    for kwargs, match in (({"se": -0.1}, "se must be"), ({"se": 0.1, "alpha": 0.0}, "alpha"),
                          ({"se": 0.1, "power": 1.5}, "power"), ({"se": math.inf}, "se must be")):
        with pytest.raises(ValueError, match=match):
            minimum_detectable_effect(**kwargs)


# --------------------------------------------------------------------------------------- verdict
@pytest.mark.parametrize("low, high, expected", [
    (0.01, 0.2, "reproduced"),
    (1e-12, 1e-12, "reproduced"),
    (-0.2, -0.01, "contradicted"),
    (-0.1, 0.1, "inconclusive"),
    (0.0, 0.1, "inconclusive"),                 # touching 0 does not exclude 0
    (-0.1, 0.0, "inconclusive"),
    (0.0, 0.0, "inconclusive"),
    (-0.0, 0.0, "inconclusive"),
    (float("nan"), 0.1, "inconclusive"),
    (0.1, float("nan"), "inconclusive"),
    (float("nan"), float("nan"), "inconclusive"),
])
def test_verdict(low, high, expected):
    assert verdict(low, high) == expected


def test_verdict_rejects_inverted_ci():
    with pytest.raises(ValueError, match="ci_low must be <= ci_high"):
        verdict(0.2, 0.1)


# ---------------------------------------------------------------------------------------- forest
def test_plot_forest_writes_png(tmp_path):
    rows = [
        {"claim": "ConceptCLIP > SigLIP, findings", "difference": 0.031, "ci": [0.012, 0.05], "paper_effect": 0.04,
         "mde": 0.02, "verdict": "reproduced"},
        {"claim": "ConceptCLIP > SigLIP, CT", "difference": -0.01, "ci": [-0.03, 0.012], "mde": 0.03,
         "verdict": "inconclusive"},
        {"claim": "no CI", "difference": float("nan"), "ci": [float("nan"), float("nan")]},
    ]
    path = plot_forest(rows, tmp_path / "sub" / "forest.png")
    assert path == tmp_path / "sub" / "forest.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    with pytest.raises(ValueError, match=r"rows\[0\] lacks the keys \['ci'\]"):
        plot_forest([{"claim": "x", "difference": 0.1}], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="non-empty"):
        plot_forest([], tmp_path / "bad.png")
