"""Paths and files of an ingest run: paths that must stay inside the source, the output collection
folder, images copied or linked into it, JSON Lines written atomically."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from medvlp.curate.records import relative_path
from medvlp.data.ingest.skip_log import IngestError

__all__ = ["IMAGE_MODES", "inside_source", "place_file", "prepare_collection", "safe_id", "write_json",
           "write_jsonl"]

#: How source images get into the corpus: a copy, a symbolic link (to the absolute source path), or a
#: hard link (same file system only).
IMAGE_MODES = ("copy", "symlink", "hardlink")
_BAD_ID_CHARS = frozenset("./\\")


def inside_source(rel: str, what: str) -> str:
    """``rel`` normalised (``/`` separators), if it is relative and stays inside its folder.

    Checked lexically, as curation does: a symlink inside the source (a Hugging Face or DVC cache link)
    is fine. Raises :class:`Skip` (``path_escapes_source`` / ``invalid_field``) otherwise.
    """
    return relative_path(rel, what, escape_reason="path_escapes_source", folder="the source folder",
                         hint="paths must be relative to the source folder")


def safe_id(text: str) -> str:
    """``text`` usable as a record id (a shard key): ``.``, ``/``, ``\\`` and whitespace become ``_``."""
    return "".join("_" if (c in _BAD_ID_CHARS or c.isspace()) else c for c in text.strip())


def prepare_collection(folder: Path, overwrite: bool) -> Path:
    """Create the output collection folder; an existing non-empty one is an error unless ``overwrite``
    (then it is emptied first, so no stale file of an earlier run stays in the corpus)."""
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise IngestError(f"output folder {str(folder)!r} is not empty; pass --overwrite (overwrite=True) to "
                              "replace it, or choose another destination")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def place_file(src: Path, dst: Path, mode: str) -> None:
    """Put ``src`` at ``dst`` as a copy, symlink or hard link (see :data:`IMAGE_MODES`)."""
    if mode not in IMAGE_MODES:
        raise ValueError(f"image mode {mode!r}: use one of {IMAGE_MODES}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if mode == "copy":
        shutil.copyfile(src, dst)
    elif mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
    else:
        os.link(src, dst)


def write_jsonl(path: Path, records: Iterable[dict]) -> int:
    """Write ``records`` as JSON Lines (UTF-8, keys sorted) via a temporary file; returns the count."""
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def write_json(path: Path, obj: dict) -> Path:
    """Write ``obj`` as indented UTF-8 JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    return path
