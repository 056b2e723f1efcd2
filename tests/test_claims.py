"""The claim verdicts of the zero_shot stage on constructed score tables (medvlp.eval.stage.claim_rows) and the
rule itself (medvlp.eval.compare.verdict).

The rule, restated here on its own (``verdict``) so that a change of rule changes one function: a claim
"method beats baseline" is judged on the CI of ``method - baseline`` (paired: the same items, seeds then items
resampled): ``reproduced`` when the CI lies strictly above 0, ``contradicted`` when strictly below, and
``inconclusive`` otherwise, a bound exactly at 0 or NaN included.

The score tables are built so that every bootstrap replicate has the same difference (a model that ranks
every item right against one that ranks none, or two identical models): the CI is then known exactly, and so
is the verdict, whatever the resampling.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medvlp.eval.compare import verdict as library_verdict
from medvlp.eval.stage import CLAIMS, claim_rows

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"
N_ITEMS, CLASSES = 24, ("A", "B", "C")


def verdict(ci_low: float, ci_high: float) -> str:
    """The rule of the day."""
    if math.isnan(ci_low) or math.isnan(ci_high):
        return INCONCLUSIVE
    if ci_low > 0:
        return REPRODUCED
    if ci_high < 0:
        return CONTRADICTED
    return INCONCLUSIVE


def _claim(baseline: str, method: str, task: str = "findings"):
    matches = [c for c in CLAIMS if (c.baseline, c.method, c.task) == (baseline, method, task)]
    assert len(matches) == 1, (baseline, method, task)
    return matches[0]


def labels() -> np.ndarray:
    y = np.zeros((N_ITEMS, len(CLASSES)), dtype=bool)
    for j in range(len(CLASSES)):
        y[j::3, j] = True
        y[(j + 1) % N_ITEMS, j] = True
    return y


def frame(scores: np.ndarray, task: str = "findings", seeds=(0,), y: np.ndarray | None = None,
          items: list[str] | None = None) -> pd.DataFrame:
    """A per-item score table: ``scores`` [S, N, C] for ``seeds`` (columns seed, task, item, class, label, score)."""
    y = labels() if y is None else y
    items = [f"I{i:02d}" for i in range(scores.shape[1])] if items is None else items
    rows = [{"seed": s, "task": task, "item": items[i], "class": CLASSES[j], "label": bool(y[i, j]),
             "score": float(scores[k, i, j])}
            for k, s in enumerate(seeds) for i in range(scores.shape[1]) for j in range(scores.shape[2])]
    return pd.DataFrame(rows)


def perfect(noise_seed: int = 0) -> np.ndarray:
    """Ranks every item right (AUROC 1 in every resample)."""
    rng = np.random.default_rng(noise_seed)
    return (labels() + 0.1 * rng.random((N_ITEMS, len(CLASSES))))[None]


def flat() -> np.ndarray:
    """The same score everywhere (AUROC 0.5 in every resample)."""
    return np.full((1, N_ITEMS, len(CLASSES)), 0.3)


def noisy(seed: int, signal: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (signal * labels() + rng.normal(size=(N_ITEMS, len(CLASSES))))[None]


def macro(scores: np.ndarray, y: np.ndarray) -> float:
    """Seed-averaged macro AUROC by scikit-learn."""
    return float(np.mean([np.mean([roc_auc_score(y[:, j], s[:, j]) for j in range(y.shape[1])]) for s in scores]))


# ---------------------------------------------------------------------------------------------- the rule


RULE_CASES = [
    ((0.01, 0.2), REPRODUCED), ((1e-12, 1e-9), REPRODUCED), ((0.0, 0.2), INCONCLUSIVE),  # touching 0: not above
    ((-0.1, 0.1), INCONCLUSIVE), ((0.0, 0.0), INCONCLUSIVE), ((-0.2, 0.0), INCONCLUSIVE),
    ((-0.2, -1e-12), CONTRADICTED), ((-0.3, -0.1), CONTRADICTED),
    ((float("nan"), 0.2), INCONCLUSIVE), ((0.1, float("nan")), INCONCLUSIVE),
]


@pytest.mark.parametrize(("ci", "expected"), RULE_CASES, ids=[f"{c[0][0]:g}_{c[0][1]:g}" for c in RULE_CASES])
def test_rule_on_every_branch_and_tie(ci, expected):
    assert verdict(*ci) == expected
    assert library_verdict(*ci) == expected


def test_rule_rejects_a_reversed_interval():
    with pytest.raises(ValueError):
        library_verdict(0.2, 0.1)


# ----------------------------------------------------------------------------------------- the claims


@pytest.mark.parametrize(("method", "baseline", "difference", "expected"), [
    (perfect(), flat(), 0.5, REPRODUCED),
    (flat(), perfect(), -0.5, CONTRADICTED),
    (perfect(), perfect(), 0.0, INCONCLUSIVE),  # identical models: the CI is [0, 0]
    (flat(), flat(), 0.0, INCONCLUSIVE),
], ids=["better", "worse", "tie-perfect", "tie-flat"])
def test_verdict_of_a_claim_with_a_known_interval(method, baseline, difference, expected):
    claim = _claim("clip", "siglip")
    rows = claim_rows({"clip": frame(baseline), "siglip": frame(method)}, n_boot=200, seed=0)
    assert len(rows) == 1
    r = rows[0]
    assert (r["claim"], r["baseline"], r["method"], r["task"]) == (claim.text, "clip", "siglip", "findings")
    assert r["difference"] == pytest.approx(difference, abs=1e-12)
    assert r["ci"] == pytest.approx([difference, difference], abs=1e-12)
    assert r["method_value"] == pytest.approx(macro(method, labels()), abs=1e-12)
    assert r["baseline_value"] == pytest.approx(macro(baseline, labels()), abs=1e-12)
    assert r["verdict"] == expected == verdict(*r["ci"])
    assert r["n_items"] == N_ITEMS


@pytest.mark.parametrize("signal", [0.3, 1.5])
def test_claim_of_noisy_models_matches_sklearn_and_the_rule(signal):
    """Two seeds of the method, one of the baseline: the difference of seed-averaged macro AUROCs is
    scikit-learn's, the verdict is the rule applied to the reported CI, and the CI holds the estimate."""
    method = np.concatenate([noisy(1, signal), noisy(2, signal)])
    baseline = noisy(3, 0.3)
    rows = claim_rows({"clip": frame(baseline), "siglip": frame(method, seeds=(0, 1))}, n_boot=300, seed=0)
    r = rows[0]
    want = macro(method, labels()) - macro(baseline, labels())
    assert r["difference"] == pytest.approx(want, abs=1e-12)
    assert r["seeds"] == {"clip": 1, "siglip": 2}
    low, high = r["ci"]
    assert low <= r["difference"] <= high and low < high
    assert r["verdict"] == verdict(low, high)
    if signal == 1.5:
        assert r["verdict"] == REPRODUCED  # a clear improvement is not lost on the way


def test_items_not_scored_by_every_model_and_seed_are_left_out():
    y = labels()
    extra_items = [f"I{i:02d}" for i in range(N_ITEMS)] + ["X0", "X1"]
    y_extra = np.vstack([y, [[True, False, False], [False, True, True]]])
    method = np.concatenate([perfect()[0], [[0.0, 5.0, 5.0], [5.0, 0.0, 0.0]]])[None]  # wrong on the extra items
    rows = claim_rows({"clip": frame(flat()), "siglip": frame(method, y=y_extra, items=extra_items)},
                      n_boot=100, seed=0)
    assert rows[0]["n_items"] == N_ITEMS and rows[0]["difference"] == pytest.approx(0.5, abs=1e-12)


def test_recall_claims_use_per_query_ranks():
    claim = _claim("radclip_meanpool", "radclip", "ct_retrieval:volume_to_report")
    k = int(claim.metric.split("@")[1])

    def ranks(values):  # one class ("rank"), the query's rank as its score
        return frame(np.asarray(values, dtype=float)[None, :, None], task=claim.task,
                     y=np.ones((N_ITEMS, 1), dtype=bool))

    first, missed = np.ones(N_ITEMS), np.full(N_ITEMS, k + 1.0)
    half = np.where(np.arange(N_ITEMS) % 2 == 0, 1.0, k + 1.0)
    for method, baseline, difference, expected in ((first, missed, 1.0, REPRODUCED),
                                                   (missed, first, -1.0, CONTRADICTED),
                                                   (half, half, 0.0, INCONCLUSIVE),
                                                   (np.full(N_ITEMS, float(k)), first, 0.0, INCONCLUSIVE)):
        rows = claim_rows({"radclip_meanpool": ranks(baseline), "radclip": ranks(method)}, n_boot=100, seed=0,
                          claims=[claim])
        r = rows[0]
        assert r["difference"] == pytest.approx(difference, abs=1e-12)
        assert r["method_value"] == pytest.approx(float(np.mean(method <= k)), abs=1e-12)
        assert r["verdict"] == expected == verdict(*r["ci"])


def test_claims_without_both_models_give_no_row():
    assert claim_rows({}, n_boot=10, seed=0) == []
    assert claim_rows({"clip": frame(flat())}, n_boot=10, seed=0) == []
    rows = claim_rows({"clip": frame(flat()), "siglip": frame(perfect()), "radclip": frame(perfect())},
                      n_boot=50, seed=0)
    assert [(r["baseline"], r["method"]) for r in rows] == [("clip", "siglip")]
    both = claim_rows({"clip": frame(flat()), "siglip": frame(perfect()), "conceptclip": frame(perfect(1))},
                      n_boot=50, seed=0)
    assert [(r["baseline"], r["method"]) for r in both] == [("clip", "siglip"), ("siglip", "conceptclip")]
    assert [r["verdict"] for r in both] == [REPRODUCED, INCONCLUSIVE]
