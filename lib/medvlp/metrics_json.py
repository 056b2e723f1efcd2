"""The metrics files of the stages (``reports/metrics/*.json``): floats rounded, UTF-8, one trailing newline."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["round_floats", "write_metrics"]


def round_floats(obj: Any, ndigits: int = 4) -> Any:
    """``obj`` with every float rounded to ``ndigits`` (dicts, lists and tuples walked)."""
    if isinstance(obj, float):
        return round(obj, ndigits)
    if isinstance(obj, Mapping):
        return {k: round_floats(v, ndigits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_floats(v, ndigits) for v in obj]
    return obj


def write_metrics(path: str | Path, report: Mapping[str, Any], *, sort_keys: bool) -> Path:
    """Write ``report`` (floats rounded to 4 digits) as indented JSON at ``path``; creates its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(round_floats(report), indent=2, sort_keys=sort_keys, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path
