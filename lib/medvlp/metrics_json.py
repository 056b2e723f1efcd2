"""The JSON files of the stages (``reports/metrics/*.json``, ``run_info.json``): UTF-8, indented, one trailing
newline, written atomically; metrics with floats rounded."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["round_floats", "write_json", "write_metrics"]


def round_floats(obj: Any, ndigits: int = 4) -> Any:
    """``obj`` with every float rounded to ``ndigits`` (dicts, lists and tuples walked)."""
    if isinstance(obj, float):
        return round(obj, ndigits)
    if isinstance(obj, Mapping):
        return {k: round_floats(v, ndigits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_floats(v, ndigits) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any, *, sort_keys: bool, default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``obj`` as indented UTF-8 JSON at ``path`` atomically (a temporary file, then ``os.replace``: a
    killed run leaves the previous file intact); creates the folder. ``default`` converts what JSON cannot
    hold (e.g. ``str``); without it such a value raises ``TypeError``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=False, default=default)
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_metrics(path: str | Path, report: Mapping[str, Any], *, sort_keys: bool) -> Path:
    """Write ``report`` with its floats rounded to 4 digits (:func:`write_json`)."""
    return write_json(path, round_floats(report), sort_keys=sort_keys)
