"""medvlp.explain.bottleneck: the concept-bottleneck classifier and its explanation plot."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from medvlp.explain.bottleneck import ConceptBottleneck
from medvlp.explain.plots import plot_bottleneck_explanations

CONCEPTS = [f"concept {k}" for k in range(5)]


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, 5)) * np.array([1.0, 2.0, 0.5, 1.0, 3.0]) + 0.2
    labels = np.stack([scores[:, 2] + 0.1 * rng.normal(size=n) > 0.2,  # class 0 <- concept 2
                       scores[:, 4] + 0.3 * rng.normal(size=n) > 0.5], axis=1)  # class 1 <- concept 4
    return scores, labels


def test_top_explanation_of_a_positive_example_is_the_driving_concept():
    scores, labels = _data()
    model = ConceptBottleneck(CONCEPTS, ["class A", "class B"], C=1.0).fit(scores, labels)
    assert model.weights.shape == (2, 5)
    assert np.abs(model.weights[0]).argmax() == 2 and np.abs(model.weights[1]).argmax() == 4
    row = int(np.argmax(np.where(labels[:, 0], scores[:, 2], -np.inf)))
    top = model.explain(scores[row], 0, top_k=3)
    assert len(top) == 3 and top[0][0] == "concept 2" and top[0][1] > 0
    assert [v for _, v in top] == sorted((v for _, v in top), reverse=True)
    assert model.explain(scores[row], "class A", top_k=3) == top
    assert model.explain_batch(scores[[row, 0]], [0, 1], top_k=3)[0] == top


def test_contributions_explain_the_logit_and_match_sklearn():
    scores, labels = _data()
    model = ConceptBottleneck(CONCEPTS, ["a", "b"], C=0.5, seed=3).fit(torch.from_numpy(scores), labels)
    contrib = model.contributions(scores[:7])
    assert contrib.shape == (7, 2, 5)
    assert np.allclose(contrib.sum(-1) + model.intercepts, model.decision_function(scores[:7]))
    z = StandardScaler().fit_transform(scores)
    for c in range(2):
        ref = LogisticRegression(C=0.5, max_iter=2000, random_state=3).fit(z, labels[:, c])
        assert np.allclose(model.predict_proba(scores)[:, c], ref.predict_proba(z)[:, 1], atol=1e-6)
    explained = model.explain(scores[5], 1, top_k=5)
    assert dict(explained) == pytest.approx(dict(zip(CONCEPTS, contrib[5, 1])))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_multiclass_probabilities_match_sklearn(n_classes):
    scores, _ = _data(seed=1)
    y = np.digitize(scores[:, 2], np.quantile(scores[:, 2], np.linspace(0, 1, n_classes + 1)[1:-1]))
    model = ConceptBottleneck(CONCEPTS, [f"c{i}" for i in range(n_classes)]).fit(scores, y)
    proba = model.predict_proba(scores)
    assert proba.shape == (300, n_classes) and np.allclose(proba.sum(1), 1)
    ref = LogisticRegression(max_iter=2000, random_state=0).fit(StandardScaler().fit_transform(scores), y)
    assert np.allclose(proba, ref.predict_proba(StandardScaler().fit_transform(scores)), atol=1e-6)
    assert model.weights.shape == (n_classes, 5)
    assert model.explain(scores[int(np.argmax(scores[:, 2]))], n_classes - 1)[0][0] == "concept 2"


def test_fit_is_deterministic():
    scores, labels = _data()
    a = ConceptBottleneck(CONCEPTS, ["a", "b"], seed=7).fit(scores, labels)
    b = ConceptBottleneck(CONCEPTS, ["a", "b"], seed=7).fit(scores, labels)
    assert np.array_equal(a.weights, b.weights) and np.array_equal(a.predict_proba(scores), b.predict_proba(scores))


def test_bad_arguments_are_named():
    scores, labels = _data()
    model = ConceptBottleneck(CONCEPTS, ["a", "b"])
    with pytest.raises(RuntimeError, match="fit"):
        model.predict_proba(scores)
    with pytest.raises(ValueError, match="concept_scores"):
        model.fit(scores[:, :4], labels)
    labels[:, 1] = True
    with pytest.raises(ValueError, match="'b'"):
        model.fit(scores, labels)
    with pytest.raises(ValueError, match="class_index"):
        ConceptBottleneck(CONCEPTS, ["a", "b"]).fit(*_data()).explain(scores[0], 2)


def test_plot_bottleneck_explanations_writes_png(tmp_path):
    scores, labels = _data()
    model = ConceptBottleneck(CONCEPTS, ["a", "b"]).fit(scores, labels)
    rng = np.random.default_rng(0)
    examples = [{"image": (rng.random((16, 16, 3)) * 255).astype(np.uint8), "title": f"class a, p={p:.2f}",
                 "contributions": model.explain(scores[i], 0, top_k=4)}
                for i, p in zip(range(2), model.predict_proba(scores[:2])[:, 0])]
    path = plot_bottleneck_explanations(examples, tmp_path / "cbm.png")
    assert path.stat().st_size > 100 and path.read_bytes()[:4] == b"\x89PNG"
