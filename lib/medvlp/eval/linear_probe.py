"""Linear probes: logistic regression on frozen features, trained on fractions of the training labels.

For each fraction ``f`` the probe

1. draws a seeded training subset with :func:`probe_subset` (nested across fractions, every class
   covered where possible, see there);
2. standardises the features with the subset's mean and standard deviation (zero-variance features
   are left unscaled), and applies the same transform to the test features;
3. picks the inverse regularisation ``C``: the given one, else by :func:`select_C`, a seeded
   ``CV_FOLDS``-fold cross-validation over ``C_GRID`` on the subset, when the subset has at least
   ``MIN_CV_SAMPLES`` samples, else ``DEFAULT_C``;
4. fits scikit-learn's ``LogisticRegression`` (lbfgs, L2): one binary model per class for multi-label
   targets (one-vs-rest), one multinomial model for multi-class targets;
5. scores the test set with :mod:`medvlp.eval.metrics` (bootstrap CIs over test images).

A class whose training subset has only positives or only negatives gets a constant score (its
AUROC on the test set is 0.5); it is listed under ``constant``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager

import numpy as np
from numpy.typing import ArrayLike
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import ThreadpoolController

from .metrics import TABLE_KEYS, auroc, auroc_table, bootstrap_ci, macro_mean

__all__ = ["C_GRID", "CV_FOLDS", "DEFAULT_C", "MIN_CV_SAMPLES", "linear_probe", "probe_subset", "select_C"]

#: Inverse L2 regularisation strengths tried by the cross-validation, ascending (ties go to the first).
C_GRID = (0.01, 0.1, 1.0, 10.0)
#: Folds of that cross-validation.
CV_FOLDS = 3
#: Smallest training subset that is cross-validated; smaller ones use ``DEFAULT_C``.
MIN_CV_SAMPLES = 50
#: ``C`` of subsets too small to cross-validate: scikit-learn's default, on standardised features.
DEFAULT_C = 1.0


# ---------------------------------------------------------------------------------------- labels
def _label_matrix(y: ArrayLike, name: str, n: int, classes: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """``(onehot [N, C] bool, classes)``: multi-label ``[N, C]`` bool as is (classes None), multi-class
    ``[N]`` int one-hot over ``classes`` (default: the sorted distinct values of ``y``)."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[0] == n and arr.shape[1] >= 1:
        if arr.dtype != bool and not (np.issubdtype(arr.dtype, np.number) and np.isin(arr, (0, 1)).all()):
            raise ValueError(f"{name} must be bool (multi-label [N, C]) or int (multi-class [N]), got {arr.dtype}")
        return arr.astype(bool), None
    if arr.ndim == 1 and arr.shape[0] == n and np.issubdtype(arr.dtype, np.integer):
        classes = np.unique(arr) if classes is None else classes
        if unknown := sorted(set(np.unique(arr).tolist()) - set(classes.tolist())):
            raise ValueError(f"{name} has classes absent from train_y: {unknown[:5]}")
        return arr[:, None] == classes[None, :], classes
    raise ValueError(f"{name} must have shape [N, C] (bool, multi-label) or [N] (int, multi-class) with "
                     f"N = {n}, got {tuple(arr.shape)} {arr.dtype}")


def probe_subset(train_y: ArrayLike, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of the training subset of one fraction.

    Rule: take a seeded random permutation of the ``N`` training samples. Walking the classes in
    order, add the first sample of the permutation that is positive for a class the subset has no
    positive of yet, then likewise the first negative (only where the training set has one); this
    *coverage* set is the same for every fraction. Then add the remaining samples in permutation
    order up to ``round(fraction * N)`` (at least 1). So ``n_train = max(round(fraction * N), |coverage|)``
    with ``|coverage| <= 2 * C``, subsets of larger fractions contain those of smaller ones, and
    ``fraction=1`` takes everything.

    Args:
        train_y: ``[N, C]`` bool (multi-label) or ``[N]`` int (multi-class, one-hot over its classes).
        fraction: in ``(0, 1]``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    arr = np.asarray(train_y)
    onehot, _ = _label_matrix(arr, "train_y", arr.shape[0] if arr.ndim else -1)
    n = onehot.shape[0]
    order = np.random.default_rng(seed).permutation(n)
    in_subset = np.zeros(n, dtype=bool)
    ordered = onehot[order]
    for c in range(onehot.shape[1]):
        for want in (True, False):
            column = ordered[:, c] == want
            if column.any() and not (in_subset & (onehot[:, c] == want)).any():
                in_subset[order[np.argmax(column)]] = True
    n_fill = max(1, round(fraction * n)) - int(in_subset.sum())
    if n_fill > 0:
        in_subset[order[~in_subset[order]][:n_fill]] = True
    return np.flatnonzero(in_subset)


# ------------------------------------------------------------------------------------------ fits
def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``train`` and ``others`` standardised with ``train``'s column mean and std (scikit-learn's
    ``StandardScaler``: population std, a zero-variance column left unscaled)."""
    scaler = StandardScaler().fit(train)
    return [scaler.transform(a) for a in (train, *others)]


@functools.cache
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()


def _one_blas_thread() -> AbstractContextManager:
    """Context limiting BLAS to one thread: the probe's matrices are small, and BLAS threads
    spinning on a busy machine made each fit up to 10x slower (measured on 2 cores)."""
    return _threadpools().limit(limits=1, user_api="blas")


def _fit_path(x: np.ndarray, y: np.ndarray, Cs: Sequence[float], max_iter: int
              ) -> Iterator[tuple[LogisticRegression, bool]]:
    """``(model, converged)`` fitted for each ``C`` of ``Cs`` in turn, each fit starting from the
    previous solution (lbfgs, L2); the model object is reused."""
    model = LogisticRegression(solver="lbfgs", max_iter=max_iter, warm_start=True)
    for C in Cs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.set_params(C=C).fit(x, y)
        yield model, bool(model.n_iter_.max() < max_iter)


def _multilabel_scores(x: np.ndarray, y: np.ndarray, x_eval: np.ndarray, Cs: Sequence[float], max_iter: int
                       ) -> tuple[np.ndarray, np.ndarray, int]:
    """``(scores [len(Cs), M, C], constant [C] bool, n_not_converged)``: one-vs-rest decision values
    on ``x_eval`` for each ``C``; classes with one label value only in ``y`` score 0 everywhere."""
    scores = np.zeros((len(Cs), x_eval.shape[0], y.shape[1]))
    constant = y.all(axis=0) | ~y.any(axis=0)
    n_not_converged = 0
    for c in np.flatnonzero(~constant):
        for i, (model, converged) in enumerate(_fit_path(x, y[:, c], Cs, max_iter)):
            scores[i, :, c] = model.decision_function(x_eval)
            n_not_converged += not converged
    return scores, constant, n_not_converged


def _multiclass_proba(x: np.ndarray, codes: np.ndarray, x_eval: np.ndarray, n_classes: int, Cs: Sequence[float],
                      max_iter: int) -> tuple[np.ndarray, int]:
    """``(proba [len(Cs), M, K], n_not_converged)`` of multinomial models on class codes ``0..K-1``;
    classes absent from ``codes`` get probability 0 (a single class present gets 1)."""
    proba = np.zeros((len(Cs), x_eval.shape[0], n_classes))
    present = np.unique(codes)
    if present.size == 1:
        proba[:, :, present[0]] = 1.0
        return proba, 0
    n_not_converged = 0
    for i, (model, converged) in enumerate(_fit_path(x, codes, Cs, max_iter)):
        proba[i][:, model.classes_] = model.predict_proba(x_eval)
        n_not_converged += not converged
    return proba, n_not_converged


def _folds(y: np.ndarray, multiclass: bool, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded ``CV_FOLDS`` folds; stratified for multi-class labels whose classes all fill every fold."""
    if multiclass and np.bincount(y).min() >= CV_FOLDS:
        return list(StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed).split(y, y))
    return list(KFold(CV_FOLDS, shuffle=True, random_state=seed).split(y))


def select_C(x: ArrayLike, y: ArrayLike, seed: int = 0, grid: Sequence[float] = C_GRID, max_iter: int = 1000
             ) -> tuple[float, dict[float, float]]:
    """Inverse regularisation by seeded ``CV_FOLDS``-fold cross-validation.

    Each fold fits the grid in ascending order, every fit warm-started from the previous solution.

    Args:
        x: ``[N, D]`` features (standardised within each fold's training part).
        y: ``[N, C]`` bool (multi-label) or ``[N]`` int class codes ``0..K-1`` (multi-class).

    Returns:
        ``(C, {C: score})``. Multi-label score: macro mean over classes of the AUROC of the
        out-of-fold decision values pooled over the folds. Multi-class score: out-of-fold accuracy.
        The best score wins, ties going to the smallest ``C``; ``DEFAULT_C`` if no score is defined.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    if x.ndim != 2 or y.shape[:1] != x.shape[:1] or y.ndim not in (1, 2) or x.shape[0] < CV_FOLDS:
        raise ValueError(f"x must have shape [N, D] with N >= {CV_FOLDS} and y [N] or [N, C] with the same N, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    multiclass = y.ndim == 1
    grid = sorted(float(c) for c in grid)
    folds = _folds(y, multiclass, seed)
    n_classes = int(y.max()) + 1 if multiclass else y.shape[1]
    oof = np.zeros((len(grid), y.shape[0], n_classes))
    with _one_blas_thread():
        for fit_idx, eval_idx in folds:
            x_fit, x_eval = _standardise(x[fit_idx], x[eval_idx])
            if multiclass:
                oof[:, eval_idx] = _multiclass_proba(x_fit, y[fit_idx], x_eval, n_classes, grid, max_iter)[0]
            else:
                oof[:, eval_idx] = _multilabel_scores(x_fit, y[fit_idx], x_eval, grid, max_iter)[0]
    if multiclass:
        scores = {C: float((oof[i].argmax(axis=1) == y).mean()) for i, C in enumerate(grid)}
    else:
        scores = {C: macro_mean([auroc(y[:, c], oof[i, :, c]) for c in range(n_classes)]) for i, C in enumerate(grid)}
    defined = [C for C in grid if not np.isnan(scores[C])]
    if not defined:
        return DEFAULT_C, scores
    return max(defined, key=lambda C: (scores[C], -C)), scores


# ----------------------------------------------------------------------------------------- probe
def _check_features(x: ArrayLike, name: str, n: int | None, d: int | None) -> np.ndarray:
    arr = np.asarray(x)
    expected_n = n if n is not None else arr.shape[0] if arr.ndim else 0
    expected_d = d if d is not None else arr.shape[1] if arr.ndim == 2 else 0
    if arr.ndim != 2 or arr.shape != (expected_n, expected_d) or 0 in arr.shape:
        raise ValueError(f"{name} must have shape [N, D] = ({n if n is not None else 'N'}, "
                         f"{d if d is not None else 'D'}) with N, D >= 1, got {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return arr


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    out = [float(f) for f in fractions]
    if not out or len(set(out)) != len(out) or not all(0.0 < f <= 1.0 for f in out):
        raise ValueError(f"fractions must be distinct values in (0, 1], got {tuple(fractions)!r}")
    return out


def linear_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seed: int = 0,
    C: float | None = None,
    max_iter: int = 1000,
    names: Sequence[str] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    test_valid: ArrayLike | None = None,
) -> dict[float, dict]:
    """Logistic-regression probes on frozen features for each fraction of the training labels.

    Args:
        train_x: ``[N, D]`` training features.
        train_y: ``[N, C]`` bool (multi-label, one-vs-rest) or ``[N]`` int (multi-class).
        test_x: ``[M, D]`` test features.
        test_y: ``[M, C]`` bool, or ``[M]`` int with classes seen in ``train_y``.
        fractions: fractions of the training samples to label, each in ``(0, 1]``.
        seed: seeds the subsets, the cross-validation folds and the bootstrap.
        C: inverse L2 strength for every fit; None selects it per fraction (module docstring, step 3).
        names: class names (default ``"0"``.. for multi-label columns, the class values for multi-class).
        n_boot, alpha: bootstrap replicates over test images and CI level.
        test_valid: optional ``[M, C]`` bool, the (test image, class) pairs to score (multi-label only),
            e.g. a finding only on images of its modality (:func:`~medvlp.eval.metrics.auroc_table`).

    Returns:
        ``{fraction: result}``. Every result has ``n_train``, ``C``, ``c_source`` (``"given"``, ``"cv"``
        or ``"default"``), ``cv_scores`` (``{C: score}``, empty unless cross-validated),
        ``n_not_converged`` (final fits that hit ``max_iter``), ``constant`` (classes given a constant
        score), and the test AUROC as :func:`~medvlp.eval.metrics.auroc_table` gives it: ``per_class``
        (``{name: bootstrap_auroc dict}``), ``macro`` and ``skipped``. Multi-label AUROCs score the
        decision values, multi-class ones the one-vs-rest probabilities; ``scores`` holds them (``[M, C]``,
        the per-item scores behind the AUROCs); multi-class results add ``accuracy`` (``estimate``,
        ``ci_low``, ``ci_high``, ``n_boot_valid``).
    """
    x_train = _check_features(train_x, "train_x", None, None)
    n, d = x_train.shape
    x_test = _check_features(test_x, "test_x", None, d)
    y_train, classes = _label_matrix(train_y, "train_y", n)
    multiclass = classes is not None
    n_classes = y_train.shape[1]
    y_test, test_classes = _label_matrix(test_y, "test_y", x_test.shape[0], classes)
    if y_test.shape[1] != y_train.shape[1] or (test_classes is None) == multiclass:
        expected = f"[M] = ({x_test.shape[0]},) int" if multiclass else f"[M, C] = ({x_test.shape[0]}, {n_classes})"
        raise ValueError(f"test_y must have shape {expected} like train_y, got {tuple(np.shape(test_y))}")
    if names is None:
        names = [str(c) for c in (classes if multiclass else range(n_classes))]
    names = [str(x) for x in names]
    if len(names) != n_classes:
        raise ValueError(f"names must have {n_classes} entries (one per class), got {len(names)}")
    codes_train = y_train.argmax(axis=1)

    results: dict[float, dict] = {}
    for fraction in _check_fractions(fractions):
        subset = probe_subset(y_train if not multiclass else codes_train, fraction, seed)
        x_fit, x_eval = _standardise(x_train[subset], x_test)
        target = codes_train[subset] if multiclass else y_train[subset]
        if C is not None:
            chosen, source, cv_scores = float(C), "given", {}
        elif subset.size >= MIN_CV_SAMPLES:
            chosen, cv_scores = select_C(x_train[subset], target, seed=seed, max_iter=max_iter)
            source = "cv"
        else:
            chosen, source, cv_scores = DEFAULT_C, "default", {}
        with _one_blas_thread():
            if multiclass:
                scores, n_bad = _multiclass_proba(x_fit, target, x_eval, n_classes, [chosen], max_iter)
                constant = np.isin(np.arange(n_classes), target, invert=True) | (np.unique(target).size == 1)
            else:
                scores, constant, n_bad = _multilabel_scores(x_fit, target, x_eval, [chosen], max_iter)
        table = auroc_table(y_test, scores[0], names, n_boot=n_boot, seed=seed, alpha=alpha,
                            valid=None if multiclass else test_valid)
        result = {"n_train": int(subset.size), "C": chosen, "c_source": source, "cv_scores": cv_scores,
                  "n_not_converged": n_bad, "constant": [names[c] for c in np.flatnonzero(constant)],
                  "per_class": {k: v for k, v in table.items() if k not in TABLE_KEYS},
                  "macro": table["macro"], "skipped": table["skipped"], "scores": scores[0]}
        if multiclass:
            correct = scores[0].argmax(axis=1) == y_test.argmax(axis=1)
            result["accuracy"] = bootstrap_ci(np.mean, correct, n_boot=n_boot, alpha=alpha, seed=seed)
        results[fraction] = result
    return results
