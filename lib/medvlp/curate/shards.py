"""WebDataset tar shards of the curated corpus: writing (reproducible) and reading back (decoded).

Layout: ``{out_dir}/shards/{collection}/{split}-{NNNNNN}.tar`` with at most ``max_samples`` samples per
shard. A sample is the tar members ``{key}.{ext}`` that share a key (the id); members are written
in sorted extension order with ``mtime=0``, uid/gid 0 and no user names, so the same samples give
byte-identical shards. Members per collection:

- figures: ``{id}.png`` (the decoded image re-encoded as PNG, so JPEG / DICOM inputs become uniform)
  and ``{id}.json`` (id, caption, modality, article_id, split, concepts, negated_concepts, subcaptions);
- ct: ``{id}.nii.gz`` (the volume: the source ``.nii.gz`` bytes, or NIfTI bytes made from a DICOM
  series / ``.nii``), ``{id}.seg.nii.gz`` (the segmentation) and ``{id}.json`` (id, patient_id,
  split, findings, impression, anatomy_text, is_normal).

The shards are plain WebDataset shards: ``webdataset.WebDataset(paths)`` reads them too.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from medvlp.data.io import decode_image_bytes, label_map_from_nifti_bytes, volume_from_nifti_bytes

__all__ = [
    "encode_png",
    "iter_shard_samples",
    "json_bytes",
    "list_shards",
    "shard_dir",
    "write_shards",
]

PNG_COMPRESS_LEVEL = 6


def shard_dir(out_dir: str | Path, collection: str) -> Path:
    """``{out_dir}/shards/{collection}``."""
    return Path(out_dir) / "shards" / collection


def list_shards(out_dir: str | Path, collection: str, split: str) -> list[Path]:
    """The shards of one collection (``figures`` / ``ct``) and split, in order."""
    return sorted(shard_dir(out_dir, collection).glob(f"{split}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8 [H, W]`` or ``[H, W, 3]`` image (no metadata, fixed compression)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def json_bytes(obj: dict) -> bytes:
    """UTF-8 JSON with sorted keys (deterministic)."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shards(samples: Iterable[dict], folder: str | Path, split: str, max_samples: int) -> list[Path]:
    """Write ``samples`` into ``folder/{split}-000000.tar``, ``-000001.tar``, ...

    Args:
        samples: dicts ``{"__key__": key, ext: bytes, ...}`` in the order to write them; ``key`` may
            not contain ``.`` or ``/`` (WebDataset splits the member name at the first dot).
        folder: output folder (created).
        split: shard name prefix.
        max_samples: at most this many samples per shard.

    Returns:
        The shard paths written (none for no samples).
    """
    if max_samples < 1:
        raise ValueError(f"write_shards: max_samples must be >= 1, got {max_samples}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    it = iter(samples)
    sample = next(it, None)
    while sample is not None:
        paths.append(folder / f"{split}-{len(paths):06d}.tar")
        with tarfile.open(paths[-1], "w", format=tarfile.PAX_FORMAT) as tar:
            for _ in range(max_samples):
                key = sample["__key__"]
                if not key or "." in key or "/" in key:
                    raise ValueError(f"write_shards: sample key {key!r} must be non-empty without '.' or '/'")
                for ext in sorted(k for k in sample if k != "__key__"):
                    _add_member(tar, f"{key}.{ext}", sample[ext])
                sample = next(it, None)
                if sample is None:
                    break
    return paths


def decode_member(sample: dict, ext: str, data: bytes) -> None:
    """Decode one shard member into ``sample`` by its extension: ``png``/``jpg`` -> ``image``, ``json`` ->
    ``meta``, ``nii.gz`` -> ``volume`` + ``affine``, ``seg.nii.gz`` -> ``segmentation``, anything else
    -> the raw bytes under the extension."""
    if ext in ("png", "jpg", "jpeg"):
        sample["image"] = decode_image_bytes(data)
    elif ext == "json":
        sample["meta"] = json.loads(data.decode("utf-8"))
    elif ext in ("nii.gz", "nii"):
        vol = volume_from_nifti_bytes(data)
        sample["volume"], sample["affine"] = vol.array, vol.affine
    elif ext in ("seg.nii.gz", "seg.nii"):
        sample["segmentation"] = label_map_from_nifti_bytes(data)
    else:
        sample[ext] = data


def iter_shard_samples(paths: Iterable[str | Path]) -> Iterator[dict]:
    """Read shards back, one decoded sample at a time.

    Yields:
        ``{"__key__": id, "__shard__": path, "meta": dict, ...}`` plus, for figures, ``"image"``
        (``uint8 [H, W]`` / ``[H, W, 3]``); for CT, ``"volume"`` (``float32 [X, Y, Z]`` HU, canonical
        RAS), ``"affine"`` (``[4, 4]``) and ``"segmentation"`` (integer ``[X, Y, Z]``). Unknown
        extensions come as raw bytes under their extension.
    """
    for path in paths:
        current: dict | None = None
        with tarfile.open(path, "r") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base:
                    raise ValueError(f"shard {path}: member {member.name!r} has no extension")
                prefix = member.name[: len(member.name) - len(base)]
                stem, ext = base.split(".", 1)
                key = prefix + stem
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__shard__": str(path)}
                decode_member(current, ext, tar.extractfile(member).read())
        if current is not None:
            yield current
