"""The text-encoder stage's WordPiece vocabulary: learnt by BPE merges with every tie broken by the symbols, so
the same texts give the same tokenizer in every run (``tokenizers``' own trainer does not: #1794)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from medvlp.train.text_encoder import SPECIAL_TOKENS, train_wordpiece
from medvlp.train.wordpiece import learn_wordpiece_vocab

LIB = Path(__file__).resolve().parents[1] / "lib"
TEXTS = ["The heart is enlarged.", "Small pericardial effusion; the lungs are clear.",
         "Bilateral pleural effusion with atelectasis.", "Hiatal hernia. The lungs and heart are unremarkable.",
         "A 6 mm nodule in the right upper lobe.", "Emphysema in both lungs."] * 3


def test_merges_follow_counts_then_the_symbols():
    # "ab" occurs 5 times, "ac" 5 times, "bd" 2 times: a tie between (a, ##b) and (a, ##c) goes to the smaller pair
    vocab = learn_wordpiece_vocab(Counter({"ab": 5, "ac": 5, "bd": 2}), 12, ["[UNK]"])
    assert vocab == ["[UNK]", "##b", "##c", "##d", "a", "b", "ab", "ac", "bd"]
    assert learn_wordpiece_vocab(Counter({"ab": 5, "ac": 5, "bd": 2}), 7, ["[UNK]"]) == vocab[:7]
    # continuing pieces merge into continuing pieces: "xabab" -> "##ab" before the whole word
    assert "##ab" in learn_wordpiece_vocab(Counter({"xabab": 3, "yab": 3}), 20, [])
    with pytest.raises(ValueError, match="smaller than the 2 special tokens"):
        learn_wordpiece_vocab(Counter({"a": 1}), 1, ["[UNK]", "[PAD]"])


def test_the_order_of_the_texts_and_python_s_hash_seed_change_nothing():
    words = Counter(w for t in TEXTS for w in t.lower().replace(".", " .").replace(";", " ;").split())
    shuffled = Counter(dict(reversed(list(words.items()))))
    assert learn_wordpiece_vocab(words, 80, SPECIAL_TOKENS) == learn_wordpiece_vocab(shuffled, 80, SPECIAL_TOKENS)
    code = ("import hashlib, sys; from medvlp.train.text_encoder import train_wordpiece; "
            f"v = train_wordpiece({TEXTS!r}, 90).get_vocab(); "
            "print(hashlib.sha256(repr(sorted(v.items())).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(LIB), "PYTHONHASHSEED": seed}).stdout.strip()
               for seed in ("0", "1", "2")}
    here = hashlib.sha256(repr(sorted(train_wordpiece(TEXTS, 90).get_vocab().items())).encode()).hexdigest()
    assert digests == {here}


def test_the_tokenizer_is_bert_s_with_the_learnt_vocabulary():
    tok = train_wordpiece(TEXTS, 90)
    assert [tok.convert_ids_to_tokens(i) for i in range(5)] == list(SPECIAL_TOKENS)
    ids = tok("The heart is enlarged.")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "the heart is enlarged."
    whole = train_wordpiece(TEXTS, 500)  # room for every word: each is one entry
    assert whole.tokenize("Hernia") == ["hernia"] and whole.tokenize("zebra") == ["[UNK]"]
