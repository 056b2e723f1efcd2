"""The two tokenizers of medvlp's text towers, behind one interface.

- :class:`ClipBPETokenizer`: open_clip's byte-pair ``SimpleTokenizer`` (its vocabulary ships inside
  open_clip), for open_clip's ``TextTransformer`` towers. Ids: start-of-text, tokens, end-of-text,
  zero padding.
- :class:`WordPieceTokenizer`: a Hugging Face *fast* tokenizer read from a local directory (or the
  local Hugging Face cache), for BERT-family towers (``text_cfg.hf_model_name``). Ids: ``[CLS]``,
  tokens, ``[SEP]``, ``[PAD]`` padding.

Both are called as ``tokenizer(texts, context_length=L) -> ids [N, L]`` and map character spans of a
text to token positions with ``tokenizer.token_spans(text, spans, L)``; ``pad_id`` marks padding.
Nothing is downloaded: :func:`local_hf_path` resolves a Hugging Face name to files on disk or fails
with the command that fetches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from open_clip.tokenizer import SimpleTokenizer

__all__ = ["ClipBPETokenizer", "WordPieceTokenizer", "build_tokenizer", "local_hf_path"]


def local_hf_path(name: str) -> str:
    """A Hugging Face model or tokenizer name as a local directory, without any download.

    Args:
        name: a local directory (absolute, or relative to the working directory), or a hub id
            (``org/name``) already in the local Hugging Face cache.

    Raises:
        FileNotFoundError: naming the directory looked for, the cache searched and the commands that
            provide the files.
    """
    if Path(name).is_dir():
        return str(Path(name))
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception as err:  # not a valid repo id, or not cached
        raise FileNotFoundError(
            f"text tower {name!r}: no directory {str(Path(name).resolve())!r} and no copy in the Hugging Face "
            f"cache {constants.HF_HUB_CACHE!r} ({type(err).__name__}). medvlp downloads nothing at run time: "
            "for the repository's own text encoder run `dvc repro pretrain_text`; for a hub model fetch it "
            f"once with `hf download {name}` (or point hf_model_name at a local directory)") from err


def _overlapping(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens whose character range overlaps ``[start, end)`` (empty ranges skipped)."""
    return [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]


class ClipBPETokenizer(SimpleTokenizer):
    """open_clip's ``SimpleTokenizer`` with :meth:`token_spans` and ``pad_id`` (0)."""

    pad_id = 0

    def token_spans(self, text: str, spans: Sequence[tuple[int, int]],
                    context_length: int) -> list[tuple[int, int] | None]:
        """Token positions ``(start, end)`` (end exclusive) of each character span; None when cut or empty.

        See :func:`medvlp.models.concept_spans.char_spans_to_token_spans`.
        """
        from medvlp.models.concept_spans import char_spans_to_token_spans

        return char_spans_to_token_spans(self, text, spans, context_length)


class WordPieceTokenizer:
    """A Hugging Face fast tokenizer (WordPiece for BERT-family towers) with medvlp's interface.

    Args:
        name: a local directory or a cached hub id (:func:`local_hf_path`).

    Raises:
        FileNotFoundError: the files are not on disk.
        ValueError: the tokenizer is not a fast one (character offsets are needed for concept spans).
    """

    def __init__(self, name: str):
        from transformers import AutoTokenizer

        self.name = name
        self.inner = AutoTokenizer.from_pretrained(local_hf_path(name), local_files_only=True)
        if not self.inner.is_fast:
            raise ValueError(f"tokenizer {name!r} is not a fast (Rust) tokenizer; medvlp needs its character "
                             "offsets to place concept spans (save it with tokenizers / a tokenizer.json)")
        if self.inner.pad_token_id is None:
            raise ValueError(f"tokenizer {name!r} has no padding token; set one (e.g. [PAD]) and save it again")
        self.pad_id: int = int(self.inner.pad_token_id)
        self.vocab_size: int = len(self.inner)

    def __call__(self, texts: str | Sequence[str], context_length: int) -> torch.Tensor:
        """texts -> ids ``[N, context_length]`` (``[CLS] ... [SEP]``, truncated, padded with ``pad_id``)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self.inner(texts, padding="max_length", truncation=True, max_length=int(context_length),
                         return_tensors="pt")
        return enc["input_ids"].long()

    def token_spans(self, text: str, spans: Sequence[tuple[int, int]],
                    context_length: int) -> list[tuple[int, int] | None]:
        """Token positions ``(start, end)`` (end exclusive, ``[CLS]`` at 0) of each character span of ``text``.

        A span covers every token whose character range overlaps it (a span ending inside a word takes
        the whole word's pieces). None when it covers no token, or when truncation to ``context_length``
        cuts it (its tokens must end before the last slot, which ``[SEP]`` takes).

        Raises:
            ValueError: a span outside ``0 <= start < end <= len(text)``.
        """
        for start, end in spans:
            if not 0 <= start < end <= len(text):
                raise ValueError(f"concept span ({start}, {end}) is not inside text of length {len(text)} "
                                 "(need 0 <= start < end <= len)")
        offsets = self.inner(text, return_offsets_mapping=True, add_special_tokens=True)["offset_mapping"]
        out: list[tuple[int, int] | None] = []
        for start, end in spans:
            covered = _overlapping(offsets, start, end)
            if not covered or covered[-1] + 1 > context_length - 1:
                out.append(None)
            else:
                out.append((covered[0], covered[-1] + 1))
        return out


@lru_cache(maxsize=8)
def _clip_tokenizer(context_length: int, clean: str) -> ClipBPETokenizer:
    return ClipBPETokenizer(context_length=context_length, clean=clean)


@lru_cache(maxsize=8)
def _wordpiece_tokenizer(name: str, cwd: str) -> WordPieceTokenizer:
    return WordPieceTokenizer(name)


def build_tokenizer(text_cfg: dict) -> ClipBPETokenizer | WordPieceTokenizer:
    """The tokenizer of a text tower config (cached per setting).

    ``text_cfg["hf_tokenizer_name"]`` (else ``hf_model_name``) selects a :class:`WordPieceTokenizer`;
    otherwise open_clip's BPE tokenizer with ``context_length`` and ``tokenizer_kwargs.clean``.

    Raises:
        ValueError: unsupported ``tokenizer_kwargs``.
    """
    hf_name = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")
    if hf_name:
        return _wordpiece_tokenizer(str(hf_name), str(Path.cwd()))
    kwargs = text_cfg.get("tokenizer_kwargs") or {}
    unknown = set(kwargs) - {"clean"}
    if unknown:
        raise ValueError(f"text_cfg.tokenizer_kwargs: unsupported keys {sorted(unknown)}; only 'clean' is")
    return _clip_tokenizer(int(text_cfg.get("context_length", 77)), kwargs.get("clean", "lower"))
