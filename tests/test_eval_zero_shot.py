"""Zero-shot diagnostics: the within-modality similarity of the findings' prompt embeddings."""

from __future__ import annotations

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
