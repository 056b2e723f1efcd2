"""DVC-compatible content hash of a directory, so a regenerated corpus can be checked against data.dvc.

DVC 3 hashes a directory as the md5 of a JSON list ``[{"md5": <file md5>, "relpath": <posix path>}, ...]``
sorted by ``relpath`` (``json.dumps(..., sort_keys=True)``), suffixed with ``.dir``. This module
recomputes that value without DVC's cache, and reads the expected value from a ``.dvc`` file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

_CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def dir_entries(root: str | Path) -> list[dict[str, str]]:
    """``[{"md5", "relpath"}]`` of every file under ``root``, sorted by relpath (DVC's order)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    entries = [
        {"md5": file_md5(p), "relpath": p.relative_to(root).as_posix()}
        for p in root.rglob("*")
        if p.is_file() and ".dvc" not in p.relative_to(root).parts[:1]
    ]
    return sorted(entries, key=lambda e: e["relpath"])


def dvc_dir_hash(root: str | Path) -> str:
    """The ``md5`` DVC 3 records for directory ``root`` (e.g. ``'3f...9a.dir'``)."""
    payload = json.dumps(dir_entries(root), sort_keys=True).encode("utf-8")
    return hashlib.md5(payload).hexdigest() + ".dir"


def dvc_file_hash(dvc_file: str | Path) -> str:
    """The directory hash stored in a ``.dvc`` file (its first output's ``md5``)."""
    meta = yaml.safe_load(Path(dvc_file).read_text("utf-8"))
    try:
        return meta["outs"][0]["md5"]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{dvc_file}: no outs[0].md5 entry; is it a `dvc add` file?") from e
