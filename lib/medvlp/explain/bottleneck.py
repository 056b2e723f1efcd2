"""A LaBo-style concept-bottleneck classifier: classes from concept scores through one linear layer.

Features are the K concept scores of an image (e.g. ``heatmaps.concept_scores``), standardised with the
training mean and standard deviation: ``z_k = (s_k - mean_k) / std_k``. The class-concept association
matrix ``W`` [C, K] and intercepts ``b`` [C] are scikit-learn ``LogisticRegression`` fits (lbfgs, L2,
deterministic):

- multi-label ``labels [N, C] bool``: one binary fit per class, ``p_c = sigmoid(W_c . z + b_c)``;
- multi-class ``labels [N] int``: one multinomial fit, ``p = softmax(W z + b)``. With two classes
  scikit-learn fits one vector ``w`` for class 1; it is stored as ``W = [-w/2, w/2]`` (the same softmax).

The contribution of concept k to class c is ``W[c, k] * z_k``; the class logit is the sum of the
contributions plus ``b_c``, so contributions explain the logit exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

Contribution = tuple[str, float]


class ConceptBottleneck:
    """Linear concept-bottleneck classifier on standardised concept scores.

    Args:
        concept_names: K concept names (feature order of ``concept_scores``).
        class_names: C class names.
        C: inverse L2 regularisation strength of ``LogisticRegression``.
        seed: ``random_state`` of the fits.
        max_iter: lbfgs iterations.
    """

    def __init__(self, concept_names: Sequence[str], class_names: Sequence[str], C: float = 1.0, seed: int = 0,
                 max_iter: int = 2000):
        if not concept_names or not class_names:
            raise ValueError("ConceptBottleneck: concept_names and class_names must both be non-empty")
        if C <= 0:
            raise ValueError(f"ConceptBottleneck: C must be > 0, got {C}")
        self.concept_names = [str(c) for c in concept_names]
        self.class_names = [str(c) for c in class_names]
        self.C, self.seed, self.max_iter = float(C), int(seed), int(max_iter)
        self.multilabel: bool | None = None
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self._weights: np.ndarray | None = None
        self._intercepts: np.ndarray | None = None

    # ---- fitting -------------------------------------------------------------------------------------

    def _scores(self, concept_scores, name: str = "concept_scores") -> np.ndarray:
        x = np.asarray(_to_numpy(concept_scores), dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.concept_names):
            raise ValueError(f"{name}: expected [N, {len(self.concept_names)}] (one column per concept name), "
                             f"got shape {list(x.shape)}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name}: contains NaN or inf")
        return x

    def _logistic(self) -> LogisticRegression:
        return LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)

    def fit(self, concept_scores, labels) -> ConceptBottleneck:
        """Fit on concept_scores [N, K] and labels [N, C] bool (multi-label) or [N] int class indices."""
        x = self._scores(concept_scores)
        y = np.asarray(_to_numpy(labels))
        n_classes = len(self.class_names)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"labels: {y.shape[0]} rows for {x.shape[0]} concept-score rows")
        scaler = StandardScaler().fit(x)  # population std; a zero-variance concept keeps scale 1
        self.mean_, self.scale_ = scaler.mean_, scaler.scale_
        z = self.standardize(x)
        if y.ndim == 2:
            if y.shape[1] != n_classes:
                raise ValueError(f"labels: expected [N, {n_classes}] (one column per class name), got {list(y.shape)}")
            y = y.astype(bool)
            one_class = [self.class_names[c] for c in range(n_classes) if y[:, c].all() or not y[:, c].any()]
            if one_class:
                raise ValueError(f"labels: classes {one_class} have only positive or only negative examples; "
                                 "drop them from class_names or add examples")
            fits = [self._logistic().fit(z, y[:, c]) for c in range(n_classes)]
            self._weights = np.concatenate([f.coef_ for f in fits])
            self._intercepts = np.concatenate([f.intercept_ for f in fits])
            self.multilabel = True
            return self
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels: expected [N, C] bool or [N] int class indices, got {y.dtype} {list(y.shape)}")
        missing = sorted(set(range(n_classes)) - set(y.tolist()))
        if missing or y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"labels: every class index 0..{n_classes - 1} must occur and no other; "
                             f"missing {missing}, range [{y.min()}, {y.max()}]")
        fit = self._logistic().fit(z, y)
        if n_classes == 2:
            w, b = fit.coef_[0] / 2, fit.intercept_[0] / 2
            self._weights, self._intercepts = np.stack([-w, w]), np.array([-b, b])
        else:
            self._weights, self._intercepts = fit.coef_.copy(), fit.intercept_.copy()
        self.multilabel = False
        return self

    def _require_fit(self) -> None:
        if self._weights is None:
            raise RuntimeError("ConceptBottleneck is not fitted; call fit(concept_scores, labels) first")

    @property
    def weights(self) -> np.ndarray:
        """[C, K] class-concept association matrix (on standardised scores)."""
        self._require_fit()
        return self._weights

    @property
    def intercepts(self) -> np.ndarray:
        """[C] class intercepts."""
        self._require_fit()
        return self._intercepts

    # ---- inference -----------------------------------------------------------------------------------

    def standardize(self, concept_scores) -> np.ndarray:
        """concept_scores [N, K] -> z [N, K] with the training mean / std."""
        if self.mean_ is None:
            raise RuntimeError("ConceptBottleneck is not fitted; call fit(concept_scores, labels) first")
        return (self._scores(concept_scores) - self.mean_) / self.scale_

    def contributions(self, concept_scores) -> np.ndarray:
        """concept_scores [N, K] -> [N, C, K] contributions ``W[c, k] * z[n, k]``."""
        self._require_fit()
        return self.standardize(concept_scores)[:, None, :] * self._weights[None]

    def decision_function(self, concept_scores) -> np.ndarray:
        """[N, K] -> [N, C] logits ``W z + b`` (= contributions summed over concepts + intercepts)."""
        self._require_fit()
        return self.standardize(concept_scores) @ self._weights.T + self._intercepts

    def predict_proba(self, concept_scores) -> np.ndarray:
        """[N, K] -> [N, C] probabilities: per-class sigmoid (multi-label) or softmax (multi-class)."""
        logits = self.decision_function(concept_scores)
        if self.multilabel:
            return 1.0 / (1.0 + np.exp(-logits))
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, concept_scores) -> np.ndarray:
        """[N, K] -> [N, C] bool (multi-label, p >= 0.5) or [N] int arg-max class."""
        p = self.predict_proba(concept_scores)
        return p >= 0.5 if self.multilabel else p.argmax(axis=1)

    # ---- explanations --------------------------------------------------------------------------------

    def _class_index(self, class_index: int | str) -> int:
        if isinstance(class_index, str):
            if class_index not in self.class_names:
                raise ValueError(f"class {class_index!r} is not one of class_names {self.class_names}")
            return self.class_names.index(class_index)
        c = int(class_index)
        if not 0 <= c < len(self.class_names):
            raise ValueError(f"class_index {c} is out of range for {len(self.class_names)} classes")
        return c

    def explain(self, concept_scores_row, class_index: int | str, top_k: int = 5) -> list[Contribution]:
        """Top concepts for one image and class.

        Args:
            concept_scores_row: [K] concept scores of one image.
            class_index: the class (index or name).
            top_k: how many concepts to return.

        Returns:
            [(concept_name, contribution)] with contribution = ``W[c, k] * z_k`` (z = the standardised
            score), sorted by contribution, largest first: the concepts that push the class logit up most.
        """
        row = np.asarray(_to_numpy(concept_scores_row), dtype=np.float64)
        if row.ndim != 1:
            raise ValueError(f"concept_scores_row: expected [K], got shape {list(row.shape)}; use explain_batch")
        return self.explain_batch(row[None], [class_index], top_k)[0]

    def explain_batch(self, concept_scores, class_indices: Sequence[int | str] | int | str,
                      top_k: int = 5) -> list[list[Contribution]]:
        """``explain`` for N images: concept_scores [N, K], one class per image (or one for all)."""
        contrib = self.contributions(concept_scores)  # [N, C, K]
        n = contrib.shape[0]
        if isinstance(class_indices, int | str | np.integer):
            class_indices = [class_indices] * n
        if len(class_indices) != n:
            raise ValueError(f"class_indices: {len(class_indices)} classes for {n} images; pass one per image")
        classes = np.array([self._class_index(c) for c in class_indices], dtype=np.int64)
        picked = contrib[np.arange(n), classes]  # [N, K]
        top_k = max(1, min(int(top_k), picked.shape[1]))
        order = np.argsort(-picked, axis=1, kind="stable")[:, :top_k]  # [N, top_k]
        values = np.take_along_axis(picked, order, axis=1)
        return [[(self.concept_names[k], float(v)) for k, v in zip(ks, vs)] for ks, vs in zip(order, values)]


def _to_numpy(x):
    """torch tensors to numpy (CPU); anything else through unchanged."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        return (t.double() if t.is_floating_point() else t).numpy()
    return x
