"""Concept character spans -> token positions of the tokenizer in use.

:func:`tokenize_with_concepts` works with either tokenizer of :mod:`medvlp.models.tokenizers` (each
maps spans with its own ``token_spans``): a Hugging Face fast tokenizer from its offset mapping, and
open_clip's SimpleTokenizer by :func:`char_spans_to_token_spans` below.

SimpleTokenizer has no offset mapping: it cleans the text (ftfy, HTML unescape, whitespace collapse,
lower case), splits it into pieces with a regex (words, single digits, punctuation runs, ``'s``...)
and BPE-encodes each piece on its own. So the tokens of a piece do not depend on its neighbours, and
we can align by pieces:

1. clean the caption and find its pieces (with their character ranges in the cleaned text) and the
   number of BPE tokens of each;
2. map an original character offset ``i`` to the cleaned text as ``len(clean(text[:i]))`` (cleaning
   a prefix gives a prefix of the cleaned text up to trailing whitespace);
3. a span covers every piece that overlaps its cleaned character range; token positions are offset
   by 1 for the start-of-text token.

A span ending inside a word ("nodule" in "nodules") covers the whole word's tokens. A span is dropped
(None) when it covers no piece or when truncation cut it: with context length L, content tokens can
only occupy positions 1 .. L-2 once truncated (EOT takes the last slot), so the span must end at or
before L-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from open_clip.tokenizer import SimpleTokenizer


def _pieces(tokenizer: SimpleTokenizer, cleaned: str) -> tuple[list[tuple[int, int]], list[int]]:
    """Character ranges of the regex pieces of cleaned text, and the BPE token count of each."""
    ranges, counts = [], []
    for m in tokenizer.pat.finditer(cleaned):
        piece = "".join(tokenizer.byte_encoder[b] for b in m.group().encode("utf-8"))
        ranges.append(m.span())
        counts.append(len(tokenizer.bpe(piece).split(" ")))
    return ranges, counts


def char_spans_to_token_spans(tokenizer: SimpleTokenizer, caption: str,
                              spans: Sequence[tuple[int, int]],
                              context_length: int) -> list[tuple[int, int] | None]:
    """Map character spans of ``caption`` to token spans of ``tokenizer(caption, context_length)``.

    Args:
        tokenizer: the open_clip SimpleTokenizer the model uses (its ``clean`` setting is honoured).
        caption: the raw caption the spans index.
        spans: [(start_char, end_char)], end exclusive, 0 <= start < end <= len(caption).
        context_length: L of the token ids.

    Returns:
        one entry per span: (tok_start, tok_end) positions in the id row (start inclusive, end exclusive,
        counting the start-of-text token at 0), or None if the span covers no token or was truncated.
    """
    if getattr(tokenizer, "reduction_fn", None) is not None:
        raise ValueError("char_spans_to_token_spans: tokenizer uses a reduction mask (random/shuffled token "
                         "drop); token positions are not deterministic; use plain truncation")
    for start, end in spans:
        if not 0 <= start < end <= len(caption):
            raise ValueError(f"concept span ({start}, {end}) is not inside caption of length {len(caption)} "
                             "(need 0 <= start < end <= len)")
    clean = tokenizer.clean_fn
    ranges, counts = _pieces(tokenizer, clean(caption))
    offsets = [1]  # token position of each piece's first token; 0 is the start-of-text token
    for c in counts:
        offsets.append(offsets[-1] + c)
    out: list[tuple[int, int] | None] = []
    for start, end in spans:
        c_start, c_end = len(clean(caption[:start])), len(clean(caption[:end]))
        covered = [i for i, (a, b) in enumerate(ranges) if a < c_end and b > c_start]
        if not covered:
            out.append(None)
            continue
        tok_start, tok_end = offsets[covered[0]], offsets[covered[-1] + 1]
        out.append((tok_start, tok_end) if tok_end <= context_length - 1 else None)
    return out


class TokenizedConcepts(NamedTuple):
    """A tokenized caption batch with its concept spans.

    ids: [B, L] token ids.
    spans: [K, 2] long token spans (start inclusive, end exclusive) of the concepts that survived.
    owner: [K] long, caption index of each span.
    source: [K, 2] long, (caption index, index into that caption's input span list) of each span, to
        look up the concept id of a kept span.
    """

    ids: torch.Tensor
    spans: torch.Tensor
    owner: torch.Tensor
    source: torch.Tensor


def tokenize_with_concepts(tokenizer, captions: Sequence[str],
                           char_spans: Sequence[Sequence[tuple[int, int]]],
                           context_length: int) -> TokenizedConcepts:
    """Tokenize captions and map their concept character spans; spans cut by truncation are dropped.

    Args:
        tokenizer: a :mod:`medvlp.models.tokenizers` tokenizer (``build_tokenizer(text_cfg)``).
        captions: B captions.
        char_spans: per caption, its concepts' (start_char, end_char).
        context_length: L.
    """
    if len(captions) != len(char_spans):
        raise ValueError(f"tokenize_with_concepts: {len(captions)} captions but {len(char_spans)} span lists")
    ids = tokenizer(list(captions), context_length=context_length)
    kept, source = [], []
    for i, (caption, spans) in enumerate(zip(captions, char_spans)):
        for j, tok in enumerate(tokenizer.token_spans(caption, spans, context_length)):
            if tok is not None:
                kept.append(tok)
                source.append((i, j))
    spans_t = torch.tensor(kept, dtype=torch.long).reshape(-1, 2)
    source_t = torch.tensor(source, dtype=torch.long).reshape(-1, 2)
    return TokenizedConcepts(ids, spans_t, source_t[:, 0].clone(), source_t)
