"""Streaming the curated WebDataset shards into training batches.

The stream of a training stage is defined once, independently of how many ranks and loader workers
read it:

1. *index*: the tar headers of every shard of the split are read once (no payload), giving one
   :class:`SampleRef` per sample (its shard, key, and the byte range of each member);
2. *order* of epoch ``e``: the shards are permuted and their samples pass through a shuffle buffer,
   both drawn from ``numpy.random.default_rng([seed, stage, e])`` (:func:`epoch_order`); epochs
   follow each other without a gap, so global sample ``g`` is position ``g % N`` of epoch ``g // N``;
3. *split*: consecutive groups of ``micro_batch`` samples go to ranks 0, 1, ..., world-1 in turn
   (so a micro-step's global batch is one contiguous block of the stream, as on one process), and
   on each rank the micro-batches go to the loader workers in turn (the order in which a
   ``DataLoader`` collects them). A worker reads and decodes only its own samples: it seeks to
   their bytes in the shard files.

So the data position is one number, the global samples consumed (``(epoch, offset)`` =
``divmod(consumed, N)``), and a resumed stream skips exactly what was consumed without decoding
it. Augmentations draw from ``default_rng([seed, stage, epoch, position])`` per sample.

Shards are read as written by :mod:`medvlp.curate.shards`: figures ``{id}.png`` + ``{id}.json``; CT
``{id}.nii.gz`` (volume) + ``{id}.seg.nii.gz`` (segmentation) + ``{id}.json``.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from medvlp.curate.shards import decode_member, list_shards, shard_dir
from medvlp.models.concept_spans import tokenize_with_concepts
from medvlp.models.image_text_towers import build_tokenizer
from medvlp.train.transforms import ImageTransform, VolumeTransform

COLLECTIONS = ("figures", "ct")


# ------------------------------------------------------------------------------------- shard index

@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives: shard index, key, and ``(extension, data offset, size)`` per member."""

    shard: int
    key: str
    members: tuple[tuple[str, int, int], ...]


def find_shards(curated_dir: str | Path, collection: str, split: str) -> list[Path]:
    """The shards of ``collection`` / ``split`` under the curation output ``curated_dir``.

    Raises:
        FileNotFoundError: naming the folder, when it holds no shard of that split.
    """
    if collection not in COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}; expected one of {COLLECTIONS}")
    paths = list_shards(curated_dir, collection, split)
    if not paths:
        folder = shard_dir(curated_dir, collection)
        what = "does not exist" if not folder.is_dir() else f"holds no '{split}-NNNNNN.tar' shard"
        raise FileNotFoundError(f"shard directory {str(folder)!r} {what}; run the curate stage first: "
                                "dvc repro curate")
    return paths


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the member path up to the first dot of its base name."""
    base = name.rsplit("/", 1)[-1]
    if "." not in base:
        raise ValueError(f"tar member {name!r} has no extension")
    stem, ext = base.split(".", 1)
    return name[: len(name) - len(base)] + stem, ext


def index_shards(paths: Sequence[Path]) -> list[SampleRef]:
    """One :class:`SampleRef` per sample of ``paths``, in shard order (headers only, no payload read)."""
    refs: list[SampleRef] = []
    for i, path in enumerate(paths):
        key, members = None, []
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                k, ext = split_member_name(info.name)
                if k != key and members:
                    refs.append(SampleRef(i, key, tuple(members)))
                    members = []
                key = k
                members.append((ext, info.offset_data, info.size))
        if members:
            refs.append(SampleRef(i, key, tuple(members)))
    return refs


class ShardReader:
    """Reads the member bytes of samples by seeking into the shard files (one open handle per shard)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = [Path(p) for p in paths]
        self._files: dict[int, Any] = {}

    def _file(self, shard: int):
        if shard not in self._files:
            self._files[shard] = open(self.paths[shard], "rb")  # noqa: SIM115 (closed by close())
        return self._files[shard]

    def read(self, ref: SampleRef, extensions: Sequence[str] | None = None) -> dict[str, bytes]:
        """``{"__key__": key, ext: bytes, ...}`` for every member (or those in ``extensions``)."""
        f = self._file(ref.shard)
        out: dict[str, Any] = {"__key__": ref.key}
        for ext, offset, size in ref.members:
            if extensions is None or ext in extensions:
                f.seek(offset)
                out[ext] = f.read(size)
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def decode_sample(raw: Mapping[str, bytes], where: str = "") -> dict[str, Any]:
    """Decode a raw sample member by member as :func:`medvlp.curate.shards.decode_member` does (the
    decoding of :func:`~medvlp.curate.shards.iter_shard_samples`).

    Raises:
        ValueError: naming the sample when a member cannot be decoded.
    """
    out: dict[str, Any] = {"__key__": raw["__key__"]}
    try:
        for ext, data in raw.items():
            if ext != "__key__":
                decode_member(out, ext, data)
    except Exception as err:
        raise ValueError(f"{where}sample {raw['__key__']!r}: cannot decode: {err}") from err
    return out


def read_meta(reader: ShardReader, ref: SampleRef) -> dict:
    """Only the ``json`` member of a sample (for filtering by metadata)."""
    raw = reader.read(ref, ("json",))
    if "json" not in raw:
        raise ValueError(f"shard {reader.paths[ref.shard]}: sample {ref.key!r} has no .json member")
    return json.loads(raw["json"].decode("utf-8"))


def filter_by_modality(paths: Sequence[Path], refs: Sequence[SampleRef],
                       modalities: Sequence[str]) -> list[SampleRef]:
    """The figure samples whose ``meta["modality"]`` is one of ``modalities``."""
    wanted, reader = set(modalities), ShardReader(paths)
    try:
        return [r for r in refs if read_meta(reader, r).get("modality") in wanted]
    finally:
        reader.close()


# ------------------------------------------------------------------------------------ stream order

def epoch_order(shard_sizes: Sequence[int], seed: int, stage: int, epoch: int, buffer: int) -> np.ndarray:
    """Order of the samples (indices into the shard-ordered index) in one epoch.

    The shards are permuted, then their samples stream through a shuffle buffer of ``buffer``
    samples (each incoming sample replaces a uniformly chosen one, which is emitted; the rest drains
    in random order), as WebDataset's ``shuffle`` does, all from ``default_rng([seed, stage, epoch])``.
    ``buffer <= 1`` keeps the permuted shard order.
    """
    rng = np.random.default_rng([seed, stage, epoch])
    starts = np.concatenate([[0], np.cumsum(shard_sizes)]).astype(np.int64)
    stream = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in rng.permutation(len(shard_sizes))]
                            or [np.zeros(0, np.int64)])
    if buffer <= 1:
        return stream
    out = np.empty_like(stream)
    pool: list[int] = []
    n_out = 0
    picks = rng.random(len(stream))
    for value, u in zip(stream.tolist(), picks.tolist()):
        if len(pool) < buffer:
            pool.append(value)
            continue
        j = int(u * len(pool))
        out[n_out], pool[j] = pool[j], value
        n_out += 1
    out[n_out:] = rng.permutation(np.asarray(pool, dtype=np.int64))
    return out


class ShardStream(IterableDataset):
    """Samples of one rank and one loader worker, in stream order (see the module docstring).

    Args:
        paths: shard files.
        refs: their samples (:func:`index_shards`, possibly filtered).
        make_item: ``(decoded sample, rng or None) -> dict of tensors`` (decoding + transforms).
        micro_batch: samples per rank per forward pass.
        rank, world_size: this rank among ``world_size``.
        seed, stage: seed of the order and the augmentations.
        shuffle: shard permutation + shuffle buffer per epoch, else the shard order every epoch.
        shuffle_buffer: buffer size in samples.
        start: global samples already consumed (a multiple of ``micro_batch * world_size``).
        limit: global samples to stream from ``start`` (None: endless, epoch after epoch).
        augment: pass a per-sample generator to ``make_item`` (training) or None (evaluation).
    """

    def __init__(self, paths: Sequence[Path], refs: Sequence[SampleRef],
                 make_item: Callable[[dict, np.random.Generator | None], dict], *, micro_batch: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, stage: int = 0, shuffle: bool = True,
                 shuffle_buffer: int = 1000, start: int = 0, limit: int | None = None, augment: bool = True):
        super().__init__()
        if not refs:
            raise ValueError("ShardStream: no samples to stream")
        if start % (micro_batch * world_size):
            raise ValueError(f"ShardStream: start {start} is not a multiple of micro_batch x world_size")
        self.paths, self.refs, self.make_item = list(paths), list(refs), make_item
        self.micro_batch, self.rank, self.world_size = micro_batch, rank, world_size
        self.seed, self.stage, self.shuffle, self.shuffle_buffer = seed, stage, shuffle, shuffle_buffer
        self.start, self.limit, self.augment = start, limit, augment
        sizes = np.bincount([r.shard for r in self.refs], minlength=len(self.paths))
        # refs are grouped by shard in shard order; the order indexes refs sorted that way
        self._sorted = sorted(range(len(self.refs)), key=lambda i: self.refs[i].shard)
        self._sizes = sizes.tolist()

    @property
    def epoch_size(self) -> int:
        return len(self.refs)

    def order(self, epoch: int) -> list[int]:
        """Indices into ``refs`` of epoch ``epoch`` in stream order."""
        if not self.shuffle:
            return self._sorted
        idx = epoch_order(self._sizes, self.seed, self.stage, epoch, self.shuffle_buffer)
        return [self._sorted[i] for i in idx.tolist()]

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = ShardReader(self.paths)
        n = self.epoch_size
        g, end = self.start, None if self.limit is None else self.start + self.limit
        try:
            while end is None or g < end:
                epoch, offset = divmod(g, n)
                order = self.order(epoch)
                for pos in range(offset, n):
                    if end is not None and g >= end:
                        break
                    q = (g - self.start) // self.micro_batch  # global micro-batch counter
                    if q % self.world_size == self.rank and (q // self.world_size) % n_workers == worker:
                        ref = self.refs[order[pos]]
                        sample = decode_sample(reader.read(ref), f"shard {self.paths[ref.shard]}: ")
                        seeds = [self.seed, self.stage, epoch, pos]
                        rng = np.random.default_rng(seeds) if self.augment else None
                        yield self.make_item(sample, rng)
                    g += 1
        finally:
            reader.close()


# ------------------------------------------------------------------------------------------- items

def text_group_id(text: str) -> int:
    """A stable signed 64-bit id of a text (equal texts -> equal ids, on every rank and machine)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def concept_identity(mention: Mapping[str, Any]) -> int:
    """A stable id of a concept mention's concept (its ``concept_id``, else its ``cui``): equal for every
    mention of the same concept, on every rank and machine (:func:`text_group_id`)."""
    key = mention.get("concept_id") or mention.get("cui")
    if not key:
        raise ValueError(f"concept mention {dict(mention)} has neither 'concept_id' nor 'cui'; re-run the curate "
                         "stage (it names every kept mention's concept)")
    return text_group_id(str(key))


def _as_mapping(value: Any, key_field: str, value_field: str) -> dict:
    """``{anatomy: x}`` from a dict or from a list of ``{key_field: anatomy, value_field: x}`` records."""
    if isinstance(value, Mapping):
        return dict(value)
    return {row[key_field]: row[value_field] for row in value}


class FigureItems:
    """A decoded figure sample -> ``{"image": [3, S, S], "ids": [L]}`` (+ ``"concept_spans": [k, 2]``,
    ``"concept_ids": [k]``).

    Args:
        transform: the 2D transform.
        text_cfg: the text tower's open_clip ``text_cfg`` (tokenizer and context length).
        with_concepts: also map the caption's concept character spans to token spans (PC-Align);
            spans cut by truncation are dropped.
        keep_negated: align negated mentions too ("no effusion": ConceptCLIP's official code uses every
            linked span); else only the positive ones.
    """

    def __init__(self, transform: ImageTransform, text_cfg: dict, with_concepts: bool = False,
                 keep_negated: bool = False):
        self.transform, self.text_cfg, self.with_concepts = transform, dict(text_cfg), with_concepts
        self.keep_negated = keep_negated
        self.context_length = int(text_cfg.get("context_length", 77))

    def __call__(self, sample: dict, rng: np.random.Generator | None) -> dict:
        meta, key = sample.get("meta"), sample["__key__"]
        if meta is None or "image" not in sample:
            raise ValueError(f"figure sample {key!r}: needs a .png and a .json member")
        caption = meta["caption"]
        tokenizer = build_tokenizer(self.text_cfg)
        mentions = [c for c in meta.get("concepts", []) if self.keep_negated or not c.get("negated", False)]
        spans = [(int(c["start_char"]), int(c["end_char"])) for c in mentions]
        tok = tokenize_with_concepts(tokenizer, [caption], [spans], self.context_length)
        item = {"image": self.transform(sample["image"], rng), "ids": tok.ids[0]}
        if self.with_concepts:
            item["concept_spans"] = tok.spans
            kept = [mentions[j] for j in tok.source[:, 1].tolist()]
            item["concept_ids"] = torch.tensor([concept_identity(c) for c in kept], dtype=torch.long)
        return item


class VolumeItems:
    """A decoded CT sample -> ``{"volume": [1, X, Y, Z], "label_map": [X, Y, Z]}`` plus texts.

    ``with_report``: ``"report_ids": [L]``, the report sections in ``report_sections`` order joined by
    a space (impression first by default, so truncation to the context length keeps it).
    ``anatomies`` (fVLM): ``"anatomy_ids": [A, L]`` (each anatomy's text), ``"is_normal": [A]`` and
    ``"text_group": [A]`` (:func:`text_group_id` of the text), in the model's anatomy order.
    """

    def __init__(self, transform: VolumeTransform, text_cfg: dict, *, with_report: bool = False,
                 report_sections: Sequence[str] = ("impression", "findings"),
                 anatomies: Sequence[str] | None = None):
        self.transform, self.text_cfg = transform, dict(text_cfg)
        self.context_length = int(text_cfg.get("context_length", 77))
        self.with_report, self.report_sections = with_report, tuple(report_sections)
        self.anatomies = None if anatomies is None else list(anatomies)

    def __call__(self, sample: dict, rng: np.random.Generator | None) -> dict:
        key, meta = sample["__key__"], sample.get("meta")
        if meta is None or "volume" not in sample or "segmentation" not in sample:
            raise ValueError(f"CT sample {key!r}: needs .nii.gz, .seg.nii.gz and .json members")
        volume, labels = self.transform(sample["volume"], sample["segmentation"], sample.get("affine"), rng)
        item = {"volume": volume, "label_map": labels.to(torch.int16)}
        tokenizer = build_tokenizer(self.text_cfg)
        if self.with_report:
            text = " ".join(str(meta.get(s) or "").strip() for s in self.report_sections).strip()
            item["report_ids"] = tokenizer([text], context_length=self.context_length)[0]
        if self.anatomies is not None:
            texts = _as_mapping(meta["anatomy_text"], "anatomy", "text")
            normal = _as_mapping(meta["is_normal"], "anatomy", "normal")
            missing = [a for a in self.anatomies if a not in texts or a not in normal]
            if missing:
                raise ValueError(f"CT sample {key!r}: meta lacks anatomy_text / is_normal for {missing}; "
                                 "re-run the curate stage with the same anatomy lexicon as the model")
            ordered = [texts[a] for a in self.anatomies]
            item["anatomy_ids"] = tokenizer(ordered, context_length=self.context_length)
            item["is_normal"] = torch.tensor([bool(normal[a]) for a in self.anatomies])
            item["text_group"] = torch.tensor([text_group_id(t) for t in ordered], dtype=torch.long)
        return item


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack every tensor field; ``concept_spans`` are concatenated into ``[K, 2]`` with their
    caption index in ``concept_owner`` ``[K]`` (and ``concept_ids`` into ``[K]``)."""
    out: dict[str, torch.Tensor] = {}
    for key in items[0]:
        if key == "concept_spans":
            spans = [it[key] for it in items]
            out[key] = torch.cat(spans).reshape(-1, 2)
            out["concept_owner"] = torch.cat([torch.full((len(s),), i, dtype=torch.long)
                                              for i, s in enumerate(spans)])
        elif key == "concept_ids":
            out[key] = torch.cat([it[key] for it in items])
        else:
            out[key] = torch.stack([it[key] for it in items])
    return out


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # loader workers decode and transform; leave the cores to the model


def make_loader(stream: ShardStream, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A ``DataLoader`` yielding ``stream.micro_batch``-sample batches in stream order."""
    return DataLoader(stream, batch_size=stream.micro_batch, num_workers=num_workers, collate_fn=collate,
                      pin_memory=pin_memory, worker_init_fn=_worker_init if num_workers else None,
                      generator=torch.Generator().manual_seed(0),
                      prefetch_factor=4 if num_workers else None)

