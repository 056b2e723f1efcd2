"""Packages whose public names live in their submodules, imported on first use (PEP 562).

``import medvlp.curate.shards`` in a training data worker then does not import the rest of the curation
stage (matplotlib, pandas), and a DVC stage depends only on the modules it really runs
(tests/test_dvc_deps.py).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``, whose names ``exports[module]`` live in
    ``package.module``; a name is imported on first access and then kept in the package.

    Use in a package's ``__init__``: ``__all__, __getattr__, __dir__ = lazy_exports(__name__, {...})``.
    """
    module_of = {name: module for module, names in exports.items() for name in names}
    public = sorted(module_of)

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *public})

    return public, __getattr__, __dir__
