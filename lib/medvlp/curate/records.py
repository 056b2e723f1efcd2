"""Loading and validating the source manifests (``data/figures/manifest.jsonl``, ``data/ct/manifest.jsonl``).

Each manifest is read line by line in binary, so that one bad line cannot hide the others. Every
line ends up either as a kept record or counted in a :class:`RejectLog` under exactly one reason (the
first check it fails, in this order):

============================== ==================================================================
reason                         when
============================== ==================================================================
``invalid_utf8``               the line is not UTF-8
``invalid_json``               not one JSON object (a blank line included)
``missing_field``              a required field is absent or null
``invalid_field``              a field has the wrong type, or an id unusable as a shard key
                               (empty, or containing ``.``, ``/``, ``\\`` or whitespace)
``duplicate_id``               an earlier line already used the id (the later line is rejected)
``path_escapes_corpus``        a path is absolute or leaves the collection folder after normalisation,
                               or its file is a symlink (or under one) that resolves outside the
                               collection folder and outside the DVC cache of the repository holding it
``empty_caption``              (figures) the caption is empty or whitespace
``empty_report``               (CT) both findings and impression are empty or whitespace
``missing_file``               the image / volume / segmentation does not exist
``unreadable_image``           (figures) the image does not decode (truncated, not an image)
``unreadable_volume``          (CT) the volume or segmentation does not decode
``nonfinite_voxels``           (CT) the volume holds NaN or infinite voxels
``segmentation_shape_mismatch`` (CT) segmentation shape differs from the volume shape
============================== ==================================================================

Messages name the manifest and line (``data/figures/manifest.jsonl line 41: image 'images/x.png' not
found``). With ``strict=True`` the first bad record raises :class:`CorpusError` with that message.
Paths are checked lexically first, then resolved: a link whose target lies outside the collection folder
is read only when it points into the repository's DVC cache (where ``dvc checkout`` with ``cache.type: symlink``
links; see :class:`LinkRoots`), so a stray link to a private file is never read into the corpus.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PureWindowsPath

import numpy as np
from tqdm import tqdm

from medvlp.data.io import read_image, read_label_map, read_volume

__all__ = [
    "CTRecord",
    "CorpusError",
    "FigureRecord",
    "LinkRoots",
    "RejectLog",
    "dvc_cache_dirs",
    "load_ct_records",
    "load_figure_records",
]

STRICT_HINT = "set curate.strict: false to skip and count bad records"

FIGURE_FIELDS = ("id", "image", "caption", "article_id")
CT_FIELDS = ("id", "patient_id", "volume", "segmentation", "findings", "impression")
_BAD_ID_CHARS = frozenset("./\\")


class CorpusError(ValueError):
    """A bad manifest record in strict mode (the message names the file and line)."""


@dataclass
class RejectLog:
    """Counts of rejected records by reason, keeping the first ``max_examples`` messages of each.

    With ``strict=True``, :meth:`add` raises :class:`CorpusError` instead of counting.
    """

    max_examples: int = 5
    strict: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, message: str) -> None:
        if self.strict:
            raise CorpusError(f"{message} [{reason}]; fix or remove the record, or {STRICT_HINT}")
        self.counts[reason] = self.counts.get(reason, 0) + 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < self.max_examples:
            kept.append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, dict]:
        """``{reason: {"count": n, "examples": [message, ...]}}``, reasons sorted."""
        return {r: {"count": self.counts[r], "examples": list(self.examples.get(r, []))}
                for r in sorted(self.counts)}


@dataclass(frozen=True)
class FigureRecord:
    """A validated 2D figure-caption record.

    ``image`` is the normalised path relative to the collection folder; ``concepts`` the given
    mention list as the manifest has it (``[]`` when absent); ``line`` the 1-based manifest line.
    """

    id: str
    image: str
    caption: str
    article_id: str
    modality: str | None
    concepts: list[dict]
    line: int


@dataclass(frozen=True)
class CTRecord:
    """A validated 3D CT study. ``shape`` is the canonical volume shape ``(X, Y, Z)``."""

    id: str
    patient_id: str
    volume: str
    segmentation: str
    findings: str
    impression: str
    line: int
    shape: tuple[int, int, int]


class BadRecord(Exception):
    """A bad record: ``reason`` (the key it is counted under) and ``detail`` (what is wrong with it)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _manifest_lines(path: Path):
    """Yield ``(line_number, raw_bytes)`` for every line (1-based), without the line ending."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            yield number, raw.rstrip(b"\r\n")


def count_lines(path: Path) -> int:
    """Physical lines of ``path`` (a last line without a newline counts), for progress bars."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _parse(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord("invalid_utf8", f"not valid UTF-8 at byte {e.start}") from None
    if not text.strip():
        raise BadRecord("invalid_json", "blank line (one JSON record per line expected)")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRecord("invalid_json", f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise BadRecord("invalid_json", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _require_strings(obj: dict, names: tuple[str, ...]) -> None:
    for name in names:
        if obj.get(name) is None:
            raise BadRecord("missing_field", f"required field {name!r} missing")
    for name in names:
        if not isinstance(obj[name], str):
            raise BadRecord("invalid_field", f"field {name!r} must be a string, got {type(obj[name]).__name__}")
    rid = obj["id"]
    if not rid or any(c in _BAD_ID_CHARS or c.isspace() for c in rid):
        raise BadRecord("invalid_field", f"id {rid!r} is empty or holds '.', '/', '\\' or whitespace "
                                       "(ids are shard keys)")


def _check_unique(rid: str, seen: dict[str, int]) -> None:
    if rid in seen:
        raise BadRecord("duplicate_id", f"id {rid!r} already used on line {seen[rid]}")


def relative_path(rel: str, what: str, *, escape_reason: str = "path_escapes_corpus",
                  folder: str = "the collection folder", hint: str = "use a path relative to the manifest's folder"
                  ) -> str:
    """``rel`` normalised (``/`` separators) if it is relative and stays inside its folder, checked
    lexically (curation then resolves links: :class:`LinkRoots`); else :class:`BadRecord` with ``escape_reason``
    (absolute or leaving ``folder``) or ``invalid_field`` (empty, or the folder itself)."""
    if not rel.strip():
        raise BadRecord("invalid_field", f"{what} path is empty")
    if rel.startswith(("/", "\\")) or PureWindowsPath(rel).drive:
        raise BadRecord(escape_reason, f"{what} path {rel!r} is absolute; {hint}")
    norm = posixpath.normpath(rel.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        raise BadRecord(escape_reason, f"{what} path {rel!r} leaves {folder}")
    if norm == ".":
        raise BadRecord("invalid_field", f"{what} path {rel!r} names {folder} itself, not a file")
    return norm


def dvc_cache_dirs(folder: str | Path) -> tuple[Path, ...]:
    """The DVC cache folder(s) of the repository holding ``folder`` (resolved; ``()`` outside a DVC repo).

    Walks up from ``folder`` (as given, made absolute, and also resolved) to the first directory with a
    ``.dvc`` folder: its ``.dvc/cache``, and the ``cache.dir`` its DVC config sets, if any.
    """
    absolute = Path(os.path.abspath(folder))
    found: list[Path] = []
    for start in dict.fromkeys((absolute, absolute.resolve())):
        for parent in (start, *start.parents):
            dvc_dir = parent / ".dvc"
            if dvc_dir.is_dir():
                found.append(dvc_dir / "cache")
                configured = _configured_cache_dir(dvc_dir)
                if configured is not None:
                    found.append(Path(configured))
                break
    return tuple(dict.fromkeys(p.resolve() for p in found))


def _configured_cache_dir(dvc_dir: Path) -> str | None:
    try:
        from dvc.config import Config

        return Config(dvc_dir=os.fspath(dvc_dir), validate=False)["cache"].get("dir")
    except Exception:  # an unreadable config: the default .dvc/cache still applies
        return None


@dataclass(frozen=True)
class LinkRoots:
    """Where a corpus file may really be once symlinks are resolved: inside the collection folder, or inside
    the DVC cache of the repository holding it (:func:`dvc_cache_dirs`). Hard links are files of their own
    folder and need no check."""

    folders: tuple[Path, ...]

    @classmethod
    def of(cls, collection_dir: str | Path) -> LinkRoots:
        return cls((Path(collection_dir).resolve(), *dvc_cache_dirs(collection_dir)))

    def outside(self, path: Path) -> Path | None:
        """``path`` resolved, if that lies outside every root; else ``None`` (also for a link loop, which the
        existence check then reports as ``missing_file``)."""
        try:
            target = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
            return None
        return None if any(target.is_relative_to(folder) for folder in self.folders) else target

    def check(self, path: Path, what: str, original: str) -> None:
        """Raise :class:`BadRecord` ``path_escapes_corpus`` if ``path`` resolves outside every root."""
        target = self.outside(path)
        if target is not None:
            raise BadRecord("path_escapes_corpus", f"{what} {original!r} is a link to {str(target)!r}, "
                                                   f"{_OUTSIDE}")

    def check_tree(self, folder: Path, what: str, original: str) -> None:
        """:meth:`check` every file and folder below ``folder`` (a DICOM series is read file by file)."""
        for parent, dirs, files in os.walk(folder):
            for name in (*dirs, *files):
                entry = Path(parent) / name
                target = self.outside(entry)
                if target is not None:
                    inner = entry.relative_to(folder).as_posix()
                    raise BadRecord("path_escapes_corpus", f"{what} {original!r} holds {inner!r}, a link to "
                                                           f"{str(target)!r}, {_OUTSIDE}")


_OUTSIDE = "outside the collection folder and the repository's DVC cache"


def _exists(kind: str, root: Path, rel: str, original: str, folder_ok: bool = False) -> Path:
    path = root / rel
    if not (path.is_file() or (folder_ok and path.is_dir())):
        raise BadRecord("missing_file", f"{kind} {original!r} not found")
    return path


def _validate_figure(obj: dict, root: Path, seen: dict[str, int],
                     on_image: Callable[[str, np.ndarray], None] | None, links: LinkRoots) -> FigureRecord:
    _require_strings(obj, FIGURE_FIELDS)
    modality, concepts = obj.get("modality"), obj.get("concepts")
    if modality is not None and not isinstance(modality, str):
        raise BadRecord("invalid_field", f"field 'modality' must be a string, got {type(modality).__name__}")
    if concepts is not None and not (isinstance(concepts, list)
                                     and all(isinstance(c, dict) for c in concepts)):
        raise BadRecord("invalid_field", "field 'concepts' must be a list of objects")
    rid = obj["id"]
    _check_unique(rid, seen)
    image = relative_path(obj["image"], "image")
    links.check(root / image, "image", obj["image"])
    if not obj["caption"].strip():
        raise BadRecord("empty_caption", "caption is empty")
    path = _exists("image", root, image, obj["image"])
    try:
        pixels = read_image(path)
    except Exception as e:  # any decoder failure means the same thing here
        raise BadRecord("unreadable_image", f"image {obj['image']!r} does not decode "
                                          f"({type(e).__name__}: {e})") from None
    if on_image is not None:
        on_image(rid, pixels)
    return FigureRecord(rid, image, obj["caption"], obj["article_id"], modality, list(concepts or []), 0)


def _validate_ct(obj: dict, root: Path, seen: dict[str, int], links: LinkRoots) -> CTRecord:
    _require_strings(obj, CT_FIELDS)
    rid = obj["id"]
    _check_unique(rid, seen)
    volume, seg = relative_path(obj["volume"], "volume"), relative_path(obj["segmentation"], "segmentation")
    links.check(root / volume, "volume", obj["volume"])
    links.check(root / seg, "segmentation", obj["segmentation"])
    if not (obj["findings"].strip() or obj["impression"].strip()):
        raise BadRecord("empty_report", "findings and impression are both empty")
    vol_path = _exists("volume", root, volume, obj["volume"], folder_ok=True)
    seg_path = _exists("segmentation", root, seg, obj["segmentation"])
    if vol_path.is_dir():
        links.check_tree(vol_path, "volume", obj["volume"])
    try:
        array = read_volume(vol_path).array
    except Exception as e:
        raise BadRecord("unreadable_volume", f"volume {obj['volume']!r} does not decode "
                                           f"({type(e).__name__}: {e})") from None
    shape, finite = tuple(int(s) for s in array.shape), bool(np.isfinite(array).all())
    n_bad = 0 if finite else int(array.size - np.isfinite(array).sum())
    del array                                           # only the shape and the finite check are kept
    if not finite:
        raise BadRecord("nonfinite_voxels", f"volume {obj['volume']!r} holds {n_bad} NaN/infinite voxels")
    try:
        seg_shape = tuple(int(s) for s in read_label_map(seg_path).shape)
    except Exception as e:
        raise BadRecord("unreadable_volume", f"segmentation {obj['segmentation']!r} does not decode "
                                           f"({type(e).__name__}: {e})") from None
    if seg_shape != shape:
        raise BadRecord("segmentation_shape_mismatch", f"segmentation {obj['segmentation']!r} has shape "
                                                     f"{seg_shape}, volume {obj['volume']!r} has {shape}")
    return CTRecord(rid, obj["patient_id"], volume, seg, obj["findings"], obj["impression"], 0, shape)


def _load(manifest: Path, validate, rejects: RejectLog, progress: bool, desc: str) -> tuple[list, int]:
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {str(manifest)!r} not found; see lib/medvlp/data/README.md "
                                "for the corpus layout (or run `medvlp synth data/`)")
    records, seen, n_lines = [], {}, 0
    bar = tqdm(_manifest_lines(manifest), desc=desc, unit="rec", disable=not progress,
               total=count_lines(manifest) if progress else None)
    for number, raw in bar:
        n_lines += 1
        where = f"{manifest} line {number}"
        try:
            obj = _parse(raw)
            rec = validate(obj, seen)
        except BadRecord as r:
            if isinstance(obj_id := _id_of(raw), str) and r.reason != "duplicate_id":
                seen.setdefault(obj_id, number)
            rejects.add(r.reason, f"{where}: {r.detail}")
            continue
        seen[rec.id] = number
        records.append(replace(rec, line=number))
    return records, n_lines


def _id_of(raw: bytes) -> str | None:
    """The id of a line that parsed far enough to have one (so a later line reusing it is a duplicate)."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None


def load_figure_records(collection_dir: str | Path, rejects: RejectLog, *, progress: bool = False,
                        on_image: Callable[[str, np.ndarray], None] | None = None
                        ) -> tuple[list[FigureRecord], int]:
    """Read and validate ``collection_dir/manifest.jsonl`` of 2D figures.

    Args:
        collection_dir: the ``figures`` folder; paths in the manifest are relative to it.
        rejects: where bad records are counted (its ``strict`` flag makes the first one raise).
        progress: show a tqdm bar.
        on_image: called as ``on_image(id, pixels)`` with each kept figure's decoded image
            (``uint8 [H, W]`` or ``[H, W, 3]``), so a caller can hash it without decoding twice.

    Returns:
        ``(records, n_lines)``: the kept records in manifest order and the number of lines read
        (``n_lines == len(records) + rejects.total`` for a fresh log).
    """
    root = Path(collection_dir)
    links = LinkRoots.of(root)
    return _load(root / "manifest.jsonl", lambda o, s: _validate_figure(o, root, s, on_image, links), rejects,
                 progress, "figures: validate")


def load_ct_records(collection_dir: str | Path, rejects: RejectLog, *, progress: bool = False
                    ) -> tuple[list[CTRecord], int]:
    """Read and validate ``collection_dir/manifest.jsonl`` of CT studies (see :func:`load_figure_records`).

    Each volume and segmentation is decoded once to check it; only its shape is kept.
    """
    root = Path(collection_dir)
    links = LinkRoots.of(root)
    return _load(root / "manifest.jsonl", lambda o, s: _validate_ct(o, root, s, links), rejects, progress,
                 "ct: validate")
