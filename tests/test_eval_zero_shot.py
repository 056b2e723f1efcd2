"""Zero-shot diagnostics: the within-modality similarity of the findings' prompt embeddings and the
caption-scored (text-side) finding AUROC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medvlp.eval import zero_shot
from medvlp.lexicon import load_concept_lexicon


@pytest.fixture(scope="module")
def lexicon():
    return load_concept_lexicon()


def test_prompt_similarity_is_the_mean_off_diagonal_cosine(lexicon, monkeypatch):
    seen = []

    def fake_ensembles(model, prompt_sets, *, concepts=False):
        seen.append((len(prompt_sets), concepts))
        n = len(prompt_sets)
        emb = torch.zeros(n, 3)
        emb[:, 0] = 1.0
        emb[0, 1] = 1.0  # class 0 at 45 degrees from the others, which coincide
        return F.normalize(emb, dim=-1)

    monkeypatch.setattr(zero_shot, "prompt_ensembles", fake_ensembles)
    out = zero_shot.prompt_similarity(None, lexicon, ["fundus", "chest_xray", "fundus"], concepts=True)
    assert sorted(out) == ["chest_xray", "fundus"]
    for mod, value in out.items():
        n = len(lexicon.for_modality(mod))
        c = 2 ** -0.5  # cosine of class 0 with each other class
        pairs = n * (n - 1)
        expected = (2 * (n - 1) * c + (n - 1) * (n - 2)) / pairs
        assert value == pytest.approx(expected, abs=1e-6)
    assert all(concepts for _, concepts in seen)


def test_prompt_similarity_of_a_real_model_is_a_cosine_and_orthogonal_prompts_score_zero(lexicon, monkeypatch):
    from medvlp.models import build_model

    torch.manual_seed(0)
    model = build_model("clip", clip_model="medvlp-conv-tiny")
    real = zero_shot.prompt_similarity(model, lexicon, ["dermoscopy"])
    assert -1.0 <= real["dermoscopy"] < 1.0

    monkeypatch.setattr(zero_shot, "prompt_ensembles", lambda model, sets, concepts=False: torch.eye(len(sets)))
    assert zero_shot.prompt_similarity(model, lexicon, ["dermoscopy"]) == {"dermoscopy": 0.0}


def test_prompt_similarity_table_rows_per_text_space():
    from medvlp.eval.tables import prompt_similarity_table

    report = {"figures": {
        "clip": {"findings": {"prompt_similarity": {"fundus": 0.99912, "chest_xray": 0.5}}},
        "conceptclip": {"findings": {"prompt_similarity": {"fundus": 0.9},
                                     "concept_prompt_similarity": {"fundus": 0.25}}},
    }}
    table = prompt_similarity_table(report)
    assert list(table.index) == [("clip", "global"), ("conceptclip", "global"), ("conceptclip", "concept")]
    assert table.loc[("clip", "global"), "fundus"] == 0.999
    assert table.loc[("conceptclip", "concept"), "fundus"] == 0.25
    assert prompt_similarity_table({"figures": {}}).empty


def test_caption_macro_scores_each_figure_by_its_own_caption(lexicon, monkeypatch):
    from medvlp.eval import encode, evaluate
    from medvlp.eval.data import FigureSet
    from medvlp.models import build_model

    torch.manual_seed(0)
    model = build_model("clip", clip_model="medvlp-conv-tiny")
    classes = lexicon.for_modality("fundus")
    n, dim = len(classes), model.embed_dim
    column = {c.id: i for i, c in enumerate(lexicon.concepts)}
    labels = np.zeros((4 * n, len(lexicon.concepts)), dtype=bool)
    labels[np.arange(4 * n), [column[classes[i % n].id] for i in range(4 * n)]] = True
    figures = FigureSet([f"F{i}" for i in range(4 * n)], [f"caption {i % n}" for i in range(4 * n)],
                        ["fundus"] * (4 * n), [np.zeros((8, 8), np.uint8)] * (4 * n), labels,
                        np.ones(4 * n, dtype=bool), [c.id for c in lexicon.concepts], [None] * (4 * n))
    # finding k's prompts embed to axis k; caption "caption k" to axis k too (a perfect text tower)
    monkeypatch.setattr(zero_shot, "prompt_ensembles", lambda model, sets, concepts=False: torch.eye(len(sets), dim))

    def axis(texts):
        return torch.eye(dim)[[int(t.split()[-1]) for t in texts]]

    monkeypatch.setattr(evaluate, "encode_texts", lambda model, texts: axis(texts))
    images = encode.ImageFeatures(F.normalize(torch.randn(4 * n, dim), dim=-1), None)
    kwargs = {"local_weight": 0.5, "local_top_fraction": 0.2, "n_boot": 20, "seed": 0}
    out = evaluate.evaluate_findings(model, figures, lexicon, images, **kwargs).metrics
    assert out["caption_macro"]["auc"] == 1.0 and out["caption_macro"]["n_classes"] == n
    assert out["macro"]["auc"] < 0.9  # the random image embeddings score far below their captions

    def no_encoding(model, texts):
        raise AssertionError("captions were given: nothing to encode")

    monkeypatch.setattr(evaluate, "encode_texts", no_encoding)  # pre-encoded captions, as the stage passes them
    given = evaluate.evaluate_findings(model, figures, lexicon, images, captions=axis(figures.captions),
                                       **kwargs).metrics
    assert given["caption_macro"] == out["caption_macro"]

    # a text tower that gives every caption the same embedding: chance
    monkeypatch.setattr(evaluate, "encode_texts", lambda model, texts: axis(["x 0"] * len(texts)))
    assert evaluate.evaluate_findings(model, figures, lexicon, images, **kwargs).metrics["caption_macro"]["auc"] == 0.5


def test_findings_table_adds_the_caption_row_where_reported():
    from medvlp.eval.tables import findings_table

    boot = {"auc": 0.6, "ci_low": 0.55, "ci_high": 0.65}
    report = {"figures": {
        "clip": {"findings": {"per_finding": {"MC001": boot}, "macro": boot}},
        "conceptclip": {"findings": {"per_finding": {"MC001": boot}, "macro": boot,
                                     "caption_macro": {"auc": 0.9, "ci_low": 0.85, "ci_high": 0.95}}},
    }}
    table = findings_table(report, {"MC001": "lesion"})
    assert list(table.index) == ["lesion", "macro mean", "macro mean from the captions"]
    assert table.loc["macro mean from the captions", "conceptclip"] == "0.900 [0.850, 0.950]"
    assert table["clip"].isna().tolist() == [False, False, True]
