"""A WordPiece vocabulary learnt deterministically: the same texts give the same vocabulary, run after run.

Hugging Face ``tokenizers``' ``WordPieceTrainer`` (a BPE trainer whose merges become WordPiece entries) is not
deterministic: the ``##`` continuing-subword symbols get their ids in hash-map iteration order, and merges of
equal count are broken by those ids, so two runs on the same texts learn different vocabularies
(huggingface/tokenizers#1794). medvlp's text-encoder stage must reproduce exactly, so the same procedure is
written here with every tie broken by the symbols themselves:

1. words: the texts normalised and pre-tokenised as BERT does (the tokenizer's own normalizer and
   pre-tokenizer), with their counts;
2. alphabet: every character that starts a word, and ``##<c>`` for every character inside one, sorted;
3. merges: repeatedly the most frequent adjacent pair (count weighted by word frequency; ties: the smallest
   pair in string order) is merged into one symbol (``a`` + ``##b`` -> ``ab``, ``##a`` + ``##b`` -> ``##ab``),
   until the vocabulary holds ``vocab_size`` entries or no pair is left.

The vocabulary is the special tokens, then the alphabet, then the merged symbols in merge order.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

PREFIX = "##"


def _join(a: str, b: str) -> str:
    return a + b[len(PREFIX):] if b.startswith(PREFIX) else a + b


def _pairs(word: Sequence[str]) -> Iterable[tuple[str, str]]:
    return zip(word[:-1], word[1:], strict=True)


def _merge_word(word: tuple[str, ...], pair: tuple[str, str], merged: str) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def learn_wordpiece_vocab(word_counts: Counter[str], vocab_size: int, special_tokens: Sequence[str]) -> list[str]:
    """The WordPiece vocabulary (module docstring) of pre-tokenised words and their counts.

    Args:
        word_counts: ``{word: count}`` of normalised, pre-tokenised words.
        vocab_size: the most entries, special tokens included.
        special_tokens: first entries, in this order.

    Returns:
        The entries in id order.

    Raises:
        ValueError: ``vocab_size`` smaller than the special tokens.
    """
    if vocab_size < len(special_tokens):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the {len(special_tokens)} special tokens")
    words = {w: tuple([w[0], *(PREFIX + c for c in w[1:])]) for w in sorted(word_counts) if w}
    alphabet = sorted({s for symbols in words.values() for s in symbols} - set(special_tokens))
    vocab = [*special_tokens, *alphabet]
    known = set(vocab)
    counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[str]] = defaultdict(set)
    for w, symbols in words.items():
        for pair in _pairs(symbols):
            counts[pair] += word_counts[w]
            where[pair].add(w)
    while len(vocab) < vocab_size:
        best = min((p for p, c in counts.items() if c > 0), key=lambda p: (-counts[p], p), default=None)
        if best is None:
            break
        merged = _join(*best)
        for w in sorted(where.pop(best, ())):
            old = words[w]
            new = _merge_word(old, best, merged)
            if new == old:
                continue
            for pair in _pairs(old):
                counts[pair] -= word_counts[w]
            for pair in _pairs(new):
                counts[pair] += word_counts[w]
                where[pair].add(w)
            words[w] = new
        counts.pop(best, None)
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
    return vocab[:vocab_size]
