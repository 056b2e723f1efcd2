"""Paired comparisons of two models' AUROCs on the same test items.

A claim "the method beats the baseline" is judged on the difference ``method - baseline`` of AUROCs
computed on the *same* items, so the items' difficulty cancels out of the difference:

- :func:`delong_test`                      DeLong's test of two correlated AUROCs on one binary task
- :func:`paired_auroc_difference`          per class and macro: difference, paired bootstrap CI,
  DeLong p-values (a DeLong-style z-test for the macro difference), standard errors, MDE
- :func:`hierarchical_bootstrap_difference`  training seeds as a second bootstrap level
- :func:`minimum_detectable_effect`        the smallest difference a design detects with a given power
- :func:`verdict`                          ``"reproduced"`` / ``"contradicted"`` / ``"inconclusive"`` from a CI

AUROC, ties and bootstrap follow :mod:`medvlp.eval.metrics`: a tied positive/negative pair counts one
half; replicates resample the N items with the blocks of ``metrics._bootstrap_blocks(N, n_boot, seed)``,
so the same ``seed`` resamples the same rows as :func:`medvlp.eval.metrics.auroc_table` and as every
function here, for both models at once (that is what pairs them). A replicate whose statistic is
undefined (a class with one label only in the resample) is dropped; CIs are percentile intervals.

DeLong's structural components (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837) of the
AUROC of scores ``s`` with ``m`` positives ``P`` and ``n`` negatives ``Q`` are, with
``psi(x, y) = 1 if x > y, 1/2 if x == y, 0 otherwise``::

    V10(i) = (1/n) sum_{j in Q} psi(s_i, s_j)   for i in P        V01(j) = (1/m) sum_{i in P} psi(s_i, s_j)   for j in Q

They are computed with the midrank algorithm of Sun & Xu (2014, IEEE Signal Processing Letters 21:1389):
with ``Tz`` the midranks among all ``m + n`` scores and ``Tx`` / ``Ty`` the midranks within the
positives / negatives, ``V10(i) = (Tz_i - Tx_i) / n`` and ``V01(j) = 1 - (Tz_j - Ty_j) / m``, which is
O((m + n) log(m + n)) instead of the O(m n) double sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm, rankdata

from medvlp.eval.metrics import (
    TABLE_KEYS,
    _auroc_keys,
    _binary,
    _bootstrap_blocks,
    _check_bootstrap,
    _finite,
    _percentile_ci,
    _resampled_auroc,
    _shape_error,
)

__all__ = [
    "delong_test",
    "hierarchical_bootstrap_difference",
    "hierarchical_mean_difference",
    "minimum_detectable_effect",
    "paired_auroc_difference",
    "verdict",
]

#: ``spawn_key`` of the random stream that resamples training seeds; the items keep the stream of
#: ``np.random.default_rng(seed)``, so adding the seed level leaves the item resamples unchanged.
SEED_STREAM = 1


# ---------------------------------------------------------------------------------------- DeLong
def _components(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sun & Xu midrank structural components.

    Args:
        positive: ``[M]`` bool with at least one positive and one negative.
        scores: ``[K, M]`` scores of ``K`` models on the same ``M`` items.

    Returns:
        ``(auc [K], v10 [K, m], v01 [K, n])``, ``v10`` over the positives and ``v01`` over the
        negatives, each in item order.
    """
    x, y = scores[:, positive], scores[:, ~positive]
    m, n = x.shape[1], y.shape[1]
    tz = rankdata(np.concatenate([x, y], axis=1), axis=1)
    v10 = (tz[:, :m] - rankdata(x, axis=1)) / n
    v01 = 1.0 - (tz[:, m:] - rankdata(y, axis=1)) / m
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    return auc, v10, v01


def _centred(v: np.ndarray) -> np.ndarray:
    return v - v.mean(axis=-1, keepdims=True)


def _z_test(difference: float, variance: float) -> tuple[float, float]:
    """``(z, two-sided p)``; zero variance gives ``(0, 1)`` for a zero difference, else ``(+-inf, 0)``."""
    if math.isnan(difference) or math.isnan(variance):
        return float("nan"), float("nan")
    if variance <= 0.0:
        return (0.0, 1.0) if difference == 0.0 else (math.copysign(math.inf, difference), 0.0)
    z = difference / math.sqrt(variance)
    return z, float(2.0 * norm.sf(abs(z)))


def _delong(positive: np.ndarray, scores: np.ndarray) -> tuple[dict, np.ndarray]:
    """:func:`delong_test` on validated ``positive`` [M] and ``scores`` [2, M], and the per-item
    influence ``[M]`` of the difference (zeros where the AUROC is undefined; see
    :func:`paired_auroc_difference`)."""
    m = int(positive.sum())
    n = positive.size - m
    nan = float("nan")
    out = {"auc_a": nan, "auc_b": nan, "difference": nan, "variance": nan, "se": nan, "z": nan, "p_value": nan,
           "covariance": np.full((2, 2), nan), "n_pos": m, "n_neg": n, "reason": None}
    phi = np.zeros(positive.size)
    if m == 0 or n == 0:
        out["reason"] = f"labels hold one class only ({m} positives, {n} negatives): AUROC undefined"
        return out, phi
    auc, v10, v01 = _components(positive, scores)
    out.update(auc_a=float(auc[0]), auc_b=float(auc[1]), difference=float(auc[0] - auc[1]))
    c10, c01 = _centred(v10), _centred(v01)
    d10, d01 = c10[0] - c10[1], c01[0] - c01[1]
    phi[positive], phi[~positive] = d10 / m, d01 / n
    if m < 2 or n < 2:
        out["reason"] = (f"DeLong's variance needs at least 2 positives and 2 negatives, got {m} and {n}: "
                         "variance, z and p are undefined")
        return out, phi
    out["covariance"] = c10 @ c10.T / ((m - 1) * m) + c01 @ c01.T / ((n - 1) * n)
    variance = float(d10 @ d10 / ((m - 1) * m) + d01 @ d01 / ((n - 1) * n))
    out["variance"], out["se"] = variance, math.sqrt(variance)
    out["z"], out["p_value"] = _z_test(out["difference"], variance)
    if variance == 0.0:
        out["reason"] = "zero variance: p = 1 if the difference is 0, else 0"
    return out, phi


def delong_test(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> dict:
    """DeLong's test of the difference of two correlated AUROCs (two models scored on the same items).

    The 2x2 covariance of the two AUROCs is ``S = S10 / m + S01 / n``, with ``S10`` (``S01``) the
    sample covariance, normalised by ``m - 1`` (``n - 1``), of the two models' structural components
    over the ``m`` positives (``n`` negatives), computed by the Sun & Xu midrank algorithm (see the
    module docstring; ties count one half). The test statistic is
    ``z = (auc_a - auc_b) / sqrt(S_aa + S_bb - 2 S_ab)`` with a two-sided standard normal p-value.

    Args:
        labels: ``[N]`` bool or 0/1 labels.
        scores_a: ``[N]`` finite scores of model a (higher = more positive).
        scores_b: ``[N]`` finite scores of model b on the same items.

    Returns:
        ``auc_a``, ``auc_b``, ``difference`` (``auc_a - auc_b``), ``variance`` and ``se`` of the
        difference, ``z``, ``p_value`` (two-sided), ``covariance`` (``[2, 2]`` array, order a, b),
        ``n_pos``, ``n_neg`` and ``reason`` (``None``, or why a value is NaN or degenerate).
        Degenerate cases: one class only -> every float NaN; fewer than 2 positives or 2 negatives
        -> the AUROCs are defined but the variance, z and p are NaN; zero variance (e.g. two
        identical models, or both perfect) -> ``p_value = 1`` and ``z = 0`` when the difference is
        exactly 0, else ``p_value = 0`` and ``z = +-inf``.

    Raises:
        ValueError: ``labels`` not a non-empty binary ``[N]`` array, or ``scores_a`` / ``scores_b``
            not finite real ``[N]`` arrays.
    """
    y = _binary(labels, "labels", "[N]", 1)
    if y.size == 0:
        raise ValueError("labels must have shape [N] with N >= 1, got (0,)")
    expected = f"[N] = ({y.size},) like labels"
    sa = _finite(scores_a, "scores_a", expected, y.shape)
    sb = _finite(scores_b, "scores_b", expected, y.shape)
    return _delong(y, np.stack([sa, sb]))[0]


# ------------------------------------------------------------------------------------- power, verdict
def _check_levels(alpha: float, power: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power!r}")


def minimum_detectable_effect(se: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true difference that a two-sided level-``alpha`` z-test detects with probability ``power``.

    ``MDE = (z_{1 - alpha/2} + z_{power}) * se``, with ``z_q`` the standard normal ``q`` quantile and
    ``se`` the standard error of the estimated difference (same units as the difference, e.g. AUROC
    points). Equivalently, a true effect ``d`` is detected with power ``Phi(d / se - z_{1 - alpha/2})``
    (the chance of rejecting in the wrong direction is neglected). ``alpha=0.05, power=0.8`` gives
    ``2.80 * se``. NaN when ``se`` is NaN.

    Raises:
        ValueError: ``se`` negative or infinite, or ``alpha`` / ``power`` outside (0, 1).
    """
    _check_levels(alpha, power)
    se = float(se)
    if math.isnan(se):
        return float("nan")
    if se < 0.0 or math.isinf(se):
        raise ValueError(f"se must be a finite standard error >= 0, got {se!r}")
    return float((norm.ppf(1.0 - alpha / 2.0) + norm.ppf(power)) * se)


def verdict(ci_low: float, ci_high: float) -> str:
    """Verdict on a claimed positive difference from the CI ``[ci_low, ci_high]`` of ``method - baseline``.

    ``"reproduced"`` when the CI lies strictly above 0 (``ci_low > 0``), ``"contradicted"`` when it
    lies strictly below 0 (``ci_high < 0``), ``"inconclusive"`` otherwise: when it contains 0,
    including a bound exactly at 0 (a CI touching 0 does not exclude 0), and when a bound is NaN.

    Raises:
        ValueError: ``ci_low > ci_high`` (both not NaN).
    """
    low, high = float(ci_low), float(ci_high)
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if low > high:
        raise ValueError(f"ci_low must be <= ci_high, got [{low}, {high}]")
    if low > 0.0:
        return "reproduced"
    if high < 0.0:
        return "contradicted"
    return "inconclusive"


# ------------------------------------------------------------------------------------- validation
def _table_inputs(labels: ArrayLike, valid: ArrayLike | None, names: Sequence[str] | None
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(labels [N, C] bool, mask [N, C] bool, names)`` checked as :func:`metrics.auroc_table` does."""
    y = _binary(labels, "labels", "[N, C]", 2)
    n, n_classes = y.shape
    if n == 0 or n_classes == 0:
        raise ValueError(f"labels must have shape [N, C] with N, C >= 1, got {tuple(y.shape)}")
    like = f"[N, C] = {tuple(y.shape)} like labels"
    if valid is None:
        mask = np.ones(y.shape, dtype=bool)
    else:
        mask = _binary(valid, "valid", like, 2)
        if mask.shape != y.shape:
            raise _shape_error("valid", like, mask)
    names = [str(i) for i in range(n_classes)] if names is None else [str(x) for x in names]
    if len(names) != n_classes or len(set(names)) != n_classes:
        raise ValueError(f"names must be {n_classes} distinct names (one per column of labels), got {len(names)}")
    if reserved := set(names) & set(TABLE_KEYS):
        raise ValueError(f"names must not use the reserved keys {TABLE_KEYS}, got {sorted(reserved)}")
    return y, mask, names


def _seed_scores(scores: ArrayLike, name: str, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``scores`` [S, N, C] (S >= 1) as float64, finite where ``mask``; invalid pairs set to 0."""
    expected = f"[S, N, C] = (S, {y.shape[0]}, {y.shape[1]}) with S >= 1"
    try:
        raw = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be real numbers of shape {expected}: {err}") from None
    if raw.ndim != 3 or raw.shape[1:] != y.shape or raw.shape[0] == 0:
        raise _shape_error(name, expected, raw)
    return _finite(np.where(mask, raw, 0.0), name, expected, raw.shape)


def _class_scores(scores: ArrayLike, name: str, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``scores`` [N, C] checked like labels, returned as ``[1, N, C]``."""
    raw = np.asarray(scores)
    if raw.shape != y.shape:
        raise _shape_error(name, f"[N, C] = {tuple(y.shape)} like labels", raw)
    return _seed_scores(raw[None], name, y, mask)


# -------------------------------------------------------------------------------------- bootstrap
def _macro(aurocs: np.ndarray) -> np.ndarray:
    """Mean over the last (class) axis of the defined (non-NaN) AUROCs; NaN where none is defined."""
    defined = ~np.isnan(aurocs)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined, aurocs, 0.0).sum(axis=-1) / defined.sum(axis=-1)


def _point_aurocs(y: np.ndarray, mask: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """AUROC ``[S, K]`` of each seed's scores ``[S, N, C]`` for the ``K`` scored ``classes``."""
    out = np.empty((scores.shape[0], classes.size))
    for j, c in enumerate(classes):
        rows = mask[:, c]
        out[:, j] = _components(y[rows, c], scores[:, rows, c])[0]
    return out


def _keys(y: np.ndarray, mask: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> list[list[tuple]]:
    """:func:`metrics._auroc_keys` of every seed ``[S]`` and scored class ``[K]``."""
    return [[_auroc_keys(y[:, c], seed_scores[:, c], mask[:, c]) for c in classes] for seed_scores in scores]


def _block_aurocs(idx: np.ndarray, keys: list[list[tuple]]) -> np.ndarray:
    """Resampled AUROCs ``[R, S, K]`` of the resamples ``idx`` ([R, N] item indices)."""
    out = np.empty((idx.shape[0], len(keys), len(keys[0]) if keys else 0))
    for s, seed_keys in enumerate(keys):
        for j, (key, n_groups) in enumerate(seed_keys):
            out[:, s, j] = _resampled_auroc(idx, key, n_groups)
    return out


def _replicates(keys_m: list[list[tuple]], keys_b: list[list[tuple]], n: int, n_boot: int, seed: int,
                resample_seeds: bool) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap replicates of ``method - baseline``: ``(per class [n_boot, K], macro [n_boot])``.

    Each replicate resamples the N items once (``_bootstrap_blocks(n, n_boot, seed)``, shared by both
    models, all seeds and all classes) and, with ``resample_seeds``, each model's seeds with
    replacement from the independent stream ``SeedSequence(seed, spawn_key=(SEED_STREAM,))``. The
    per-class statistic is the mean over the drawn seeds of the class AUROC; the macro statistic is
    the mean over the drawn seeds of each seed's macro AUROC (mean over the classes defined in the
    resample), method minus baseline.
    """
    s_m, s_b = len(keys_m), len(keys_b)
    seed_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SEED_STREAM,)))
    per_class, macro = [], []
    for idx in _bootstrap_blocks(n, n_boot, seed):
        rows = idx.shape[0]
        if resample_seeds:
            draw_m = seed_rng.integers(0, s_m, size=(rows, s_m))
            draw_b = seed_rng.integers(0, s_b, size=(rows, s_b))
        else:
            draw_m = np.broadcast_to(np.arange(s_m), (rows, s_m))
            draw_b = np.broadcast_to(np.arange(s_b), (rows, s_b))
        sides = []
        for keys, draw in ((keys_m, draw_m), (keys_b, draw_b)):
            aurocs = _block_aurocs(idx, keys)
            drawn = np.take_along_axis(aurocs, draw[:, :, None], axis=1)
            sides.append((drawn.mean(axis=1), np.take_along_axis(_macro(aurocs), draw, axis=1).mean(axis=1)))
        per_class.append(sides[0][0] - sides[1][0])
        macro.append(sides[0][1] - sides[1][1])
    return np.concatenate(per_class), np.concatenate(macro)


def _std(replicates: np.ndarray) -> float:
    kept = replicates[~np.isnan(replicates)]
    return float(kept.std(ddof=1)) if kept.size > 1 else float("nan")


def _summary(difference: float, replicates: np.ndarray, alpha: float) -> dict:
    low, high, n_valid = _percentile_ci(replicates, alpha)
    return {"difference": float(difference), "ci_low": low, "ci_high": high, "se_bootstrap": _std(replicates),
            "verdict": verdict(low, high), "n_boot_valid": n_valid}


def _usable(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Indices of the classes with at least one valid positive and one valid negative."""
    return np.flatnonzero(((y & mask).sum(axis=0) > 0) & ((~y & mask).sum(axis=0) > 0))


# --------------------------------------------------------------------------------- paired, per class
def paired_auroc_difference(labels: ArrayLike, scores_method: ArrayLike, scores_baseline: ArrayLike, *,
                            valid: ArrayLike | None = None, names: Sequence[str] | None = None,
                            n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, power: float = 0.8) -> dict:
    """Paired AUROC difference ``method - baseline`` per class and macro, with CIs, p-values and MDEs.

    Bootstrap: each replicate resamples the N items once, jointly for both models and all classes,
    with the rows that :func:`medvlp.eval.metrics.auroc_table` draws for the same ``seed``; the CI
    of a class is the percentile interval of its replicate differences (replicates where the class
    has one label only are dropped), the macro replicate is ``macro(method) - macro(baseline)``
    with each macro averaging the classes defined in that resample, as ``auroc_table`` does.

    DeLong: each class gets :func:`delong_test` on its valid items. The macro difference
    ``D = (1/C) sum_c D_c`` over the ``C`` scored classes gets a DeLong-style z-test whose variance
    counts items shared by several classes once. With ``Delta_c(i)`` the method-minus-baseline
    structural component of item ``i`` for class ``c`` (``V10`` if ``i`` is a valid positive of
    ``c``, ``V01`` if a valid negative; see the module docstring), ``m_c`` / ``n_c`` the numbers of
    valid positives / negatives and ``mean10_c`` / ``mean01_c`` the means of ``Delta_c`` over them
    (both equal ``D_c``), the per-item influence of ``D_c`` is::

        phi_c(i) = (Delta_c(i) - mean10_c) / m_c   if i is a valid positive of class c
                 = (Delta_c(i) - mean01_c) / n_c   if i is a valid negative of class c
                 = 0                               if (i, c) is not valid

    and ``Var(D) = sum_i phi(i)^2`` with ``phi(i) = (1/C) sum_c phi_c(i)``, i.e.
    ``(1/C^2) sum_{c, c'} sum_i phi_c(i) phi_c'(i)``: the diagonal terms are the per-class DeLong
    variances, the off-diagonal ones the covariances through shared items. This uses the ``1/m``
    (``1/n``) normalisation: for one class it equals DeLong's variance of :func:`delong_test` with
    ``S10`` and ``S01`` normalised by ``m`` and ``n`` instead of ``m - 1`` and ``n - 1``, i.e.
    ``(m-1)/m * s10 / m + (n-1)/n * s01 / n`` (a class with a single positive or negative adds
    nothing through that side). ``z = D / sqrt(Var(D))``, two-sided p, and the zero-variance rule
    of :func:`delong_test`.

    Args:
        labels: ``[N, C]`` bool (or 0/1), one column per class.
        scores_method: ``[N, C]`` scores of the method (higher = more positive).
        scores_baseline: ``[N, C]`` scores of the baseline on the same items.
        valid: optional ``[N, C]`` bool, the (item, class) pairs to score (as in ``auroc_table``);
            scores of invalid pairs are ignored and may be NaN.
        names: ``C`` distinct class names (default ``"0"`` .. ``"C-1"``); ``"macro"`` and
            ``"skipped"`` are reserved.
        n_boot, seed, alpha: bootstrap replicates, seed of the item resamples, CI level ``1 - alpha``
            (also the level of the MDE's test).
        power: power of :func:`minimum_detectable_effect`.

    Returns:
        For each class with valid positives and negatives, ``{name: dict}`` with ``difference``,
        ``auc_method``, ``auc_baseline``, ``ci_low``, ``ci_high`` (paired bootstrap), ``se_bootstrap``
        (SD of the replicates), ``se_delong``, ``z``, ``p_value`` (DeLong), ``minimum_detectable_effect``
        (from ``se_delong``), ``verdict`` (from the CI), ``n_pos``, ``n_neg``, ``n_boot_valid`` and
        ``reason`` (DeLong's, ``None`` when nothing is degenerate); ``"macro"``: the same keys less
        ``n_pos``, ``n_neg`` and ``reason``, plus ``n_classes``; ``"skipped"``: the names of the
        classes without a valid positive or negative.

    Raises:
        ValueError: a shape, dtype or value of ``labels``, ``scores_method``, ``scores_baseline``,
            ``valid`` or ``names`` is wrong (the message names it), or ``n_boot`` / ``alpha`` /
            ``power`` is out of range.
    """
    _check_bootstrap(n_boot, alpha)
    _check_levels(alpha, power)
    y, mask, names = _table_inputs(labels, valid, names)
    s_m = _class_scores(scores_method, "scores_method", y, mask)
    s_b = _class_scores(scores_baseline, "scores_baseline", y, mask)
    mde = lambda se: minimum_detectable_effect(se, alpha=alpha, power=power)
    classes = _usable(y, mask)
    auc_m, auc_b = _point_aurocs(y, mask, s_m, classes)[0], _point_aurocs(y, mask, s_b, classes)[0]
    reps, macro_reps = _replicates(_keys(y, mask, s_m, classes), _keys(y, mask, s_b, classes), y.shape[0],
                                   n_boot, seed, resample_seeds=False)

    table: dict = {}
    phi = np.zeros(y.shape[0])
    for j, c in enumerate(classes):
        rows = mask[:, c]
        pos = y[rows, c]
        test, phi_c = _delong(pos, np.stack([s_m[0, rows, c], s_b[0, rows, c]]))
        phi[rows] += phi_c
        entry = _summary(auc_m[j] - auc_b[j], reps[:, j], alpha)
        entry.update(auc_method=float(auc_m[j]), auc_baseline=float(auc_b[j]), se_delong=test["se"], z=test["z"],
                     p_value=test["p_value"], minimum_detectable_effect=mde(test["se"]), n_pos=test["n_pos"],
                     n_neg=test["n_neg"], reason=test["reason"])
        table[names[c]] = entry

    macro_m, macro_b = _macro(auc_m[None])[0], _macro(auc_b[None])[0]
    macro = _summary(macro_m - macro_b, macro_reps, alpha)
    variance = float(np.sum((phi / classes.size) ** 2)) if classes.size else float("nan")
    macro["z"], macro["p_value"] = _z_test(macro["difference"], variance)
    macro.update(auc_method=float(macro_m), auc_baseline=float(macro_b), se_delong=math.sqrt(variance),
                 minimum_detectable_effect=mde(math.sqrt(variance)), n_classes=int(classes.size))
    table["macro"] = macro
    table["skipped"] = [names[c] for c in np.setdiff1d(np.arange(y.shape[1]), classes)]
    return table


# ---------------------------------------------------------------------------------- hierarchical
def hierarchical_bootstrap_difference(labels: ArrayLike, scores_method: ArrayLike, scores_baseline: ArrayLike, *,
                                      valid: ArrayLike | None = None, names: Sequence[str] | None = None,
                                      n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                                      resample_seeds: bool = True) -> dict:
    """Difference of seed-averaged macro AUROCs with a two-level (training seeds, items) bootstrap CI.

    The estimate is ``mean_s macro(method seed s) - mean_s macro(baseline seed s)``, each macro the
    mean AUROC over the scored classes. Each replicate draws ``S_m`` method seeds and ``S_b``
    baseline seeds with replacement, independently for the two models (their seeds are independent
    training runs), then resamples the N items once, shared by both models, all seeds and all
    classes; its statistic is the mean over the drawn method seeds of their macro AUROC minus the
    same for the baseline (each macro averaging the classes defined in the resample). The items are
    resampled exactly as in :func:`paired_auroc_difference` for the same ``seed`` (the seeds come
    from a separate random stream), so with ``S_m = S_b = 1`` the CI equals its macro CI.

    Args:
        labels: ``[N, C]`` bool (or 0/1).
        scores_method: ``[S_m, N, C]`` scores of ``S_m >= 1`` training seeds of the method.
        scores_baseline: ``[S_b, N, C]`` scores of ``S_b >= 1`` training seeds of the baseline.
        valid, names, n_boot, seed, alpha: as in :func:`paired_auroc_difference`.
        resample_seeds: ``False`` keeps every seed in every replicate (an item-only bootstrap of the
            same statistic), to show how much the seed level widens the CI.

    Returns:
        ``difference``, ``auc_method`` and ``auc_baseline`` (seed-averaged macro AUROCs),
        ``seed_aucs_method`` [S_m] and ``seed_aucs_baseline`` [S_b] (each seed's macro AUROC, lists),
        ``ci_low``, ``ci_high``, ``se_bootstrap``, ``verdict``, ``n_boot_valid``, ``n_seeds_method``,
        ``n_seeds_baseline``, ``n_classes`` and ``skipped`` (names of the classes not scored).

    Raises:
        ValueError: a shape, dtype or value of ``labels``, ``scores_method``, ``scores_baseline``,
            ``valid`` or ``names`` is wrong (the message names it), or ``n_boot`` / ``alpha`` is out
            of range.
    """
    _check_bootstrap(n_boot, alpha)
    y, mask, names = _table_inputs(labels, valid, names)
    s_m = _seed_scores(scores_method, "scores_method", y, mask)
    s_b = _seed_scores(scores_baseline, "scores_baseline", y, mask)
    classes = _usable(y, mask)
    seed_m = _macro(_point_aurocs(y, mask, s_m, classes))
    seed_b = _macro(_point_aurocs(y, mask, s_b, classes))
    _, macro_reps = _replicates(_keys(y, mask, s_m, classes), _keys(y, mask, s_b, classes), y.shape[0], n_boot,
                                seed, resample_seeds)
    out = _summary(seed_m.mean() - seed_b.mean(), macro_reps, alpha)
    out.update(auc_method=float(seed_m.mean()), auc_baseline=float(seed_b.mean()),
               seed_aucs_method=seed_m.tolist(), seed_aucs_baseline=seed_b.tolist(),
               n_seeds_method=int(s_m.shape[0]), n_seeds_baseline=int(s_b.shape[0]), n_classes=int(classes.size),
               skipped=[names[c] for c in np.setdiff1d(np.arange(y.shape[1]), classes)])
    return out


def hierarchical_mean_difference(values_method: ArrayLike, values_baseline: ArrayLike, *, n_boot: int = 1000,
                                 seed: int = 0, alpha: float = 0.05) -> dict:
    """Difference of seed-averaged item means (e.g. Recall@K from per-query hits) with the two-level bootstrap
    of :func:`hierarchical_bootstrap_difference`: each replicate draws each model's seeds with replacement
    (the same seed stream) and resamples the N items once, shared by both models.

    Args:
        values_method: ``[S_m, N]`` per-item values (e.g. 1.0 if query n's rank is <= K) of each method seed.
        values_baseline: ``[S_b, N]`` the same for the baseline, on the same N items in the same order.

    Returns:
        ``difference`` (method - baseline of the seed-averaged means), ``value_method``, ``value_baseline``,
        ``ci_low``, ``ci_high``, ``se_bootstrap``, ``verdict``, ``n_boot_valid``, ``n_seeds_method``,
        ``n_seeds_baseline``, ``n_items``.

    Raises:
        ValueError: shapes that are not ``[S, N]`` with the same N >= 1, non-finite values, or a bad
            ``n_boot`` / ``alpha``.
    """
    _check_bootstrap(n_boot, alpha)
    m = np.asarray(values_method, dtype=np.float64)
    b = np.asarray(values_baseline, dtype=np.float64)
    if m.ndim != 2 or b.ndim != 2 or m.shape[1] != b.shape[1] or m.shape[1] == 0 or 0 in (m.shape[0], b.shape[0]):
        raise ValueError(f"values_method and values_baseline must be [S, N] with the same N >= 1, got "
                         f"{m.shape} and {b.shape}")
    if not (np.isfinite(m).all() and np.isfinite(b).all()):
        raise ValueError("values_method and values_baseline must be finite")
    n = m.shape[1]
    seed_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SEED_STREAM,)))
    reps = []
    for idx in _bootstrap_blocks(n, n_boot, seed):
        rows = idx.shape[0]
        sides = []
        for values in (m, b):
            draw = seed_rng.integers(0, values.shape[0], size=(rows, values.shape[0]))
            item_means = values[:, idx].mean(axis=2)  # [S, rows]: each seed's mean over the resampled items
            sides.append(np.take_along_axis(item_means.T, draw, axis=1).mean(axis=1))
        reps.append(sides[0] - sides[1])
    out = _summary(m.mean() - b.mean(), np.concatenate(reps), alpha)
    out.update(value_method=float(m.mean()), value_baseline=float(b.mean()), n_seeds_method=int(m.shape[0]),
               n_seeds_baseline=int(b.shape[0]), n_items=int(n))
    return out
