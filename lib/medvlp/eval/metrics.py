"""Evaluation metrics as pure functions: numpy arrays in, plain floats and dicts out.

- :func:`auroc`, :func:`bootstrap_auroc`, :func:`auroc_table`  binary AUROC, with percentile bootstrap CIs
- :func:`operating_point`   the ROC point closest to (FPR=0, TPR=1) and the metrics at its threshold
- :func:`retrieval_ranks`, :func:`retrieval_metrics`, :func:`bootstrap_retrieval`  recall@K, median rank
- :func:`bootstrap_ci`      percentile CI of any statistic, resampling rows of its arrays jointly
- :func:`macro_mean`        mean ignoring NaN

AUROC follows ``sklearn.metrics.roc_auc_score``: the Mann-Whitney U with average ranks, so a tied
positive/negative pair counts one half. It is NaN when only one class is present.

Bootstrap replicates are drawn in blocks of ``[rows, N]`` indices from ``np.random.default_rng(seed)``;
the blocks depend only on ``(N, n_boot, seed)``, so every function here resamples the same rows for
the same seed: ``bootstrap_auroc(y, s, seed=k)`` and ``bootstrap_ci(auroc, y, s, seed=k)`` give the
same CI, and the classes of :func:`auroc_table` share their resamples. A replicate whose statistic is
undefined (NaN: one class only) is dropped and the rest are counted in ``n_boot_valid``. CIs are the
``alpha/2`` and ``1 - alpha/2`` percentiles (linear interpolation) of the valid replicates, NaN when
there are none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata

__all__ = [
    "auroc",
    "auroc_table",
    "bootstrap_auroc",
    "bootstrap_ci",
    "bootstrap_retrieval",
    "macro_mean",
    "operating_point",
    "retrieval_metrics",
    "retrieval_ranks",
]

#: Elements of one block of bootstrap indices (and of one row block of a similarity matrix):
#: 2**21 int64 = 16 MiB, which bounds the temporaries of a block to a few tens of MiB.
BLOCK_ELEMENTS = 1 << 21

#: Keys of :func:`auroc_table` that are not class names.
TABLE_KEYS = ("macro", "skipped")


# ------------------------------------------------------------------------------------ validation
def _shape_error(name: str, expected: str, arr: np.ndarray) -> ValueError:
    return ValueError(f"{name} must have shape {expected}, got {tuple(arr.shape)}")


def _binary(values: ArrayLike, name: str, expected: str, ndim: int) -> np.ndarray:
    """``values`` as a bool array of ``ndim`` dims; accepts bool or numbers that are all 0 or 1."""
    arr = np.asarray(values)
    if arr.ndim != ndim:
        raise _shape_error(name, expected, arr)
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.number) and np.isin(arr, (0, 1)).all()):
        raise ValueError(f"{name} must be binary (bool or 0/1), got values {np.unique(arr)[:5]}")
    return arr.astype(bool)


def _finite(values: ArrayLike, name: str, expected: str, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` as a finite float64 array of exactly ``shape``."""
    arr = np.asarray(values)
    if arr.shape != shape:
        raise _shape_error(name, expected, arr)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {int((~np.isfinite(arr)).sum())} NaN/inf values")
    return arr


def _labels_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _binary(labels, "labels", "[N]", 1)
    if y.size == 0:
        raise ValueError("labels must have shape [N] with N >= 1, got (0,)")
    return y, _finite(scores, "scores", f"[N] = ({y.size},) like labels", y.shape)


def _check_bootstrap(n_boot: int, alpha: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


# ------------------------------------------------------------------------------------- bootstrap
def _bootstrap_blocks(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """``[rows, n]`` blocks of row indices drawn with replacement, ``n_boot`` rows in all."""
    rng = np.random.default_rng(seed)
    rows = max(1, BLOCK_ELEMENTS // n)
    for start in range(0, n_boot, rows):
        yield rng.integers(0, n, size=(min(rows, n_boot - start), n))


def _percentile_ci(replicates: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """``(ci_low, ci_high, n_valid)`` over the non-NaN replicates."""
    valid = replicates[~np.isnan(replicates)]
    if valid.size == 0:
        return float("nan"), float("nan"), 0
    low, high = np.percentile(valid, [50.0 * alpha, 100.0 - 50.0 * alpha])
    return float(low), float(high), int(valid.size)


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap CI of ``statistic(*arrays)``, resampling the rows of all arrays jointly.

    For statistics without a vectorised bootstrap here; it calls ``statistic`` once per replicate.

    Args:
        statistic: ``f(*arrays) -> float``; a NaN or inf value marks a replicate as invalid.
        arrays: arrays sharing their first dimension ``N`` (rows are samples).

    Returns:
        ``estimate`` (the statistic on the full arrays), ``ci_low``, ``ci_high``, ``n_boot_valid``.
    """
    _check_bootstrap(n_boot, alpha)
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    arrs = [np.asarray(a) for a in arrays]
    n = arrs[0].shape[0] if arrs[0].ndim else 0
    for i, a in enumerate(arrs):
        if a.ndim == 0 or a.shape[0] != n or n == 0:
            raise ValueError(f"arrays[{i}] must have shape [N, ...] with N = {n} >= 1 like arrays[0], "
                             f"got {tuple(a.shape)}")
    reps = np.array([float(statistic(*(a[idx] for a in arrs)))
                     for block in _bootstrap_blocks(n, n_boot, seed) for idx in block])
    reps[~np.isfinite(reps)] = np.nan
    low, high, n_valid = _percentile_ci(reps, alpha)
    return {"estimate": float(statistic(*arrs)), "ci_low": low, "ci_high": high, "n_boot_valid": n_valid}


# ----------------------------------------------------------------------------------------- AUROC
def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Binary AUROC of ``scores`` [N] (higher = more positive) for ``labels`` [N] (bool or 0/1).

    Equal to ``sklearn.metrics.roc_auc_score``: ties between a positive and a negative count 1/2.
    NaN when ``labels`` holds one class only.
    """
    y, s = _labels_scores(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = rankdata(s, method="average")[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _auroc_keys(positive: np.ndarray, scores: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """``(key [N], G)``: ``key = G * positive + group``, with ``group`` the index of each score among the
    ``G`` distinct scores (of the valid samples) in ascending order; samples outside ``valid`` get the
    key ``2 G``, which the resampled AUROC ignores."""
    if valid is None:
        distinct, groups = np.unique(scores, return_inverse=True)
        return groups.ravel() + distinct.size * positive, distinct.size
    key = np.empty(scores.shape, dtype=np.int64)
    distinct, groups = np.unique(scores[valid], return_inverse=True)
    key[valid] = groups.ravel() + distinct.size * positive[valid]
    key[~valid] = 2 * distinct.size
    return key, distinct.size


def _resampled_auroc(idx: np.ndarray, key: np.ndarray, n_groups: int) -> np.ndarray:
    """AUROC [R] of each resample ``idx[r]`` ([R, N] row indices); NaN for one-class resamples.

    Counts the negatives and positives of each resample per tie group (``key`` from :func:`_auroc_keys`;
    the key ``2 G`` marks ignored samples); then ``2U = sum_g pos_g * (2 * neg_below_g + neg_g)`` in
    exact integer arithmetic, which is the average-rank Mann-Whitney U of the resample.
    """
    rows, _ = idx.shape
    width = 2 * n_groups + 1
    flat = key[idx]
    flat += (np.arange(rows) * width)[:, None]
    counts = np.bincount(flat.ravel(), minlength=rows * width).reshape(rows, width)[:, :-1]
    neg, pos = counts[:, :n_groups], counts[:, n_groups:]
    twice_below_plus_tied = 2 * np.cumsum(neg, axis=1) - neg
    twice_u = np.einsum("rg,rg->r", pos, twice_below_plus_tied)
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, twice_u / (2.0 * pairs), np.nan)


def _auroc_replicates(y: np.ndarray, s: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    key, n_groups = _auroc_keys(y, s)
    return np.concatenate([_resampled_auroc(idx, key, n_groups) for idx in _bootstrap_blocks(y.size, n_boot, seed)])


def _auroc_summary(y: np.ndarray, s: np.ndarray, replicates: np.ndarray, alpha: float) -> dict:
    low, high, n_valid = _percentile_ci(replicates, alpha)
    n_pos = int(y.sum())
    return {"auc": auroc(y, s), "ci_low": low, "ci_high": high, "n_pos": n_pos, "n_neg": int(y.size - n_pos),
            "n_boot_valid": n_valid}


def bootstrap_auroc(labels: ArrayLike, scores: ArrayLike, n_boot: int = 1000, alpha: float = 0.05,
                    seed: int = 0) -> dict:
    """AUROC of ``scores`` [N] for ``labels`` [N] with a percentile bootstrap CI over the N samples.

    Returns:
        ``auc``, ``ci_low``, ``ci_high``, ``n_pos``, ``n_neg``, ``n_boot_valid`` (replicates with both
        classes; the others are dropped). With one class only, ``auc`` and the CI are NaN and
        ``n_boot_valid`` is 0.
    """
    _check_bootstrap(n_boot, alpha)
    y, s = _labels_scores(labels, scores)
    if y.all() or not y.any():
        return _auroc_summary(y, s, np.full(1, np.nan), alpha)
    return _auroc_summary(y, s, _auroc_replicates(y, s, n_boot, seed), alpha)


def auroc_table(labels: ArrayLike, scores: ArrayLike, names: Sequence[str] | None = None, n_boot: int = 1000,
                seed: int = 0, alpha: float = 0.05, valid: ArrayLike | None = None) -> dict:
    """Per-class AUROC with bootstrap CIs and their macro mean with its own CI.

    Args:
        labels: ``[N, C]`` bool (or 0/1), one column per class.
        scores: ``[N, C]`` scores, higher = more positive.
        names: ``C`` distinct class names (default ``"0"`` .. ``"C-1"``); ``"macro"`` and ``"skipped"``
            are reserved.
        valid: optional ``[N, C]`` bool, the (image, class) pairs to score (e.g. only images of the
            modality a finding occurs in); each class is scored on its own valid images, and a
            bootstrap replicate resamples the N images once for all classes. Scores of invalid pairs
            are ignored (may be NaN).

    Returns:
        ``{name: bootstrap_auroc dict}`` for each class with positives and negatives;
        ``"macro"``: ``auc`` (mean of those classes), ``ci_low``, ``ci_high``, ``n_classes``,
        ``n_boot_valid``. Each replicate resamples the N images once for all classes and averages
        the classes defined in that resample (both classes present); replicates where none is are
        dropped. ``"skipped"``: names of the classes with no positive or no negative, in order.
    """
    _check_bootstrap(n_boot, alpha)
    y = _binary(labels, "labels", "[N, C]", 2)
    if valid is None:
        mask = np.ones(y.shape, dtype=bool)
    else:
        mask = _binary(valid, "valid", f"[N, C] = {tuple(y.shape)} like labels", 2)
        if mask.shape != y.shape:
            raise _shape_error("valid", f"[N, C] = {tuple(y.shape)} like labels", mask)
    raw = np.asarray(scores, dtype=np.float64)
    if raw.shape != y.shape:
        raise _shape_error("scores", f"[N, C] = {tuple(y.shape)} like labels", raw)
    s = _finite(np.where(mask, raw, 0.0), "scores", f"[N, C] = {tuple(y.shape)} like labels", y.shape)
    n, n_classes = y.shape
    if n == 0 or n_classes == 0:
        raise ValueError(f"labels must have shape [N, C] with N, C >= 1, got {tuple(y.shape)}")
    names = [str(i) for i in range(n_classes)] if names is None else [str(x) for x in names]
    if len(names) != n_classes or len(set(names)) != n_classes:
        raise ValueError(f"names must be {n_classes} distinct names (one per column of labels), got {len(names)}")
    if reserved := set(names) & set(TABLE_KEYS):
        raise ValueError(f"names must not use the reserved keys {TABLE_KEYS}, got {sorted(reserved)}")

    n_pos, n_neg = (y & mask).sum(axis=0), (~y & mask).sum(axis=0)
    usable = (n_pos > 0) & (n_neg > 0)
    valid = np.flatnonzero(usable)
    keys = [_auroc_keys(y[:, c], s[:, c], mask[:, c]) for c in valid]
    reps = np.empty((n_boot, valid.size))
    start = 0
    for idx in _bootstrap_blocks(n, n_boot, seed):
        for j, (key, n_groups) in enumerate(keys):
            reps[start:start + idx.shape[0], j] = _resampled_auroc(idx, key, n_groups)
        start += idx.shape[0]

    table: dict = {names[c]: _auroc_summary(y[mask[:, c], c], s[mask[:, c], c], reps[:, j], alpha)
                   for j, c in enumerate(valid)}
    defined = ~np.isnan(reps)
    with np.errstate(invalid="ignore", divide="ignore"):
        macro_reps = np.where(defined, reps, 0.0).sum(axis=1) / defined.sum(axis=1)
    low, high, n_valid = _percentile_ci(macro_reps, alpha)
    table["macro"] = {"auc": macro_mean([table[names[c]]["auc"] for c in valid]), "ci_low": low, "ci_high": high,
                      "n_classes": int(valid.size), "n_boot_valid": n_valid}
    table["skipped"] = [names[c] for c in np.flatnonzero(~usable)]
    return table


def macro_mean(values: ArrayLike | Mapping[object, float]) -> float:
    """Mean of ``values`` [K] (or of a mapping's values) ignoring NaN; NaN when nothing is left."""
    arr = np.asarray(list(values.values()) if isinstance(values, Mapping) else values, dtype=np.float64)
    if arr.ndim != 1:
        raise _shape_error("values", "[K]", arr)
    kept = arr[~np.isnan(arr)]
    return float(kept.mean()) if kept.size else float("nan")


# ------------------------------------------------------------------------------- operating point
def operating_point(labels: ArrayLike, scores: ArrayLike) -> dict:
    """The ROC point closest (Euclidean) to (FPR=0, TPR=1) and the binary metrics at its threshold.

    The candidate points are those of ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``
    at the observed scores (its extra ``inf`` threshold, which predicts no positive, is not a
    candidate); a sample is predicted positive when ``score >= threshold``. Of equally close points
    the one with the highest threshold wins (``argmin`` order of ``roc_curve``).

    Returns:
        ``threshold``, ``fpr``, ``tpr``, ``distance``, ``accuracy``, ``f1``, ``precision``,
        ``sensitivity``, ``specificity`` (floats) and ``tp``, ``fp``, ``tn``, ``fn`` (ints). With one
        class only, the floats are NaN and the counts -1.
    """
    y, s = _labels_scores(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        keys = ("threshold", "fpr", "tpr", "distance", "accuracy", "f1", "precision", "sensitivity", "specificity")
        return {**dict.fromkeys(keys, float("nan")), **dict.fromkeys(("tp", "fp", "tn", "fn"), -1)}
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_desc)), y.size - 1]
    tps = np.cumsum(y_desc)[last_of_tie]
    fps = last_of_tie + 1 - tps
    fpr, tpr = fps / fps[-1], tps / tps[-1]
    distance = np.sqrt(fpr**2 + (1.0 - tpr) ** 2)
    best = int(np.argmin(distance))
    tp, fp = int(tps[best]), int(fps[best])
    fn, tn = n_pos - tp, n_neg - fp
    return {"threshold": float(s_desc[last_of_tie[best]]), "fpr": float(fpr[best]), "tpr": float(tpr[best]),
            "distance": float(distance[best]), "accuracy": (tp + tn) / y.size, "f1": 2 * tp / (2 * tp + fp + fn),
            "precision": tp / (tp + fp), "sensitivity": tp / n_pos, "specificity": tn / n_neg,
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


# ------------------------------------------------------------------------------------- retrieval
def _retrieval_inputs(similarity: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(similarity [Nq, Nc] float64, targets)``, targets as int [Nq] or bool [Nq, Nc]."""
    sim = np.asarray(similarity)
    if sim.ndim != 2 or 0 in sim.shape:
        raise _shape_error("similarity", "[Nq, Nc] with Nq, Nc >= 1", sim)
    sim = _finite(sim, "similarity", "[Nq, Nc]", sim.shape)
    n_q, n_c = sim.shape
    tgt = np.asarray(targets)
    if tgt.dtype == bool:
        if tgt.shape != sim.shape:
            raise _shape_error("targets", f"[Nq] (int) or [Nq, Nc] = {sim.shape} (bool)", tgt)
        if not tgt.any(axis=1).all():
            raise ValueError(f"targets must mark at least one correct candidate per query; "
                             f"queries {np.flatnonzero(~tgt.any(axis=1))[:5].tolist()} have none")
        return sim, tgt
    if not np.issubdtype(tgt.dtype, np.integer) or tgt.shape != (n_q,):
        raise _shape_error("targets", f"[Nq] = ({n_q},) (int) or [Nq, Nc] = {sim.shape} (bool)", tgt)
    if tgt.min() < 0 or tgt.max() >= n_c:
        raise ValueError(f"targets must be candidate indices in [0, {n_c}), got range [{tgt.min()}, {tgt.max()}]")
    return sim, tgt


def retrieval_ranks(similarity: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """1-based rank [Nq] (int64) of each query's best correct candidate.

    Args:
        similarity: ``[Nq, Nc]`` query-candidate scores, higher = more similar.
        targets: int ``[Nq]`` index of each query's correct candidate, or bool ``[Nq, Nc]`` marking
            the correct candidates (at least one per query).

    Ties are broken pessimistically: the rank is 1 + the number of *incorrect* candidates whose
    score is ``>=`` the best correct score, so a tied incorrect candidate ranks ahead and constant
    similarities give the worst rank. Correct candidates never push each other down.
    """
    sim, tgt = _retrieval_inputs(similarity, targets)
    n_q, n_c = sim.shape
    rows = max(1, BLOCK_ELEMENTS // n_c)
    ranks = np.empty(n_q, dtype=np.int64)
    for start in range(0, n_q, rows):
        block = sim[start:start + rows]
        if tgt.dtype == bool:
            correct = tgt[start:start + rows]
        else:
            correct = np.arange(n_c) == tgt[start:start + rows, None]
        best = np.where(correct, block, -np.inf).max(axis=1)
        ranks[start:start + rows] = 1 + ((block >= best[:, None]) & ~correct).sum(axis=1)
    return ranks


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks!r}")
    return tuple(int(k) for k in ks)


def _rank_metrics(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Recall@K, median and mean rank over the last axis of ``ranks`` [..., Nq]."""
    out = {f"recall@{k}": (ranks <= k).mean(axis=-1) for k in ks}
    out["median_rank"] = np.median(ranks, axis=-1)
    out["mean_rank"] = ranks.mean(axis=-1)
    return out


def retrieval_metrics(similarity: ArrayLike, targets: ArrayLike, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@K (fraction of queries whose rank is <= K) and rank statistics.

    Args and ranks: see :func:`retrieval_ranks` (ties pessimistic).

    Returns:
        ``recall@K`` for each K in ``ks``, ``median_rank`` and ``mean_rank`` (1-based), ``n_queries``.
    """
    ks = _check_ks(ks)
    ranks = retrieval_ranks(similarity, targets)
    return {**{k: float(v) for k, v in _rank_metrics(ranks, ks).items()}, "n_queries": int(ranks.size)}


def bootstrap_retrieval(similarity: ArrayLike, targets: ArrayLike, ks: Sequence[int] = (1, 5, 10),
                        n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """:func:`retrieval_metrics` with percentile bootstrap CIs over the queries.

    Returns:
        For each metric of :func:`retrieval_metrics` (``recall@K``, ``median_rank``, ``mean_rank``) a
        dict ``estimate``, ``ci_low``, ``ci_high``; ``n_queries``; ``n_boot`` (every replicate is valid).
    """
    _check_bootstrap(n_boot, alpha)
    ks = _check_ks(ks)
    ranks = retrieval_ranks(similarity, targets)
    point = _rank_metrics(ranks, ks)
    blocks = [_rank_metrics(ranks[idx], ks) for idx in _bootstrap_blocks(ranks.size, n_boot, seed)]
    out: dict = {}
    for name, value in point.items():
        low, high, _ = _percentile_ci(np.concatenate([b[name] for b in blocks]), alpha)
        out[name] = {"estimate": float(value), "ci_low": low, "ci_high": high}
    return {**out, "n_queries": int(ranks.size), "n_boot": int(n_boot)}
