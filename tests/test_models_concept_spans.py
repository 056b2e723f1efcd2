"""Concept character spans -> token spans of open_clip's SimpleTokenizer."""

import pytest
import torch

from medvlp.models import build_tokenizer, char_spans_to_token_spans, tokenize_with_concepts

L = 64


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer({"context_length": L})


def _spans(caption: str, words: list[str]) -> list[tuple[int, int]]:
    out = []
    for w in words:
        i = caption.index(w)
        out.append((i, i + len(w)))
    return out


@pytest.mark.parametrize("caption, concepts", [
    ("Chest X-ray shows a pulmonary nodule and a small pleural effusion.",
     ["pulmonary nodule", "pleural effusion"]),
    ("(a) Fundus photo: drusen, ×2 deposits; Microaneurysm (arrow) – café-au-lait macule.",
     ["drusen", "Microaneurysm", "café-au-lait macule"]),
    ("  Axial CT:  ground-glass   opacity (arrowheads).  Scale bar, 50 µm.  ",
     ["ground-glass   opacity", "Axial CT"]),
    ("No evidence of Pneumothorax; Cardiomegaly is absent.", ["Pneumothorax", "Cardiomegaly"]),
])
def test_span_tokens_are_the_concept_tokens(tok, caption, concepts):
    ids = tok(caption, context_length=L)[0].tolist()
    token_spans = char_spans_to_token_spans(tok, caption, _spans(caption, concepts), L)
    for concept, span in zip(concepts, token_spans):
        assert span is not None
        start, end = span
        assert start >= 1  # position 0 is the start-of-text token
        assert ids[start:end] == tok.encode(concept), concept
        assert tok.decode(ids[start:end]).split() == tok.decode(tok.encode(concept)).split()


def test_known_positions_and_order(tok):
    caption = "the lung is clear and heart normal"  # every word is one BPE token
    spans = char_spans_to_token_spans(tok, caption, _spans(caption, ["lung", "heart normal", "the"]), L)
    assert spans == [(2, 3), (6, 8), (1, 2)]
    assert tok.decode(tok(caption, context_length=L)[0, 6:8].tolist()).strip() == "heart normal"


def test_span_ending_inside_a_word_covers_the_word(tok):
    caption = "Multiple pulmonary nodules are seen."
    i = caption.index("pulmonary nodule")
    (span,) = char_spans_to_token_spans(tok, caption, [(i, i + len("pulmonary nodule"))], L)
    ids = tok(caption, context_length=L)[0].tolist()
    assert ids[span[0]:span[1]] == tok.encode("pulmonary nodules")


def test_truncation_drops_cut_spans(tok):
    words = ["the", "lung", "is", "clear", "and", "heart", "normal", "size", "with", "no", "seen", "today"]
    caption = " ".join(words)
    length = 8  # truncated: content tokens at positions 1..6, EOT at 7
    spans = char_spans_to_token_spans(tok, caption, _spans(caption, words), length)
    ids = tok(caption, context_length=length)[0].tolist()
    assert ids[-1] == tok.eot_token_id
    for i, (word, span) in enumerate(zip(words, spans)):
        if i <= length - 3:
            assert span == (i + 1, i + 2)
            assert tok.decode(ids[span[0]:span[1]]).strip() == word
        else:
            assert span is None, word
    # a multi-token concept straddling the cut is dropped too
    caption2 = "the lung is clear and no effusion"  # effusion = 2 tokens at positions 7, 8
    (cut,) = char_spans_to_token_spans(tok, caption2, _spans(caption2, ["effusion"]), 9)
    (kept,) = char_spans_to_token_spans(tok, caption2, _spans(caption2, ["effusion"]), 10)
    assert cut is None and kept == (7, 9)


def test_whitespace_only_span_is_none_and_bad_span_raises(tok):
    caption = "lung  nodule"
    assert char_spans_to_token_spans(tok, caption, [(4, 6)], L) == [None]
    with pytest.raises(ValueError, match="not inside caption"):
        char_spans_to_token_spans(tok, caption, [(3, 40)], L)


def test_tokenize_with_concepts_batch(tok):
    captions = ["a pulmonary nodule.", "the lung is clear and heart normal size with no seen today effusion"]
    char_spans = [_spans(captions[0], ["pulmonary nodule", "a"]), _spans(captions[1], ["lung", "effusion"])]
    out = tokenize_with_concepts(tok, captions, char_spans, 12)
    assert out.ids.shape == (2, 12)
    assert out.owner.tolist() == [0, 0, 1]
    assert out.source.tolist() == [[0, 0], [0, 1], [1, 0]]  # "effusion" cut by truncation
    assert out.spans.tolist() == [[2, 6], [1, 2], [2, 3]]
    empty = tokenize_with_concepts(tok, ["lung"], [[]], 12)
    assert empty.spans.shape == (0, 2) and empty.owner.shape == (0,)
    assert torch.equal(empty.ids, tok(["lung"], context_length=12))
